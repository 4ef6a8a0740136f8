"""A real Patroni cluster (tests/support/patronienv.py: etcd + 3 nodes, synchronous_mode) through a switchover
with a writer committing all along - no mocks (issue 15, docs/patroni.md).

- check_cluster (module_utils/soulnear/patroni.py) reads the real REST API before and after.
- The writer commits single-row INSERTs, each its own transaction, through pg.py's retry policy over
  libpq's multi-host connection string with target_session_attrs=read-write, and records every row
  whose COMMIT returned. After the switchover, every acknowledged row must be on the new leader.
- The example bot (examples/bot), connected to all the nodes, is healthy after a switchover.

Part of make test (about 45 s with the image built; 10 s more to build it). The figures, by hand:
    .venv/bin/pytest -s tests/integration/module_utils/test_patroni.py
"""

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg2
import pytest
from ansible.module_utils.soulnear import patroni
from ansible.module_utils.soulnear import pg
from patronienv import PatroniCluster
from pgclient import wait_until
from pgcluster import free_port


from ansiblerun import ROOT
BOT_DIR = os.path.join(ROOT, 'examples', 'bot')
MIGRATIONS_DIR = os.path.join(BOT_DIR, 'database', 'migrations')
DB = 'soulnear_ha'

# Bounds of the writer: rate, duration and rows.
WRITE_INTERVAL = 0.02     # ~50 commits/s
WRITER_MAX_SECONDS = 60
WRITER_MAX_ROWS = 5000
WRITE_AFTER_SWITCHOVER = 3.0  # seconds of writing once the new leader is there
# pg.py's policy with short steps (its default is 0.5/1/2 s): the pause measured is the cluster's to
# within 0.5 s, not our backoff's; bounded: 40 retries, at most ~19 s without a connection.
WRITER_POLICY = dict(retries=40, delays=(0.1, 0.25, 0.5))

TIMINGS = {}
STATE = {}


def log(text):
    print('[patroni] ' + text, flush=True)


