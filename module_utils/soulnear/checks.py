# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health checks of a SoulNear deployment: one answer to "is it healthy?".

The db_health module and the `soulnear-health` host command (report, and every 60 s the monitor) run the
same checks. run_checks(options) returns one structured report {ok, checks, failed, warnings, skipped,
restart_counts, duration_ms, msg}; every check is {ok, value, message[, warning]} and a failure message
names the fix. The options are the db_health module's parameters; DEFAULTS are their defaults, for the
module's argument spec and the host command alike.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shlex
import time
from datetime import datetime

from . import containers, defaults, guard, lease, patroni, pitr
from . import leader as bot_leader
from .backup_files import DEFAULT_NAME_PATTERN, SIDECAR_SUFFIX, check_intact, list_backups
from .files import disk_usage
from .migrate import MigrationError, status as migration_status
from .results import check
from .pg import ConnectError, RetryPolicy, connect, describe_error, is_retryable, psycopg2, sqlstate_of, tls_failure

CHECK_ORDER = ('database', 'tables', 'migrations', 'connections', 'db_container', 'patroni', 'bot_container', 'leader',
               'backup_age', 'wal_archiving', 'physical_backup', 'disk')
DB_CHECKS = ('tables', 'migrations', 'connections', 'wal_archiving')  # need a database connection

# Option names are the db_health module's; the host command builds the same dict from its config files.
DEFAULTS = dict(
    # Tables that must exist (the tables check fails without them); none by default: the data-loss guard watches the
    # database's own tables, whatever the bot calls them (guard.py).
    required_tables=list(defaults.REQUIRED_TABLES),
    migrations_path=None,
    migrations_table=defaults.MIGRATIONS_TABLE,
    migrations_format='auto',
    connections_warn_percent=defaults.CONNECTIONS_WARN_PERCENT,
    db_container=None,
    # A database this deployment does not own (soulnear_db_mode external): its address, for the report. Its container
    # is not checked and never restarted; its provider or cluster manager does that.
    db_external=None,
    # Patroni's REST API (any member, e.g. http://10.0.0.5:8008): the patroni check reports the leader, the members
    # and their lag (patroni.py).
    patroni_url=None,
    patroni_ca_cert=None,
    patroni_max_lag_bytes=16 * 1024 * 1024,
    bot_container=None,
    restart_counts=None,
    backup_dir=None,
    backup_name_pattern=DEFAULT_NAME_PATTERN,
    backup_max_age_hours=defaults.BACKUP_MAX_AGE_HOURS,
    require_backup=False,
    disk_paths=[],
    db_volume=None,
    disk_max_used_percent=defaults.DISK_MAX_USED_PERCENT,
    data_guard_file=None,
    # Point-in-time recovery (pitr.py): the stanza enables wal_archiving and physical_backup.
    pitr_stanza=None,
    pitr_repo_dir=None,
    pitr_backup_max_age_hours=defaults.BACKUP_MAX_AGE_HOURS,
    pitr_archive_ready_max=defaults.ARCHIVE_READY_MAX,
    pitr_archive_slack_seconds=float(defaults.ARCHIVE_SLACK_SECONDS),
    pitr_check=False,
    # Several bot hosts, one bot (issue 25, leader.py): {lease, me, state_file, ttl_seconds} of this host's leader. The
    # leader check reports who holds the lease; the bot check then expects the bot to run only on its holder.
    leader=None,
)

LOGS_FIX = 'look at make logs-db / make logs-bot and make diagnose'


# -- database checks ----------------------------------------------------------------------------

def _connect_failure(exc):
    """(sqlstate, server_unreachable) of a ConnectError; connect() keeps the psycopg2 error as context."""
    cause = exc.__context__
    if cause is None or psycopg2 is None or not isinstance(cause, psycopg2.Error):
        return None, True
    return sqlstate_of(cause), is_retryable(cause)


def _system_identifier(cur):
    """initdb's unique id of the cluster: it changes when the data directory was re-initialised."""
    try:
        cur.execute('SELECT system_identifier::text FROM pg_control_system()')
        return cur.fetchone()[0]
    except psycopg2.Error:  # revoked on some managed servers: the check works without it
        return None


