# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL's tools for backup and restore, and the connections backup and restore open.

Where the tools run:
- the database container of the deployment (`docker exec`): the client is the server's own version;
- a database the deployment does not own (soulnear_db_mode external: a managed service, a Patroni cluster, the
  database host of a two-host deployment), with settings['client_image'] set: a throwaway client container of that
  image on the host's network (`docker run --rm --network host`), reaching the server over TCP with the
  connection's TLS settings (PGSSLMODE, PGSSLROOTCERT, the CA file mounted read-only). The image's pg_dump must be of
  the server's major version or newer; pg_dump refuses an older one, and the message says which image to use.
Archives stream between the host and the tool through a pipe either way. The password travels by environment
variable name only (containers.exec_argv / run_argv), so it never shows in a process list.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import subprocess
import tempfile
import time

from .backup_files import BackupError
from .containers import DockerError, container_state, exec_argv, exec_env, image_exists, run_argv
from .pg import ConnectError, connect, psycopg2

if psycopg2 is not None:
    from psycopg2 import sql as pgsql
else:  # pragma: no cover - connect() reports the missing library
    pgsql = None


def connect_to(settings, db=None):
    """A connection (autocommit) as the settings' login to db (default: the settings' database)."""
    params = dict(settings['conn'])
    if db is not None:
        params['login_db'] = db
    try:
        return connect(params, application_name='soulnear-backup')
    except ConnectError as exc:
        raise BackupError(str(exc)) from None


def query(conn, statement, args=None):
    """Run one statement; its rows, or None when it returns none."""
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return cur.fetchall() if cur.description else None


def may_create_databases(conn):
    """True when the connection's login makes databases (superuser or CREATEDB): the database host's, not a bot
    host's app role."""
    return bool(query(conn, 'SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user')[0][0])


def drop_database(conn, name):
    """Terminate the sessions of database name and drop it (gone already is fine)."""
    query(conn, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s '
                'AND pid <> pg_backend_pid()', (name,))
    query(conn, pgsql.SQL('DROP DATABASE IF EXISTS {}').format(pgsql.Identifier(name)))


def tool_env(settings):
    """Environment for the tools: the password travels by variable name only (exec_argv/run_argv). A client
    container also gets the server's address and the TLS settings; the database container reaches its own server."""
    conn = settings['conn']
    password = conn.get('login_password')
    env = {'PGPASSWORD': password} if password else {}
    if settings.get('client_image'):
        env.update(PGHOST=conn.get('login_host') or '127.0.0.1', PGPORT=str(conn.get('login_port') or 5432),
                   PGSSLMODE=conn.get('ssl_mode') or 'prefer', PGCONNECT_TIMEOUT=str(conn.get('connect_timeout') or 10))
        if conn.get('ca_cert'):
            env['PGSSLROOTCERT'] = conn['ca_cert']
        if ',' in env['PGHOST']:  # the members of a cluster: the tools follow the primary, as connect() does
            env['PGTARGETSESSIONATTRS'] = 'read-write'
    return env


def tool_command(settings, argv, env, interactive=False):
    """The command line that runs a PostgreSQL tool (argv) where this deployment runs them (module docstring)."""
    if settings.get('client_image'):
        mounts = [settings['conn']['ca_cert']] if settings['conn'].get('ca_cert') else []
        return run_argv(settings['client_image'], argv, env=env, mounts=mounts, interactive=interactive)
    return exec_argv(settings['container'], argv, user=settings['exec_user'], env=env, interactive=interactive)


def tools_where(settings):
    """Where the tools run, for messages."""
    if settings.get('client_image'):
        return 'a client container of %s' % settings['client_image']
    return 'container %s' % settings['container']


def owns_server(settings):
    """True when the database server runs in this deployment's container (not an external endpoint)."""
    return not settings.get('client_image')


def tool_argv(tool, settings, db, *extra):
    return [tool, '--no-password', '--username', settings['conn'].get('login_user') or 'postgres',
            '--dbname', db] + list(extra)


def stderr_tail(handle, limit=2000):
    """The end of a tool's stderr, captured in a temporary file."""
    handle.seek(0)
    text = handle.read().decode('utf-8', 'replace').strip()
    return text[-limit:]


