"""A bot deployment on the local Docker engine for safe_redeploy's tests and benchmark: a private network, a
PostgreSQL container on it with the bot's role and database, an env file, and bot versions built from
examples/bot copied into a temporary directory with small edits (a patched file, an extra migration).

Each version is a release directory <releases>/<version> (the copied source) and an image <image_name>:<version>,
as the app role ships them. Everything is named after a random prefix and removed by close().
"""

import os
import shutil
import subprocess
import uuid

from pgcontainer import PgContainer, docker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOT_SOURCE = os.path.join(ROOT, 'examples', 'bot')
BASE_IMAGE = os.environ.get('SOULNEAR_TEST_BOT_BASE_IMAGE', 'soulnear/python:3-bookworm')
APP_USER = 'soulnear'
APP_PASSWORD = 'test-app-secret'
DB = 'soul_bot'

# Small edits that make a broken version of the example bot.
CRASH_AT_START = ('bot/__main__.py', 'raise RuntimeError("v3 cannot start: simulated crash at start")\n')
NEVER_HEALTHY = ('bot/health.py', lambda text: text.replace("return (200 if body['status'] == 'ok' else 503), body",
                                                            'return 503, body'))
LOGS_AN_ERROR = ('bot/worker.py', lambda text: text.replace(
    "        self.next_update_id += 1\n",
    "        self.next_update_id += 1\n        log.error('Traceback (most recent call last): simulated')\n", 1))


class RedeployEnv:
    def __init__(self, workdir, health_interval=None):
        self.prefix = 'snrt-' + uuid.uuid4().hex[:8]
        self.workdir = str(workdir)
        self.network = self.prefix + '_net'
        self.bot = self.prefix + '_bot'
        self.image_name = self.prefix + '/bot'
        self.releases = os.path.join(self.workdir, 'app', 'releases')
        self.current = os.path.join(self.workdir, 'app', 'current')
        self.backups = os.path.join(self.workdir, 'backups')
        self.audit_log = os.path.join(self.workdir, 'log', 'audit.log')
        self.env_file = os.path.join(self.workdir, 'app.env')
        self.health_interval = health_interval
        self.pg = None
        os.makedirs(self.releases)

    def start(self):
        docker('network', 'create', self.network)
        # /dev/shm as the postgres role sets it (postgres_shm_size 256m): Docker's 64 MB fails a large VACUUM
        self.pg = PgContainer(name=self.prefix + '_postgres',
                              extra_args=['--network', self.network, '--shm-size', '256m']).start()
        self.pg.query("CREATE ROLE %s LOGIN PASSWORD '%s'" % (APP_USER, APP_PASSWORD))
        self.pg.query('CREATE DATABASE %s OWNER %s' % (DB, APP_USER))
        self.write_env()
        return self

    def write_env(self, **extra):
        lines = ['# test env file', 'POSTGRES_HOST=%s' % self.pg.name, 'POSTGRES_PORT=5432',
                 'POSTGRES_USER=%s' % APP_USER, 'POSTGRES_PASSWORD=%s' % APP_PASSWORD, 'POSTGRES_DB=%s' % DB]
        lines += ['%s=%s' % item for item in sorted(extra.items())]
        with open(self.env_file, 'w') as handle:
            handle.write('\n'.join(lines) + '\n')
        os.chmod(self.env_file, 0o600)

    def close(self):
        for name in (self.bot, self.bot + '-previous', self.bot + '-next'):
            docker('rm', '-f', '-v', name, check=False)
        if self.pg is not None:
            self.pg.remove()
        images = docker('images', '--format', '{{.Repository}}:{{.Tag}}', self.image_name, check=False).stdout.split()
        if images:
            docker('rmi', '-f', *images, check=False)
        docker('network', 'rm', self.network, check=False)

    # -- versions --------------------------------------------------------------------------------
    def version(self, version, edits=(), migrations=None):
        """Release <version> (examples/bot with edits: (path, text or function of the old text)) and its image."""
        release = os.path.join(self.releases, version)
        shutil.copytree(BOT_SOURCE, release, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        for path, change in edits:
            full = os.path.join(release, path)
            old = open(full).read() if os.path.exists(full) else ''
            new = change(old) if callable(change) else change
            assert new != old, 'edit of %s changed nothing' % path
            with open(full, 'w') as handle:
                handle.write(new)
        for name, sql in (migrations or {}).items():
            with open(os.path.join(release, 'database', 'migrations', name), 'w') as handle:
                handle.write(sql)
        if self.health_interval:
            dockerfile = os.path.join(release, 'Dockerfile')
            text = open(dockerfile).read()
            with open(dockerfile, 'w') as handle:
                handle.write(text.replace('--interval=10s', '--interval=%s' % self.health_interval))
        with open(os.path.join(release, '.soulnear-source-hash'), 'w') as handle:
            handle.write(version + '\n')
        proc = subprocess.run(['docker', 'build', '-q', '--network', 'host', '--build-arg', 'BASE_IMAGE=' + BASE_IMAGE,
                               '-t', '%s:%s' % (self.image_name, version), release],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return '%s:%s' % (self.image_name, version)

    # -- what the module gets ----------------------------------------------------------------------
    def params(self, **overrides):
        params = dict(
            login_host='127.0.0.1', login_port=self.pg.port, login_user=APP_USER, login_password=APP_PASSWORD,
            login_db=DB, connect_timeout=5, retries=1,
            name=self.bot, image_name=self.image_name, releases_dir=self.releases, current_link=self.current,
            env_file=self.env_file, network=self.network, db_container=self.pg.name,
            labels={'soulnear.component': 'bot', 'soulnear.deployment': self.prefix},
            backup_dir=self.backups, backup_login_user='postgres', backup_login_password=self.pg.password,
            audit_log=self.audit_log, audit_who='pytest@controller', healthy_timeout=90, settle_seconds=2)
        params.update(overrides)
        return params

    def deploy_params(self, version, **overrides):
        return self.params(image='%s:%s' % (self.image_name, version), version=version, **overrides)

    # -- looking at it -------------------------------------------------------------------------------
    def container(self, name=None):
        proc = docker('inspect', '--format', '{{.Config.Labels}}|{{.State.Status}}|{{if .State.Health}}'
                      '{{.State.Health.Status}}{{end}}|{{index .Config.Labels "soulnear.version"}}|{{.Id}}',
                      name or self.bot, check=False)
        if proc.returncode != 0:
            return None
        _, status, health, version, cid = proc.stdout.strip().split('|')
        return dict(status=status, health=health, version=version, id=cid)

    def running_bots(self):
        return docker('ps', '--filter', 'label=soulnear.deployment=' + self.prefix, '--format',
                      '{{.Names}}').stdout.split()

    def applied(self):
        rows = self.pg.query('SELECT name FROM schema_migrations WHERE success ORDER BY name', db=DB)
        return [row[0] for row in rows]

    def logs(self, name=None):
        proc = docker('logs', name or self.bot, check=False)
        return proc.stdout + proc.stderr