def check_database(params, policy=None):
    """Connect with the shared retry policy and run SELECT 1; returns (check, open connection or None)."""
    started = time.time()
    try:
        conn = connect(params, policy=policy, application_name='soulnear health')
    except ConnectError as exc:
        code, unreachable = _connect_failure(exc)
        if exc.__context__ is not None and tls_failure(exc.__context__):
            fix = ('TLS verification failed: the CA file (soulnear_db_ca_file; %s here) must have signed the '
                   'server\'s certificate, and the certificate must name the address connected to'
                   % (params.get('ca_cert') or 'none given'))
        elif unreachable and params.get('db_external'):
            fix = ('the external database at %s does not answer from this host: check its address, the firewall or '
                   'security group between this host and it, and its provider\'s status (or the cluster\'s leader)'
                   % params['db_external'])
        elif unreachable:
            fix = ('start the database container (make restart, or docker start %s) and check its log '
                   '(make logs-db)' % (params.get('db_container') or 'the database container'))
        else:
            fix = ('the server answers but refuses this login: check the app role and its password '
                   '(vault_app_db_password). If the data volume was re-initialised, the role or database may be '
                   'gone: DATA LOSS is possible, restore the latest backup (make restore) instead of recreating '
                   'them')
        return check(False, dict(sqlstate=code, server_unreachable=unreachable,
                                 seconds=round(time.time() - started, 2)),
                     '%s. Fix: %s' % (exc, fix)), None
    try:
        with conn.cursor() as cur:
            began = time.time()
            cur.execute('SELECT 1')
            cur.fetchone()
            latency = round((time.time() - began) * 1000, 1)
            ident = _system_identifier(cur)
    except psycopg2.Error as exc:
        conn.close()
        return check(False, dict(sqlstate=sqlstate_of(exc), server_unreachable=is_retryable(exc)),
                     'connected, but SELECT 1 failed: %s. Fix: %s' % (describe_error(exc), LOGS_FIX)), None
    value = dict(user=params.get('login_user'), database=params.get('login_db'),
                 server_version=conn.server_version, latency_ms=latency, system_identifier=ident)
    return check(True, value, 'SELECT 1 as %s on %s answered in %.1f ms'
                 % (params.get('login_user'), params.get('login_db') or 'the default database', latency)), conn


def check_tables(conn, tables):
    """The required tables exist. Without any: passes, counting the database's tables for the report."""
    tables = list(tables or [])
    if not tables:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                        "AND left(n.nspname, 8) <> 'pg_toast' AND left(n.nspname, 7) <> 'pg_temp'")
            count = cur.fetchone()[0]
        return check(True, dict(missing=[], required=[], tables=count),
                     'no required tables set; the database has %d table(s)' % count)
    with conn.cursor() as cur:
        cur.execute('SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NULL', (tables,))
        missing = [row[0] for row in cur.fetchall()]
    if not missing:
        return check(True, dict(missing=[], required=tables), 'all %d required table(s) present' % len(tables))
    return check(False, dict(missing=missing, required=tables),
                 'required table(s) missing: %s. DATA LOSS SUSPECTED if this database held data before (volume '
                 're-initialised after a crash): restore the latest backup with make restore, do NOT let anything '
                 'recreate an empty schema. On a new database, run the migrations (make migrate or deploy.yml)'
                 % ', '.join(missing))


def check_data_guard(conn, tables_result, options):
    """The data-loss guard (guard.py) on top of the tables check: a raised flag, another cluster or an empty
    database that held data fail it. The monitor (data_guard_update) records and raises the flag; db_health only
    reads."""
    path = options['data_guard_file']
    required = _opt(options, 'required_tables')
    try:
        observed = guard.observe(conn, required, state_file=path, migrations_table=_opt(options, 'migrations_table'))

        def advice():
            return guard.restore_advice(observed['database'], options.get('backup_dir'),
                                        _opt(options, 'backup_name_pattern'), pitr=bool(options.get('pitr_stanza')))
        if options.get('data_guard_update'):
            result = guard.check(path, observed, by=options.get('data_guard_actor'), advice=advice)
        else:
            result = guard.assess(path, observed, advice=advice)
    except guard.GuardError as exc:
        return check(False, dict(tables_result['value'], data_guard=dict(error=str(exc))), str(exc))
    record = result.get('record') or {}
    value = dict(tables_result['value'], data_guard=dict(
        database=observed['database'], status=result['status'], problem=result['problem'],
        flag=bool(record.get('flag')), system_identifier=observed['system_identifier'],
        recorded=record.get('system_identifier'), rows=observed['tables'], holding=len(observed['holding'])))
    if not result['ok']:
        return check(False, value, result['msg'])
    message = '%s; data-loss guard: %s' % (tables_result['message'], '%d table(s) hold data' % len(
        observed['holding']) if observed['holding'] else 'no data yet, nothing to lose')
    return check(tables_result['ok'], value, message, tables_result.get('warning'))