@pytest.fixture(scope='module')
def cluster():
    started = time.monotonic()
    proc = subprocess.run([os.path.join(ROOT, 'scripts', 'images.sh')], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    TIMINGS['image'] = time.monotonic() - started
    log('image: %.1f s (%s)' % (TIMINGS['image'], proc.stdout.strip().splitlines()[-1]))

    started = time.monotonic()
    env = PatroniCluster()
    try:
        env.start(timeout=180)
        TIMINGS['cluster start'] = time.monotonic() - started
        log('cluster start: %.1f s, leader %s, sync standby %s' % (TIMINGS['cluster start'], env.leader(),
                                                                  env.sync_standby()))
        env.query('CREATE DATABASE %s' % DB)
        env.query('CREATE TABLE writes (id integer PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())',
                  db=DB)
        yield env
    finally:
        env.remove()
        log('timings: ' + ', '.join('%s %.1f s' % kv for kv in TIMINGS.items()))


# -- the writer ------------------------------------------------------------------------------------
class Writer(threading.Thread):
    """Single-row INSERTs, each its own transaction, until stopped (bounded in rows and time).

    A retryable error (pg.is_retryable: connection lost, 57P01, 57P03, 25006 read-only...) on the
    INSERT means the row was not written: the connection is dropped and the same id is tried again
    on a NEW connection (pg.RetryPolicy reconnects, libpq picks the read-write node). An error on
    COMMIT leaves the outcome unknown: the id is counted as unknown, never as acknowledged, and
    looked up afterwards. Any other error stops the writer and fails the test."""

    def __init__(self, params):
        super().__init__(daemon=True)
        self.params = params
        self.kwargs = pg.connect_kwargs(params, application_name='soulnear_ha_writer')
        # pg.connect_kwargs knows nothing of target_session_attrs yet: the endpoint is the node list.
        self.kwargs.setdefault('target_session_attrs', 'read-write')
        self.policy = pg.RetryPolicy(on_retry=self._on_retry, **WRITER_POLICY)
        self.stop_event = threading.Event()
        self.acked = []          # (id, monotonic time the COMMIT returned)
        self.unknown = []        # ids whose COMMIT raised
        self.retried = 0         # INSERTs that failed retryably, tried again on a new connection
        self.reconnects = 0
        self.connect_retries = 0
        self.errors = []         # (id, description) of retryable errors, for the report
        self.fatal = None
        self.servers = {}        # published port of the node connected to -> first id tried there

    def _on_retry(self, attempt, wait, exc):
        self.connect_retries += 1

    def _connect(self):
        def attempt():
            conn = psycopg2.connect(**self.kwargs)
            conn.autocommit = False
            return conn
        self.reconnects += 1
        return self.policy.run(attempt)

    def run(self):
        deadline = time.monotonic() + WRITER_MAX_SECONDS
        conn = None
        next_id = 1
        try:
            while not self.stop_event.is_set() and time.monotonic() < deadline and next_id <= WRITER_MAX_ROWS:
                if conn is None:
                    conn = self._connect()
                    self.servers.setdefault(int(conn.info.port), next_id)  # the node libpq chose
                try:
                    with conn.cursor() as cur:
                        cur.execute('INSERT INTO writes (id) VALUES (%s)', (next_id,))
                except psycopg2.Error as exc:
                    if not pg.is_retryable(exc):
                        raise
                    self.retried += 1
                    self.errors.append((next_id, 'INSERT: ' + pg.describe_error(exc)))
                    conn = self._drop(conn)
                    continue  # same id, new connection
                try:
                    conn.commit()
                except psycopg2.Error as exc:
                    self.unknown.append(next_id)
                    self.errors.append((next_id, 'COMMIT: ' + pg.describe_error(exc)))
                    conn = self._drop(conn)
                    next_id += 1
                    continue
                self.acked.append((next_id, time.monotonic()))
                next_id += 1
                time.sleep(WRITE_INTERVAL)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.fatal = '%s: %s' % (exc.__class__.__name__, pg.describe_error(exc) if isinstance(
                exc, psycopg2.Error) else exc)
        finally:
            self._drop(conn)

    @staticmethod
    def _drop(conn):
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass
        return None

    def longest_pause(self):
        """(seconds, id before, id after): the longest gap between two acknowledged commits."""
        gaps = [(b[1] - a[1], a[0], b[0]) for a, b in zip(self.acked, self.acked[1:])]
        return max(gaps) if gaps else (0.0, None, None)


def multi_host_params(env, db):
    """Module-style parameters (pg.connect_kwargs) over every node of the cluster."""
    dsn = env.dsn_params(db)
    return dict(login_host=dsn['host'], login_port=dsn['port'], login_user=dsn['user'],
                login_password=dsn['password'], login_db=db, connect_timeout=dsn['connect_timeout'])


# -- the tests -------------------------------------------------------------------------------------
def test_check_cluster_on_a_real_cluster(cluster):
    leader = cluster.leader()
    for node in cluster.nodes:  # any member answers for the whole cluster
        result = patroni.check_cluster(cluster.rest_url(node), timeout=5)
        assert result['ok'] is True, result
        assert 'warning' not in result, result
        value = result['value']
        assert value['leader'] == leader
        assert sorted(m['name'] for m in value['members']) == [n['name'] for n in cluster.nodes]
        replicas = [m for m in value['members'] if m['name'] != leader]
        assert all(m['state'] in ('running', 'streaming') and m['lag'] is not None for m in replicas), value
        assert value['sync_standby'] == ([cluster.sync_standby()] if cluster.synchronous_mode else [])
        assert result['message'].startswith('leader %s, %d replica(s) streaming (lag ' % (leader, len(replicas)))
    assert patroni.leader_of(cluster.rest_url(0)) == leader
    log('check_cluster: ' + result['message'])


def test_switchover_with_a_writer_loses_no_acknowledged_commit(cluster):
    old = cluster.leader()
    candidate = cluster.sync_standby() or next(n['name'] for n in cluster.nodes if n['name'] != old)
    writer = Writer(multi_host_params(cluster, DB))
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) >= 100 or writer.fatal or not writer.is_alive(), 20, '100 commits')
        assert writer.fatal is None, writer.fatal
        before = len(writer.acked)

        new, took = cluster.switchover(candidate)
        STATE.update(old=old, new=new, switchover_seconds=took)
        switched = len(writer.acked)
        wait_until(lambda: len(writer.acked) >= switched + 50 or writer.fatal or not writer.is_alive(), 40,
                   '50 commits after the switchover')
        time.sleep(WRITE_AFTER_SWITCHOVER)
    finally:
        writer.stop_event.set()
        writer.join(30)
    assert not writer.is_alive(), 'the writer did not stop'
    assert writer.fatal is None, '%s\nretryable errors: %s' % (writer.fatal, writer.errors[-10:])

    rows = {r[0] for r in cluster.query('SELECT id FROM writes', db=DB, node=new)}
    acked = [i for i, _ in writer.acked]
    lost = sorted(set(acked) - rows)
    unknown_present = sorted(set(writer.unknown) & rows)
    pause, pause_from, pause_to = writer.longest_pause()
    new_port = cluster.node(new)['pg_port']
    figures = dict(acknowledged=len(acked), lost=len(lost), unknown=len(writer.unknown),
                   unknown_present=len(unknown_present), unknown_absent=len(writer.unknown) - len(unknown_present),
                   rows_in_table=len(rows), acknowledged_before_switchover=before,
                   insert_retries=writer.retried, connections=writer.reconnects,
                   connect_retries=writer.connect_retries,
                   longest_write_pause_s=round(pause, 3), switchover_s=round(took, 3))
    STATE['figures'] = figures
    log('switchover %s -> %s in %.2f s (POST /switchover until the new leader runs; synchronous_mode %s)'
        % (old, new, took, cluster.synchronous_mode))
    log('writer: ' + json.dumps(figures))
    log('longest write pause %.2f s between rows %s and %s' % (pause, pause_from, pause_to))
    for row_id, error in writer.errors[:10]:
        log('  row %s: %s' % (row_id, error))

    assert new == candidate and new != old
    assert lost == [], 'acknowledged commits missing on the new leader: %s' % lost[:20]
    # no row the writer did not acknowledge or leave unknown
    assert rows <= set(acked) | set(writer.unknown)
    assert new_port in writer.servers, 'the writer never reached the new leader: %s' % writer.servers
    assert writer.servers[new_port] > before, writer.servers
    assert len(acked) > before + 50


