"""A database laid out like the postgres role lays it out, for the point-in-time recovery tests
(tests/integration/module_utils/test_pitr_restore.py) and the PITR benchmark (bench/bench_pitr.py): a container of the
local PostgreSQL image with pgBackRest, its data in a named volume, the repository, pgBackRest's configuration (rendered
from the role's own template) and the log directory bind-mounted from the host, WAL archiving converged with pg_server's
code, a bot stand-in, and optionally a real S3 server (SeaweedFS, .cache/tools/weed from scripts/test-deps.sh) with a
self-signed certificate as the offsite repository.

    lab = PitrLab(tmp_path, archive_timeout='10s', s3=True).start()
    ...
    lab.remove()
"""

import json
import os
import shutil
import subprocess
import threading
import time
import uuid

import jinja2
import psycopg2
import yaml
from ansible.module_utils.soulnear import pgserver, pitr
from pgcluster import free_port
from pgcontainer import IMAGE, docker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(ROOT, 'roles', 'pitr', 'templates', 'pgbackrest.conf.j2')
ROLE_VARS = os.path.join(ROOT, 'roles', 'pitr', 'vars', 'main.yml')
WEED = os.path.join(ROOT, '.cache', 'tools', 'weed')
PASSWORD = 'pitr-test-superuser-secret'
DB = 'soul_bot'
STANZA = 'soulnear'
UID = 999
S3_KEY, S3_SECRET, CIPHER = 'pitrtestkey', 'pitr-test-s3-secret-key', 'pitr-test-cipher-passphrase-0123456789'


