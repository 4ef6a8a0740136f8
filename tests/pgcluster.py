"""A throwaway, real PostgreSQL cluster built with the installed server binaries.

initdb refuses to run as root, so when the tests run as root the cluster is
created and started as the `postgres` system user (override with
SOULNEAR_TEST_PG_USER). The binaries come from SOULNEAR_TEST_PG_BIN, or the
newest /usr/lib/postgresql/*/bin.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile


from pgclient import ServerClient

SUPERUSER = 'postgres'
SUPERUSER_PASSWORD = 'test-superuser-secret'


def pg_bindir():
    explicit = os.environ.get('SOULNEAR_TEST_PG_BIN')
    if explicit:
        return explicit
    candidates = sorted(glob.glob('/usr/lib/postgresql/*/bin'),
                        key=lambda p: int(p.split('/')[-2]))
    if not candidates:
        raise RuntimeError('no PostgreSQL server binaries found under /usr/lib/postgresql; '
                           'install postgresql (apt-get install postgresql) or set SOULNEAR_TEST_PG_BIN')
    return candidates[-1]


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
