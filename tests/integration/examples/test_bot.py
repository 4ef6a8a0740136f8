"""The example bot (examples/bot) as a real process against a real PostgreSQL - no mocks.

The migration runner (pg_migrate) is not used here: the bot's migration files
are applied with plain psycopg2, each in its own transaction, and recorded in
schema_migrations the way pg_migrate records them (name = file name).
"""

import glob
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg2
import pytest
from pgclient import connect, query, wait_until
from pgcluster import SUPERUSER_PASSWORD, Cluster, free_port

from ansiblerun import ROOT
BOT_DIR = os.path.join(ROOT, 'examples', 'bot')
MIGRATIONS_DIR = os.path.join(BOT_DIR, 'database', 'migrations')
MIGRATIONS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(MIGRATIONS_DIR, '*.sql')))
MARKERS = ('Database connection successful!', 'Database tables created/verified',
           'All migrations up to date', 'Database health monitor started')
BOT_TABLES = {'users', 'aiogram_states', 'events'}


# -- helpers -------------------------------------------------------------------
def migrate(params, apply=MIGRATIONS, failed=()):
    """Apply files as pg_migrate would: one transaction each, recorded in schema_migrations."""
    conn = connect(params, autocommit=False)
    try:
        with conn, conn.cursor() as cur:
            cur.execute('CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, '
                        'name text NOT NULL, success boolean NOT NULL DEFAULT true)')
        for name in apply:
            with conn, conn.cursor() as cur, open(os.path.join(MIGRATIONS_DIR, name)) as fh:
                cur.execute(fh.read())
                cur.execute('INSERT INTO schema_migrations (version, name, success) VALUES (%s, %s, %s)',
                            (str(int(name.split('_')[0])), name, name not in failed))  # '001_x.sql' -> '1'
    finally:
        conn.close()


def tables(params):
    return {row[0] for row in query(params, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def health(port):
    try:
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


class Bot:
    """`python -m bot` as a subprocess; its stdout+stderr is collected line by line."""

    def __init__(self, params, **overrides):
        self.health_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(('POSTGRES_', 'DB_', 'BOT_'))}
        env.update(PYTHONPATH=BOT_DIR, POSTGRES_HOST=params['login_host'], POSTGRES_PORT=str(params['login_port']),
                   POSTGRES_USER=params['login_user'], POSTGRES_PASSWORD=params['login_password'],
                   POSTGRES_DB=params['login_db'], BOT_HEALTH_PORT=str(self.health_port),
                   BOT_WORK_INTERVAL='0.2', BOT_HEALTH_MONITOR_INTERVAL='0.2', BOT_DB_WAIT_TIMEOUT='10',
                   BOT_MIGRATIONS_DIR=MIGRATIONS_DIR, DB_POOL_SIZE='2', DB_MAX_OVERFLOW='2')
        env.update({k: str(v) for k, v in overrides.items()})
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, '-m', 'bot'], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip('\n'))

    @property
    def output(self):
        return '\n'.join(self.lines)

    def wait_for(self, text, timeout=15):
        def seen():
            if text in self.output:
                return True
            assert self.proc.poll() is None, f'bot exited ({self.proc.returncode}) before {text!r}:\n{self.output}'
            return False
        wait_until(seen, timeout, repr(text))

    def wait_exit(self, timeout=15):
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def stop(self, timeout=5):
        """SIGTERM; returns (exit code, seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        return rc, time.monotonic() - start


@pytest.fixture
def start_bot():
    bots = []

    def start(params, **overrides):
        bots.append(Bot(params, **overrides))
        return bots[-1]

    yield start
    for bot in bots:
        if bot.proc.poll() is None:
            bot.proc.kill()
            bot.wait_exit()


@pytest.fixture
def botlib(monkeypatch):
    """The bot's own modules, imported in-process for the pool and retry-policy tests."""
    monkeypatch.syspath_prepend(BOT_DIR)
    return importlib.import_module('bot.config'), importlib.import_module('bot.db')


def bot_config(botlib, monkeypatch, params, **env):
    config, _ = botlib
    settings = dict(POSTGRES_HOST=params['login_host'], POSTGRES_PORT=params['login_port'],
                    POSTGRES_USER=params['login_user'], POSTGRES_PASSWORD=params['login_password'],
                    POSTGRES_DB=params['login_db'])
    settings.update(env)
    for key, value in settings.items():
        monkeypatch.setenv(key, str(value))
    return config.Config.from_env()