def check_migrations(params, path, table, layout='auto'):
    try:
        state = migration_status(params, path, table, layout)
    except MigrationError as exc:
        # pg_migrate's message names the cause and its fix (a missing directory, another tool's table, ...).
        return check(False, dict(path=path, table=table), 'pg_migrate cannot read the migrations in %s against the '
                     'table %s: %s' % (path, table, exc))
    except ConnectError as exc:
        return check(False, dict(path=path), 'could not read %s: %s' % (table, exc))
    value = dict(state, path=path)
    problems = []
    if state['failed']:
        problems.append('failed migration(s) %s: inspect the database, finish or undo the partial work, then run '
                        'pg_migrate with repair: true' % ', '.join(state['failed']))
    if state['drift']:
        problems.append('applied migration(s) changed on disk (drift): %s; restore the original files and put '
                        'changes in a new migration' % ', '.join(state['drift']))
    if state['pending']:
        problems.append('%d pending migration(s): %s; apply them with make migrate (or deploy.yml)'
                        % (len(state['pending']), ', '.join(state['pending'])))
    if problems:
        return check(False, value, '; '.join(problems))
    warning = None
    if state['missing']:
        warning = 'recorded migration(s) without a file in %s: %s' % (path, ', '.join(state['missing']))
    return check(True, value, 'all migrations applied (current version %s)' % state['current_version'], warning)


def check_connections(conn, warn_percent):
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE backend_type = 'client backend'), "
                    "current_setting('max_connections')::int, "
                    "current_setting('superuser_reserved_connections')::int, "
                    "coalesce(current_setting('reserved_connections', true), '0')::int FROM pg_stat_activity")
        used, maximum, su_reserved, reserved = cur.fetchone()
    usable = max(1, maximum - su_reserved - reserved)
    percent = round(100.0 * used / usable, 1)
    value = dict(used=used, max_connections=maximum, reserved=su_reserved + reserved, usable=usable,
                 percent=percent)
    message = '%d of %d usable connection slots in use (%.0f%%; max_connections %d)' % (used, usable, percent,
                                                                                        maximum)
    warning = None
    if percent >= warn_percent:
        warning = ('%s, above %s%%: find the client holding them (SELECT application_name, state, count(*) FROM '
                   'pg_stat_activity GROUP BY 1, 2) or raise postgres_max_connections' % (message, warn_percent))
    return check(True, value, message, warning)


# -- containers, backups, disk --------------------------------------------------------------------

def docker_time(value):
    """Docker's RFC 3339 time (nanoseconds, Z) as epoch seconds; None when unset."""
    if not value or value.startswith('0001-'):
        return None
    stamp = value.replace('Z', '+00:00')
    if '.' in stamp:
        head, rest = stamp.split('.', 1)
        digits = ''.join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        stamp = '%s.%s%s' % (head, digits[:6], zone)
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def container_facts(name):
    """containers.container_state() plus what the health rules need: restarting, the healthcheck's start period,
    interval and timeout (seconds) and when the current run started (epoch seconds)."""
    data = containers.inspect(name)
    if data is None:
        return dict(name=name, exists=False, running=False, status='missing', health=None, restart_count=0)
    state = data.get('State') or {}
    probe = (data.get('Config') or {}).get('Healthcheck') or {}
    return dict(name=name, exists=True, running=bool(state.get('Running')), status=state.get('Status'),
                restarting=bool(state.get('Restarting')), health=(state.get('Health') or {}).get('Status'),
                restart_count=int(data.get('RestartCount', 0)), started_at=state.get('StartedAt'),
                started=docker_time(state.get('StartedAt')), exit_code=state.get('ExitCode'),
                oom_killed=bool(state.get('OOMKilled')), finished_at=state.get('FinishedAt'),
                start_period=(probe.get('StartPeriod') or 0) / 1e9, interval=(probe.get('Interval') or 30e9) / 1e9,
                timeout=(probe.get('Timeout') or 30e9) / 1e9)


