"""A throwaway, real PostgreSQL cluster built with the installed server binaries.

initdb refuses to run as root, so when the tests run as root the cluster is
created and started as the `postgres` system user (override with
SOULNEAR_TEST_PG_USER). The binaries are those of the PostgreSQL major version the project deploys
(postgres_major_version of the postgres role, SOULNEAR_TEST_PG_MAJOR overrides it), not whichever is newest
on this machine: /usr/lib/postgresql/<major>/bin, or SOULNEAR_TEST_PG_BIN.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import yaml
from pgclient import ServerClient

SUPERUSER = 'postgres'
SUPERUSER_PASSWORD = 'test-superuser-secret'
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def intended_major():
    """The major version the tests intend: the one the postgres role deploys by default."""
    explicit = os.environ.get('SOULNEAR_TEST_PG_MAJOR')
    if explicit:
        return str(explicit)
    with open(os.path.join(ROOT, 'roles', 'postgres', 'defaults', 'main.yml')) as handle:
        return str(yaml.safe_load(handle)['postgres_major_version'])


def pg_bindir():
    explicit = os.environ.get('SOULNEAR_TEST_PG_BIN')
    if explicit:
        return explicit
    major = intended_major()
    path = '/usr/lib/postgresql/%s/bin' % major
    if not os.path.exists(os.path.join(path, 'initdb')):
        raise RuntimeError('no PostgreSQL %s server binaries in %s (the version the project deploys: '
                           'postgres_major_version); install them (apt-get install postgresql-%s), or point '
                           'SOULNEAR_TEST_PG_BIN at another bin directory' % (major, path, major))
    return path


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Cluster(ServerClient):
    """initdb + pg_ctl around a temporary directory."""

    def __init__(self, settings=None, standby=False):
        self.bindir = pg_bindir()
        self.port = free_port()
        self.host = '127.0.0.1'
        self.settings = dict(settings or {})
        self.standby = standby
        self.run_as = None
        if os.geteuid() == 0:
            self.run_as = os.environ.get('SOULNEAR_TEST_PG_USER', 'postgres')
        self.root = tempfile.mkdtemp(prefix='soulnear-pg-')
        self.datadir = os.path.join(self.root, 'data')
        self.sockdir = os.path.join(self.root, 'sock')
        self.logfile = os.path.join(self.root, 'server.log')
        os.mkdir(self.sockdir)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            for path in (self.root, self.sockdir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o755)

    # -- process helpers -------------------------------------------------
    def _cmd(self, args, check=True, **kwargs):
        if self.run_as:
            args = ['runuser', '-u', self.run_as, '--'] + args
        return subprocess.run(args, check=check, capture_output=True, text=True, **kwargs)

    def bin(self, name):
        return os.path.join(self.bindir, name)

    def init(self):
        pwfile = os.path.join(self.root, 'pwfile')
        with open(pwfile, 'w') as fh:
            fh.write(SUPERUSER_PASSWORD + '\n')
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._cmd([self.bin('initdb'), '-D', self.datadir, '-U', SUPERUSER, '--pwfile', pwfile,
                   '--auth-local=trust', '--auth-host=scram-sha-256', '-E', 'UTF8',
                   '--locale=C', '--no-sync'])
        os.unlink(pwfile)
        conf = dict(listen_addresses="'127.0.0.1'", port=str(self.port),
                    unix_socket_directories="'%s'" % self.sockdir, fsync='off',
                    synchronous_commit='off', full_page_writes='off', max_connections='60',
                    logging_collector='off', log_min_messages='warning')
        conf.update(self.settings)
        with open(os.path.join(self.datadir, 'postgresql.auto.conf'), 'a') as fh:
            for key, value in conf.items():
                fh.write('%s = %s\n' % (key, value))
        if self.standby:
            # A standby with hot_standby=off refuses every connection with 57P03
            # "the database system is not accepting connections" until promoted.
            open(os.path.join(self.datadir, 'standby.signal'), 'w').close()
            with open(os.path.join(self.datadir, 'postgresql.auto.conf'), 'a') as fh:
                fh.write('hot_standby = off\n')
            if self.run_as:
                pw = pwd.getpwnam(self.run_as)
                os.chown(os.path.join(self.datadir, 'standby.signal'), pw.pw_uid, pw.pw_gid)
        return self

    def start(self, wait=True):
        args = [self.bin('pg_ctl'), '-D', self.datadir, '-l', self.logfile, '-s', 'start']
        args += ['-w', '-t', '60'] if wait else ['-W']
        self._cmd(args)
        return self

    def stop(self, mode='fast'):
        self._cmd([self.bin('pg_ctl'), '-D', self.datadir, '-m', mode, '-s', 'stop'], check=False)

    def promote(self):
        self._cmd([self.bin('pg_ctl'), '-D', self.datadir, '-w', '-s', 'promote'])

    def destroy(self):
        self.stop('immediate')
        shutil.rmtree(self.root, ignore_errors=True)

    # -- client helpers --------------------------------------------------
    def params(self, db='postgres', user=SUPERUSER, password=SUPERUSER_PASSWORD):
        """Module-style connection parameters (the names our modules take)."""
        return dict(login_host=self.host, login_port=self.port, login_user=user,
                    login_password=password, login_db=db, connect_timeout=5)
