# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The major upgrade's preflight: everything the upgrade needs, checked before anything changes - the versions (the
running server, the data volume, the new image), free disk for the copy and the logical backup, the extensions and
settings the new version has, what a dump cannot carry (tablespaces, prepared transactions, replication slots), the
data-loss guard's flag and the pgBackRest repositories. preflight() returns a Plan: its facts and its problems.

Nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from . import containers, guard, pitr
from .files import disk_usage, human
from .upgrade_host import (
    _DATABASES, PGDATA, UpgradeError, _connect, _data_volume, _dir_size, _image_info, _inspect, _pg_version_of,
    _pitr_settings, _rows, _volume_dir, null_log, probe_image)

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
    server = _read_server(settings, plan.facts)
    _check_server(plan, settings['to_version'], server)
    _check_image(plan, settings, server)
    if settings['route'] not in ROUTES:
        plan.refuse('route %s is not one of %s' % (settings['route'], ', '.join(ROUTES)))
    plan.facts['route'] = 'dump'
    _check_space(plan, settings)
    # The data-loss guard: a raised flag means the data is in doubt; an upgrade would bake that in.
    if settings['data_guard_file']:
        found = guard.entry(settings['data_guard_file'], settings['conn'].get('login_db'))
        if found and found.get('flag'):
            plan.refuse('the data-loss guard\'s flag is raised (%s); find out what happened first (make '
                        'guard-status) - restore or make guard-clear - then upgrade' % found['flag'].get('reason'))
        plan.facts['guard_recorded'] = bool(found)
    if settings['pitr']:
        _check_repositories(plan, settings)
    bot = settings['bot_container']
    plan.facts['bot'] = containers.container_state(bot) if bot else None
    return plan


def _read_server(settings, facts):
    """The running container and its server, into facts; returns what the checks look at (the server's
    tablespaces, locked-out databases, prepared transactions, replication slots, settings and extensions)."""
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
    facts['to_version'] = settings['to_version']
    volume_version = _pg_version_of(data_dir) if data_dir else None
    server = {}
    conn = _connect(settings)
    try:
        (version_num, system_id, server['in_recovery']) = _rows(
            conn, "SELECT current_setting('server_version_num')::int, "
                  "(SELECT system_identifier::text FROM pg_control_system()), pg_is_in_recovery()")[0]
        facts.update(from_version=version_num // 10000, server_version_num=version_num, system_identifier=system_id,
                     volume_version=volume_version)
        databases = [r[0] for r in _rows(conn, _DATABASES)]
        facts['databases'] = databases
        sizes = dict(_rows(conn, 'SELECT datname, pg_database_size(datname) FROM pg_database WHERE datallowconn'))
        facts['database_sizes'] = dict((k, int(v)) for k, v in sizes.items())
        server['spaces'] = [r[0] for r in _rows(conn, "SELECT spcname FROM pg_tablespace WHERE spcname NOT IN "
                                                      "('pg_default', 'pg_global')")]
        server['locked_out'] = [r[0] for r in _rows(conn, "SELECT datname FROM pg_database WHERE NOT datallowconn "
                                                          "AND datname <> 'template0'")]
        server['prepared'] = _rows(conn, 'SELECT count(*) FROM pg_prepared_xacts')[0][0]
        server['slots'] = [r[0] for r in _rows(conn, 'SELECT slot_name FROM pg_replication_slots')]
        server['auto_conf'] = _rows(conn, "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE "
                                          "'%%postgresql.auto.conf' AND error IS NULL ORDER BY seqno")
        server['preload'] = _rows(conn, "SELECT current_setting('shared_preload_libraries')")[0][0]
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
    server['extensions'] = extensions
    return server


def _check_server(plan, to_version, server):
    """The versions, and what a dump cannot carry."""
    facts = plan.facts
    from_version, volume_version = facts['from_version'], facts['volume_version']
    if server['in_recovery']:
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
                    'run on this volume. Fix: make deploy, then run the upgrade again' % (facts['volume'],
                                                                                          volume_version, from_version))
    if server['spaces']:
        plan.refuse('tablespaces %s live outside the data volume and are not moved; move their tables to '
                    'pg_default (ALTER TABLE ... SET TABLESPACE pg_default) and drop them first'
                    % ', '.join(server['spaces']))
    if server['locked_out']:
        plan.refuse('databases %s do not allow connections, so they cannot be dumped; ALTER DATABASE ... '
                    'ALLOW_CONNECTIONS true first, or drop them' % ', '.join(server['locked_out']))
    if server['prepared']:
        plan.refuse('%d prepared transaction(s) are open (pg_prepared_xacts); a dump does not carry them: COMMIT '
                    'PREPARED or ROLLBACK PREPARED them first' % server['prepared'])
    if server['slots']:
        plan.refuse('replication slots %s would not exist on the new cluster (a dump does not carry them) and their '
                    'consumers would silently miss changes; drop them (SELECT pg_drop_replication_slot(...)) and '
                    'recreate them after the upgrade' % ', '.join(server['slots']))


def _check_image(plan, settings, server):
    """The image of the new version: on the host, of to_version, with the tools, extensions and settings."""
    image, to_version = settings['image'], settings['to_version']
    if not image:
        plan.refuse('no image of the new version given (image). Fix: set postgres_image (offline: '
                    'soulnear/postgres:%s, scripts/images.sh IMAGES_PG17=1) with postgres_major_version: %s'
                    % (to_version, to_version))
        return
    if _image_info(image) is None:
        plan.refuse('the image %s is not on this host. Fix: the playbook puts it there (make upgrade-postgres); by '
                    'hand: docker load -i the archive of scripts/images.sh IMAGES_PG17=1, or docker pull' % image)
        return
    probe = probe_image(image, settings['exec_user'])
    plan.facts.update(new_image=image, new_image_version=probe['version_text'])
    if probe['version'] != to_version:
        plan.refuse('the image %s runs %s, not PostgreSQL %s. Fix: postgres_image must be an image of '
                    'PostgreSQL %s' % (image, probe['version_text'] or 'no postgres', to_version, to_version))
    missing_tools = [t for t in ('pg_dump', 'pg_dumpall', 'pg_restore', 'psql', 'vacuumdb', 'pg_isready')
                     + (('pgbackrest',) if settings['pitr'] else ()) if t not in probe['tools']]
    if missing_tools:
        plan.refuse('the image %s lacks %s' % (image, ', '.join(missing_tools)))
    _check_extensions(plan, server['extensions'], probe, image)
    _check_settings(plan, settings, server['auto_conf'], server['preload'], probe, image)


def _check_space(plan, settings):
    """Space: the new cluster next to the old one, and the logical backup."""
    facts = plan.facts
    data_dir = facts['data_dir']
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


def _check_repositories(plan, settings):
    """pgBackRest answers, and its repositories hold this cluster."""
    try:
        runner = pitr.Runner(settings['container'], settings['exec_user'])
        repos = pitr.repositories(pitr.info(_pitr_settings(settings), runner))
    except pitr.FAILURES as exc:
        plan.refuse('pgBackRest cannot be asked (%s). Fix: make deploy (point-in-time recovery set up), or '
                    'pitr=false' % pitr.describe_failure(exc))
        repos = {}
    system_id = plan.facts['system_identifier']
    foreign = [k for k, r in repos.items() if r['system_id'] and r['system_id'] != system_id]
    if foreign:
        plan.refuse('the pgBackRest repositories %s hold another cluster than the running one; make deploy '
                    'first (it says why)' % ', '.join('repo%d' % k for k in foreign))
    plan.facts['repositories'] = sorted(repos)


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