def starting_limit(state):
    """Seconds a container may report "starting": its start period, or one probe when it has none, plus slack."""
    return max(state.get('start_period') or 0, (state.get('interval') or 30) + (state.get('timeout') or 30)) + 5


def check_container(name, previous_restart_count=None, role='database', now=None):
    """Running, Docker health status and restart count. Unhealthy: missing, exited, restarting (Docker's restart
    back-off of a crashing container), healthcheck unhealthy, still "starting" past its start period, or restarted
    by Docker since the last check and not healthy yet (a crash loop). A restart count that grew on a container
    that is healthy again is a warning."""
    try:
        state = container_facts(name)
    except containers.DockerError as exc:
        return check(False, dict(name=name), 'cannot inspect container %s: %s' % (name, exc))
    value = dict((k, state.get(k)) for k in ('name', 'exists', 'running', 'status', 'health', 'restart_count',
                                             'started_at', 'oom_killed', 'exit_code', 'restarting'))
    logs = 'make logs-db' if role == 'database' else 'make logs-bot'
    if not state['exists']:
        return check(False, value, 'container %s does not exist: run deploy.yml (make deploy) to create it' % name)
    count = state['restart_count']
    if state['restarting'] or state['status'] == 'restarting':
        return check(False, value, 'container %s is restarting: it exited (code %s) and Docker starts it again with a '
                     'growing back-off, restart count %d - it crashes at start. Fix: see %s for why'
                     % (name, state.get('exit_code'), count, logs))
    if not state['running']:
        oom = ' It was killed by the OOM killer: give the host more memory or lower the load.' \
            if state.get('oom_killed') else ''
        return check(False, value, 'container %s is %s (exit code %s).%s Fix: start it (make restart, or docker '
                     'start %s), then look at %s for why it stopped'
                     % (name, state['status'], state.get('exit_code'), oom, name, logs))
    if state['health'] == 'unhealthy':
        return check(False, value, 'container %s runs but its healthcheck reports unhealthy: see %s and docker '
                     'inspect --format "{{json .State.Health}}" %s' % (name, logs, name))
    grew = count - previous_restart_count if previous_restart_count is not None and count > previous_restart_count \
        else 0
    if state['health'] == 'starting':
        now = time.time() if now is None else now
        age = now - state['started'] if state.get('started') else 0
        limit = starting_limit(state)
        if age > limit:
            return check(False, value, 'container %s has been "starting" for %.0f s, past its start period (%.0f s): '
                         'its healthcheck never passed. Fix: see %s and docker inspect --format '
                         '"{{json .State.Health}}" %s' % (name, age, state['start_period'], logs, name))
        if grew or count > 0:
            # Docker resets the count when the container is started by hand: this run began with a restart
            # after a crash, and has not proven healthy yet.
            return check(False, value, 'container %s was restarted by Docker %s and is not healthy yet (restart count '
                         '%d): it crashed and may be crash-looping. Fix: see %s'
                         % (name, '%d time(s) since the last check' % grew if grew else 'after a crash', count,
                            logs))
    warnings = []
    if grew:
        warnings.append('Docker restarted %s %d time(s) since the last check (it crashed): see %s'
                        % (name, grew, logs))
    elif previous_restart_count is None and count > 0:
        warnings.append('Docker restarted %s %d time(s) since it was last started by hand (it crashed): see %s'
                        % (name, count, logs))
    if state['health'] == 'starting':
        warnings.append('%s is still starting (healthcheck not passed yet)' % name)
    message = 'container %s is running%s, restart count %d' % (
        name, ' and %s' % state['health'] if state['health'] else '', count)
    return check(True, value, message, '; '.join(warnings) or None)


