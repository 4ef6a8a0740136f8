# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The major upgrade's hands on the host (upgrade.py runs the steps): its error type, Docker (volumes, containers,
docker exec), psql inside the helper containers, the deployment's own connection to the server, the probe of the
new image, the state file and the results read from it, and clone_args - the `docker create` arguments that give
the new container the old one's configuration.

Nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import datetime
import json
import os
import re
import subprocess
import time

from . import containers, pitr
from .files import lock, write_private
from .pg import ConnectError, connect, psycopg2

PGDATA = '/var/lib/postgresql/data'
SOCKET_DIR = '/var/run/postgresql'
# The old cluster, started privately for the dump, shares the new cluster's network namespace and listens on
# 127.0.0.1 at this port: the dump and the restore run in one process pipe inside the new cluster's container.
SOURCE_PORT = 5433
# Phases of the state file.
COPYING, SWITCHING, SWITCHED, UPGRADED, CONFIRMED, ROLLED_BACK = (
    'copying', 'switching', 'switched', 'upgraded', 'confirmed', 'rolled back')
ACTIVE = (COPYING, SWITCHING, SWITCHED)


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


# -- the state file, and the results read from it ---------------------------------------------------------------

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


def _require_confirm(settings, confirm, what):
    db = settings['conn'].get('login_db')
    if (confirm or '') != db:
        raise UpgradeError(what % dict(db=db))


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


def _pitr_settings(settings, container=None):
    return pitr.make_settings(settings['conn'], container=container or settings['container'],
                              stanza=settings['stanza'], repo_dir=settings['repo_dir'],
                              retention_full=settings['retention_full'], retention_diff=settings['retention_diff'],
                              db_stop_timeout=settings['db_stop_timeout'], exec_user=settings['exec_user'])


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
    own_args, secret_env = _own_env_and_labels(config, image_config)
    args = ['create', '--name', name] + own_args + _storage_args(host) + _lifecycle_args(config, host, image_config)
    networks = sorted(((data.get('NetworkSettings') or {}).get('Networks') or {}).keys())
    mode = host.get('NetworkMode') or ''
    first = mode if mode and mode not in ('default',) and not mode.startswith('container:') else \
        (networks[0] if networks else None)
    if first:
        args += ['--network', first]
    args += _healthcheck_args(config.get('Healthcheck') or {}) + _host_args(host)
    if config.get('User') and config.get('User') != image_config.get('User'):
        args += ['--user', config['User']]
    if config.get('Entrypoint') and config.get('Entrypoint') != image_config.get('Entrypoint'):
        args += ['--entrypoint', config['Entrypoint'][0]]
    args.append(new_image)
    if config.get('Cmd') and config.get('Cmd') != image_config.get('Cmd'):
        args += list(config['Cmd'])
    return args, [n for n in networks if n != first], secret_env


def _own_env_and_labels(config, image_config):
    """(--env and --label arguments of what the container sets beyond its image, the secret environment)."""
    image_env = set(image_config.get('Env') or [])
    image_labels = image_config.get('Labels') or {}
    args, secret_env = [], {}
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
    return args, secret_env


def _storage_args(host):
    """Mounts, binds and published ports."""
    args = []
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
    return args


def _lifecycle_args(config, host, image_config):
    """Restart policy, stop timeout and signal, shared memory."""
    args = []
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
    return args


def _healthcheck_args(check):
    test = check.get('Test') or []
    if test[:1] == ['NONE']:
        return ['--no-healthcheck']
    args = []
    if test[:1] in (['CMD-SHELL'], ['CMD']):
        command = test[1] if test[0] == 'CMD-SHELL' else ' '.join(_quote(a) for a in test[1:])
        args += ['--health-cmd', command]
        for key, flag in (('Interval', '--health-interval'), ('Timeout', '--health-timeout'),
                          ('StartPeriod', '--health-start-period')):
            if check.get(key):
                args += [flag, _ns(check[key])]
        if check.get('Retries'):
            args += ['--health-retries', str(check['Retries'])]
    return args


def _host_args(host):
    """Capabilities, extra hosts, tmpfs, security options, the log driver and the limits."""
    args = []
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
    return args


def _quote(word):
    return "'%s'" % word.replace("'", "'\\''") if re.search(r'[^\w@%+=:,./-]', word) else word
