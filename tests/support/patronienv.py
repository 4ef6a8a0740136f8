"""A throwaway Patroni cluster on the local Docker engine, for the switchover test (issue 15).

Layout: a user-defined Docker network, one etcd container (the DCS) and N Patroni nodes (default 3;
SOULNEAR_TEST_PATRONI_NODES=2 on a small machine), all from soulnear/patroni:15 (images/patroni,
built by scripts/images.sh: Debian's patroni 3.0.2 and etcd 3.4 on soulnear/postgres:15).
Each node publishes its PostgreSQL port (5432) and its REST API port (8008) on 127.0.0.1 random
ports; the containers reach one another by container name on the private network. Every request
this module makes goes to 127.0.0.1 (the published ports) or through `docker exec`.

Configuration choices, and why:
- synchronous_mode: true. Patroni then keeps one replica as the synchronous standby
  (synchronous_standby_names, synchronous_commit=on): a COMMIT returns to the client only once that
  standby has flushed the commit's WAL, and Patroni only promotes a synchronous standby. A planned
  switchover alone would lose nothing even with asynchronous replication (the old primary's
  shutdown sends all its WAL to connected replicas before it stops), but a failover would: the
  primary can die with acknowledged commits that no replica received. With synchronous_mode the
  guarantee "an acknowledged commit survives a change of leader" holds for failovers too, so the
  switchover test's figure (0 rows lost) is the one a real failover would give. Not
  synchronous_mode_strict: when no standby is left, Patroni turns synchronous replication off
  and the leader keeps accepting writes (availability over that last guarantee, Patroni's default).
  Cost: each commit waits for one network round trip to the standby.
- ttl 20 s, loop_wait 2 s, retry_timeout 5 s (Patroni's defaults are 30/10/10): a test cluster
  that bootstraps and switches over quickly; loop_wait + 2 * retry_timeout <= ttl as Patroni requires.
- use_pg_rewind and use_slots, so the demoted leader rejoins as a replica of the new one.
- pg_hba trusts nothing: scram-sha-256 from any address (port publishing reaches the containers
  from the Docker gateway, not from 127.0.0.1).
"""

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import psycopg2
from pgcontainer import docker

IMAGE = os.environ.get('SOULNEAR_TEST_PATRONI_IMAGE', 'soulnear/patroni:15')
NODES = int(os.environ.get('SOULNEAR_TEST_PATRONI_NODES', '3'))
# SOULNEAR_TEST_PATRONI_SYNC=0: asynchronous replication, to compare the figures (docs/patroni.md).
SYNCHRONOUS_MODE = os.environ.get('SOULNEAR_TEST_PATRONI_SYNC', '1') != '0'
SUPERUSER_PASSWORD = 'test-patroni-superuser'
REPLICATION_PASSWORD = 'test-patroni-replication'
SCOPE = 'soulnear'