def check_backup_age(backup_dir, max_age_hours, require=False, pattern=DEFAULT_NAME_PATTERN, now=None,
                     database=None, save=True):
    """Age of the newest verified backup of database: one the backup command wrote a sha256 sidecar for (it does
    so only after pg_restore --list accepted the dump) and whose file still matches that sidecar (sha256
    computed once per file and cached, see backup_files.intact). A newest backup that no longer matches fails
    the check."""
    if not os.path.isdir(backup_dir):
        if require:
            return check(False, dict(backup_dir=backup_dir), 'backups directory %s does not exist: deploy the '
                         'backup role (ansible-playbook deploy.yml --tags backup)' % backup_dir)
        return check(True, dict(backup_dir=backup_dir, count=0), 'no backups yet (%s does not exist)' % backup_dir)
    try:
        backups = list_backups(backup_dir, pattern or DEFAULT_NAME_PATTERN, database)
        verified = [b for b in backups if b['verified']]
        good, corrupt = check_intact(backup_dir, verified, limit='first', save=save)
    except OSError as exc:
        return check(False, dict(backup_dir=backup_dir), 'cannot read the backups directory: %s. Fix: run the check '
                     'as root (become: true)' % exc)
    of = ' of %s' % database if database else ''
    value = dict(backup_dir=backup_dir, database=database, count=len(backups), verified=len(verified), newest=None,
                 age_hours=None, corrupt=[b['name'] for b in corrupt])
    if not verified:
        if backups:
            return check(False, value, 'none of the %d backup(s)%s in %s is verified (no %s sidecar): the backup '
                         'command could not verify them with pg_restore --list; see backup.log in the log directory '
                         'and run make backup' % (len(backups), of, backup_dir, SIDECAR_SUFFIX))
        if require:
            return check(False, value, 'no backups%s in %s: run make backup and check the backup cron job'
                         % (of, backup_dir))
        return check(True, value, 'no backups%s yet in %s' % (of, backup_dir))
    if corrupt:
        bad = corrupt[0]
        value.update(newest=good['name'] if good else None)
        fallback = ('the newest intact one is %s' % good['name']) if good else 'no backup matches its sidecar'
        return check(False, value, 'the newest backup%s %s does not match its %s sidecar (sha256 now %s, recorded '
                     '%s): it was damaged, truncated or changed after it was verified, and a restore would skip it; '
                     '%s. Fix: run make backup now, keep the damaged file for inspection and look for disk errors '
                     '(make diagnose)' % (of, bad['name'], SIDECAR_SUFFIX, (bad.get('actual') or '?')[:12],
                                          (bad.get('expected') or '?')[:12], fallback))
    newest = good
    # Backup names carry the host's local time (the backup command names them with datetime.now()).
    age = ((now or datetime.now()) - newest['time']).total_seconds() / 3600.0
    value.update(newest=newest['name'], age_hours=round(age, 2))
    warning = None
    if backups[0] is not newest:
        warning = ('the newest backup %s has no %s sidecar (its verification failed or it is still being written)'
                   % (backups[0]['name'], SIDECAR_SUFFIX))
    if age > max_age_hours:
        return check(False, value, 'the newest verified backup%s %s is %.1f h old (limit %s h): the daily backup is '
                     'not running or failing; check the backup cron job and backup.log in the log directory, then '
                     'run make backup' % (of, newest['name'], age, max_age_hours), warning)
    return check(True, value, 'newest verified backup%s %s is %.1f h old (checksum verified)'
                 % (of, newest['name'], age), warning)


def check_disk(paths, max_used_percent, db_volume=None):
    paths = [p for p in (paths or []) if p]
    notes = []
    if db_volume:
        try:
            mount = containers.volume_mountpoint(db_volume)
        except containers.DockerError as exc:
            mount = None
            notes.append('cannot locate volume %s: %s' % (db_volume, exc))
        if mount:
            paths.insert(0, mount)
        elif not notes:
            notes.append('volume %s does not exist: the database has no persistent data volume; run make diagnose'
                         % db_volume)
    usages, seen, full = [], set(), []
    for path in paths:
        try:
            usage = disk_usage(path)
        except OSError as exc:
            notes.append('cannot measure %s: %s' % (path, exc))
            continue
        usages.append(usage)
        if usage['device'] in seen:
            continue
        seen.add(usage['device'])
        if usage['used_percent'] > max_used_percent:
            full.append(usage)
    value = [dict((k, u[k]) for k in ('path', 'used_percent', 'free_mb', 'total_mb')) for u in usages]
    if full:
        problems = '; '.join('disk of %s is %.1f%% full (%d MB free, limit %s%%)' % (
            u['path'], u['used_percent'], u['free_mb'], max_used_percent) for u in full)
        return check(False, value, problems + ': free space (old backups beyond retention, docker image prune, '
                     'docker builder prune) or grow the disk; PostgreSQL stops with "No space left on device" when '
                     'it is full', '; '.join(notes) or None)
    summary = ', '.join('%s %.0f%% used' % (u['path'], u['used_percent']) for u in usages) or 'no paths'
    return check(True, value, summary, '; '.join(notes) or None)


# -- several bot hosts, one bot (issue 25) -----------------------------------------------------------------