def test_check_cluster_names_the_new_leader_and_the_old_one_streaming(cluster):
    if 'new' not in STATE:
        pytest.skip('needs the switchover test')
    old, new = STATE['old'], STATE['new']

    def settled():
        result = patroni.check_cluster(cluster.rest_url(old), timeout=5)
        members = {m['name']: m for m in result['value']['members']}
        return (result['ok'] and result['value']['leader'] == new and old in members
                and members[old]['role'] in ('replica', 'sync_standby')
                and members[old]['state'] in ('running', 'streaming') and members[old]['lag'] is not None
                and 'warning' not in result and result)

    started = time.monotonic()
    result = wait_until(settled, 60, 'check_cluster to show %s leading and %s streaming' % (new, old), 0.5)
    assert cluster.node(old)['name'] in cluster.streaming_replicas(new)
    log('check_cluster after the switchover (%.1f s to settle): %s' % (time.monotonic() - started,
                                                                        result['message']))


def test_health_check_and_migrations_through_the_multi_host_endpoint(cluster, tmp_path):
    """db_health and pg_migrate against the cluster the way a deployment points at it: every member in login_host,
    the primary found by connect() (target_session_attrs=read-write), Patroni's REST API in patroni_url."""
    from ansible.module_utils.soulnear.checks import run_checks  # noqa: PLC0415
    from ansible.module_utils.soulnear.migrate import Migrator  # noqa: PLC0415

    params = multi_host_params(cluster, DB)
    report = run_checks(dict(params, patroni_url=cluster.rest_url(cluster.nodes[-1]), db_external='the cluster',
                             required_tables=['writes']))
    assert report['ok'], report['msg']
    assert report['checks']['patroni']['value']['leader'] == cluster.leader()
    assert 'external' in report['skipped']['db_container']
    (tmp_path / '001_probe.sql').write_text('CREATE TABLE module_probe (id int PRIMARY KEY);')
    result = Migrator(dict(params, path=str(tmp_path), table='module_migrations')).run()
    assert [m['name'] if isinstance(m, dict) else m for m in result['applied']] and not result.get('failed')
    leader = cluster.leader()
    assert cluster.query("SELECT count(*) FROM pg_tables WHERE tablename = 'module_probe'", db=DB, node=leader) \
        == [(1,)]
    log('db_health through the endpoint: ' + report['checks']['patroni']['message'])


