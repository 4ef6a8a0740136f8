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

This file runs the steps (Upgrade, upgrade(), _run) and answers status(); step 1 is upgrade_preflight.py, the way
back and the confirm are upgrade_rollback.py (rollback() and confirm_upgrade() are this module's names too), and
what they all do on the host - Docker, psql in the containers, the state file, clone_args - is upgrade_host.py.

Nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket
import subprocess
import time

from . import containers, defaults, guard, pitr
from .backup_settings import with_defaults
from .files import human
from .pitr_runner import HELPER_MOUNTS
from .upgrade_host import (
    _COUNTS, _DATABASES, _WRITES, ACTIVE, CONFIRMED, COPYING, FAILURES, PGDATA, ROLLED_BACK, SOCKET_DIR, SOURCE_PORT,
    SWITCHED, SWITCHING, UPGRADED, UpgradeError, _connect, _create_volume, _data_volume, _docker, _env_dict, _exec,
    _image_info, _inspect, _now_text, _operation_lock, _per_database, _pg_version_of, _pitr_settings, _psql,
    _remove_container, _remove_volume, _require_confirm, _result_of, _rows, _stamp, _tail, _volume_dir, _volume_exists,
    _wait_accepting, _wait_connect, clone_args, describe_failure, load_state, null_log, save_state)
from .upgrade_preflight import KNOWN_TARGETS, OLDEST_SOURCE, ROUTES, preflight
from .upgrade_rollback import _cleanup_before_swap, _put_back, _writes_since_baseline, confirm_upgrade, rollback

# What the pg_upgrade module and the tests use, wherever it is defined.
__all__ = ['ACTIVE', 'CONFIRMED', 'COPYING', 'DEFAULTS', 'FAILURES', 'KNOWN_TARGETS', 'OLDEST_SOURCE', 'ROLLED_BACK',
           'ROUTES', 'SWITCHED', 'SWITCHING', 'UPGRADED', 'Upgrade', 'UpgradeError', 'confirm_upgrade',
           'describe_failure', 'load_state', 'make_settings', 'preflight', 'rollback', 'status', 'upgrade']

# What the upgrade hands to pgBackRest (_pitr_settings) or shares with a restore (the bot, the guard, the space
# margin) defaults as point-in-time recovery's does.
DEFAULTS = dict(
    dict((k, pitr.DEFAULTS[k]) for k in ('container', 'exec_user', 'stanza', 'repo_dir', 'retention_full',
                                         'retention_diff', 'db_stop_timeout', 'bot_container', 'bot_stop_timeout',
                                         'bot_healthy_timeout', 'space_margin', 'data_guard_file')),
    volume='',
    image='',
    to_version=None,
    route='auto',
    state_file='/var/lib/soulnear/postgres-upgrade.json',
    backup_dir=defaults.BACKUP_DIR,
    logical_backup=True,
    physical_backup='diff',
    start_timeout=300,
    pitr=True,
    required_tables=defaults.REQUIRED_TABLES,
    settings=None,
    verify='counts',
)


def make_settings(conn=None, **options):
    """DEFAULTS overridden by options, plus the superuser's connection parameters (module style): the database
    the bot uses is conn['login_db']."""
    settings = with_defaults(DEFAULTS, conn, options)
    settings['settings'] = dict(settings['settings'] or {})
    return settings


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
    """The steps from where the state stands: before the switch, the switch, after it; then the result."""
    run = Upgrade(settings, state, log)
    run.result['changed'] = True
    for phase in (_before_switch, _switch, _after_switch):
        stopped = phase(run, stop_after)
        if stopped is not None:
            return stopped
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


def _steps(run, steps, stop_after):
    """Each step not done yet; the result of a run stopped after stop_after (as asked), else None."""
    for name, func in steps:
        run.step(name, func)
        if name == stop_after:
            return _result_of(run.state, changed=True, msg='stopped after %s (as asked)' % name)
    return None


def _before_switch(run, stop_after):
    """Staging to close; a failure cleans the attempt away and leaves the live data as it was."""
    settings, state, log = run.settings, run.state, run.log
    before = (('staging', run.create_staging), ('backups', run.backups), ('stop', run.stop),
              ('source', run.start_source), ('copy', run.copy), ('verify', run.verify),
              ('baseline', run.baseline), ('close', run.close))
    try:
        if state['phase'] == COPYING:
            stopped = _steps(run, before, stop_after)
            if stopped is not None:
                return stopped
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
    return None


def _switch(run, stop_after):
    """Swap, stanza, container; a failure before the new server took a write puts the old cluster back."""
    settings, state, log = run.settings, run.state, run.log
    switch = (('swap', run.swap), ('stanza', run.stanza), ('container', run.switch_container))
    try:
        if state['phase'] == SWITCHING:
            stopped = _steps(run, switch, stop_after)
            if stopped is not None:
                return stopped
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
    return None


def _after_switch(run, stop_after):
    """Guard, bot, analyze, pitr; a failure leaves the new server running and says how to finish."""
    state = run.state
    after = (('guard', run.record_guard), ('bot', run.start_bot), ('analyze', run.analyze), ('pitr', run.setup_pitr))
    try:
        return _steps(run, after, stop_after)
    except FAILURES as exc:
        raise UpgradeError('PostgreSQL %d runs with the data, but the upgrade could not finish step %s: %s. Run the '
                           'upgrade again to finish it (make upgrade-postgres VERSION=%d CONFIRM=%s), or roll back '
                           '(make upgrade-postgres-rollback CONFIRM=%s)'
                           % (state['to_version'], _current_step(state, after), describe_failure(exc),
                              state['to_version'], state['database'], state['database']),
                           _result_of(state, changed=True)) from None


def _current_step(state, steps):
    return next((name for name, _func in steps if name not in state['steps']), steps[-1][0])


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