def read_lease(conn, options):
    """(the lease row, None) or (None, why it could not be read)."""
    try:
        return lease.read(conn, options['lease']), None
    except psycopg2.Error as exc:
        if not conn.autocommit:
            conn.rollback()
        return None, describe_error(exc)


def check_leader(options, row, error=None, state=None):
    """Who holds the bot's lease (the database's clock, for people) and whether this host's leader runs. Fails when
    nobody holds it, when its holder stopped renewing it, or when the leader of this host does not run."""
    me, ttl = options['me'], float(options.get('ttl_seconds') or bot_leader.DEFAULTS['ttl_seconds'])
    state = bot_leader.read_state(options['state_file']) if state is None and options.get('state_file') else state
    running = bool(state and state.get('alive'))
    role = (state or {}).get('role') if running else None
    value = dict(lease=options['lease'], me=me, holder=(row or {}).get('holder'),
                 generation=(row or {}).get('generation'), renewed_age=(row or {}).get('renewed_age'),
                 expires_in=(row or {}).get('expires_in'), released_by=(row or {}).get('released_by'),
                 leader_running=running, role=role, takes_over_in=(state or {}).get('takes_over_in'),
                 active=bool(row and row.get('holder') == me))
    fix = 'systemctl status soulnear-leader and journalctl -u soulnear-leader on that host'
    if error is not None:
        return check(False, value, 'cannot read the bot lease %s: %s. Fix: %s' % (options['lease'], error, LOGS_FIX))
    if not running:
        why = ('no state file %s' % options.get('state_file')) if state is None else (
            'its state is %s s old' % state.get('age') if state.get('age') is not None else 'from an earlier boot')
        return check(False, value, 'soulnear-leader does not run on this host (%s): this host can neither take the '
                     'bot over nor fence its bot. Lease: %s. Fix: systemctl start soulnear-leader; %s'
                     % (why, lease.describe(row, me), fix.replace(' on that host', '')))
    here = 'this host (%s): %s' % (me, 'ACTIVE' if value['active'] else 'standby%s' % (
        '' if value['takes_over_in'] is None else ', may take over in %.0f s' % value['takes_over_in']))
    if row is None:
        return check(False, value, 'no bot lease %s in the database yet: the leaders create it when they start. '
                     'Fix: %s' % (options['lease'], fix))
    if not row['holder']:
        released = row.get('released_age')
        if released is not None and released <= ttl:
            return check(True, value, 'bot lease %s %s; %s' % (options['lease'], lease.describe(row, me), here),
                         'the bot is being handed over: no host runs it right now')
        return check(False, value, 'bot lease %s is %s: the bot runs on no host. Fix: %s on every bot host'
                     % (options['lease'], lease.describe(row, me), fix))
    if (row.get('renewed_age') or 0) > ttl:
        return check(False, value, 'bot lease %s: its holder %s has not renewed it for %.0f s (database clock, lease '
                     'time %g s): its leader, or its network to the database, is down; a standby takes over after '
                     '%g s of silence. Fix: %s' % (options['lease'], row['holder'], row['renewed_age'], ttl, ttl, fix))
    return check(True, value, 'bot lease %s %s; %s' % (options['lease'], lease.describe(row, me), here))


def check_bot_of_leader(name, options, row, previous_restart_count=None):
    """The bot container of a bot host under a leader: it runs (and is healthy) on the lease's holder; on a standby
    it exists and is stopped - a standby's bot that runs would be a second poller."""
    me = options['me']
    holder = (row or {}).get('holder')
    if holder == me:
        result = check_container(name, previous_restart_count, role='bot')
        result['value']['standby'] = False
        if not result['ok']:
            result['message'] += ' (this host holds the bot lease: soulnear-leader starts it again)'
        return result
    try:
        state = container_facts(name)
    except containers.DockerError as exc:
        return check(False, dict(name=name), 'cannot inspect container %s: %s' % (name, exc))
    value = dict((k, state.get(k)) for k in ('name', 'exists', 'running', 'status', 'health', 'restart_count',
                                             'exit_code'))
    value['standby'] = True
    elsewhere = 'the bot runs on %s' % holder if holder else 'no host holds the bot lease'
    if not state['exists']:
        return check(False, value, 'container %s does not exist: this standby host could not take the bot over. '
                     'Fix: deploy (make deploy or make redeploy)' % name)
    if state['running']:
        return check(False, value, 'container %s RUNS although this host stands by (%s): two bots would poll '
                     'Telegram. soulnear-leader stops it within a second; if it keeps running, docker stop %s and '
                     'look at journalctl -u soulnear-leader' % (name, elsewhere, name))
    return check(True, value, 'container %s stands by (%s, stopped; %s)' % (name, state['status'], elsewhere))