# -- the example bot -------------------------------------------------------------------------------
def bot_health(port):
    try:
        with urllib.request.urlopen('http://127.0.0.1:%d/health' % port, timeout=2) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except (OSError, ValueError) as exc:
        return None, str(exc)


def apply_bot_migrations(env, db):
    """The bot's migration files, each in its own transaction, recorded as pg_migrate records them."""
    conn = psycopg2.connect(**env.dsn_params(db))
    try:
        with conn, conn.cursor() as cur:
            cur.execute('CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, '
                        'name text NOT NULL, success boolean NOT NULL DEFAULT true)')
        for path in sorted(glob.glob(os.path.join(MIGRATIONS_DIR, '*.sql'))):
            name = os.path.basename(path)
            with conn, conn.cursor() as cur, open(path) as fh:
                cur.execute(fh.read())
                cur.execute('INSERT INTO schema_migrations (version, name) VALUES (%s, %s)',
                            (str(int(name.split('_')[0])), name))
    finally:
        conn.close()


def test_example_bot_healthy_after_a_switchover(cluster):
    cluster.wait_healthy(60)
    cluster.query('CREATE DATABASE soul_bot')
    # libpq tries the hosts in order and does not go on after a FATAL at startup: a replica listed
    # before the leader that has not replayed CREATE DATABASE yet fails the connection.
    wait_until(lambda: all(cluster.query("SELECT 1 FROM pg_database WHERE datname = 'soul_bot'", node=n)
                           for n in cluster.nodes), 30, 'soul_bot on every node')
    apply_bot_migrations(cluster, 'soul_bot')
    dsn = cluster.dsn_params('soul_bot')
    health_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(('POSTGRES_', 'DB_', 'BOT_'))}
    env.update(PYTHONPATH=BOT_DIR, POSTGRES_HOST=dsn['host'], POSTGRES_PORT=dsn['port'],
               POSTGRES_TARGET_SESSION_ATTRS='read-write', POSTGRES_USER=dsn['user'],
               POSTGRES_PASSWORD=dsn['password'], POSTGRES_DB='soul_bot', BOT_HEALTH_PORT=str(health_port),
               BOT_WORK_INTERVAL='0.2', BOT_HEALTH_MONITOR_INTERVAL='0.2', BOT_DB_WAIT_TIMEOUT='20',
               BOT_MIGRATIONS_DIR=MIGRATIONS_DIR, DB_POOL_SIZE='2', DB_MAX_OVERFLOW='2')
    proc = subprocess.Popen([sys.executable, '-m', 'bot'], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip('\n') for line in proc.stdout), daemon=True)
    reader.start()

    def healthy():
        assert proc.poll() is None, 'the bot exited (%s):\n%s' % (proc.returncode, '\n'.join(lines))
        status, body = bot_health(health_port)
        return status == 200 and body.get('status') == 'ok' and body

    try:
        before = wait_until(healthy, 30, 'the bot healthy')
        old = cluster.leader()
        new, took = cluster.switchover()
        switched = time.monotonic()
        after = wait_until(lambda: (b := healthy()) and b.get('work_done', 0) > before.get('work_done', 0) + 5
                           and b, 60, 'the bot healthy and working after the switchover %s -> %s' % (old, new))
        log('bot: healthy and working %.1f s after the switchover %s -> %s (took %.2f s); work_done %s -> %s'
            % (time.monotonic() - switched, old, new, took, before.get('work_done'), after.get('work_done')))
        events = cluster.query('SELECT count(*) FROM events', db='soul_bot', node=new)[0][0]
        assert events >= 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        reader.join(5)
    output = '\n'.join(lines)
    assert 'Traceback' not in output, output
    assert dsn['password'] not in output