def render_config(**values):
    """pgbackrest.conf from roles/pitr/templates/pgbackrest.conf.j2 with the role's defaults and values."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters['comment'] = lambda text: '# ' + text
    env.filters['bool'] = lambda value: value in (True, 'true', 'yes', '1', 1)
    context = dict(ansible_managed='test', soulnear_pitr_repo_dir='(test)', pitr_s3_bucket='',
                   pitr_s3_path='/soulnear', pitr_s3_endpoint='', pitr_s3_port=443,
                   pitr_s3_region='us-east-1', pitr_s3_uri_style='path', pitr_s3_key='',
                   pitr_s3_key_secret='', pitr_s3_verify_tls=True, pitr_s3_ca='',
                   pitr_s3_cipher_type='aes-256-cbc', pitr_s3_cipher_pass='',
                   pitr_process_max=2, soulnear_pitr_stanza=STANZA, soulnear_db_superuser='postgres')
    context.update(values)
    with open(TEMPLATE) as handle:
        return env.from_string(handle.read()).render(**context)


def healthcheck(wake=True):
    """The database container's healthcheck as the postgres role sets it with WAL archiving on: pg_isready, then
    the checkpointer's wake-up after each start (the pitr role's, roles/pitr/vars/main.yml); wake=False: pg_isready
    alone, as before the fix, so a test can show what PostgreSQL does without it."""
    with open(ROLE_VARS) as handle:
        role_vars = yaml.safe_load(handle)
    probe = 'pg_isready -h 127.0.0.1 -U postgres -d postgres'
    return probe + ' || exit 1; ' + role_vars['__pitr_healthcheck_wake'] if wake else probe


def _own(path, mode=0o700):
    os.makedirs(path, exist_ok=True)
    os.chown(path, UID, UID)
    os.chmod(path, mode)


class S3Server:
    """SeaweedFS (`weed server -s3`) in a container on the lab's network, HTTPS with a self-signed certificate for
    its name, one access key, one bucket."""

    def __init__(self, work, network, name):
        self.name, self.network, self.work = name, network, work
        self.bucket = 'soulnear-offsite'
        os.makedirs(work, exist_ok=True)
        if not os.access(WEED, os.X_OK):
            raise RuntimeError('%s is missing: run scripts/test-deps.sh (make test does)' % WEED)

    def start(self):
        subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj',
                        '/CN=%s' % self.name, '-addext', 'subjectAltName=DNS:%s' % self.name,
                        '-keyout', os.path.join(self.work, 's3.key'), '-out', os.path.join(self.work, 's3.crt')],
                       check=True, capture_output=True)
        os.chmod(os.path.join(self.work, 's3.key'), 0o644)
        identities = dict(identities=[dict(name='pitr', credentials=[dict(accessKey=S3_KEY, secretKey=S3_SECRET)],
                                           actions=['Admin', 'Read', 'Write', 'List', 'Tagging'])])
        with open(os.path.join(self.work, 's3.json'), 'w') as handle:
            json.dump(identities, handle)
        docker('run', '-d', '--name', self.name, '--network', self.network, '-v', '%s:/w:ro' % self.work,
               '-v', '%s:/usr/local/bin/weed:ro' % WEED, 'soulnear/debian:bookworm', 'weed', 'server', '-dir=/tmp',
               '-ip=%s' % self.name, '-ip.bind=0.0.0.0', '-master.telemetry=false', '-volume.max=8',
               '-master.volumeSizeLimitMB=64', '-filer', '-s3', '-s3.port=8333', '-s3.port.https=8443',
               '-s3.cert.file=/w/s3.crt', '-s3.key.file=/w/s3.key', '-s3.config=/w/s3.json',
               '-s3.port.iceberg=0', '-s3.port.lance=0')
        deadline = time.time() + 90
        while True:
            made = docker('exec', self.name, 'sh', '-c', 'echo "s3.bucket.create -name %s" | weed shell '
                          '-master=localhost:9333' % self.bucket, check=False, timeout=60)
            if made.returncode == 0 and 'created bucket' in made.stdout + made.stderr:
                return self
            if time.time() > deadline:
                raise RuntimeError('SeaweedFS did not create the bucket: %s %s %s' % (
                    made.stdout, made.stderr, docker('logs', '--tail', '20', self.name, check=False).stderr))
            time.sleep(1)

    def config(self):
        with open(os.path.join(self.work, 's3.crt')) as handle:
            ca = handle.read()
        return dict(pitr_s3_bucket=self.bucket, pitr_s3_endpoint=self.name,
                    pitr_s3_port=8443, pitr_s3_uri_style='path', pitr_s3_key=S3_KEY,
                    pitr_s3_key_secret=S3_SECRET, pitr_s3_ca=ca, pitr_s3_cipher_pass=CIPHER)

    def remove(self):
        docker('rm', '-f', self.name, check=False)


def run_sql(kwargs, statement, args=None):
    """statement (autocommit) over a new connection of psycopg2.connect(**kwargs); its rows, or None."""
    conn = psycopg2.connect(**kwargs)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


class PitrLab:
    """The database container and what surrounds it on the host (see the module docstring)."""

    def __init__(self, tmp, archive_timeout='10s', s3=False, image=IMAGE, shm='256m', wake=True):
        self.tmp = str(tmp)
        self.name = 'soulnear-test-pitr-' + uuid.uuid4().hex[:6]
        self.network, self.volume, self.bot = self.name + '-net', self.name + '-data', self.name + '-bot'
        self.port = free_port()
        self.image, self.shm, self.archive_timeout, self.wake = image, shm, archive_timeout, wake
        self.repo_dir, self.config_dir, self.log_dir = (os.path.join(self.tmp, d)
                                                        for d in ('repo', 'pgbackrest', 'log'))
        self.guard_file = os.path.join(self.tmp, 'data-guard.json')
        self.s3 = S3Server(os.path.join(self.tmp, 's3'), self.network, self.name + '-s3') if s3 else None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self):
        docker('network', 'create', self.network)
        if self.s3:
            self.s3.start()
        for path in (self.repo_dir, self.config_dir, self.log_dir):
            _own(path)
        config = render_config(**(self.s3.config() if self.s3 else {}))
        with open(os.path.join(self.config_dir, 'pgbackrest.conf'), 'w') as handle:
            handle.write(config)
        os.chown(os.path.join(self.config_dir, 'pgbackrest.conf'), UID, UID)
        os.chmod(os.path.join(self.config_dir, 'pgbackrest.conf'), 0o600)
        if self.s3:
            with open(os.path.join(self.config_dir, 's3-ca.pem'), 'w') as handle:
                handle.write(self.s3.config()['pitr_s3_ca'])
        self.create_container()
        self.wait_ready()
        self.init_database()
        docker('run', '-d', '--init', '--name', self.bot, '--network', self.network, 'soulnear/debian:bookworm',
               'sleep', 'infinity')
        return self

    def init_database(self):
        """A new cluster as the deploy leaves it: WAL archiving converged (one restart) and the bot's database."""
        # The settings the postgres role converges (pg_server, ALTER SYSTEM), then the restart it reports.
        result = pgserver.converge(self.params('postgres'), settings=dict(
            archive_mode='on', archive_command='pgbackrest --stanza=%s archive-push %%p' % STANZA,
            archive_timeout=self.archive_timeout, logging_collector='on', log_directory='/var/log/postgresql',
            log_filename='postgresql.log'))
        assert 'archive_mode' in result['restart_required'], result
        docker('restart', '-t', '60', self.name)
        self.wait_ready()
        self.sql('CREATE DATABASE %s' % DB, db='postgres')
        self.sql('CREATE TABLE aiogram_states (key text PRIMARY KEY, state text); '
                 'CREATE TABLE schema_migrations (version text PRIMARY KEY); '
                 "INSERT INTO aiogram_states VALUES ('user:1', 'menu'); INSERT INTO schema_migrations VALUES ('001')")
        return self

    def create_container(self, start=True):
        """The database container as the postgres role runs it (restart policy, healthcheck, mounts, port)."""
        args = ['--name', self.name, '--network', self.network, '--restart', 'unless-stopped',
                '--shm-size', self.shm, '-e', 'POSTGRES_PASSWORD=' + PASSWORD,
                '-p', '127.0.0.1:%d:5432' % self.port,
                '--health-cmd', healthcheck(self.wake), '--health-interval', '2s',
                '--stop-timeout', '60']
        self.run_container(args, start)

    def run_container(self, args, start=True, mounts=()):
        """docker run (docker create when not start) of the database container: args, then its mounts - the data
        volume, mounts (--mount values), pgBackRest's repository and configuration, the log directory - and the
        image."""
        args = list(args) + ['--mount', 'type=volume,source=%s,target=/var/lib/postgresql/data' % self.volume]
        for mount in mounts:
            args += ['--mount', mount]
        args += ['--mount', 'type=bind,source=%s,target=/var/lib/pgbackrest' % self.repo_dir,
                 '--mount', 'type=bind,source=%s,target=/etc/pgbackrest,readonly' % self.config_dir,
                 '--mount', 'type=bind,source=%s,target=/var/log/postgresql' % self.log_dir, self.image]
        docker('run' if start else 'create', *(['-d'] if start else []), *args)

    def lose_the_host(self):
        """The database container AND its volume removed (a lost disk); returns when they are gone."""
        docker('rm', '-f', '-v', self.name)
        docker('volume', 'rm', '-f', self.volume)

    def restart(self, timeout=120):
        """docker restart of the database container (a clean stop and start, as after a host reboot or a monitor
        restart); returns once it answers and its healthcheck has passed once since the start."""
        docker('restart', '-t', '60', self.name)
        self.wait_ready(timeout)
        deadline = time.time() + timeout
        while docker('inspect', '--format', '{{.State.Health.Status}}', self.name).stdout.strip() != 'healthy':
            assert time.time() < deadline, 'the database container did not become healthy after its restart'
            time.sleep(0.5)

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while True:
            try:
                conn = psycopg2.connect(**self._kwargs('postgres'))
                conn.close()
                return
            except psycopg2.Error as exc:
                if time.time() > deadline:
                    raise RuntimeError('the database did not answer: %s %s' % (exc, docker(
                        'logs', '--tail', '30', self.name, check=False).stderr)) from None
                time.sleep(0.5)

    def remove(self):
        for name in (self.name, self.bot):
            docker('rm', '-f', '-v', name, check=False)
        volumes = docker('volume', 'ls', '-q', '--filter', 'name=' + self.volume, check=False).stdout.split()
        for volume in volumes:
            docker('volume', 'rm', '-f', volume, check=False)
        if self.s3:
            self.s3.remove()
        docker('network', 'rm', self.network, check=False)
        # The repository and the logs belong to uid 999: remove them as root here.
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- database ----------------------------------------------------------------------------------------------
    def _kwargs(self, db):
        return dict(host='127.0.0.1', port=self.port, user='postgres', password=PASSWORD, dbname=db,
                    connect_timeout=5)

    def params(self, db=DB):
        return dict(login_host='127.0.0.1', login_port=self.port, login_user='postgres', login_password=PASSWORD,
                    login_db=db, connect_timeout=5, retries=3)

    def sql(self, statement, args=None, db=DB):
        return run_sql(self._kwargs(db), statement, args)

    def settings(self, **options):
        options.setdefault('container', self.name)
        options.setdefault('stanza', STANZA)
        options.setdefault('repo_dir', self.repo_dir)
        options.setdefault('bot_container', self.bot)
        options.setdefault('data_guard_file', self.guard_file)
        options.setdefault('recovery_timeout', 300)
        options.setdefault('bot_healthy_timeout', 30)
        return pitr.make_settings(self.params(), **options)

    def volumes(self):
        return sorted(docker('volume', 'ls', '-q', '--filter', 'name=' + self.volume).stdout.split())