# -- the report -------------------------------------------------------------------------------------

def _opt(options, key):
    value = options.get(key)
    return DEFAULTS[key] if value is None else value


def _guarded(name, func, *args):
    """A database check whose query failed (connection lost, permission denied, timeout) fails with the reason."""
    try:
        return func(*args)
    except psycopg2.Error as exc:
        return check(False, dict(sqlstate=sqlstate_of(exc)), 'the %s check failed: %s. Fix: %s'
                     % (name, describe_error(exc), 'grant the app role access to it' if sqlstate_of(exc) == '42501'
                        else LOGS_FIX))


def check_migration_probe(probe):
    """app_migrations command: the bot's own probe (migration_check_command) in a throwaway container of the running
    bot's image, with its environment and network: exit 0 up to date, 1 a migration pending, anything else failing."""
    argv = probe['command'] if isinstance(probe['command'], list) else shlex.split(str(probe['command']))
    data = containers.inspect(probe['container'])
    image = ((data or {}).get('Config') or {}).get('Image')
    if not image:
        return check(False, dict(command=argv), 'the bot container %s does not exist, so its migration probe has no '
                     'image to run in. Fix: deploy (make deploy)' % probe['container'])
    args = ['run', '--rm', '--label', 'soulnear.component=bot-migrate-check']
    if probe.get('network'):
        args += ['--network', probe['network']]
    if probe.get('env_file'):
        args += ['--env-file', probe['env_file']]
    for path in probe.get('mounts') or []:
        args += ['-v', '%s:%s:ro' % (path, path)]
    try:
        proc = containers.run(args + ['--entrypoint', argv[0], image] + argv[1:], check=False, timeout=300)
    except containers.DockerError as exc:
        return check(False, dict(command=argv), 'the migration probe could not run: %s' % exc)
    lines = (proc.stdout + proc.stderr).decode('utf-8', 'replace').strip().splitlines()
    said = ' | '.join(lines[-3:]) or 'no output'
    value = dict(command=argv, image=image, exit_code=proc.returncode, output=lines[-10:])
    if proc.returncode == 0:
        return check(True, value, 'the bot\'s migration probe (%s) says up to date: %s' % (' '.join(argv), said))
    if proc.returncode == 1:
        return check(False, value, 'the bot\'s migration probe (%s) says a migration is pending: %s. Fix: deploy '
                     '(make deploy) or make migrate - the database is behind the running bot' % (' '.join(argv), said))
    return check(False, value, 'the bot\'s migration probe (%s) exited %d: %s. Fix: look at the probe '
                 '(app_migration_check_command) and the database' % (' '.join(argv), proc.returncode, said))