# -- the happy path -----------------------------------------------------------------
def test_migrations_ship_in_order():
    assert MIGRATIONS[:2] == ['001_init.sql', '002_events.sql'] and len(MIGRATIONS) >= 3
    for name in MIGRATIONS:  # the runner owns the transaction
        with open(os.path.join(MIGRATIONS_DIR, name)) as fh:
            sql = fh.read()
        control = re.search(r'^\s*(BEGIN|COMMIT|START\s+TRANSACTION|ROLLBACK)\b', sql, re.IGNORECASE | re.MULTILINE)
        assert not control, name


def test_starts_serves_health_does_work_and_stops_on_sigterm(pg_db, start_bot):
    migrate(pg_db)
    bot = start_bot(pg_db)
    for marker in MARKERS:
        bot.wait_for(marker)
    positions = [bot.output.index(m) for m in MARKERS[:3]]
    assert positions == sorted(positions), bot.output

    _, body = wait_until(lambda: (r := health(bot.health_port))[0] == 200 and r, what='/health 200')
    assert body['status'] == 'ok' and body['database'] == 'ok' and body['work_done'] >= 1, body
    assert body['last_work_at']

    wait_until(lambda: query(pg_db, 'SELECT count(*) FROM events')[0][0] >= 3, what='3 events')
    states = query(pg_db, 'SELECT key, chat_id, user_id, state, data FROM aiogram_states')
    assert states and all(key.startswith('fsm:') and state and data.get('last_update_id') for key, _, _, state, data
                          in states)
    assert query(pg_db, 'SELECT count(*) FROM users')[0][0] >= 1

    # A client that hangs up before the answer (issue 22: a traceback here failed deploys): one line, no traceback.
    import socket
    for _ in range(3):
        with socket.create_connection(('127.0.0.1', bot.health_port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
            sock.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n')
    assert health(bot.health_port)[0] == 200
    assert 'Traceback' not in bot.output, bot.output

    rc, took = bot.stop()
    assert rc == 0 and took < 3, (rc, took, bot.output)
    assert 'Stopped after' in bot.output
    assert 'ERROR' not in bot.output and 'Traceback' not in bot.output, bot.output
    assert SUPERUSER_PASSWORD not in bot.output
    # the pool was closed: no session of the bot is left on the server
    assert query(pg_db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'soulnear_bot'")[0][0] == 0


def test_survives_killed_connections(pg_db, start_bot):
    migrate(pg_db)
    bot = start_bot(pg_db)
    bot.wait_for('Processed 1 update(s)')
    killed = query(pg_db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'soulnear_bot'")
    assert killed
    before = health(bot.health_port)[1]['work_done']
    # the broken connections are replaced and the work goes on
    wait_until(lambda: health(bot.health_port)[1]['work_done'] >= before + 5, what='work after the kill')
    assert health(bot.health_port)[0] == 200
    assert bot.proc.poll() is None
    assert bot.stop()[0] == 0


# -- a database the bot must refuse ------------------------------------------------
@pytest.mark.parametrize('case', ['table_dropped', 'empty_database'])
def test_missing_tables_fail_loudly_and_create_nothing(pg_db, start_bot, case):
    if case == 'table_dropped':
        migrate(pg_db)
        query(pg_db, 'DROP TABLE aiogram_states')
        expected = 'Required table aiogram_states is missing - the database may have been re-initialised'
    else:
        expected = 'Required tables users, aiogram_states, events are missing'
    before = tables(pg_db)
    bot = start_bot(pg_db)
    assert bot.wait_exit() == 1, bot.output
    assert expected in bot.output and 'restore a backup' in bot.output, bot.output
    assert 'Database connection successful!' in bot.output
    assert 'Database tables created/verified' not in bot.output
    assert tables(pg_db) == before


@pytest.mark.parametrize('case', ['pending', 'failed', 'never_migrated'])
def test_unapplied_migrations_stop_the_bot(pg_db, start_bot, case):
    last = MIGRATIONS[-1]
    if case == 'pending':
        migrate(pg_db, apply=MIGRATIONS[:-1])
        expected = f'Pending migration(s) not applied: {last}'
    elif case == 'failed':
        migrate(pg_db, failed=[last])
        expected = f'Migration(s) recorded as failed: {last}'
    else:  # tables made by hand or by the old bot, schema_migrations never created
        migrate(pg_db)
        query(pg_db, 'DROP TABLE schema_migrations')
        expected = 'Table schema_migrations is missing'
    bot = start_bot(pg_db)
    assert bot.wait_exit() == 1, bot.output
    assert expected in bot.output, bot.output
    assert 'ERROR' in bot.output and 'All migrations up to date' not in bot.output
    assert query(pg_db, 'SELECT count(*) FROM events')[0][0] == 0


def test_newer_migration_in_database_only_warns(pg_db, start_bot):
    # After a rollback to the previous image the database may know a migration the old bot does not ship.
    migrate(pg_db)
    query(pg_db, "INSERT INTO schema_migrations (version, name) VALUES ('999', '999_from_newer_bot.sql')")
    bot = start_bot(pg_db)
    bot.wait_for('Database health monitor started')
    assert 'All migrations up to date (3 applied)' in bot.output
    assert 'WARNING' in bot.output and '999_from_newer_bot.sql' in bot.output
    assert bot.stop()[0] == 0


def test_renamed_file_counts_as_applied_by_version(pg_db, start_bot):
    # pg_migrate matches files on their version, so the bot must not call a renamed file pending.
    migrate(pg_db)
    query(pg_db, "UPDATE schema_migrations SET name = '003_old_name.sql' WHERE name = %s", (MIGRATIONS[2],))
    bot = start_bot(pg_db)
    bot.wait_for('Database health monitor started')
    assert 'All migrations up to date (3 applied)' in bot.output and 'WARNING' not in bot.output, bot.output
    assert bot.stop()[0] == 0


def test_starts_on_a_database_migrated_by_pg_migrate(pg_db, start_bot):
    from ansible.module_utils.soulnear import migrate as soulnear_migrate
    result = soulnear_migrate.Migrator(dict(pg_db, path=MIGRATIONS_DIR)).run()
    assert result['applied'] == MIGRATIONS
    bot = start_bot(pg_db)
    for marker in MARKERS:
        bot.wait_for(marker)
    assert bot.stop()[0] == 0


# -- connecting --------------------------------------------------------------------
def test_database_not_up_fails_cleanly_after_wait_timeout(pg_db, start_bot):
    port = free_port()  # nothing listens here
    bot = start_bot(dict(pg_db, login_port=port), BOT_DB_WAIT_TIMEOUT=2)
    rc = bot.wait_exit()
    took = time.monotonic() - bot.started
    assert rc == 1, bot.output
    assert 2 <= took < 10, took
    assert f'Waiting for database at 127.0.0.1:{port}' in bot.output
    assert f'Database at 127.0.0.1:{port} did not become available within 2s' in bot.output
    assert 'Database connection successful!' not in bot.output


def test_waits_for_a_database_that_comes_up_late(start_bot):
    cluster = Cluster().init().start()
    try:
        params = cluster.params()
        migrate(params)
        cluster.stop()
        bot = start_bot(params, BOT_DB_WAIT_TIMEOUT=60)
        bot.wait_for('Waiting for database')
        time.sleep(1)
        cluster.start()
        for marker in MARKERS:
            bot.wait_for(marker)
        assert bot.stop()[0] == 0
    finally:
        cluster.destroy()


def test_sigterm_while_waiting_for_the_database_exits_quickly(pg_db, start_bot):
    bot = start_bot(dict(pg_db, login_port=free_port()), BOT_DB_WAIT_TIMEOUT=60)
    bot.wait_for('Waiting for database')
    rc, took = bot.stop()
    assert rc == 0 and took < 3, (rc, took, bot.output)


def test_wrong_password_fails_fast_without_retry_or_leak(pg_db, start_bot):
    migrate(pg_db)
    wrong = 'wrong-secret-7f3a9c'
    bot = start_bot(dict(pg_db, login_password=wrong), BOT_DB_WAIT_TIMEOUT=30)
    rc = bot.wait_exit()
    took = time.monotonic() - bot.started
    assert rc == 1, bot.output
    assert took < 5, took
    assert 'password authentication failed' in bot.output and 'not retried' in bot.output, bot.output
    assert 'Waiting for database' not in bot.output
    assert wrong not in bot.output and SUPERUSER_PASSWORD not in bot.output


def test_endpoint_settings_tls_and_multi_host(pg_db, botlib, monkeypatch):
    config, db = botlib
    cfg = bot_config(botlib, monkeypatch, pg_db, POSTGRES_SSLMODE='disable', POSTGRES_TARGET_SESSION_ATTRS='read-write')
    database = db.Database(cfg)
    try:  # a real connection with the endpoint settings: the server it reached takes writes
        assert database.run(lambda cur: cur.execute('SHOW transaction_read_only') or cur.fetchone()[0]) == 'off'
    finally:
        database.close()
    cfg = bot_config(botlib, monkeypatch, pg_db, POSTGRES_HOST='127.0.0.1,127.0.0.1',
                     POSTGRES_PORT='%d, %d' % (free_port(), pg_db['login_port']))
    assert cfg.port.endswith(',%d' % pg_db['login_port'])
    database = db.Database(cfg)
    try:  # the first host refuses; libpq moves on to the second
        assert database.run(lambda cur: cur.execute('SELECT 1') or cur.fetchone()[0]) == 1
    finally:
        database.close()
    for key, value, text in (('POSTGRES_SSLMODE', 'verify', 'must be one of disable'),
                             ('POSTGRES_TARGET_SESSION_ATTRS', 'primary-only', 'must be one of any'),
                             ('POSTGRES_PORT', '5432,x', 'comma-separated list of ports')):
        with monkeypatch.context() as env, pytest.raises(config.ConfigError, match=text):
            bot_config(botlib, env, pg_db, **{key: value})


def test_bad_configuration_exits_2(pg_db, start_bot):
    bot = start_bot(pg_db, DB_POOL_SIZE='lots')
    assert bot.wait_exit() == 2
    assert "DB_POOL_SIZE='lots' is not a valid int" in bot.output


# -- the pool and the retry policy, in-process -------------------------------------
def test_retry_policy_on_real_errors(pg_server, pg_db, botlib):
    _, db = botlib
    conn = connect(pg_db)
    try:
        with conn.cursor() as cur:
            for sql in ('SELEC 1', 'SELECT 1/0', 'SELECT * FROM no_such_table'):
                with pytest.raises(psycopg2.Error) as err:
                    cur.execute(sql)
                assert not db.is_retryable(err.value), sql
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError) as err:  # authentication: no SQLSTATE, still never retried
        connect(dict(pg_db, login_password='nope-nope'))
    assert not db.is_retryable(err.value)
    with pytest.raises(psycopg2.OperationalError) as err:  # connection refused
        connect(dict(pg_db, login_port=free_port()))
    assert db.is_retryable(err.value)

    readonly = connect(pg_db)  # a primary demoted by a switchover refuses writes: reconnect through the endpoint
    try:
        with readonly.cursor() as cur:
            cur.execute('SET default_transaction_read_only = on')
            with pytest.raises(psycopg2.Error) as err:
                cur.execute('CREATE TABLE demoted_probe (x int)')
        assert err.value.pgcode == '25006' and db.is_retryable(err.value)
    finally:
        readonly.close()

    victim = connect(pg_db)
    pid = victim.info.backend_pid
    query(pg_db, 'SELECT pg_terminate_backend(%s)', (pid,))
    with pytest.raises(psycopg2.Error) as err:
        victim.cursor().execute('SELECT 1')
    assert db.is_retryable(err.value), (err.value.pgcode, err.value)


def test_pool_discards_broken_recycles_old_and_waits_for_a_slot(pg_db, botlib, monkeypatch):
    _, db = botlib
    pid = 'SELECT pg_backend_pid()'

    pool = db.Database(bot_config(botlib, monkeypatch, pg_db, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0,
                                  DB_POOL_TIMEOUT=0.3, DB_COMMAND_TIMEOUT=1.5))
    try:
        first = pool.run(lambda cur: cur.execute(pid) or cur.fetchone()[0])
        assert pool.run(lambda cur: cur.execute(pid) or cur.fetchone()[0]) == first  # reused
        assert pool.run(lambda cur: cur.execute('SHOW statement_timeout') or cur.fetchone()[0]) == '1500ms'
        query(pg_db, 'SELECT pg_terminate_backend(%s)', (first,))
        second = pool.run(lambda cur: cur.execute(pid) or cur.fetchone()[0])  # retried on a new connection
        assert second != first
        assert pool.run(lambda cur: cur.execute(pid) or cur.fetchone()[0]) == second

        with pytest.raises(psycopg2.errors.DivisionByZero):  # not retried, and the connection stays usable
            pool.run(lambda cur: cur.execute('SELECT 1/0'))
        assert pool.run(lambda cur: cur.execute(pid) or cur.fetchone()[0]) == second

        with pool.connection():
            start = time.monotonic()
            with pytest.raises(db.PoolTimeout), pool.connection():
                pass
            assert 0.25 <= time.monotonic() - start < 2
    finally:
        pool.close()

    pool = db.Database(bot_config(botlib, monkeypatch, pg_db, DB_POOL_RECYCLE=0))
    try:
        pids = {pool.run(lambda cur: cur.execute(pid) or cur.fetchone()[0]) for _ in range(3)}
        assert len(pids) == 3  # every connection is older than 0 s: replaced on each checkout
    finally:
        pool.close()