def require_tools(settings):
    """The tools can run: the database container is running, or the client image is on this host."""
    if settings.get('client_image'):
        try:
            present = image_exists(settings['client_image'])
        except DockerError as exc:
            raise BackupError(str(exc)) from None
        if not present:
            raise BackupError('the client image %s (pg_dump and pg_restore for the external database) is not on this '
                              'host; run ansible-playbook deploy.yml --tags postgres, or set soulnear_db_client_image '
                              'to an image with the server\'s PostgreSQL major version' % settings['client_image'])
        return None
    return require_container(settings['container'])


def require_container(name):
    try:
        state = container_state(name)
    except DockerError as exc:
        raise BackupError(str(exc)) from None
    if not state['running']:
        raise BackupError('the database container %s is %s; pg_dump and pg_restore run inside it. Start it '
                          '(docker start %s, or ansible-playbook deploy.yml --tags postgres) and run again'
                          % (name, state['status'], name))
    return state


def feed_archive(settings, argv, path, env=None, capture=False):
    """Run a tool (argv, see tool_command) with the archive at path (on the host) on its stdin.

    Returns (exit code, stdout bytes when capture else None, the end of stderr when it failed)."""
    with open(path, 'rb') as stdin, tempfile.TemporaryFile() as err:
        cmd = tool_command(settings, argv, env, interactive=True)
        proc = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                              stderr=err, env=exec_env(env), check=False)
        failure = (stderr_tail(err) or 'exit %d' % proc.returncode) if proc.returncode else ''
        return proc.returncode, proc.stdout, failure


_COPY = re.compile(r'^COPY (\S+) .*FROM stdin;$')


def first_data_row(settings, path, skip=(), timeout=600):
    """The first table of the dump at path whose data has a row (pg_restore --data-only streamed, stopped there),
    ignoring the tables named in skip (bare or schema-qualified names); None when no table has one. Reads only
    until that row, so a dump with data answers in a moment whatever its size."""
    skip = set(skip)
    with open(path, 'rb') as stdin:
        cmd = tool_command(settings, ['pg_restore', '--data-only', '--file=-'], None, interactive=True)
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=exec_env(None))
        deadline = time.time() + timeout
        table, found = None, None
        try:
            for raw in proc.stdout:
                line = raw.decode('utf-8', 'replace').rstrip('\n')
                if table is None:
                    match = _COPY.match(line)
                    if match:
                        name = match.group(1).replace('"', '')
                        table = None if name in skip or name.split('.')[-1] in skip else name
                        if table is None:
                            table = ''  # inside a skipped table's data
                elif line == '\\.':
                    table = None
                elif table:
                    found = table
                    break
                if time.time() > deadline:
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return found


def read_toc(settings, path):
    """`pg_restore --list` of a dump on the host, run in the database container: (entries, the database the archive
    was dumped from). Raises when the archive is unreadable."""
    code, out, err = feed_archive(settings, ['pg_restore', '--list'], path, capture=True)
    if code != 0:
        raise BackupError('%s is not a readable PostgreSQL custom-format archive: pg_restore --list says: %s. '
                          'Do not restore it; use another backup' % (path, err))
    lines = out.decode('utf-8', 'replace').splitlines()
    database = None
    for line in lines:
        match = re.match(r'^;\s+dbname:\s*(.*)$', line, re.I)
        if match:
            database = match.group(1).strip() or None
            break
    return [line for line in lines if line and not line.startswith(';')], database


def archive_toc(settings, path):
    """The entries of `pg_restore --list` (see read_toc)."""
    return read_toc(settings, path)[0]


def verify_full(settings, path):
    """Read and decompress the whole archive (pg_restore to /dev/null): catches corrupt data blocks too."""
    code, _out, err = feed_archive(settings, ['pg_restore', '--file=/dev/null'], path)
    if code != 0:
        raise BackupError('%s cannot be read completely: pg_restore says: %s. Do not restore it; use another '
                          'backup' % (path, err))


def toc_tables(toc):
    """'schema table' of every TABLE DATA entry of a `pg_restore --list` (the owner, last, left out)."""
    tables = []
    for line in toc:
        match = re.match(r'^\d+; \d+ \d+ TABLE DATA (.+) \S+$', line)
        if match:
            tables.append(match.group(1))
    return tables