def run_checks(options, policy=None):
    """All configured checks; options are the db_health module's parameters (connection ones included)."""
    checks, skipped = {}, {}
    started = time.time()
    if policy is None:
        policy = RetryPolicy(retries=options.get('retries', 3))
    checks['database'], conn = check_database(options, policy)
    lease_row, lease_error = None, 'not read: no database connection'
    try:
        if conn is None:
            for name in DB_CHECKS:
                if (name != 'migrations' or options.get('migrations_path')) and \
                        (name != 'wal_archiving' or options.get('pitr_stanza')):
                    skipped[name] = 'not checked: no database connection'
        else:
            checks['tables'] = _guarded('tables', check_tables, conn, _opt(options, 'required_tables'))
            if options.get('data_guard_file'):
                checks['tables'] = _guarded('tables', check_data_guard, conn, checks['tables'], options)
            checks['connections'] = _guarded('connections', check_connections, conn,
                                             _opt(options, 'connections_warn_percent'))
            if options.get('pitr_stanza'):
                checks['wal_archiving'] = _guarded('wal_archiving', pitr.check_wal_archiving, conn, options)
            if options.get('leader'):
                lease_row, lease_error = read_lease(conn, options['leader'])
    finally:
        if conn is not None:
            conn.close()
    mode = options.get('migrations_mode') or 'sql'
    if mode == 'none':
        skipped['migrations'] = 'not checked: the bot has no migrations (app_migrations: none)'
    elif mode == 'command':
        probe = options.get('migrations_probe') or {}
        if not probe.get('command'):
            skipped['migrations'] = ('not checked: the bot migrates with its own command and no probe tells whether '
                                     'one is pending (set app_migration_check_command; docs/bots.md)')
        elif not probe.get('container'):
            skipped['migrations'] = ('not checked here: the bot\'s probe runs in a container of its image, from make '
                                     'health and each deploy (not every minute)')
        elif conn is not None:
            checks['migrations'] = check_migration_probe(probe)
    elif conn is not None and options.get('migrations_path'):
        checks['migrations'] = _guarded('migrations', check_migrations, dict(options, retries=0),
                                        options['migrations_path'], _opt(options, 'migrations_table'),
                                        _opt(options, 'migrations_format'))
    previous = options.get('restart_counts') or {}
    if options.get('db_external'):
        skipped['db_container'] = ('not checked: the database at %s is external; this deployment runs no container '
                                   'for it and never restarts it' % options['db_external'])
    for key, role in (('db_container', 'database'), ('bot_container', 'bot')):
        name = options.get(key)
        if name and not (key == 'db_container' and options.get('db_external')):
            if key == 'bot_container' and options.get('leader'):
                checks[key] = check_bot_of_leader(name, options['leader'], lease_row, previous.get(name))
            else:
                checks[key] = check_container(name, previous.get(name), role)
    if options.get('leader'):
        checks['leader'] = check_leader(options['leader'], lease_row, lease_error)
    if options.get('patroni_url'):
        checks['patroni'] = patroni.check_cluster(options['patroni_url'], max_lag_bytes=int(
            _opt(options, 'patroni_max_lag_bytes')), ca_cert=options.get('patroni_ca_cert'))
    if options.get('backup_dir'):
        checks['backup_age'] = check_backup_age(options['backup_dir'], float(_opt(options, 'backup_max_age_hours')),
                                                bool(options.get('require_backup')),
                                                _opt(options, 'backup_name_pattern'),
                                                database=options.get('login_db') or None,
                                                save=not options.get('read_only'))
    if options.get('pitr_stanza'):
        physical = pitr.check_physical_backup(options, archiving=checks.get('wal_archiving'))
        if physical is None:
            skipped['physical_backup'] = 'not checked: the database container is not running'
        else:
            checks['physical_backup'] = physical
    disk_paths = list(_opt(options, 'disk_paths'))
    if options.get('backup_dir'):
        disk_paths.append(options['backup_dir'])
    if options.get('pitr_stanza') and options.get('pitr_repo_dir'):
        disk_paths.append(options['pitr_repo_dir'])
    if disk_paths or options.get('db_volume'):
        checks['disk'] = check_disk(disk_paths, _opt(options, 'disk_max_used_percent'), options.get('db_volume'))
    return build_report(checks, skipped, time.time() - started)


def build_report(checks, skipped, seconds):
    ordered = dict((name, checks[name]) for name in CHECK_ORDER if name in checks)
    failed = [name for name, c in ordered.items() if not c['ok']]
    warnings = ['%s: %s' % (name, c['warning']) for name, c in ordered.items() if c.get('warning')]
    restart_counts = dict((c['value']['name'], c['value'].get('restart_count') or 0)
                          for name, c in ordered.items() if name.endswith('_container') and c['value'].get('exists'))
    report = dict(ok=not failed, checks=ordered, failed=failed, warnings=warnings, skipped=skipped,
                  restart_counts=restart_counts, duration_ms=int(seconds * 1000))
    report['msg'] = summarize(report)
    return report


def summarize(report):
    if report['failed']:
        return 'unhealthy: ' + ' | '.join('%s: %s' % (n, report['checks'][n]['message']) for n in report['failed'])
    text = 'healthy: %d check(s) passed' % len(report['checks'])
    if report['warnings']:
        text += ' with %d warning(s): %s' % (len(report['warnings']), ' | '.join(report['warnings']))
    return text


def report_lines(report):
    """The report for people, one line per check."""
    lines = ['%-13s %-4s %s' % (name, 'ok' if c['ok'] else 'FAIL', c['message'])
             + (' [warning: %s]' % c['warning'] if c.get('warning') else '')
             for name, c in report['checks'].items()]
    lines += ['%-13s skip %s' % (name, why) for name, why in report.get('skipped', {}).items()]
    return lines