def http_json(url, method='GET', body=None, timeout=5):
    """(status, parsed JSON or text) of one request; (None, error text) when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read().decode('utf-8', 'replace')
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode('utf-8', 'replace')
    except (OSError, ValueError) as exc:
        return None, str(exc)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.strip()


class PatroniCluster:
    def __init__(self, nodes=NODES, image=IMAGE, prefix=None, synchronous_mode=SYNCHRONOUS_MODE):
        self.image = image
        self.synchronous_mode = synchronous_mode
        self.prefix = prefix or 'soulnear-test-patroni-' + uuid.uuid4().hex[:6]
        self.network = self.prefix
        self.etcd = self.prefix + '-etcd'
        self.nodes = [dict(name='pg%d' % (i + 1), container='%s-pg%d' % (self.prefix, i + 1),
                           pg_port=None, rest_port=None) for i in range(nodes)]
        self.password = SUPERUSER_PASSWORD

    # -- lifecycle -----------------------------------------------------------------------------
    def config(self, node):
        """Patroni's configuration of one node (JSON is YAML, which Patroni reads)."""
        host = node['container']
        return {
            'scope': SCOPE,
            'name': node['name'],
            'restapi': {'listen': '0.0.0.0:8008', 'connect_address': host + ':8008'},
            'etcd3': {'hosts': [self.etcd + ':2379']},
            'bootstrap': {
                'dcs': {
                    'ttl': 20, 'loop_wait': 2, 'retry_timeout': 5,
                    'maximum_lag_on_failover': 1048576,
                    'synchronous_mode': self.synchronous_mode,
                    'postgresql': {
                        'use_pg_rewind': True, 'use_slots': True,
                        'parameters': {'wal_level': 'replica', 'hot_standby': 'on', 'wal_log_hints': 'on',
                                       'max_wal_senders': 10, 'max_replication_slots': 10,
                                       'wal_keep_size': '128MB', 'password_encryption': 'scram-sha-256'},
                    },
                },
                'initdb': [{'encoding': 'UTF8'}, {'locale': 'en_US.UTF-8'}, 'data-checksums'],
            },
            'postgresql': {
                'listen': '0.0.0.0:5432',
                'connect_address': host + ':5432',
                'data_dir': '/var/lib/postgresql/data',
                'bin_dir': '/usr/lib/postgresql/15/bin',
                'pgpass': '/tmp/pgpass',
                'authentication': {
                    'superuser': {'username': 'postgres', 'password': SUPERUSER_PASSWORD},
                    'replication': {'username': 'replicator', 'password': REPLICATION_PASSWORD},
                    'rewind': {'username': 'postgres', 'password': SUPERUSER_PASSWORD},
                },
                'parameters': {'unix_socket_directories': '/var/run/postgresql'},
                'pg_hba': ['local all all trust',
                           'host replication replicator 0.0.0.0/0 scram-sha-256',
                           'host all all 0.0.0.0/0 scram-sha-256'],
            },
            'tags': {'nofailover': False, 'noloadbalance': False, 'clonefrom': False, 'nosync': False},
        }

    def start(self, timeout=180):
        """Create the network, etcd and the nodes; wait for a leader and streaming replicas."""
        if docker('info', check=False).returncode != 0:
            raise RuntimeError('no Docker engine answers; run scripts/docker-engine.sh')
        if docker('image', 'inspect', self.image, check=False).returncode != 0:
            raise RuntimeError('image %s is missing; run scripts/images.sh' % self.image)
        deadline = time.monotonic() + timeout
        docker('network', 'create', '--label', 'org.soulnear.test=patroni', self.network)
        docker('run', '-d', '--name', self.etcd, '--network', self.network, '--entrypoint', 'etcd',
               self.image, '--data-dir', '/tmp/etcd.data',
               '--listen-client-urls', 'http://0.0.0.0:2379',
               '--advertise-client-urls', 'http://%s:2379' % self.etcd)
        self._wait(lambda: docker('exec', self.etcd, 'etcdctl', 'endpoint', 'health',
                                  check=False, timeout=10).returncode == 0,
                   deadline, 'etcd to answer')
        for node in self.nodes:
            docker('create', '--name', node['container'], '--hostname', node['name'],
                   '--network', self.network, '--user', 'postgres',
                   '-p', '127.0.0.1::5432', '-p', '127.0.0.1::8008', self.image,
                   'patroni', '/etc/patroni/patroni.yml')
            with tempfile.NamedTemporaryFile('w', suffix='.yml', delete=False) as fh:
                json.dump(self.config(node), fh, indent=1)
            try:
                os.chmod(fh.name, 0o644)  # read by the container's postgres user; test-only secrets
                docker('cp', fh.name, node['container'] + ':/etc/patroni/patroni.yml')
            finally:
                os.unlink(fh.name)
            docker('start', node['container'])
            node['pg_port'] = self._published(node['container'], 5432)
            node['rest_port'] = self._published(node['container'], 8008)
        self.wait_healthy(max(1.0, deadline - time.monotonic()))
        return self

    def remove(self):
        for name in [n['container'] for n in self.nodes] + [self.etcd]:
            docker('rm', '-f', '-v', name, check=False, timeout=60)
        docker('network', 'rm', self.network, check=False, timeout=60)

    def logs(self, tail=40):
        out = []
        for name in [self.etcd] + [n['container'] for n in self.nodes]:
            proc = docker('logs', '--tail', str(tail), name, check=False)
            out.append('--- %s\n%s%s' % (name, proc.stdout, proc.stderr))
        return '\n'.join(out)

    @staticmethod
    def _published(container, port):
        out = docker('port', container, '%d/tcp' % port).stdout.strip().splitlines()[0]
        return int(out.rsplit(':', 1)[1])

    def _wait(self, predicate, deadline, what, interval=0.5):
        """Poll predicate until it returns a true value or the deadline passes (then raise, with logs)."""
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise RuntimeError('timed out waiting for %s\n%s' % (what, self.logs()))
            time.sleep(interval)

    # -- state ---------------------------------------------------------------------------------
    def node(self, name):
        if isinstance(name, int):
            return self.nodes[name]
        if isinstance(name, dict):
            return name
        for node in self.nodes:
            if name in (node['name'], node['container']):
                return node
        raise KeyError(name)

    def rest_url(self, node):
        return 'http://127.0.0.1:%d' % self.node(node)['rest_port']

    def cluster(self):
        """Patroni's GET /cluster from the first node that answers, or None."""
        for node in self.nodes:
            if node['rest_port'] is None:
                continue
            status, body = http_json(self.rest_url(node) + '/cluster', timeout=3)
            if status == 200 and isinstance(body, dict):
                return body
        return None

    def members(self):
        return (self.cluster() or {}).get('members', [])

    def leader(self):
        for member in self.members():
            if member.get('role') in ('leader', 'master', 'primary') and member.get('state') == 'running':
                return member['name']
        return None

    def sync_standby(self):
        for member in self.members():
            if member.get('role') == 'sync_standby':
                return member['name']
        return None

    def streaming_replicas(self, leader):
        """Names of the replicas streaming from leader, as the leader's pg_stat_replication says."""
        node = self.node(leader)
        try:
            conn = psycopg2.connect(host='127.0.0.1', port=node['pg_port'], user='postgres', password=self.password,
                                    dbname='postgres', connect_timeout=3)
        except psycopg2.Error:
            return []
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
                return sorted(row[0] for row in cur.fetchall())
        except psycopg2.Error:
            return []
        finally:
            conn.close()

    def healthy(self):
        """The leader's name when it runs, every other node streams from it, every member says it runs
        in /cluster, and (synchronous_mode) a sync standby exists."""
        leader = self.leader()
        if not leader:
            return None
        members = self.members()
        if len(members) != len(self.nodes) or any(m.get('state') not in ('running', 'streaming') for m in members):
            return None
        others = sorted(n['name'] for n in self.nodes if n['name'] != leader)
        if self.streaming_replicas(leader) != others:
            return None
        if self.synchronous_mode and len(self.nodes) > 1 and not self.sync_standby():
            return None
        return leader

    def wait_healthy(self, timeout=120):
        return self._wait(self.healthy, time.monotonic() + timeout, 'a leader and %d streaming replica(s)'
                          % (len(self.nodes) - 1))

    def switchover(self, candidate=None, timeout=60):
        """Planned switchover through the REST API (POST /switchover); returns (new leader, seconds).

        Without a candidate, the synchronous standby is chosen (in synchronous_mode Patroni only
        accepts a sync standby), else the first replica. Waits, bounded, until the candidate leads."""
        leader = self.leader()
        if not leader:
            raise RuntimeError('no leader to switch over from')
        candidate = candidate or self.sync_standby() or next(
            (m['name'] for m in self.members() if m['name'] != leader), None)
        if not candidate:
            raise RuntimeError('no replica to switch over to')
        started = time.monotonic()
        status, body = http_json(self.rest_url(leader) + '/switchover', 'POST',
                                 {'leader': leader, 'candidate': candidate}, timeout=timeout)
        if status != 200:
            raise RuntimeError('POST /switchover %s -> %s: HTTP %s %s' % (leader, candidate, status, body))
        self._wait(lambda: self.leader() == candidate, started + timeout, '%s to lead' % candidate, 0.2)
        return candidate, time.monotonic() - started

    # -- clients -------------------------------------------------------------------------------
    def dsn_params(self, db='postgres', user='postgres', password=None):
        """psycopg2.connect() keyword arguments over every node: libpq tries the hosts in order and
        keeps the first that accepts writes (target_session_attrs=read-write), i.e. the leader."""
        return dict(host=','.join('127.0.0.1' for _ in self.nodes),
                    port=','.join(str(n['pg_port']) for n in self.nodes),
                    dbname=db, user=user, password=self.password if password is None else password,
                    target_session_attrs='read-write', connect_timeout=3)

    def node_params(self, node, db='postgres'):
        """psycopg2.connect() keyword arguments for one node (read-only on a replica)."""
        return dict(host='127.0.0.1', port=self.node(node)['pg_port'], dbname=db, user='postgres',
                    password=self.password, connect_timeout=3)

    def query(self, sql, args=None, db='postgres', node=None):
        params = self.node_params(node, db) if node is not None else self.dsn_params(db)
        conn = psycopg2.connect(**params)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()
