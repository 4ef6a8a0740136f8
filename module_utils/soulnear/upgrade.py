# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A major upgrade of the database container's PostgreSQL (15 -> 17) that loses no row (issue 24, part 3).

upgrade() - what `make upgrade-postgres VERSION=17 CONFIRM=soul_bot` runs through the pg_upgrade module. The route is
dump/restore: pg_dumpall --globals-only and pg_dump of every database with the NEW version's client, against the old
server, restored into a new cluster of the new version in a NEW volume. The old volume, the old container and the old
image are kept untouched until `make upgrade-postgres-confirm`.

1. preflight, nothing changed when it fails: the confirmation, the versions (the running server, the volume's
   PG_VERSION, the new image's `postgres --version`; a version this code does not know is refused), free disk for
   the copy (the data directory x space_margin) and for the logical backup, extensions available in the new image,
   settings (the role's and every ALTER SYSTEM one of the old cluster) known to the new version, libraries of
   shared_preload_libraries, no tablespace, prepared transaction or replication slot that a dump cannot carry, the
   data-loss guard's flag down, the pgBackRest stanza this cluster's.
2. staging: the new cluster is initialised by the new image's entrypoint in a new volume, in a container that listens
   on 127.0.0.1 only, and gets the settings by ALTER SYSTEM (a value the new version refuses fails here); all while
   the bot still serves.
3. backups: a verified logical dump of the bot's database (pre_upgrade_pg<to>_<time>.dump) and a fresh physical
   backup (pgBackRest) - the old cluster's last point of return.
4. stop: the bot stops, then the old server (cleanly: it archives its last WAL). From here writes are refused:
   a dump taken while something writes would miss those writes, so nothing can write while it runs.
5. source: the old cluster starts again in a throwaway container of its own image, in the new cluster's network
   namespace, listening on 127.0.0.1:5433 only (no published port, not reachable under the database's name): only
   the dump reaches it.
6. copy: the globals (roles with their password verifiers, memberships, settings) and every database (pg_dump -Fc
   | pg_restore --create in the new cluster's container: the new version's tools, one pipe, nothing on disk).
7. verify: the exact row count of every table on both sides; any difference stops the upgrade before the switch.
8. baseline: the new cluster's write counters and schema fingerprint, read before anything else can write to it -
   a rollback compares against them (writes made on the new version are not silently thrown away).
9. close, swap: both helper containers stop; the volumes change places by two renames of their _data directories
   on the host (the old data to <volume>__pre_upgrade_pg<from>_<time>, the new one into the database's volume).
10. stanza: pgBackRest's stanza follows the new cluster (`stanza-upgrade --no-online`, before it starts, so WAL
    archiving never fails); the old backups stay in the repository as prior history.
11. container: the old container is renamed <container>__pre_upgrade_pg<from> (restart policy no) and a new one
    is created from its configuration with the new image - same name, volume, mounts, ports, network, healthcheck,
    labels - and started. The postgres role converges it afterwards like on any deploy.
12. guard, bot, analyze, pitr: the data-loss guard records the new cluster (only this path accepts it: the record
    must be the cluster upgraded from), the bot starts and must become healthy (the downtime ends), vacuumdb
    --all --analyze-in-stages gives the planner its statistics (a dump carries none; the first stage takes a moment,
    the bot serves meanwhile), and pgBackRest takes the new cluster's first full backup on every repository and
    checks that WAL reaches them.

Safety: every step is recorded in the state file (state_file, JSON, 0600); a run killed anywhere resumes when run
again (before the swap: the attempt is cleaned away and started over; from the swap on: the remaining steps, each
idempotent). A failure before the swap leaves the live data as it was (helpers and the new volume removed, the old
server and the bot started again). A failure after the swap and before the new server took any write puts the old
data and container back; once it answers, nothing is put back automatically - the message says how to resume or
roll back.

rollback() - `make upgrade-postgres-rollback`, while the upgrade is not confirmed: the old volume, container and
image come back (the new data is kept as <volume>__rolled_back_pg<to>_<time>). Writes made on the new version since
the switch are NOT in the old data: when the new cluster took any (the write counters or the schema moved since
the baseline, or they cannot be compared after a crash), the rollback is refused unless confirm_loss names the
database - and then it first dumps every database that changed into the backups directory
(rolled_back_pg<to>_<db>_<time>.dump), so what is given up is named and kept.

confirm() - `make upgrade-postgres-confirm`: drops the old volume and the old container (the old image stays).

status() - read-only: the data volume's PostgreSQL version and the state; with expect_version (the inventory's
postgres_major_version) it refuses a deploy that would start another version's server on the data.

Nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import datetime
import json
import os
import re
import socket
import subprocess
import time

from . import containers, guard, pitr
from .files import disk_usage, human, lock, write_private
from .pg import ConnectError, connect, psycopg2
from .pitr_runner import HELPER_MOUNTS

PGDATA = '/var/lib/postgresql/data'
SOCKET_DIR = '/var/run/postgresql'
# The old cluster, started privately for the dump, shares the new cluster's network namespace and listens on
# 127.0.0.1 at this port: the dump and the restore run in one process pipe inside the new cluster's container.
SOURCE_PORT = 5433
# Major versions this code upgrades to. A newer one needs its own look at what changed (removed settings, the dump
# format, pgBackRest's support) before it is added here.
KNOWN_TARGETS = (16, 17)
OLDEST_SOURCE = 13
ROUTES = ('auto', 'dump')
# Settings PostgreSQL removed after 15, with what replaces them (the preflight names them; the probe of the new
# image catches any other unknown name).
REMOVED_SETTINGS = dict(
    vacuum_defer_cleanup_age='removed in 16: use hot_standby_feedback or a replication slot',
    promote_trigger_file='removed in 16: promote with pg_ctl promote or pg_promote()',
    force_parallel_mode='renamed debug_parallel_query in 16',
    db_user_namespace='removed in 17',
    old_snapshot_threshold='removed in 17',
    trace_recovery_messages='removed in 17',
)
# Phases of the state file.
COPYING, SWITCHING, SWITCHED, UPGRADED, CONFIRMED, ROLLED_BACK = (
    'copying', 'switching', 'switched', 'upgraded', 'confirmed', 'rolled back')
ACTIVE = (COPYING, SWITCHING, SWITCHED)

DEFAULTS = dict(
    container='soulnear_postgres',
    volume='',
    image='',
    to_version=None,
    route='auto',
    state_file='/var/lib/soulnear/postgres-upgrade.json',
    backup_dir='/var/backups/soulnear',
    logical_backup=True,
    physical_backup='diff',
    bot_container='',
    bot_stop_timeout=30,
    bot_healthy_timeout=120,
    db_stop_timeout=60,
    start_timeout=300,
    space_margin=1.2,
    pitr=True,
    stanza='soulnear',
    repo_dir='',
    data_guard_file='',
    required_tables=(),
    settings=None,
    verify='counts',
    exec_user='postgres',
    retention_full=2,
    retention_diff=7,
)


class UpgradeError(Exception):
    """A failure meant for the operator: the message names the cause and the fix. result: what was done."""

    def __init__(self, message, result=None):
        Exception.__init__(self, message)
        self.result = result or {}


FAILURES = (UpgradeError, ConnectError, containers.DockerError, OSError, subprocess.SubprocessError) + \
    pitr.FAILURES + ((psycopg2.Error,) if psycopg2 is not None else ())


def describe_failure(exc):
    if isinstance(exc, UpgradeError):
        return str(exc)
    return pitr.describe_failure(exc)


def null_log(_message):
    pass


def make_settings(conn=None, **options):
    """DEFAULTS overridden by options, plus the superuser's connection parameters (module style): the database
    the bot uses is conn['login_db']."""
    settings = dict(DEFAULTS)
    settings.update((k, v) for k, v in options.items() if v is not None)
    settings['conn'] = dict(conn or {})
    settings['settings'] = dict(settings['settings'] or {})
    return settings


@contextlib.contextmanager
def _operation_lock(path):
    """One upgrade, rollback or confirm at a time on this host (next to the state file)."""
    handle = lock(path + '.lock')
    if handle is None:
        raise UpgradeError('another upgrade, rollback or confirm runs on this host (%s.lock is held); wait for it'
                           % path)
    try:
        yield
    finally:
        handle.close()


def _stamp():
    return datetime.datetime.now().strftime('%Y%m%d_%H%M%S')


def _now_text():
    return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


# -- docker and the data directories -------------------------------------------------------------------------

def _docker(args, timeout=120, check=True, input_bytes=None):
    return containers.run(args, timeout=timeout, check=check, input_bytes=input_bytes)


def _volume_dir(volume):
    """The volume's _data directory on the host (it may be missing while the upgrade moves it), or None when Docker
    does not know the volume."""
    return containers.volume_mountpoint(volume) if volume else None


def _pg_version_of(directory):
    """PG_VERSION of a data directory as an int; None when there is none (missing, empty, not a cluster)."""
    try:
        with open(os.path.join(directory, 'PG_VERSION')) as handle:
            return int(handle.read().strip().split('.')[0])
    except (OSError, TypeError, ValueError):
        return None


def _dir_size(directory):
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _create_volume(name, component='database-data'):
    _docker(['volume', 'create', '--label', 'soulnear.component=%s' % component, name])
    return _volume_dir(name)


def _remove_volume(name):
    path = _volume_dir(name)
    if path is None:
        return
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700)  # Docker removes the directory it made: put it back for it
    _docker(['volume', 'rm', '-f', name], check=False)


def _volume_exists(name):
    return _volume_dir(name) is not None


def _remove_container(name):
    _docker(['rm', '-f', name], check=False, timeout=120)


def _image_info(image):
    proc = _docker(['image', 'inspect', image], check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.decode('utf-8'))[0]


def _exec(container, argv, env=None, input_bytes=None, timeout=600, user='postgres'):
    """(rc, stdout text, stderr text) of argv in container (as the server's user)."""
    rc, out, err = containers.exec_run(container, argv, user=user, env=env, input_bytes=input_bytes,
                                       timeout=timeout)
    return rc, out.decode('utf-8', 'replace'), err.decode('utf-8', 'replace')


def _tail(text, limit=800):
    text = ' '.join((text or '').split())
    return text[-limit:] or 'no output'


def _logs_tail(container, lines=20):
    proc = _docker(['logs', '--tail', str(lines), container], check=False, timeout=30)
    return _tail((proc.stdout + proc.stderr).decode('utf-8', 'replace'), 1200)


# -- PostgreSQL inside the helper containers --------------------------------------------------------------------

def _psql(container, sql, db, user, env=None, timeout=600, input_bytes=None, single=True, port=5432):
    """Rows of sql (fields split) run by psql over the container's local socket; raises on an error. Without sql,
    the statements of input_bytes (in one transaction when single)."""
    argv = ['psql', '-X', '-q', '-A', '-t', '-z', '-v', 'ON_ERROR_STOP=1', '-h', SOCKET_DIR, '-p', str(port), '-U',
            user, '-d', db]
    argv += ['-c', sql] if sql is not None else (['-1'] if single else []) + ['-f', '-']
    rc, out, err = _exec(container, argv, env=env, input_bytes=input_bytes, timeout=timeout)
    if rc != 0:
        raise UpgradeError('psql in %s (database %s) failed: %s' % (container, db, _tail(err)))
    return [line.split('\0') for line in out.splitlines() if line]


def _per_database(container, databases, sql, user, env=None, port=5432, timeout=3600):
    """{db: rows of sql} for every database, in one psql session that connects to each in turn (sql must not end
    with a semicolon; its rows come back without the database's name)."""
    script = ''.join('\\connect "%s"\nSELECT current_database(), * FROM (%s) per_database;\n'
                     % (db.replace('"', '""'), sql) for db in databases)
    found = dict((db, []) for db in databases)
    for row in _psql(container, None, 'postgres', user, env=env, timeout=timeout, single=False, port=port,
                     input_bytes=script.encode('utf-8')):
        found.setdefault(row[0], []).append(row[1:])
    return found


def _wait_accepting(container, timeout, log, what, port=5432):
    """Until PostgreSQL in container answers on 127.0.0.1 (the entrypoint's temporary server of a first start
    listens on the socket only, so this waits for the real one); raises when the container exits or at the deadline."""
    deadline = time.time() + timeout
    last_note = time.time()
    while True:
        state = containers.container_state(container)
        if not state['exists'] or state['status'] in ('exited', 'dead'):
            raise UpgradeError('%s (container %s) stopped: %s' % (what, container, _logs_tail(container)))
        rc, _out, _err = _exec(container, ['pg_isready', '-q', '-h', '127.0.0.1', '-p', str(port), '-t', '2'],
                               timeout=30)
        if rc == 0:
            return
        if time.time() > deadline:
            raise UpgradeError('%s (container %s) did not accept connections within %d s: %s'
                               % (what, container, timeout, _logs_tail(container)))
        if time.time() - last_note > 30:
            log('waiting for %s to accept connections' % what)
            last_note = time.time()
        time.sleep(0.5)


# Every ordinary table of the database's own (not an extension's), with its exact row count; counted with
# query_to_xml so one statement does it without a function of ours in the database.
_COUNTS = (
    "SELECT n.nspname || '.' || c.relname, (xpath('/row/c/text()', query_to_xml(format("
    "'SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND left(n.nspname, 8) <> 'pg_toast' AND left(n.nspname, 7) <> 'pg_temp' "
    "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
    "AND d.deptype = 'e') ORDER BY 1")

# What the bot could have changed since the baseline: rows written to user tables (the statistics' counters), and a
# fingerprint of the schema - every relation with its kind, its file (TRUNCATE, VACUUM FULL give it a new one) and
# its columns. stats_reset tells a reset of the counters (a crash) from "no writes".
_WRITES = (
    "SELECT (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint::text FROM pg_stat_user_tables), "
    "coalesce((SELECT stats_reset::text FROM pg_stat_database WHERE datname = current_database()), ''), "
    "(SELECT md5(coalesce(string_agg(format('%s.%s:%s:%s:%s', n.nspname, c.relname, c.relkind, c.relfilenode, "
    "(SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum) "
    "FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)), ';' "
    "ORDER BY n.nspname, c.relname), '')) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND left(n.nspname, 8) <> 'pg_toast' AND left(n.nspname, 7) <> 'pg_temp')")

# Run in the new cluster's container (bash): the globals, then every database of $SOULNEAR_DATABASES (one a line)
# from the old cluster on 127.0.0.1:%(port)d into the new one on its socket. The superuser's own CREATE ROLE fails
# (it exists); pipefail makes a failing pg_dump fail the copy, --exit-on-error a failing restore.
_COPY_SCRIPT = r'''
set -euo pipefail
pg_dumpall --globals-only --no-password -h 127.0.0.1 -p %(port)d \
    | grep -v -x -E "CREATE ROLE \"?$PGUSER\"?;" \
    | psql -X -q -v ON_ERROR_STOP=1 --single-transaction -h %(socket)s -p 5432 -d postgres >/dev/null
echo roles
while IFS= read -r db; do
    [ -n "$db" ] || continue
    create=--create
    [ "$db" = postgres ] && create=
    pg_dump --format=custom --compress=0 --no-password -h 127.0.0.1 -p %(port)d -d "$db" \
        | pg_restore --exit-on-error --no-password -h %(socket)s -p 5432 -d postgres $create
    echo "$db"
done <<< "$SOULNEAR_DATABASES"
'''

_DATABASES = ("SELECT datname FROM pg_database WHERE datallowconn AND datname NOT IN ('template0', 'template1') "
              "ORDER BY datname")

# Run in the new image (as the server's user): its version, the names of its settings, its extensions and
# libraries, and which tools it has.
_PROBE = r'''
set -u
postgres --version || exit 3
echo '--settings'
postgres --describe-config | cut -f1
share=$(pg_config --sharedir 2>/dev/null || true)
[ -d "$share/extension" ] || share=/usr/share/postgresql/$(postgres --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')
lib=$(pg_config --pkglibdir 2>/dev/null || true)
[ -d "$lib" ] || lib=$(dirname "$(dirname "$(command -v postgres)")")/lib
echo '--extensions'
ls "$share/extension" 2>/dev/null | sed -n 's/\.control$//p'
echo '--libraries'
ls "$lib" 2>/dev/null | sed -n 's/\.so$//p'
echo '--tools'
for tool in pg_dump pg_dumpall pg_restore psql vacuumdb pg_isready pgbackrest; do
    command -v "$tool" >/dev/null && echo "$tool"
done
exit 0
'''


def probe_image(image, user='postgres'):
    """What the new image offers: dict(version (major), version_text, settings, extensions, libraries, tools)."""
    proc = _docker(['run', '--rm', '-u', user, '--network', 'none', '--entrypoint', 'bash', image, '-c', _PROBE],
                   check=False, timeout=300)
    out = proc.stdout.decode('utf-8', 'replace')
    if proc.returncode != 0:
        raise UpgradeError('the image %s does not run postgres --version (exit %d): %s. Fix: give the image of the '
                           'new PostgreSQL version (postgres_image; offline: soulnear/postgres:17 from '
                           'scripts/images.sh IMAGES_PG17=1)' % (image, proc.returncode,
                                                                 _tail(proc.stderr.decode('utf-8', 'replace'))))
    sections, current = {}, None
    first = out.splitlines()[0] if out.strip() else ''
    for line in out.splitlines()[1:]:
        if line.startswith('--'):
            current = line[2:]
            sections[current] = set()
        elif current and line.strip():
            sections[current].add(line.strip())
    match = re.search(r'\(PostgreSQL\)\s+(\d+)', first)
    return dict(version=int(match.group(1)) if match else None, version_text=first.strip(),
                settings=sections.get('settings', set()), extensions=sections.get('extensions', set()),
                libraries=sections.get('libraries', set()), tools=sections.get('tools', set()))


# -- the state file ------------------------------------------------------------------------------------------------

def load_state(path):
    try:
        with open(path) as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UpgradeError('the upgrade\'s state file %s cannot be read (%s). Fix: look at it; it records where an '
                           'upgrade stands, do not delete it while one is in progress' % (path, exc)) from None
    if not isinstance(state, dict):
        raise UpgradeError('the upgrade\'s state file %s is not a JSON object' % path)
    return state


def save_state(path, state):
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    state['updated_at'] = _now_text()
    write_private(path, json.dumps(state, indent=1, sort_keys=True) + '\n')


# -- the old server ------------------------------------------------------------------------------------------------

def _connect(settings, db=None, retries=1, timeout=None):
    params = dict(settings['conn'], retries=retries)
    if db is not None:
        params['login_db'] = db
    if timeout:
        params['connect_timeout'] = timeout
    return connect(params, application_name='soulnear upgrade')


def _rows(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def _inspect(container):
    data = containers.inspect(container)
    if data is None:
        raise UpgradeError('the database container %s does not exist. Fix: deploy first (make deploy); an upgrade '
                           'moves a running deployment' % container)
    return data


def _data_volume(data):
    return next((m.get('Name') for m in data.get('Mounts') or []
                 if m.get('Destination') == PGDATA and m.get('Type') == 'volume'), None)


def _env_dict(env_list):
    return dict(item.split('=', 1) for item in env_list or [] if '=' in item)


class Plan:
    """The facts of a preflight (the old server, the new image, space, what the copy carries) and its problems."""

    def __init__(self):
        self.facts = {}
        self.problems = []
        self.warnings = []

    def refuse(self, text):
        self.problems.append(text)


def preflight(settings, log=null_log):
    """Everything the upgrade needs, checked before anything changes. Returns a Plan; its problems say what to fix.
    Raises UpgradeError only when the checks themselves cannot run (no container, no server)."""
    plan = Plan()
    facts = plan.facts
    container = settings['container']
    data = _inspect(container)
    state = data.get('State') or {}
    if not state.get('Running'):
        raise UpgradeError('the database container %s is not running (%s). Fix: start it (make restart) - the '
                           'upgrade dumps the running server' % (container, state.get('Status')))
    volume = settings['volume'] or _data_volume(data)
    if not volume:
        raise UpgradeError('the database container %s has no Docker volume at %s; the upgrade moves a volume'
                           % (container, PGDATA))
    data_dir = _volume_dir(volume)
    facts.update(container=container, volume=volume, data_dir=data_dir, old_image=(data.get('Config') or {}).get(
        'Image'), old_image_id=data.get('Image'))
    to_version = settings['to_version']
    facts['to_version'] = to_version
    volume_version = _pg_version_of(data_dir) if data_dir else None
    conn = _connect(settings)
    try:
        (version_num, system_id, in_recovery) = _rows(
            conn, "SELECT current_setting('server_version_num')::int, "
                  "(SELECT system_identifier::text FROM pg_control_system()), pg_is_in_recovery()")[0]
        from_version = version_num // 10000
        facts.update(from_version=from_version, server_version_num=version_num, system_identifier=system_id,
                     volume_version=volume_version)
        databases = [r[0] for r in _rows(conn, _DATABASES)]
        facts['databases'] = databases
        sizes = dict(_rows(conn, 'SELECT datname, pg_database_size(datname) FROM pg_database WHERE datallowconn'))
        facts['database_sizes'] = dict((k, int(v)) for k, v in sizes.items())
        spaces = [r[0] for r in _rows(conn, "SELECT spcname FROM pg_tablespace WHERE spcname NOT IN "
                                            "('pg_default', 'pg_global')")]
        locked_out = [r[0] for r in _rows(conn, "SELECT datname FROM pg_database WHERE NOT datallowconn "
                                                "AND datname <> 'template0'")]
        prepared = _rows(conn, 'SELECT count(*) FROM pg_prepared_xacts')[0][0]
        slots = [r[0] for r in _rows(conn, 'SELECT slot_name FROM pg_replication_slots')]
        auto_conf = _rows(conn, "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE "
                                "'%%postgresql.auto.conf' AND error IS NULL ORDER BY seqno")
        preload = _rows(conn, "SELECT current_setting('shared_preload_libraries')")[0][0]
    finally:
        conn.close()
    extensions = {}
    for db in databases:
        dconn = _connect(settings, db)
        try:
            extensions[db] = sorted((r[0], r[1]) for r in _rows(dconn, 'SELECT extname, extversion FROM pg_extension'))
        finally:
            dconn.close()
    facts['extensions'] = dict((db, ['%s %s' % e for e in exts]) for db, exts in extensions.items())
    if in_recovery:
        plan.refuse('the server is in recovery (a standby, or a restore that has not promoted); upgrade a primary')
    if from_version < OLDEST_SOURCE:
        plan.refuse('the running server is PostgreSQL %d; this upgrade starts from %d or later' % (from_version,
                                                                                                   OLDEST_SOURCE))
    if isinstance(to_version, int) and to_version <= from_version:
        plan.refuse('the running server is already PostgreSQL %d: VERSION=%d is not newer. Nothing to do (a '
                    'major version is never downgraded in place: restore a dump into the older version instead)'
                    % (from_version, to_version))
    elif to_version not in KNOWN_TARGETS:
        plan.refuse('PostgreSQL %s is not a version this upgrade knows (it upgrades to %s). Fix: VERSION=%d'
                    % (to_version, ', '.join(str(v) for v in KNOWN_TARGETS), KNOWN_TARGETS[-1]))
    if volume_version is not None and volume_version != from_version:
        plan.refuse('the volume %s holds PostgreSQL %s data while the server answers as %s: the container does not '
                    'run on this volume. Fix: make deploy, then run the upgrade again' % (volume, volume_version,
                                                                                          from_version))
    if spaces:
        plan.refuse('tablespaces %s live outside the data volume and are not moved; move their tables to '
                    'pg_default (ALTER TABLE ... SET TABLESPACE pg_default) and drop them first' % ', '.join(spaces))
    if locked_out:
        plan.refuse('databases %s do not allow connections, so they cannot be dumped; ALTER DATABASE ... '
                    'ALLOW_CONNECTIONS true first, or drop them' % ', '.join(locked_out))
    if prepared:
        plan.refuse('%d prepared transaction(s) are open (pg_prepared_xacts); a dump does not carry them: COMMIT '
                    'PREPARED or ROLLBACK PREPARED them first' % prepared)
    if slots:
        plan.refuse('replication slots %s would not exist on the new cluster (a dump does not carry them) and their '
                    'consumers would silently miss changes; drop them (SELECT pg_drop_replication_slot(...)) and '
                    'recreate them after the upgrade' % ', '.join(slots))
    # The image of the new version.
    image = settings['image']
    probe = None
    if not image:
        plan.refuse('no image of the new version given (image). Fix: set postgres_image (offline: '
                    'soulnear/postgres:%s, scripts/images.sh IMAGES_PG17=1) with postgres_major_version: %s'
                    % (to_version, to_version))
    elif _image_info(image) is None:
        plan.refuse('the image %s is not on this host. Fix: the playbook puts it there (make upgrade-postgres); by '
                    'hand: docker load -i the archive of scripts/images.sh IMAGES_PG17=1, or docker pull' % image)
    else:
        probe = probe_image(image, settings['exec_user'])
        facts.update(new_image=image, new_image_version=probe['version_text'])
        if probe['version'] != to_version:
            plan.refuse('the image %s runs %s, not PostgreSQL %s. Fix: postgres_image must be an image of '
                        'PostgreSQL %s' % (image, probe['version_text'] or 'no postgres', to_version, to_version))
        missing_tools = [t for t in ('pg_dump', 'pg_dumpall', 'pg_restore', 'psql', 'vacuumdb', 'pg_isready')
                         + (('pgbackrest',) if settings['pitr'] else ()) if t not in probe['tools']]
        if missing_tools:
            plan.refuse('the image %s lacks %s' % (image, ', '.join(missing_tools)))
        _check_extensions(plan, extensions, probe, image)
        _check_settings(plan, settings, auto_conf, preload, probe, image)
    if settings['route'] not in ROUTES:
        plan.refuse('route %s is not one of %s' % (settings['route'], ', '.join(ROUTES)))
    facts['route'] = 'dump'
    # Space: the new cluster next to the old one, and the logical backup.
    if data_dir and os.path.isdir(data_dir):
        size = _dir_size(data_dir)
        where = os.path.dirname(os.path.dirname(data_dir))
        free = disk_usage(where)['free']
        need = int(size * float(settings['space_margin']))
        facts.update(data_size=size, volumes_free=free, volumes_need=need)
        if free < need:
            plan.refuse('not enough free space for the new cluster next to the old one: %s free on the disk of the '
                        'Docker volumes (%s), about %s needed (the data directory\'s %s x space_margin %s). Fix: '
                        'free space there (docker system prune, old volumes), or grow the disk'
                        % (human(free), where, human(need), human(size), settings['space_margin']))
    if settings['logical_backup']:
        db = settings['conn'].get('login_db')
        backup_dir = settings['backup_dir']
        probe_dir = backup_dir if os.path.isdir(backup_dir) else os.path.dirname(backup_dir.rstrip('/')) or '/'
        if os.path.isdir(probe_dir):
            free = disk_usage(probe_dir)['free']
            need = int(facts['database_sizes'].get(db, 0) * float(settings['space_margin']))
            facts.update(backup_free=free, backup_need=need)
            if free < need:
                plan.refuse('not enough free space for the logical backup taken first: %s free in %s, about %s '
                            'needed. Fix: free space there (older backups) or move the backups to a larger disk'
                            % (human(free), backup_dir, human(need)))
    # The data-loss guard: a raised flag means the data is in doubt; an upgrade would bake that in.
    if settings['data_guard_file']:
        found = guard.entry(settings['data_guard_file'], settings['conn'].get('login_db'))
        if found and found.get('flag'):
            plan.refuse('the data-loss guard\'s flag is raised (%s); find out what happened first (make '
                        'guard-status) - restore or make guard-clear - then upgrade' % found['flag'].get('reason'))
        facts['guard_recorded'] = bool(found)
    if settings['pitr']:
        try:
            runner = pitr.Runner(container, settings['exec_user'])
            repos = pitr.repositories(pitr.info(_pitr_settings(settings), runner))
        except pitr.FAILURES as exc:
            plan.refuse('pgBackRest cannot be asked (%s). Fix: make deploy (point-in-time recovery set up), or '
                        'pitr=false' % pitr.describe_failure(exc))
            repos = {}
        foreign = [k for k, r in repos.items() if r['system_id'] and r['system_id'] != system_id]
        if foreign:
            plan.refuse('the pgBackRest repositories %s hold another cluster than the running one; make deploy '
                        'first (it says why)' % ', '.join('repo%d' % k for k in foreign))
        facts['repositories'] = sorted(repos)
    bot = settings['bot_container']
    facts['bot'] = containers.container_state(bot) if bot else None
    return plan


def _check_extensions(plan, extensions, probe, image):
    missing = {}
    for db, exts in extensions.items():
        for name, _version in exts:
            if name not in probe['extensions']:
                missing.setdefault(name, []).append(db)
    if missing:
        plan.refuse('extensions not available in %s: %s. Fix: an image of the new version with them installed '
                    '(its postgresql-%s-<extension> package), or DROP EXTENSION first'
                    % (image, '; '.join('%s (database %s)' % (n, ', '.join(d)) for n, d in sorted(missing.items())),
                       probe['version']))


def _check_settings(plan, settings, auto_conf, preload, probe, image):
    wanted = dict((name, value) for name, value in auto_conf)
    wanted.update(settings['settings'] or {})
    unknown = []
    for name in sorted(wanted):
        lower = name.lower()
        if '.' in lower:
            continue  # an extension's own setting (its library is checked below)
        if lower in REMOVED_SETTINGS or (probe['settings'] and lower not in probe['settings']):
            unknown.append('%s (%s)' % (name, REMOVED_SETTINGS.get(lower, 'unknown to PostgreSQL %s'
                                                                   % probe['version'])))
    if unknown:
        plan.refuse('settings PostgreSQL %s does not have: %s. Fix: remove them from postgres_extra_settings, or '
                    'ALTER SYSTEM RESET them on the running server' % (probe['version'], ', '.join(unknown)))
    libraries = [lib.strip().strip('"') for lib in str(wanted.get('shared_preload_libraries', preload) or '').split(',')
                 if lib.strip()]
    absent = [lib for lib in libraries if lib.replace('$libdir/', '') not in probe['libraries']]
    if absent:
        plan.refuse('shared_preload_libraries names %s, which %s does not have. Fix: an image with them, or take '
                    'them out of shared_preload_libraries first' % (', '.join(absent), image))
    plan.facts['settings'] = dict((k, str(v)) for k, v in wanted.items())


def _pitr_settings(settings, container=None):
    return pitr.make_settings(settings['conn'], container=container or settings['container'],
                              stanza=settings['stanza'], repo_dir=settings['repo_dir'],
                              retention_full=settings['retention_full'], retention_diff=settings['retention_diff'],
                              db_stop_timeout=settings['db_stop_timeout'], exec_user=settings['exec_user'])


# -- the new container: the old one's configuration with the new image ----------------------------------------------

def _ns(value):
    return '%dms' % (int(value) // 1000000)


SECRET_ENV = re.compile(r'PASS|SECRET|TOKEN|KEY', re.I)


def clone_args(data, old_image, new_image, name):
    """`docker create` arguments that give the container `name` the configuration of the inspected container data,
    with new_image: only what the container sets itself (its environment and labels minus those of its old image,
    whose PATH and PG_MAJOR belong to the old version), its mounts, ports, networks, restart policy, stop timeout,
    shared memory, healthcheck and limits. Returns (args, further networks to connect, secret environment): a
    variable whose name looks secret goes on the command line by name only, its value in the secret environment."""
    config, host = data.get('Config') or {}, data.get('HostConfig') or {}
    image_config = (old_image or {}).get('Config') or {}
    image_env = set(image_config.get('Env') or [])
    image_labels = image_config.get('Labels') or {}
    args = ['create', '--name', name]
    secret_env = {}
    for item in config.get('Env') or []:
        if item in image_env:
            continue
        key, _sep, value = item.partition('=')
        if SECRET_ENV.search(key) and not key.endswith('_FILE'):
            secret_env[key] = value
            args += ['--env', key]
        else:
            args += ['--env', item]
    for key, value in sorted((config.get('Labels') or {}).items()):
        if image_labels.get(key) != value:
            args += ['--label', '%s=%s' % (key, value)]
    for mount in host.get('Mounts') or []:
        spec = 'type=%s,source=%s,target=%s' % (mount.get('Type'), mount.get('Source'), mount.get('Target'))
        if mount.get('ReadOnly'):
            spec += ',readonly'
        args += ['--mount', spec]
    for bind in host.get('Binds') or []:
        args += ['--volume', bind]
    for port, binds in sorted((host.get('PortBindings') or {}).items()):
        for bind in binds or []:
            args += ['--publish', '%s%s:%s' % (bind.get('HostIp') + ':' if bind.get('HostIp') else '',
                                               bind.get('HostPort') or '', port)]
    policy = host.get('RestartPolicy') or {}
    if policy.get('Name'):
        args += ['--restart', policy['Name'] + (':%d' % policy['MaximumRetryCount']
                                                if policy['Name'] == 'on-failure' and policy.get('MaximumRetryCount')
                                                else '')]
    if config.get('StopTimeout') is not None:
        args += ['--stop-timeout', str(config['StopTimeout'])]
    if config.get('StopSignal') and config.get('StopSignal') != image_config.get('StopSignal'):
        args += ['--stop-signal', config['StopSignal']]
    if host.get('ShmSize'):
        args += ['--shm-size', str(host['ShmSize'])]
    networks = sorted(((data.get('NetworkSettings') or {}).get('Networks') or {}).keys())
    mode = host.get('NetworkMode') or ''
    first = mode if mode and mode not in ('default',) and not mode.startswith('container:') else \
        (networks[0] if networks else None)
    if first:
        args += ['--network', first]
    check = config.get('Healthcheck') or {}
    test = check.get('Test') or []
    if test[:1] == ['NONE']:
        args.append('--no-healthcheck')
    elif test[:1] in (['CMD-SHELL'], ['CMD']):
        command = test[1] if test[0] == 'CMD-SHELL' else ' '.join(_quote(a) for a in test[1:])
        args += ['--health-cmd', command]
        for key, flag in (('Interval', '--health-interval'), ('Timeout', '--health-timeout'),
                          ('StartPeriod', '--health-start-period')):
            if check.get(key):
                args += [flag, _ns(check[key])]
        if check.get('Retries'):
            args += ['--health-retries', str(check['Retries'])]
    for cap in host.get('CapAdd') or []:
        args += ['--cap-add', cap]
    for cap in host.get('CapDrop') or []:
        args += ['--cap-drop', cap]
    for extra in host.get('ExtraHosts') or []:
        args += ['--add-host', extra]
    for path, options in sorted((host.get('Tmpfs') or {}).items()):
        args += ['--tmpfs', '%s:%s' % (path, options) if options else path]
    for option in host.get('SecurityOpt') or []:
        args += ['--security-opt', option]
    log_config = host.get('LogConfig') or {}
    if log_config.get('Type'):
        args += ['--log-driver', log_config['Type']]
        for key, value in sorted((log_config.get('Config') or {}).items()):
            args += ['--log-opt', '%s=%s' % (key, value)]
    if host.get('Memory'):
        args += ['--memory', str(host['Memory'])]
    if host.get('NanoCpus'):
        args += ['--cpus', '%g' % (host['NanoCpus'] / 1e9)]
    if config.get('User') and config.get('User') != image_config.get('User'):
        args += ['--user', config['User']]
    if config.get('Entrypoint') and config.get('Entrypoint') != image_config.get('Entrypoint'):
        args += ['--entrypoint', config['Entrypoint'][0]]
    args.append(new_image)
    if config.get('Cmd') and config.get('Cmd') != image_config.get('Cmd'):
        args += list(config['Cmd'])
    return args, [n for n in networks if n != first], secret_env


def _quote(word):
    return "'%s'" % word.replace("'", "'\\''") if re.search(r'[^\w@%+=:,./-]', word) else word


# -- the upgrade ----------------------------------------------------------------------------------------------------

def _require_confirm(settings, confirm, what):
    db = settings['conn'].get('login_db')
    if (confirm or '') != db:
        raise UpgradeError(what % dict(db=db))


class Upgrade:
    """One run of the upgrade over the state file: every step records itself, so a new run resumes."""

    def __init__(self, settings, state, log):
        self.settings, self.state, self.log = settings, state, log
        self.result = dict(changed=False, steps=state.setdefault('steps', {}))
        self.user = settings['conn'].get('login_user') or 'postgres'
        self.env = {'PGPASSWORD': settings['conn'].get('login_password') or ''}

    # -- bookkeeping --
    def save(self):
        save_state(self.settings['state_file'], self.state)

    def step(self, name, func, *args):
        if name in self.state['steps']:
            return None
        since = time.time()
        self.log('step %s' % name)
        value = func(*args)
        self.state['steps'][name] = round(time.time() - since, 3)
        self.save()
        return value

    @property
    def s(self):
        return self.state

    # -- before the swap --
    def create_staging(self):
        s, settings = self.state, self.settings
        old = _inspect(s['old_container_name_before'])
        env = _env_dict((old.get('Config') or {}).get('Env'))
        _create_volume(s['staging_volume'], 'upgrade-staging')
        # On the old container's network (pgBackRest's offsite repository stays reachable for the old cluster, which
        # shares this network namespace during the copy), but listening on 127.0.0.1 only: nobody else reaches it.
        networks = sorted(((old.get('NetworkSettings') or {}).get('Networks') or {}).keys())
        args = ['run', '-d', '--name', s['staging_container'], '--network', networks[0] if networks else 'none',
                '--label', 'soulnear.component=upgrade-staging',
                '--mount', 'type=volume,source=%s,target=%s' % (s['staging_volume'], PGDATA),
                '--env', 'POSTGRES_DB=postgres', '--env', 'POSTGRES_USER=%s' % env.get('POSTGRES_USER', self.user)]
        passthrough = {}
        if env.get('POSTGRES_PASSWORD_FILE'):
            args += ['--env', 'POSTGRES_PASSWORD_FILE=%s' % env['POSTGRES_PASSWORD_FILE']]
            holder = next((m for m in old.get('Mounts') or [] if m.get('Type') == 'bind'
                           and env['POSTGRES_PASSWORD_FILE'].startswith(m.get('Destination', '') + '/')), None)
            if holder:
                args += ['--mount', 'type=bind,source=%s,target=%s,readonly' % (holder['Source'],
                                                                                holder['Destination'])]
        else:
            passthrough['POSTGRES_PASSWORD'] = env.get('POSTGRES_PASSWORD') or settings['conn'].get('login_password')
            args += ['--env', 'POSTGRES_PASSWORD']
        if env.get('POSTGRES_INITDB_ARGS'):
            args += ['--env', 'POSTGRES_INITDB_ARGS=%s' % env['POSTGRES_INITDB_ARGS']]
        shm = (old.get('HostConfig') or {}).get('ShmSize')
        if shm:
            args += ['--shm-size', str(shm)]
        args += [settings['image'], '-c', 'listen_addresses=127.0.0.1']
        proc = subprocess.run([containers.docker_binary()] + args, capture_output=True, timeout=300,
                              env=containers.exec_env(passthrough), check=False)
        if proc.returncode != 0:
            raise UpgradeError('the new cluster\'s container could not be created: %s'
                               % _tail(proc.stderr.decode('utf-8', 'replace')))
        _wait_accepting(s['staging_container'], settings['start_timeout'], self.log,
                        'the new PostgreSQL %d cluster' % s['to_version'])
        # Client authentication as the old cluster had it (the same entrypoint wrote both; an edited one is kept).
        staging_dir = _volume_dir(s['staging_volume'])
        for name in ('pg_hba.conf', 'pg_ident.conf'):
            source = os.path.join(_volume_dir(s['volume']), name)
            if os.path.exists(source):
                with open(source, 'rb') as handle:
                    content = handle.read()
                target = os.path.join(staging_dir, name)
                st = os.stat(target) if os.path.exists(target) else os.stat(staging_dir)
                with open(target, 'wb') as handle:
                    handle.write(content)
                os.chown(target, st.st_uid, st.st_gid)
                os.chmod(target, 0o600)
        # The settings: a value the new version refuses fails here, before the bot stops.
        statements = ['ALTER SYSTEM SET %s = %s;' % (name, _literal(value))
                      for name, value in sorted(s['settings'].items())]
        if statements:
            self.log('applying %d settings to the new cluster (ALTER SYSTEM)' % len(statements))
            try:
                _psql(s['staging_container'], None, 'postgres', self.user, env=self.env,
                      input_bytes=('\n'.join(statements) + '\n').encode('utf-8'), single=False)
            except UpgradeError as exc:
                raise UpgradeError('PostgreSQL %d refuses a setting of the old cluster: %s. Fix: change it in '
                                   'postgres_extra_settings (or ALTER SYSTEM RESET it on the running server)'
                                   % (s['to_version'], exc)) from None
        _psql(s['staging_container'], 'SELECT pg_reload_conf()', 'postgres', self.user, env=self.env)

    def backups(self):
        s, settings = self.state, self.settings
        if settings['logical_backup']:
            from .backup import create_backup
            from .backup_settings import make_settings as backup_settings
            pattern = 'pre_upgrade_pg%d_%%Y%%m%%d_%%H%%M%%S.dump' % s['to_version']
            taken = create_backup(backup_settings(settings['conn'], container=s['container'],
                                                  exec_user=settings['exec_user'], backup_dir=settings['backup_dir'],
                                                  name_pattern=pattern),
                                  log=self.log, retention=False, offsite=False)
            s['logical_backup'] = dict(path=taken['path'], size=taken['size'], sha256=taken['sha256'])
            self.log('logical backup %s (%s), verified' % (taken['path'], human(taken['size'])))
        if settings['pitr'] and settings['physical_backup'] != 'none':
            done = pitr.backup(_pitr_settings(settings), settings['physical_backup'], log=self.log)
            s['physical_backup'] = [dict(repo=d['repo'], label=(d['backup'] or {}).get('label'))
                                    for d in done['backups']]
            self.log('physical backup: %s' % done['msg'])

    def stop(self):
        s, settings = self.state, self.settings
        bot = settings['bot_container']
        if bot and 'bot_was_running' not in s:
            s['bot_was_running'] = bool(containers.container_state(bot)['running'])
            self.save()
        if bot and containers.container_state(bot)['running']:
            self.log('stopping the bot (%s): the downtime starts' % bot)
            s['bot_stopped_at'] = time.time()
            self.save()
            containers.stop(bot, timeout=settings['bot_stop_timeout'])
        self.log('stopping PostgreSQL %d (%s) cleanly: from now on nothing can write to it' % (
            s['from_version'], s['container']))
        s['writes_stopped_at'] = time.time()
        self.save()
        containers.stop(s['container'], timeout=settings['db_stop_timeout'])

    def start_source(self):
        """The old cluster in a throwaway container of its image, on 127.0.0.1 only: the dump is its only client."""
        s, settings = self.state, self.settings
        old = _inspect(s['container'])
        binds = [m for m in old.get('Mounts') or [] if m.get('Type') == 'bind'
                 and m.get('Destination') in HELPER_MOUNTS]
        # In the new cluster's network namespace, on 127.0.0.1:SOURCE_PORT: the new version's pg_dump in that
        # container reaches it; nothing outside does (no published port, not under the database's name).
        args = ['run', '-d', '--name', s['source_container'], '--label', 'soulnear.component=upgrade-source',
                '--network', 'container:%s' % s['staging_container'],
                '--mount', 'type=volume,source=%s,target=%s' % (s['volume'], PGDATA)]
        for mount in binds:
            args += ['--mount', 'type=bind,source=%s,target=%s%s' % (mount['Source'], mount['Destination'],
                                                                     '' if mount.get('RW', True) else ',readonly')]
        shm = (old.get('HostConfig') or {}).get('ShmSize')
        if shm:
            args += ['--shm-size', str(shm)]
        args += [s['old_image'], 'postgres', '-c', 'listen_addresses=127.0.0.1', '-c', 'port=%d' % SOURCE_PORT]
        _remove_container(s['source_container'])
        _docker(args, timeout=300)
        _wait_accepting(s['source_container'], settings['start_timeout'], self.log,
                        'PostgreSQL %d (the old cluster, for the dump)' % s['from_version'], port=SOURCE_PORT)

    def copy(self):
        """With the new version's tools, in the new cluster's container, in one shell: the globals (every role with
        its password verifier, memberships, role settings; the superuser exists already), then every database
        through a pipe (pg_dump -Fc | pg_restore --create), nothing on disk."""
        s = self.state
        source, target, user = s['source_container'], s['staging_container'], self.user
        databases = [r[0] for r in _psql(source, _DATABASES, 'postgres', user, env=self.env, port=SOURCE_PORT)]
        s['databases'] = databases
        since = time.time()
        rc, out, err = _exec(target, ['bash', '-c', _COPY_SCRIPT % dict(port=SOURCE_PORT, socket=SOCKET_DIR)],
                             env=dict(self.env, PGUSER=user, SOULNEAR_DATABASES='\n'.join(databases)),
                             timeout=24 * 3600)
        if rc != 0:
            raise UpgradeError('copying the data failed (exit %d): %s' % (rc, _tail(err)))
        self.log('roles and %d database(s) copied in %.1f s: %s' % (len(databases), time.time() - since,
                                                                    ' '.join(out.split())))

    def verify(self):
        """The exact row count of every table, on both clusters: one psql session each."""
        s = self.state
        before = _per_database(s['source_container'], s['databases'], _COUNTS, self.user, self.env, SOURCE_PORT)
        after = _per_database(s['staging_container'], s['databases'], _COUNTS, self.user, self.env)
        s['counts'] = {}
        differences = []
        for db in s['databases']:
            old, new = dict(before.get(db) or []), dict(after.get(db) or [])
            s['counts'][db] = dict((k, int(v)) for k, v in new.items())
            for table in sorted(set(old) | set(new)):
                if old.get(table) != new.get(table):
                    differences.append('%s.%s: %s rows before, %s after' % (db, table, old.get(table, 'no table'),
                                                                            new.get(table, 'no table')))
        if differences:
            raise UpgradeError('the new cluster does not hold the same rows as the old one: %s'
                               % '; '.join(differences[:10]))
        total = sum(sum(c.values()) for c in s['counts'].values())
        self.log('row counts equal in every table (%d tables, %d rows)' % (
            sum(len(c) for c in s['counts'].values()), total))

    def analyze(self):
        """The planner's statistics (a dump has none): vacuumdb --analyze-in-stages on the new server while the bot
        already serves - its first stage gives every table rough statistics in a moment, the later ones refine them.
        ANALYZE moves no write counter, so it does not disturb the rollback's baseline."""
        rc, _out, err = _exec(self.state['container'], [
            'vacuumdb', '--all', '--analyze-in-stages', '--no-password', '-h', SOCKET_DIR, '-U', self.user],
            env=self.env, timeout=6 * 3600)
        if rc != 0:
            raise UpgradeError('vacuumdb --analyze-in-stages failed: %s' % _tail(err))

    def baseline(self):
        s = self.state
        found = _per_database(s['staging_container'], s['databases'], _WRITES, self.user, self.env)
        s['baseline'] = dict((db, [int(rows[0][0]), rows[0][1], rows[0][2]]) for db, rows in found.items())

    def close(self):
        """Both helpers stop cleanly (the old cluster archives its last segments); their containers go."""
        s = self.state
        names = [n for n in (s['source_container'], s['staging_container']) if containers.inspect(n) is not None]
        if names:  # one docker stop: both shut down at once
            timeout = int(self.settings['db_stop_timeout'])
            _docker(['stop', '-t', str(timeout)] + names, timeout=timeout + 60)
            _docker(['rm'] + names)

    # -- the switch --
    def swap(self):
        """The volumes change places by renames on the host, each step checked against what the disk says, so a run
        killed between two renames resumes."""
        s = self.state
        main = _volume_dir(s['volume'])
        if not _volume_exists(s['kept_volume']):
            _create_volume(s['kept_volume'])
        kept = _volume_dir(s['kept_volume'])
        if _pg_version_of(main) == s['from_version']:
            if os.path.isdir(kept) and os.listdir(kept):
                raise UpgradeError('the volume %s that should keep the old data is not empty' % s['kept_volume'])
            if os.path.isdir(kept):
                os.rmdir(kept)
            os.rename(main, kept)
            self.log('the old data is kept as volume %s' % s['kept_volume'])
        if not os.path.isdir(main):
            staging = _volume_dir(s['staging_volume'])
            if _pg_version_of(staging) != s['to_version']:
                raise UpgradeError('the new cluster is not in the volume %s any more; the old data is in %s'
                                   % (s['staging_volume'], s['kept_volume']))
            os.rename(staging, main)
        if _volume_exists(s['staging_volume']):
            _remove_volume(s['staging_volume'])
        if _pg_version_of(main) != s['to_version'] or _pg_version_of(kept) != s['from_version']:
            raise UpgradeError('after the swap the volume %s holds PostgreSQL %s and %s holds %s' % (
                s['volume'], _pg_version_of(main), s['kept_volume'], _pg_version_of(kept)))
        self.log('the new cluster is in volume %s' % s['volume'])

    def stanza(self):
        """pgBackRest's stanza follows the new cluster before it starts (offline), so archiving never fails."""
        if not self.settings['pitr']:
            return
        s = self.state
        runner = pitr.Runner(s['old_container'] if containers.inspect(s['old_container']) else s['container'],
                             self.settings['exec_user'], image=self.settings['image'])
        pitr.pgbackrest(_pitr_settings(self.settings), runner, ['--no-online', 'stanza-upgrade'],
                        volume=s['volume'], timeout=600, what='stanza-upgrade')
        self.log('pgBackRest\'s stanza follows the new cluster (the old backups stay as its prior history)')

    def switch_container(self):
        s, settings = self.state, self.settings
        current = containers.inspect(s['container'])
        if current is not None and (current.get('Config') or {}).get('Image') == s['old_image'] \
                and current.get('Image') == s['old_image_id']:
            if (current.get('State') or {}).get('Running'):
                containers.stop(s['container'], timeout=settings['db_stop_timeout'])
            _docker(['rename', s['container'], s['old_container']])
            current = None
        old = _inspect(s['old_container'])
        if (old.get('HostConfig') or {}).get('RestartPolicy', {}).get('Name') not in ('', 'no', None):
            _docker(['update', '--restart', 'no', s['old_container']])
        if current is None:
            args, more_networks, secret_env = clone_args(
                old, _image_info(s['old_image_id']) or _image_info(s['old_image']), settings['image'], s['container'])
            proc = subprocess.run([containers.docker_binary()] + args, capture_output=True, timeout=300,
                                  env=containers.exec_env(secret_env), stdin=subprocess.DEVNULL, check=False)
            if proc.returncode != 0:
                raise UpgradeError('the new database container could not be created: %s'
                                   % _tail(proc.stderr.decode('utf-8', 'replace')))
            for network in more_networks:
                _docker(['network', 'connect', network, s['container']])
            self.log('created %s with %s' % (s['container'], settings['image']))
        if not containers.container_state(s['container'])['running']:
            containers.start(s['container'])
        _wait_accepting(s['container'], settings['start_timeout'], self.log, 'PostgreSQL %d' % s['to_version'])
        _wait_connect(settings, settings['start_timeout'])
        s['writes_resumed_at'] = time.time()
        s['write_downtime'] = round(s['writes_resumed_at'] - s['writes_stopped_at'], 1) \
            if s.get('writes_stopped_at') else None
        conn = _connect(settings, retries=2)
        try:
            s['new_system_identifier'], version = _rows(
                conn, "SELECT (SELECT system_identifier::text FROM pg_control_system()), "
                      "current_setting('server_version_num')::int")[0]
        finally:
            conn.close()
        if version // 10000 != s['to_version']:
            raise UpgradeError('the new container answers as PostgreSQL %d, not %d' % (version // 10000,
                                                                                       s['to_version']))

    # -- after the switch --
    def record_guard(self):
        """The data-loss guard accepts the new cluster through this path only: the record must be the cluster the
        upgrade started from (or none), and the row counts matched."""
        s, settings = self.state, self.settings
        path = settings['data_guard_file']
        if not path:
            return
        db = settings['conn'].get('login_db')
        found = guard.entry(path, db)
        if found and found.get('system_identifier') not in (s['system_identifier'], s.get('new_system_identifier')):
            raise UpgradeError('the data-loss guard records cluster %s for %s, not %s which this upgrade started from; '
                               'it is not accepted silently: look at make guard-status' % (
                                   found.get('system_identifier'), db, s['system_identifier']))
        conn = _connect(settings, retries=2)
        try:
            observed = guard.observe(conn, settings['required_tables'] or None, state_file=path)
        finally:
            conn.close()
        done = guard.accept(path, observed, by='make upgrade-postgres', reason=(
            'major upgrade from PostgreSQL %d (cluster %s) to %d (cluster %s), row counts of every table equal'
            % (s['from_version'], s['system_identifier'], s['to_version'], observed['system_identifier'])))
        s['data_guard'] = dict(system_identifier=observed['system_identifier'], msg=done['msg'])

    def start_bot(self):
        s, settings = self.state, self.settings
        bot = settings['bot_container']
        if not bot or not s.get('bot_was_running'):
            s['downtime'] = None
            return
        self.log('starting the bot (%s)' % bot)
        containers.start(bot)
        problem = containers.wait_ready(bot, settings['bot_healthy_timeout'], interval=0.5)
        s['downtime'] = round(time.time() - s['bot_stopped_at'], 1) if s.get('bot_stopped_at') else None
        if problem:
            raise UpgradeError('%s; PostgreSQL %d runs with the data. Fix the bot (make logs-bot), then run the '
                               'upgrade again to finish' % (problem, s['to_version']))
        self.log('the bot is back: %s s of downtime' % s['downtime'])

    def setup_pitr(self):
        if not self.settings['pitr']:
            return
        done = pitr.setup(_pitr_settings(self.settings), log=self.log)
        pitr.check(_pitr_settings(self.settings))
        self.state['pitr'] = done['msg']
        self.log(done['msg'])


def _literal(value):
    if isinstance(value, bool):
        value = 'on' if value else 'off'
    return "'%s'" % str(value).replace("'", "''")


def _wait_connect(settings, timeout):
    deadline = time.time() + timeout
    while True:
        try:
            _connect(settings, retries=0, timeout=5).close()
            return
        except ConnectError as exc:
            if time.time() > deadline:
                raise UpgradeError('the new server does not accept the deployment\'s connection: %s' % exc) from None
            time.sleep(0.5)


def _new_state(settings, plan):
    f = plan.facts
    stamp = _stamp()
    volume, container, to, frm = f['volume'], f['container'], f['to_version'], f['from_version']
    return dict(
        id=stamp, phase=COPYING, database=settings['conn'].get('login_db'), from_version=frm, to_version=to,
        route=f['route'], container=container, volume=volume, old_image=f['old_image'], old_image_id=f['old_image_id'],
        new_image=settings['image'], system_identifier=f['system_identifier'], settings=f.get('settings', {}),
        old_container_name_before=container, old_container='%s__pre_upgrade_pg%d' % (container, frm),
        old_restart_policy=((_inspect(container).get('HostConfig') or {}).get('RestartPolicy') or {}).get('Name'),
        staging_volume='%s__upgrade_pg%d_%s' % (volume, to, stamp),
        staging_container='%s__upgrade_staging' % container, source_container='%s__upgrade_source' % container,
        kept_volume='%s__pre_upgrade_pg%d_%s' % (volume, frm, stamp), started_at=_now_text(), started=time.time(),
        data_size=f.get('data_size'), steps={}, history=[], host=socket.gethostname())


def _cleanup_before_swap(settings, state, log):
    """A failure (or a killed run) before the volumes changed places: the helpers and the new volume go, the old
    server and the bot run again. The live data was never touched."""
    for name in (state.get('source_container'), state.get('staging_container')):
        if name and containers.inspect(name) is not None:
            containers.run(['stop', '-t', str(int(settings['db_stop_timeout'])), name], check=False,
                           timeout=int(settings['db_stop_timeout']) + 30)
            _remove_container(name)
    if state.get('staging_volume') and _volume_exists(state['staging_volume']):
        _remove_volume(state['staging_volume'])
    container = state.get('container')
    if container and not containers.container_state(container)['running']:
        containers.start(container)
        log('started PostgreSQL %s again' % state.get('from_version'))
    bot = settings['bot_container']
    if bot and state.get('bot_was_running') and not containers.container_state(bot)['running']:
        containers.start(bot)
        problem = containers.wait_ready(bot, settings['bot_healthy_timeout'], interval=0.5)
        log('started the bot again' + (': %s' % problem if problem else ''))


UPGRADE_ONLY = ('steps', 'downtime', 'write_downtime', 'logical_backup', 'physical_backup', 'counts')


def _result_of(state, **extra):
    """The module's result from the state (a rollback's or confirm's without the upgrade's own figures)."""
    keys = ('phase', 'from_version', 'to_version', 'route', 'database', 'volume', 'kept_volume', 'old_container',
            'old_image', 'new_image', 'system_identifier', 'new_system_identifier', 'downtime', 'write_downtime',
            'logical_backup', 'physical_backup', 'counts', 'steps', 'data_size', 'databases')
    result = dict((k, state.get(k)) for k in keys)
    if extra.pop('operation', 'upgrade') != 'upgrade':
        for key in UPGRADE_ONLY:
            result.pop(key, None)
    result.update(extra)
    return result


def upgrade(settings, confirm, check_mode=False, log=null_log, stop_after=None):
    """The major upgrade (module docstring). stop_after: a step name after which the run returns as if killed
    (the tests resume from there). Returns the result dict; raises UpgradeError with the result of what was done."""
    started = time.time()
    _require_confirm(settings, confirm, 'A major upgrade replaces the database server of %(db)s: the bot is stopped '
                     'for the switch, the new version\'s cluster goes into a new volume and the current one is kept '
                     'until the upgrade is confirmed. To go ahead, run again with confirm=%(db)s '
                     '(make upgrade-postgres VERSION=<version> CONFIRM=%(db)s)')
    path = settings['state_file']
    with _operation_lock(path):
        state = load_state(path)
        resuming = bool(state and state.get('phase') in ACTIVE)
        if state and state.get('phase') == CONFIRMED and state.get('to_version') == settings['to_version'] and \
                _pg_version_of(_volume_dir(state['volume']) or '') == settings['to_version']:
            return _result_of(state, changed=False, duration=round(time.time() - started, 3), msg=(
                'PostgreSQL runs %s since the upgrade confirmed on %s; nothing to do' % (
                    state['to_version'], state.get('confirmed_at'))))
        if state and not resuming and state.get('phase') == UPGRADED:
            if state.get('to_version') == settings['to_version']:
                return _result_of(state, changed=False, duration=round(time.time() - started, 3), msg=(
                    'PostgreSQL %s was upgraded to %s on %s; nothing to do. Confirm it (make upgrade-postgres-confirm '
                    'CONFIRM=%s) to drop the old volume %s, or roll back (make upgrade-postgres-rollback)'
                    % (state['from_version'], state['to_version'], state.get('finished_at'), state['database'],
                       state['kept_volume'])))
            raise UpgradeError('the upgrade from %s to %s (%s) is not confirmed yet: confirm it (make '
                               'upgrade-postgres-confirm CONFIRM=%s) or roll it back before another one'
                               % (state['from_version'], state['to_version'], state.get('finished_at'),
                                  state['database']))
        if resuming and state.get('to_version') != settings['to_version']:
            raise UpgradeError('an upgrade to PostgreSQL %s is in progress (phase %s, since %s): resume it with '
                               'VERSION=%s, or roll it back (make upgrade-postgres-rollback)'
                               % (state['to_version'], state['phase'], state.get('started_at'),
                                  state['to_version']))
        if resuming and state['phase'] == COPYING:
            if check_mode:
                return _result_of(state, changed=True, duration=round(time.time() - started, 3),
                                  msg='Would clean away the interrupted attempt (phase copying) and start over')
            log('an earlier attempt stopped before the switch: cleaning it away and starting over')
            _cleanup_before_swap(settings, state, log)
            previous, state, resuming = state, None, False
        else:
            previous = None
        if not resuming:
            plan = preflight(settings, log)
            if plan.problems:
                raise UpgradeError('The upgrade cannot start (nothing was changed): %s' % ' | '.join(plan.problems),
                                   dict(changed=False, plan=plan.facts, problems=plan.problems))
            if check_mode:
                f = plan.facts
                return dict(changed=True, plan=f, duration=round(time.time() - started, 3), phase=None, msg=(
                    'Would upgrade PostgreSQL %d to %d by dump and restore (%s of data, databases %s) into a new '
                    'volume, keeping %s as %s__pre_upgrade_pg%d_<time>; the bot would stop for the copy'
                    % (f['from_version'], f['to_version'], human(f.get('data_size') or 0), ', '.join(f['databases']),
                       f['volume'], f['volume'], f['from_version'])))
            state = _new_state(settings, plan)
            if previous and 'bot_was_running' in previous:
                state['bot_was_running'] = previous['bot_was_running']
            state['history'] = (previous or {}).get('history', []) + ([dict(
                at=_now_text(), what='an attempt stopped in phase %s was cleaned away' % previous.get('phase'))]
                if previous else [])
            save_state(path, state)
        elif check_mode:
            return _result_of(state, changed=True, duration=round(time.time() - started, 3),
                              msg='Would resume the upgrade to %s from phase %s' % (state['to_version'],
                                                                                    state['phase']))
        return _run(settings, state, log, stop_after, started)


def _run(settings, state, log, stop_after, started):
    run = Upgrade(settings, state, log)
    run.result['changed'] = True
    before = (('staging', run.create_staging), ('backups', run.backups), ('stop', run.stop),
              ('source', run.start_source), ('copy', run.copy), ('verify', run.verify),
              ('baseline', run.baseline), ('close', run.close))
    switch = (('swap', run.swap), ('stanza', run.stanza), ('container', run.switch_container))
    after = (('guard', run.record_guard), ('bot', run.start_bot), ('analyze', run.analyze), ('pitr', run.setup_pitr))
    try:
        if state['phase'] == COPYING:
            for name, func in before:
                run.step(name, func)
                if name == stop_after:
                    return _result_of(state, changed=True, msg='stopped after %s (as asked)' % name)
            state['phase'] = SWITCHING
            run.save()
    except FAILURES as exc:
        try:
            _cleanup_before_swap(settings, state, log)
        except FAILURES as again:
            log('cleaning up after the failure failed too: %s' % describe_failure(again))
            raise UpgradeError('The upgrade failed before the switch (%s) and the clean-up failed (%s); the live '
                               'data was not changed. Run make upgrade-postgres-rollback to finish cleaning up'
                               % (describe_failure(exc), describe_failure(again)), _result_of(state)) from None
        state['history'].append(dict(at=_now_text(), what='failed before the switch: %s' % describe_failure(exc)))
        state['phase'] = 'failed'
        run.save()
        raise UpgradeError('The upgrade failed before the switch, and the live data was not changed (PostgreSQL %d '
                           'and the bot run again): %s' % (state['from_version'], describe_failure(exc)),
                           _result_of(state, changed=bool(state.get('logical_backup')))) from None
    try:
        if state['phase'] == SWITCHING:
            for name, func in switch:
                run.step(name, func)
                if name == stop_after:
                    return _result_of(state, changed=True, msg='stopped after %s (as asked)' % name)
            state['phase'] = SWITCHED
            state['switched_at'] = _now_text()
            run.save()
    except FAILURES as exc:
        why = describe_failure(exc)
        writes = _writes_since_baseline(settings, state)
        if writes['count'] == 0:
            log('the switch failed (%s): putting PostgreSQL %d back' % (why, state['from_version']))
            try:
                _put_back(settings, state, log, 'the switch failed: %s' % why)
            except FAILURES as again:
                raise UpgradeError('The switch to PostgreSQL %d failed (%s) and putting the old cluster back failed '
                                   'too (%s). The old data is in volume %s. Run make upgrade-postgres-rollback to '
                                   'finish putting it back' % (state['to_version'], why, describe_failure(again),
                                                               state['kept_volume']), _result_of(state)) from None
            raise UpgradeError('The switch to PostgreSQL %d failed: %s. PostgreSQL %d runs again on its untouched '
                               'data (and the bot); nothing was lost' % (state['to_version'], why,
                                                                         state['from_version']),
                               _result_of(state, changed=True)) from None
        raise UpgradeError('The switch to PostgreSQL %d failed after the new server took writes (%s): %s. Nothing was '
                           'put back automatically. Run make upgrade-postgres again to finish, or '
                           'make upgrade-postgres-rollback' % (state['to_version'], writes['summary'], why),
                           _result_of(state, changed=True)) from None
    try:
        for name, func in after:
            run.step(name, func)
            if name == stop_after:
                return _result_of(state, changed=True, msg='stopped after %s (as asked)' % name)
    except FAILURES as exc:
        raise UpgradeError('PostgreSQL %d runs with the data, but the upgrade could not finish step %s: %s. Run the '
                           'upgrade again to finish it (make upgrade-postgres VERSION=%d CONFIRM=%s), or roll back '
                           '(make upgrade-postgres-rollback CONFIRM=%s)'
                           % (state['to_version'], _current_step(state, after), describe_failure(exc),
                              state['to_version'], state['database'], state['database']),
                           _result_of(state, changed=True)) from None
    state['phase'] = UPGRADED
    state['finished_at'] = _now_text()
    state['duration'] = round(time.time() - state['started'], 1)
    state['history'].append(dict(at=_now_text(), what='upgraded from %d to %d' % (state['from_version'],
                                                                                  state['to_version'])))
    run.save()
    total = sum(sum(c.values()) for c in (state.get('counts') or {}).values())
    msg = ('Upgraded PostgreSQL %d to %d in %.1f s (dump and restore of %s, %d rows, counts equal in every table); '
           'writes were refused for %s s%s. The old data is kept as volume %s and the old container as %s until '
           'you confirm: make upgrade-postgres-confirm CONFIRM=%s (or roll back: make upgrade-postgres-rollback '
           'CONFIRM=%s)' % (state['from_version'], state['to_version'], state['duration'],
                            human(state.get('data_size') or 0), total, state.get('write_downtime'),
                            '; the bot was down for %s s' % state['downtime'] if state.get('downtime') else '',
                            state['kept_volume'], state['old_container'], state['database'], state['database']))
    return _result_of(state, changed=True, msg=msg, duration=round(time.time() - started, 3))


def _current_step(state, steps):
    return next((name for name, _func in steps if name not in state['steps']), steps[-1][0])


def _writes_since_baseline(settings, state):
    """What the new cluster took since the baseline (read in it before anything else could connect): dict(count
    (rows written plus schema changes; None when it cannot be told), databases {db: what}, summary)."""
    baseline = state.get('baseline') or {}
    info = containers.inspect(state['container'])
    runs_new = info is not None and (info.get('Config') or {}).get('Image') == state.get('new_image')
    if not baseline or not runs_new:
        return dict(count=0, databases={}, summary='the new cluster never served')
    if not (info.get('State') or {}).get('Running'):
        if not state.get('writes_resumed_at'):
            return dict(count=0, databases={}, summary='the new server never accepted a connection')
        return dict(count=None, databases={}, summary='the new server accepted connections and is stopped now, so '
                    'what it took cannot be counted (start it to count)')
    try:
        conn = _connect(settings, retries=1, timeout=5)
    except ConnectError:
        if not state.get('writes_resumed_at'):
            return dict(count=0, databases={}, summary='the new server never accepted a connection')
        return dict(count=None, databases={}, summary='the new server does not answer, so its writes cannot be '
                    'counted')
    try:
        databases = [r[0] for r in _rows(conn, _DATABASES)]
    finally:
        conn.close()
    changes = {}
    count = 0
    for db in sorted(set(databases) | set(baseline)):
        if db not in baseline:
            changes[db] = 'created after the upgrade'
            count = None if count is None else count + 1
            continue
        if db not in databases:
            changes[db] = 'dropped after the upgrade'
            count = None if count is None else count + 1
            continue
        dconn = _connect(settings, db, retries=1)
        try:
            rows, reset, schema = _rows(dconn, _WRITES)[0]
        finally:
            dconn.close()
        rows = int(rows)
        was_rows, was_reset, was_schema = baseline[db]
        parts = []
        if reset != was_reset or rows < was_rows:
            parts.append('its write statistics were reset (a crash?), so writes cannot be ruled out')
            count = None
        elif rows > was_rows:
            parts.append('%d row(s) inserted, updated or deleted' % (rows - was_rows))
            count = None if count is None else count + rows - was_rows
        if schema != was_schema:
            parts.append('its schema changed (tables created, altered, dropped or truncated)')
            count = None if count is None else count + 1
        if parts:
            changes[db] = '; '.join(parts)
    summary = '; '.join('%s: %s' % (db, why) for db, why in sorted(changes.items())) or 'no writes'
    return dict(count=count, databases=changes, summary=summary)


# -- putting the old cluster back --------------------------------------------------------------------------------------

def _put_back(settings, state, log, why, rolled_back_volume=None):
    """The old data, container and image back (and the bot); the new data kept as rolled_back_volume. Idempotent:
    each step checks what is there."""
    bot = settings['bot_container']
    if bot and containers.container_state(bot)['running']:
        log('stopping the bot (%s)' % bot)
        state['bot_stopped_at'] = time.time()
        containers.stop(bot, timeout=settings['bot_stop_timeout'])
    new = containers.inspect(state['container'])
    if new is not None and (new.get('Config') or {}).get('Image') != state['old_image']:
        if (new.get('State') or {}).get('Running'):
            containers.stop(state['container'], timeout=settings['db_stop_timeout'])
        _remove_container(state['container'])
    elif new is not None and (new.get('State') or {}).get('Running'):
        containers.stop(state['container'], timeout=settings['db_stop_timeout'])
    main = _volume_dir(state['volume'])
    kept = _volume_dir(state['kept_volume']) if _volume_exists(state['kept_volume']) else None
    rolled = rolled_back_volume or '%s__rolled_back_pg%d_%s' % (state['volume'], state['to_version'], _stamp())
    if _pg_version_of(main) == state['to_version']:
        if _pg_version_of(kept) != state['from_version']:
            raise UpgradeError('the old data is not in the volume %s' % state['kept_volume'])
        target = _create_volume(rolled)
        os.rmdir(target)
        os.rename(main, target)
        state['rolled_back_volume'] = rolled
        log('the new data is kept as volume %s' % rolled)
    elif _pg_version_of(main) is None and os.path.isdir(main or ''):
        os.rmdir(main)  # an empty directory Docker made again
    if not os.path.isdir(main) and _pg_version_of(kept) == state['from_version']:
        os.rename(kept, main)
    if _pg_version_of(main) != state['from_version']:
        raise UpgradeError('the volume %s does not hold the old cluster after putting it back' % state['volume'])
    if state.get('kept_volume') and _volume_exists(state['kept_volume']):
        _remove_volume(state['kept_volume'])
    if state.get('staging_volume') and _volume_exists(state['staging_volume']):
        _remove_volume(state['staging_volume'])  # a copy that never served: nothing of it is lost
    if settings['pitr']:
        # Back to the old cluster's history: stanza-upgrade offline with the old image (its own pgBackRest); it says
        # "already up to date" when the stanza never moved.
        holder = state['old_container'] if containers.inspect(state['old_container']) else state['container']
        runner = pitr.Runner(holder, settings['exec_user'], image=state['old_image'])
        pitr.pgbackrest(_pitr_settings(settings), runner, ['--no-online', 'stanza-upgrade'], volume=state['volume'],
                        timeout=600, what='stanza-upgrade')
        log('pgBackRest\'s stanza follows the old cluster again')
    if containers.inspect(state['container']) is None and containers.inspect(state['old_container']) is not None:
        _docker(['rename', state['old_container'], state['container']])
    policy = state.get('old_restart_policy')
    if policy and policy != 'no':
        _docker(['update', '--restart', policy, state['container']])
    if not containers.container_state(state['container'])['running']:
        containers.start(state['container'])
    _wait_accepting(state['container'], settings['start_timeout'], log, 'PostgreSQL %d' % state['from_version'])
    _wait_connect(settings, settings['start_timeout'])
    if settings['data_guard_file']:
        conn = _connect(settings, retries=2)
        try:
            observed = guard.observe(conn, settings['required_tables'] or None, state_file=settings['data_guard_file'])
        finally:
            conn.close()
        guard.accept(settings['data_guard_file'], observed, by='make upgrade-postgres-rollback',
                     reason='PostgreSQL %d put back (cluster %s): %s' % (state['from_version'],
                                                                         observed['system_identifier'], why))
    if bot and state.get('bot_was_running') and not containers.container_state(bot)['running']:
        containers.start(bot)
        problem = containers.wait_ready(bot, settings['bot_healthy_timeout'], interval=0.5)
        if problem:
            log('the bot did not come back: %s (make logs-bot)' % problem)
        state['rollback_downtime'] = round(time.time() - state['bot_stopped_at'], 1) \
            if state.get('bot_stopped_at') else None
    if settings['pitr']:
        done = pitr.setup(_pitr_settings(settings), log=log)
        log(done['msg'])
    state['phase'] = ROLLED_BACK
    state['rolled_back_at'] = _now_text()
    state['history'].append(dict(at=_now_text(), what='rolled back: %s' % why))
    save_state(settings['state_file'], state)


def rollback(settings, confirm, confirm_loss=None, check_mode=False, log=null_log):
    """The old volume, container and image back while the upgrade is not confirmed (module docstring)."""
    started = time.time()
    _require_confirm(settings, confirm, 'A rollback puts the PostgreSQL version from before the upgrade back with '
                     'its data as it was at the switch. To go ahead, run again with confirm=%(db)s (make '
                     'upgrade-postgres-rollback CONFIRM=%(db)s)')
    path = settings['state_file']
    with _operation_lock(path):
        state = load_state(path)
        if not state or state.get('phase') in (ROLLED_BACK, 'failed'):
            return dict(changed=False, phase=(state or {}).get('phase'), duration=round(time.time() - started, 3),
                        msg='There is no upgrade to roll back%s' % (
                            ' (the last one was rolled back on %s)' % state.get('rolled_back_at')
                            if state and state.get('phase') == ROLLED_BACK else
                            ' (the last attempt failed before the switch and changed nothing)' if state else ''))
        if state['phase'] == CONFIRMED:
            raise UpgradeError('the upgrade to %s was confirmed on %s: the old volume is gone, so there is nothing to '
                               'roll back to. The logical backup taken before it (%s) restores into a %s server'
                               % (state['to_version'], state.get('confirmed_at'),
                                  (state.get('logical_backup') or {}).get('path', 'pre_upgrade_pg*.dump'),
                                  state['from_version']))
        if state['phase'] == COPYING:
            if check_mode:
                return _result_of(state, changed=True, operation='rollback',
                                  msg='Would clean away the interrupted attempt (phase copying)')
            _cleanup_before_swap(settings, state, log)
            state['phase'] = ROLLED_BACK
            state['rolled_back_at'] = _now_text()
            state['history'].append(dict(at=_now_text(), what='interrupted attempt cleaned away by a rollback'))
            save_state(path, state)
            return _result_of(state, changed=True, operation='rollback', duration=round(time.time() - started, 3), msg=(
                'The interrupted upgrade never switched: its helpers and new volume are removed, PostgreSQL %d runs '
                'on its untouched data' % state['from_version']))
        writes = _writes_since_baseline(settings, state)
        stamp = _stamp()
        rolled = '%s__rolled_back_pg%d_%s' % (state['volume'], state['to_version'], stamp)
        lost = writes['count'] is None or writes['count'] > 0
        db = settings['conn'].get('login_db')
        if lost and (confirm_loss or '') != db:
            raise UpgradeError(
                'Rollback refused (nothing was changed): PostgreSQL %d took writes since the upgrade switched to it - '
                '%s. The old cluster has its data as it was at the switch (%s), so these writes would not be in it. '
                'To roll back anyway, run again with confirm_loss=%s (make upgrade-postgres-rollback CONFIRM=%s '
                'CONFIRM_LOSS=%s): every database that changed is dumped first into %s, and the new data is kept '
                'as volume %s' % (state['to_version'], writes['summary'], state.get('switched_at') or 'the switch',
                                  db, db, db, settings['backup_dir'], rolled),
                _result_of(state, changed=False, writes=writes, operation='rollback'))
        if check_mode:
            return _result_of(
                state, changed=True, writes=writes, operation='rollback', duration=round(time.time() - started, 3),
                msg=('Would put PostgreSQL %d back (volume %s, container %s), keeping the new data as %s%s'
                     % (state['from_version'], state['kept_volume'], state['old_container'], rolled,
                        '; the databases that changed since the switch would be dumped first (%s)'
                        % writes['summary'] if lost else '')))
        dumps = []
        if lost and writes['databases'] and containers.container_state(state['container'])['running']:
            from .backup import create_backup
            from .backup_settings import make_settings as backup_settings
            for name in sorted(writes['databases']):
                if 'dropped' in writes['databases'][name]:
                    continue
                conn = dict(settings['conn'], login_db=name)
                taken = create_backup(backup_settings(
                    conn, container=state['container'], exec_user=settings['exec_user'],
                    backup_dir=settings['backup_dir'],
                    name_pattern='rolled_back_pg%d_%s_%%Y%%m%%d_%%H%%M%%S.dump' % (state['to_version'],
                                                                                   re.sub(r'[^\w.-]', '_', name))),
                                      log=log, retention=False, offsite=False, db=name)
                dumps.append(taken['path'])
                log('the writes made on PostgreSQL %d to %s are kept in %s' % (state['to_version'], name,
                                                                               taken['path']))
        state['rollback_dumps'] = dumps
        state['writes_given_up'] = writes if lost else None
        why = ('rollback asked by the operator%s' % (
            ' (confirm_loss: %s; dumped to %s)' % (writes['summary'], ', '.join(dumps)) if lost else ''))
        _put_back(settings, state, log, why, rolled_back_volume=rolled)
        msg = ('Rolled back to PostgreSQL %d: its data as it was at the switch (%s) is back in %s, the container %s '
               'runs %s%s. The PostgreSQL %d data is kept as volume %s (docker volume rm %s drops it). Set '
               'postgres_major_version: %d (and postgres_image) in the inventory again before the next deploy'
               % (state['from_version'], state.get('switched_at'), state['volume'], state['container'],
                  state['old_image'], '; writes made on %d are NOT in it: %s - kept in %s' % (
                      state['to_version'], writes['summary'], ', '.join(dumps) or 'the kept volume') if lost else
                  '; PostgreSQL %d took no writes, so nothing is lost' % state['to_version'],
                  state['to_version'], state.get('rolled_back_volume'), state.get('rolled_back_volume'),
                  state['from_version']))
        return _result_of(state, changed=True, writes=writes, rollback_dumps=dumps, operation='rollback',
                          downtime=state.get('rollback_downtime'), rolled_back_volume=state.get('rolled_back_volume'),
                          msg=msg,
                          duration=round(time.time() - started, 3))


def confirm_upgrade(settings, confirm, check_mode=False, log=null_log):
    """Drop the old volume and the old container of an upgrade that finished (the old image stays)."""
    started = time.time()
    _require_confirm(settings, confirm, 'Confirming the upgrade drops the old volume for good (no rollback after '
                     'it). To go ahead, run again with confirm=%(db)s (make upgrade-postgres-confirm CONFIRM=%(db)s)')
    path = settings['state_file']
    with _operation_lock(path):
        state = load_state(path)
        if state and state.get('phase') == CONFIRMED:
            return _result_of(state, changed=False, operation='confirm', duration=round(time.time() - started, 3),
                              msg='The upgrade to %s was confirmed on %s already' % (state['to_version'],
                                                                                     state.get('confirmed_at')))
        if not state or state.get('phase') != UPGRADED:
            raise UpgradeError('there is no finished upgrade to confirm (%s)' % (
                'phase %s: finish it first (make upgrade-postgres) or roll it back' % state['phase'] if state
                else 'no upgrade recorded'))
        running = containers.container_state(state['container'])
        volume_version = _pg_version_of(_volume_dir(state['volume']))
        if not running['running'] or volume_version != state['to_version']:
            raise UpgradeError('the database container %s is %s with PostgreSQL %s data; confirm only an upgrade '
                               'whose new server runs (make health)' % (state['container'], running['status'],
                                                                        volume_version))
        if check_mode:
            return _result_of(state, changed=True, operation='confirm', duration=round(time.time() - started, 3), msg=(
                'Would drop the volume %s and the container %s (PostgreSQL %d); the image %s stays'
                % (state['kept_volume'], state['old_container'], state['from_version'], state['old_image'])))
        if containers.inspect(state['old_container']) is not None:
            _remove_container(state['old_container'])
        if _volume_exists(state['kept_volume']):
            _docker(['volume', 'rm', state['kept_volume']])
        state['phase'] = CONFIRMED
        state['confirmed_at'] = _now_text()
        state['history'].append(dict(at=_now_text(), what='confirmed: old volume and container dropped'))
        save_state(path, state)
        return _result_of(state, changed=True, operation='confirm', duration=round(time.time() - started, 3), msg=(
            'Confirmed the upgrade to PostgreSQL %d: the volume %s and the container %s are dropped; the old image '
            '%s stays (docker image rm %s when nothing needs it)' % (state['to_version'], state['kept_volume'],
                                                                     state['old_container'], state['old_image'],
                                                                     state['old_image'])))


def status(settings, expect_version=None, upgrade_running=False):
    """The data volume's PostgreSQL version and the state file, read-only. expect_version: the version the inventory
    says (postgres_major_version); ok is False, with the fix in msg, when a deploy would start another version's
    server on the data, or an upgrade is half done (upgrade_running: the upgrade playbook itself asks)."""
    volume = settings['volume']
    try:
        if not volume:
            data = containers.inspect(settings['container'])
            volume = _data_volume(data) if data else None
        data_dir = _volume_dir(volume) if volume else None
    except containers.DockerError:
        data_dir = None  # no docker command yet (a dry run on a bare host): no data either
    version = _pg_version_of(data_dir) if data_dir else None
    state = load_state(settings['state_file']) if os.path.exists(settings['state_file']) else None
    result = dict(changed=False, ok=True, volume=volume, data_version=version, expect_version=expect_version,
                  phase=(state or {}).get('phase'), state=state)
    db = (state or {}).get('database') or settings['conn'].get('login_db') or '<database>'
    phase = result['phase']
    if phase in ACTIVE and not upgrade_running:
        result.update(ok=False, msg=(
            'An upgrade of PostgreSQL %s to %s is in progress or was interrupted (phase %s, since %s): finish it '
            '(make upgrade-postgres VERSION=%s CONFIRM=%s) or roll it back (make upgrade-postgres-rollback CONFIRM=%s) '
            'before deploying' % (state['from_version'], state['to_version'], phase, state.get('started_at'),
                                  state['to_version'], db, db)))
        return result
    if expect_version is not None and version is not None and int(version) != int(expect_version) \
            and not upgrade_running:
        if state and phase in (UPGRADED, CONFIRMED) and state.get('to_version') == version:
            fix = ('The data was upgraded to PostgreSQL %s (make upgrade-postgres, %s): set postgres_major_version: %s '
                   'and the postgres_image of %s in the inventory (offline soulnear/postgres:%s and its '
                   'postgres_image_archive; the upgrade ran %s)%s'
                   % (version, state.get('finished_at'), version, version, version, state.get('new_image'),
                      '; or roll the upgrade back while it is not confirmed: make upgrade-postgres-rollback CONFIRM=%s'
                      % db if phase == UPGRADED else ''))
        elif int(version) < int(expect_version):
            fix = ('A deploy never upgrades the data: run make upgrade-postgres VERSION=%s CONFIRM=%s '
                   '(docs/upgrade.md), or set postgres_major_version back to %s' % (expect_version, db, version))
        else:
            fix = ('Set postgres_major_version: %s (and its postgres_image) in the inventory%s'
                   % (version, ' (the upgrade was rolled back on %s)' % state.get('rolled_back_at')
                      if state and phase == ROLLED_BACK else ''))
        result.update(ok=False, msg=(
            'The database volume %s holds PostgreSQL %s data, and the inventory says postgres_major_version: %s: '
            'PostgreSQL %s cannot start on it. Nothing was changed. %s' % (volume, version, expect_version,
                                                                           expect_version, fix)))
        return result
    parts = ['the volume %s holds PostgreSQL %s data' % (volume, version) if version else
             'no database data yet%s' % (' in %s' % volume if volume else '')]
    if state:
        parts.append('last upgrade: %s to %s, %s%s' % (
            state.get('from_version'), state.get('to_version'), phase,
            ' (not confirmed: make upgrade-postgres-confirm or make upgrade-postgres-rollback; old data in %s)'
            % state.get('kept_volume') if phase == UPGRADED else ''))
    result['msg'] = '; '.join(parts)
    return result