class Writer(threading.Thread):
    """Commits one row at a time into table (created first) at about rate rows a second and remembers, per id, when
    it was sent and when its COMMIT returned (time.time(), the host's clock, which the container shares)."""

    def __init__(self, lab, table='pitr_writes', rate=50):
        threading.Thread.__init__(self, daemon=True)
        self.lab, self.table, self.rate = lab, table, rate
        self.acked = []  # (id, sent, acked)
        self.errors = []
        self.stopping = threading.Event()
        lab.sql('CREATE TABLE IF NOT EXISTS %s (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT '
                'clock_timestamp())' % table)

    def run(self):
        conn, next_id = None, 1
        while not self.stopping.is_set():
            started = time.time()
            try:
                if conn is None:
                    conn = psycopg2.connect(**self.lab._kwargs(DB))
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute('INSERT INTO %s (id) VALUES (%%s)' % self.table, (next_id,))
                self.acked.append((next_id, started, time.time()))
                next_id += 1
            except psycopg2.Error as exc:
                self.errors.append(str(exc).strip())
                next_id += 1  # a lost answer may still have committed: never reuse the id
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
                continue
            time.sleep(max(0.0, 1.0 / self.rate - (time.time() - started)))
        if conn is not None:
            conn.close()

    def stop(self):
        self.stopping.set()
        self.join(30)

    def present(self):
        return set(row[0] for row in self.lab.sql('SELECT id FROM %s' % self.table))
