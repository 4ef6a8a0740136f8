# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health checks, the host monitor and the diagnostics checklist of a SoulNear deployment.

No Ansible imports: the db_health module and the `soulnear-health` host command
(installed by the monitoring role, run every 60 s by a systemd timer or cron)
share this file, so "is it healthy?" has one answer everywhere.

- run_checks(options): one structured report {ok, checks, failed, warnings, ...}.
  Every check is {ok, value, message[, warning]}; a failure message names the fix.
- Monitor: one monitoring run on the host: log a line, count consecutive
  failures, restart the failing container after `failures_before_recovery`
  runs, alert. Missing tables on an answering database are reported as
  suspected data loss and never "repaired".
- diagnose(config): the operators' diagnostics checklist (Postgres logs,
  restarts, volume, disk, OOM killer, memory, Docker daemon) as anomalies plus
  a readable report.
- main(argv): the host command's entry point.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import fcntl
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

from . import alert, containers
from .backup_files import DEFAULT_NAME_PATTERN, SIDECAR_SUFFIX, list_backups
from .migrate import MigrationError, status as migration_status
from .pg import ConnectError, RetryPolicy, connect, describe_error, is_retryable, psycopg2, sqlstate_of

CHECK_ORDER = ('database', 'tables', 'migrations', 'connections', 'db_container', 'bot_container',
               'backup_age', 'disk')
DB_CHECKS = ('tables', 'migrations', 'connections')  # need a database connection

# Option names are the db_health module's; the host command builds the same dict from its config files.
DEFAULTS = dict(
    required_tables=['aiogram_states', 'schema_migrations'],
    migrations_path=None,
    migrations_table='schema_migrations',
    connections_warn_percent=80,
    db_container=None,
    bot_container=None,
    restart_counts=None,
    backup_dir=None,
    backup_name_pattern=None,  # the backup command's (backup.DEFAULT_NAME_PATTERN)
    backup_max_age_hours=26.0,
    require_backup=False,
    disk_paths=[],
    db_volume=None,
    disk_max_used_percent=90,
)

LOGS_FIX = 'look at make logs-db / make logs-bot and make diagnose'


def check(ok, value, message, warning=None):
    result = dict(ok=bool(ok), value=value, message=message)
    if warning:
        result['warning'] = warning
    return result


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
        if unreachable:
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
    tables = list(tables or [])
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


def check_migrations(params, path, table):
    try:
        state = migration_status(params, path, table)
    except MigrationError as exc:
        return check(False, dict(path=path), '%s. Fix: point migrations_path at the bot\'s database/migrations '
                     'directory on this host' % exc)
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

def check_container(name, previous_restart_count=None, role='database'):
    """Running, Docker health status and restart count; warns when the restart count grew."""
    try:
        state = containers.container_state(name)
    except containers.DockerError as exc:
        return check(False, dict(name=name), 'cannot inspect container %s: %s' % (name, exc))
    value = dict((k, state.get(k)) for k in ('name', 'exists', 'running', 'status', 'health', 'restart_count',
                                             'started_at', 'oom_killed', 'exit_code'))
    logs = 'make logs-db' if role == 'database' else 'make logs-bot'
    if not state['exists']:
        return check(False, value, 'container %s does not exist: run deploy.yml (make deploy) to create it' % name)
    if not state['running']:
        oom = ' It was killed by the OOM killer: give the host more memory or lower the load.' \
            if state.get('oom_killed') else ''
        return check(False, value, 'container %s is %s (exit code %s).%s Fix: start it (make restart, or docker '
                     'start %s), then look at %s for why it stopped'
                     % (name, state['status'], state.get('exit_code'), oom, name, logs))
    if state['health'] == 'unhealthy':
        return check(False, value, 'container %s runs but its healthcheck reports unhealthy: see %s and docker '
                     'inspect --format "{{json .State.Health}}" %s' % (name, logs, name))
    warnings = []
    count = state['restart_count']
    if previous_restart_count is not None and count > previous_restart_count:
        warnings.append('Docker restarted %s %d time(s) since the last check (it crashed): see %s'
                        % (name, count - previous_restart_count, logs))
    elif previous_restart_count is None and count > 0:
        warnings.append('Docker restarted %s %d time(s) since it was last started by hand (it crashed): see %s'
                        % (name, count, logs))
    if state['health'] == 'starting':
        warnings.append('%s is still starting (healthcheck not passed yet)' % name)
    message = 'container %s is running%s, restart count %d' % (
        name, ' and %s' % state['health'] if state['health'] else '', count)
    return check(True, value, message, '; '.join(warnings) or None)


def check_backup_age(backup_dir, max_age_hours, require=False, pattern=None, now=None):
    """Age of the newest verified backup: one the backup command wrote a sha256 sidecar for, which it does only
    after pg_restore --list accepted the dump."""
    if not os.path.isdir(backup_dir):
        if require:
            return check(False, dict(backup_dir=backup_dir), 'backups directory %s does not exist: deploy the '
                         'backup role (ansible-playbook deploy.yml --tags backup)' % backup_dir)
        return check(True, dict(backup_dir=backup_dir, count=0), 'no backups yet (%s does not exist)' % backup_dir)
    try:
        backups = list_backups(backup_dir, pattern or DEFAULT_NAME_PATTERN)
    except OSError as exc:
        return check(False, dict(backup_dir=backup_dir), 'cannot read the backups directory: %s. Fix: run the check '
                     'as root (become: true)' % exc)
    verified = [b for b in backups if b['verified']]
    value = dict(backup_dir=backup_dir, count=len(backups), verified=len(verified), newest=None, age_hours=None)
    if not verified:
        if backups:
            return check(False, value, 'none of the %d backup(s) in %s is verified (no %s sidecar): the backup '
                         'command could not verify them with pg_restore --list; see backup.log in the log directory '
                         'and run make backup' % (len(backups), backup_dir, SIDECAR_SUFFIX))
        if require:
            return check(False, value, 'no backups in %s: run make backup and check the backup cron job'
                         % backup_dir)
        return check(True, value, 'no backups yet in %s' % backup_dir)
    newest = verified[0]
    # Backup names carry the host's local time (the backup command names them with datetime.now()).
    age = ((now or datetime.now()) - newest['time']).total_seconds() / 3600.0
    value.update(newest=newest['name'], age_hours=round(age, 2))
    warning = None
    if backups[0] is not newest:
        warning = ('the newest backup %s has no %s sidecar (its verification failed or it is still being written)'
                   % (backups[0]['name'], SIDECAR_SUFFIX))
    if age > max_age_hours:
        return check(False, value, 'the newest verified backup %s is %.1f h old (limit %s h): the daily backup is '
                     'not running or failing; check the backup cron job and backup.log in the log directory, then '
                     'run make backup' % (newest['name'], age, max_age_hours), warning)
    return check(True, value, 'newest verified backup %s is %.1f h old' % (newest['name'], age), warning)


def disk_usage(path):
    """df's view of the file system holding path (or its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    total = used + avail
    percent = round(100.0 * used / total, 1) if total else 0.0
    return dict(path=path, measured=probe, device=os.stat(probe).st_dev, used_percent=percent,
                free_mb=int(avail // (1024 * 1024)), total_mb=int(total // (1024 * 1024)))


def volume_mountpoint(name):
    """Host directory of a Docker volume; None when the volume does not exist."""
    proc = containers.run(['volume', 'inspect', '--format', '{{.Mountpoint}}', name], check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.decode('utf-8', 'replace').strip() or None


def check_disk(paths, max_used_percent, db_volume=None):
    paths = [p for p in (paths or []) if p]
    notes = []
    if db_volume:
        try:
            mount = volume_mountpoint(db_volume)
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
        return check(False, value, '; '.join(
            'disk of %s is %.1f%% full (%d MB free, limit %s%%)' % (u['path'], u['used_percent'], u['free_mb'],
                                                                   max_used_percent) for u in full)
            + ': free space (old backups beyond retention, docker image prune, docker builder prune) or grow the '
              'disk; PostgreSQL stops with "No space left on device" when it is full', '; '.join(notes) or None)
    summary = ', '.join('%s %.0f%% used' % (u['path'], u['used_percent']) for u in usages) or 'no paths'
    return check(True, value, summary, '; '.join(notes) or None)


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


def run_checks(options, policy=None):
    """All configured checks; options are the db_health module's parameters (connection ones included)."""
    checks, skipped = {}, {}
    started = time.time()
    if policy is None:
        policy = RetryPolicy(retries=options.get('retries', 3))
    checks['database'], conn = check_database(options, policy)
    try:
        if conn is None:
            for name in DB_CHECKS:
                if name != 'migrations' or options.get('migrations_path'):
                    skipped[name] = 'not checked: no database connection'
        else:
            checks['tables'] = _guarded('tables', check_tables, conn, _opt(options, 'required_tables'))
            checks['connections'] = _guarded('connections', check_connections, conn,
                                             _opt(options, 'connections_warn_percent'))
    finally:
        if conn is not None:
            conn.close()
    if conn is not None and options.get('migrations_path'):
        checks['migrations'] = _guarded('migrations', check_migrations, dict(options, retries=0),
                                        options['migrations_path'], _opt(options, 'migrations_table'))
    previous = options.get('restart_counts') or {}
    for key, role in (('db_container', 'database'), ('bot_container', 'bot')):
        name = options.get(key)
        if name:
            checks[key] = check_container(name, previous.get(name), role)
    if options.get('backup_dir'):
        checks['backup_age'] = check_backup_age(options['backup_dir'], float(_opt(options, 'backup_max_age_hours')),
                                                bool(options.get('require_backup')), options.get('backup_name_pattern'))
    disk_paths = list(_opt(options, 'disk_paths'))
    if options.get('backup_dir'):
        disk_paths.append(options['backup_dir'])
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


# -- the diagnostics checklist ------------------------------------------------------------------------

FATAL_LINE = re.compile(r'\b(FATAL|PANIC):\s+(.*)$')
# FATALs every normal restart or shutdown produces; counted in the report, not anomalies.
BENIGN_FATAL = re.compile(r'the database system is (starting up|shutting down|not yet accepting connections)|'
                          r'terminating connection due to administrator command', re.I)
NO_SPACE = re.compile(r'no space left on device', re.I)
RECOVERY = (
    re.compile(r'database system was interrupted', re.I),
    re.compile(r'database system was not properly shut down; automatic recovery in progress', re.I),
    re.compile(r'redo starts at', re.I),
)
OOM_LINE = re.compile(r'out of memory|oom-kill|invoked oom-killer|oom_reaper|memory cgroup out of memory', re.I)
LOG_TIMESTAMP = re.compile(r'^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:[.,]\d+)?'
                           r'\s?([+-]\d{2}:?\d{2}|Z|[A-Z]{3,5}\b)?')

DIAGNOSE_DEFAULTS = dict(
    since_hours=24.0,
    log_tail_lines=20000,
    disk_threshold_percent=90.0,
    memory_min_available_percent=10.0,
    recovery_loop_threshold=2,
    disk_paths=[],
    kernel_log='/var/log/kern.log',
    journal=True,
    dmesg=True,
    keep_reports=30,
)


def _run_tool(args, timeout=30):
    """(rc, text) of a host tool; rc None when it is not installed."""
    if not shutil.which(args[0]):
        return None, ''
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).decode('utf-8', 'replace')


def tail_lines(path, count, max_bytes=16 * 1024 * 1024):
    """The last `count` lines of a file without reading all of a big one."""
    with open(path, 'rb') as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block, data = 64 * 1024, b''
        while size > 0 and data.count(b'\n') <= count and len(data) < max_bytes:
            step = min(block, size)
            size -= step
            handle.seek(size)
            data = handle.read(step) + data
    lines = data.decode('utf-8', 'replace').splitlines()
    return lines[-count:]


def _line_time(line):
    """UTC datetime of a log line starting with a timestamp (PostgreSQL's %m, ISO), else None."""
    match = LOG_TIMESTAMP.match(line)
    if not match:
        return None
    try:
        stamp = datetime.strptime('%s %s' % (match.group(1), match.group(2)), '%Y-%m-%d %H:%M:%S')
    except ValueError:
        return None
    zone = match.group(3) or ''
    if zone[:1] in '+-' and zone:
        digits = zone[1:].replace(':', '')
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        return (stamp - offset if zone[0] == '+' else stamp + offset).replace(tzinfo=timezone.utc)
    if zone in ('UTC', 'GMT', 'Z'):
        return stamp.replace(tzinfo=timezone.utc)
    return stamp.astimezone(timezone.utc)  # no zone or a zone name: the host's local time


def recent_lines(lines, since):
    """Lines at or after `since`; a line without a timestamp belongs to the one before it."""
    keep, current = [], True
    for line in lines:
        stamp = _line_time(line)
        if stamp is not None:
            current = stamp >= since
        if current:
            keep.append(line)
    return keep


class Diagnosis:
    def __init__(self):
        self.anomalies = []
        self.sections = []

    def anomaly(self, check_name, message, fix):
        self.anomalies.append(dict(check=check_name, message=message, fix=fix))

    def section(self, title, lines):
        self.sections.append(dict(title=title, lines=list(lines)))


def _scan_postgres_logs(diag, config, since):
    container = config.get('db_container')
    sources, lines_by_source = [], {}
    if container:
        try:
            proc = containers.run(['logs', '--since', since.strftime('%Y-%m-%dT%H:%M:%SZ'), '--tail',
                                        str(config['log_tail_lines']), container], check=False, timeout=60)
            if proc.returncode == 0:
                text = (proc.stdout + proc.stderr).decode('utf-8', 'replace')
                lines_by_source['docker logs %s' % container] = text.splitlines()
            else:
                sources.append('docker logs %s: %s' % (container, proc.stderr.decode('utf-8', 'replace').strip()))
        except containers.DockerError as exc:
            sources.append('docker logs %s: %s' % (container, exc))
    log_dir = config.get('log_dir')
    if log_dir:
        for path in sorted(glob.glob(os.path.join(log_dir, 'postgres', '*.log'))):
            try:
                lines_by_source[path] = recent_lines(tail_lines(path, config['log_tail_lines']), since)
            except OSError as exc:
                sources.append('%s: %s' % (path, exc))
    fatal, benign, nospace, recovery = {}, 0, [], [0] * len(RECOVERY)
    for source, lines in lines_by_source.items():
        sources.append('%s: %d line(s) read' % (source, len(lines)))
        for line in lines:
            match = FATAL_LINE.search(line)
            if match:
                if BENIGN_FATAL.search(match.group(2)):
                    benign += 1
                else:
                    key = '%s: %s' % (match.group(1), match.group(2).strip())
                    entry = fatal.setdefault(key, dict(count=0, last=line))
                    entry['count'] += 1
                    entry['last'] = line
            if NO_SPACE.search(line):
                nospace.append(line)
            for index, pattern in enumerate(RECOVERY):
                if pattern.search(line):
                    recovery[index] += 1
    details = ['sources: %s' % ('; '.join(sources) or 'none')]
    for key, entry in sorted(fatal.items(), key=lambda kv: -kv[1]['count']):
        details.append('%5dx %s' % (entry['count'], key[:300]))
        details.append('       last: %s' % entry['last'][:300])
    if benign:
        details.append('%d FATAL line(s) of normal starts/shutdowns (not anomalies)' % benign)
    details += ['no space: %s' % line[:300] for line in nospace[-5:]]
    recoveries = max(recovery)
    details.append('crash recoveries: %d' % recoveries)
    diag.section('PostgreSQL logs (since %s)' % since.strftime('%Y-%m-%d %H:%M UTC'), details)
    for key, entry in sorted(fatal.items(), key=lambda kv: -kv[1]['count'])[:5]:
        fix = 'read the lines around it in make logs-db'
        if 'role "root" does not exist' in key:
            fix = 'a healthcheck or script connects without -U: use pg_isready -h 127.0.0.1 -U postgres -d <db>'
        elif 'password authentication failed' in key:
            fix = 'a client uses a wrong password: compare the app env file with vault_app_db_password'
        elif key.startswith('PANIC'):
            fix = 'the server crashed: check disk space and memory, then make logs-db; take a backup when it is up'
        diag.anomaly('postgres_log', '%d x %s' % (entry['count'], key[:200]), fix)
    if nospace:
        diag.anomaly('postgres_log', '%d "No space left on device" line(s)' % len(nospace),
                     'free disk space at once (see the disk section); PostgreSQL cannot write WAL')
    if recoveries >= max(1, int(config['recovery_loop_threshold'])):
        diag.anomaly('postgres_log', 'crash recovery ran %d time(s): the server was killed or crashed repeatedly '
                     '(recovery loop)' % recoveries,
                     'look for OOM kills and full disks below, and for PANIC lines; docker inspect %s' % container)
    elif recoveries:
        diag.anomaly('postgres_log', 'crash recovery ran once: the server was killed or crashed (not shut down '
                     'cleanly)', 'look for OOM kills below; stop it with docker stop, never docker kill')


def _check_containers(diag, config):
    lines, oom = [], []
    for key in ('db_container', 'bot_container'):
        name = config.get(key)
        if not name:
            continue
        try:
            state = containers.container_state(name)
        except containers.DockerError as exc:
            lines.append('%s: %s' % (name, exc))
            diag.anomaly('containers', 'cannot inspect %s: %s' % (name, exc), 'is the Docker daemon running? '
                         'systemctl status docker')
            continue
        lines.append('%s: exists=%s status=%s health=%s restart_count=%s oom_killed=%s started_at=%s' % (
            name, state['exists'], state['status'], state['health'], state['restart_count'],
            state.get('oom_killed'), state.get('started_at')))
        logs = 'make logs-db' if key == 'db_container' else 'make logs-bot'
        if not state['exists']:
            diag.anomaly('containers', 'container %s does not exist' % name, 'run deploy.yml (make deploy)')
            continue
        if not state['running']:
            diag.anomaly('containers', 'container %s is %s (exit code %s)' % (name, state['status'],
                                                                             state.get('exit_code')),
                         'make restart, then %s' % logs)
        elif state['health'] == 'unhealthy':
            diag.anomaly('containers', 'container %s is unhealthy' % name, logs)
        if state['restart_count']:
            diag.anomaly('containers', 'Docker restarted %s %d time(s) since it was last started by hand'
                         % (name, state['restart_count']), '%s shows why it exited' % logs)
        if state.get('oom_killed'):
            oom.append(name)
            diag.anomaly('memory', 'container %s was killed by the OOM killer' % name,
                         'add memory or swap, or lower shared_buffers/work_mem and the bot\'s pool size')
    diag.section('Containers', lines or ['no containers configured'])
    return oom


def _check_volume(diag, config):
    volume, container = config.get('db_volume'), config.get('db_container')
    if not volume:
        return
    lines = []
    try:
        proc = containers.run(['volume', 'inspect', volume], check=False)
        data = containers.inspect(container) if container else None
    except containers.DockerError as exc:
        diag.section('Data volume', ['cannot inspect: %s' % exc])
        return
    if proc.returncode != 0:
        lines.append('volume %s: missing' % volume)
        diag.anomaly('volume', 'data volume %s does not exist' % volume,
                     'the database runs without its data volume: do not remove the container; restore the latest '
                     'backup into a deployment with the volume (make restore)')
    else:
        info = json.loads(proc.stdout.decode('utf-8'))[0]
        lines.append('volume %s: present, mountpoint %s, created %s' % (volume, info.get('Mountpoint'),
                                                                         info.get('CreatedAt')))
    if data is not None:
        mounts = data.get('Mounts') or []
        ours = [m for m in mounts if m.get('Type') == 'volume' and m.get('Name') == volume]
        for m in mounts:
            lines.append('%s mount: %s %s -> %s' % (container, m.get('Type'), m.get('Name') or m.get('Source'),
                                                    m.get('Destination')))
        if not ours:
            others = [m for m in mounts if m.get('Destination', '').startswith('/var/lib/postgresql')]
            where = (' (its data directory is on %s %s)' % (others[0].get('Type'), others[0].get('Name')
                                                            or others[0].get('Source'))) if others else ''
            diag.anomaly('volume', 'container %s does not mount volume %s%s' % (container, volume, where),
                         'the data is not where backups and deploys expect it: take a backup now (make backup), '
                         'then redeploy so the container mounts %s' % volume)
    elif container:
        lines.append('container %s: missing' % container)
    diag.section('Data volume', lines)


def _check_disk(diag, config):
    paths = ['/'] + [p for p in (config.get('log_dir'), config.get('backup_dir')) if p]
    paths += list(config.get('disk_paths') or [])
    try:
        proc = containers.run(['info', '--format', '{{.DockerRootDir}}'], check=False, timeout=30)
        if proc.returncode == 0 and proc.stdout.strip():
            paths.append(proc.stdout.decode('utf-8').strip())
        if config.get('db_volume'):
            mount = volume_mountpoint(config['db_volume'])
            if mount:
                paths.append(mount)
    except containers.DockerError:
        pass
    lines, seen = [], set()
    threshold = float(config['disk_threshold_percent'])
    for path in paths:
        usage = disk_usage(path)
        lines.append('%s: %.1f%% used, %d MB free of %d MB' % (path, usage['used_percent'], usage['free_mb'],
                                                              usage['total_mb']))
        if usage['device'] in seen:
            continue
        seen.add(usage['device'])
        if usage['used_percent'] > threshold:
            diag.anomaly('disk', 'file system of %s is %.1f%% full (threshold %g%%, %d MB free)'
                         % (path, usage['used_percent'], threshold, usage['free_mb']),
                         'remove old backups beyond retention, docker image prune -a, docker builder prune, '
                         'or grow the disk')
    diag.section('Disk', lines)


def _kernel_lines(config, since):
    """Kernel log lines since `since` from the journal, kern.log or dmesg (the first that has any)."""
    notes = []
    if config.get('journal'):
        rc, text = _run_tool(['journalctl', '-k', '--no-pager', '-o', 'short-iso', '--since',
                              since.astimezone().strftime('%Y-%m-%d %H:%M:%S')])
        if rc == 0 and text.strip() and '-- No entries --' not in text:
            return text.splitlines(), 'journalctl -k'
        notes.append('journalctl -k: %s' % ('not installed' if rc is None else 'no kernel entries'))
    path = config.get('kernel_log')
    if path and os.path.exists(path):
        try:
            return recent_lines(tail_lines(path, 50000), since), path
        except OSError as exc:
            notes.append('%s: %s' % (path, exc))
    if config.get('dmesg'):
        rc, text = _run_tool(['dmesg', '--time-format', 'iso'])
        if rc == 0:
            return recent_lines(text.splitlines(), since), 'dmesg'
        notes.append('dmesg: %s' % ('not installed' if rc is None else text.strip()[:120]))
    return None, '; '.join(notes)


def _check_oom(diag, config, since, oom_containers):
    lines, source = _kernel_lines(config, since)
    if lines is None:
        diag.section('OOM killer', ['kernel log not readable here (%s); container OOMKilled flags: %s'
                                    % (source, ', '.join(oom_containers) or 'none')])
        return
    hits = [line for line in lines if OOM_LINE.search(line)]
    kills = [line for line in hits if re.search(r'killed process', line, re.I)] or hits
    diag.section('OOM killer', ['source: %s, %d line(s) since %s' % (source, len(lines),
                                                                     since.strftime('%Y-%m-%d %H:%M UTC'))]
                 + [line[:300] for line in hits[-10:]])
    if kills:
        diag.anomaly('memory', 'the kernel OOM killer fired %d time(s) (%s); last: %s'
                     % (len(kills), source, kills[-1].strip()[:200]),
                     'add memory or swap, or lower PostgreSQL shared_buffers/work_mem and the bot pool size')


def meminfo():
    values = {}
    with open('/proc/meminfo') as handle:
        for line in handle:
            key, _, rest = line.partition(':')
            values[key] = int(rest.split()[0]) * 1024
    return values


def _check_memory(diag, config):
    info = meminfo()
    total, available = info.get('MemTotal', 0), info.get('MemAvailable', info.get('MemFree', 0))
    swap_used = info.get('SwapTotal', 0) - info.get('SwapFree', 0)
    percent = 100.0 * available / total if total else 0.0
    diag.section('Memory', ['total %s, available %s (%.0f%%), swap used %s of %s'
                            % (human(total), human(available), percent, human(swap_used),
                               human(info.get('SwapTotal', 0)))])
    if percent < float(config['memory_min_available_percent']):
        diag.anomaly('memory', 'only %.1f%% of memory available (%s of %s)' % (percent, human(available),
                                                                               human(total)),
                     'find the consumer (docker stats --no-stream; ps aux --sort=-rss | head), add memory or swap')


def _check_docker_daemon(diag, config, since):
    lines = []
    rc, text = _run_tool(['docker', 'info', '--format', '{{.ServerVersion}}'])
    if rc != 0:
        lines.append('docker info: %s' % (text.strip()[:200] or 'docker CLI not installed'))
        diag.anomaly('docker', 'the Docker daemon does not answer', 'systemctl status docker; journalctl -u docker')
    else:
        lines.append('engine %s answers' % text.strip())
    if os.path.isdir('/run/systemd/system'):
        rc, text = _run_tool(['systemctl', 'show', 'docker.service', '-p', 'NRestarts', '-p', 'ActiveState',
                              '-p', 'ActiveEnterTimestamp'])
        props = dict(line.split('=', 1) for line in text.splitlines() if '=' in line) if rc == 0 else {}
        lines.append('docker.service: %s' % ', '.join('%s=%s' % kv for kv in sorted(props.items())))
        restarts = int(props.get('NRestarts') or 0)
        if restarts:
            diag.anomaly('docker', 'systemd restarted dockerd %d time(s) after it died' % restarts,
                         'journalctl -u docker shows why it exited')
        rc, text = _run_tool(['journalctl', '-u', 'docker.service', '--no-pager', '-o', 'short-iso', '--since',
                              since.astimezone().strftime('%Y-%m-%d %H:%M:%S')])
        if rc == 0:
            crashes = [line for line in text.splitlines()
                       if re.search(r'Main process exited, code=(killed|dumped|exited, status=[1-9])|'
                                    r'Failed with result|level=fatal|panic:', line)]
            lines.append('journal: %d line(s) about dockerd exiting abnormally since %s'
                         % (len(crashes), since.strftime('%Y-%m-%d %H:%M UTC')))
            lines += [line[:300] for line in crashes[-5:]]
            if crashes and not restarts:
                diag.anomaly('docker', 'dockerd exited abnormally %d time(s): %s' % (len(crashes),
                                                                                    crashes[-1][:200]),
                             'journalctl -u docker')
    else:
        rc, text = _run_tool(['ps', '-o', 'lstart=', '-C', 'dockerd'])
        started = ', '.join(line.strip() for line in text.splitlines() if line.strip())
        lines.append('no systemd; dockerd started: %s' % (started or 'not running'))
    diag.section('Docker daemon', lines)


def human(count):
    value = float(count)
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if value < 1024 or unit == 'TiB':
            return '%.1f%s' % (value, unit) if unit != 'B' else '%dB' % value
        value /= 1024
    return str(count)


def diagnose(config, now=None):
    """Run the diagnostics checklist; config: containers, volume, log/backup dirs and DIAGNOSE_DEFAULTS keys."""
    config = dict(DIAGNOSE_DEFAULTS, **dict((k, v) for k, v in config.items() if v is not None))
    now = now or datetime.now(timezone.utc)
    since = now - timedelta(hours=float(config['since_hours']))
    diag = Diagnosis()
    _scan_postgres_logs(diag, config, since)
    oom_containers = _check_containers(diag, config)
    _check_volume(diag, config)
    _check_disk(diag, config)
    _check_oom(diag, config, since, oom_containers)
    _check_memory(diag, config)
    _check_docker_daemon(diag, config, since)
    return dict(host=socket.gethostname(), generated_at=now.isoformat(timespec='seconds'),
                since=since.isoformat(timespec='seconds'), anomalies=diag.anomalies, sections=diag.sections,
                summary=diagnosis_summary(diag.anomalies))


def diagnosis_summary(anomalies):
    if not anomalies:
        return ['No anomalies found']
    return ['%d anomal%s found:' % (len(anomalies), 'y' if len(anomalies) == 1 else 'ies')] + [
        '[%s] %s -> %s' % (a['check'], a['message'], a['fix']) for a in anomalies]


def render_diagnosis(result):
    out = ['SoulNear diagnostics for %s' % result['host'], 'generated %s, looking back to %s'
           % (result['generated_at'], result['since']), '']
    out += ['== Summary'] + result['summary'] + ['']
    for section in result['sections']:
        out.append('== %s' % section['title'])
        out += ['  ' + line for line in section['lines']]
        out.append('')
    return '\n'.join(out)


def write_diagnosis(result, path, keep=None):
    """Write the report (0600: it quotes log lines) and prune older diagnose-*.txt next to it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as handle:
        handle.write(render_diagnosis(result))
    if keep:
        reports = sorted(glob.glob(os.path.join(directory, 'diagnose-*.txt')))
        for old in reports[:-int(keep)]:
            os.unlink(old)
    return path


# -- the host monitor -----------------------------------------------------------------------------------

MONITOR_DEFAULTS = dict(
    migrations_dir=None,
    required_tables=DEFAULTS['required_tables'],
    connections_warn_percent=80,
    backup_max_age_hours=26.0,
    backup_name_pattern=None,
    require_backup=False,
    disk_max_used_percent=90,
    disk_paths=[],
    check_bot=True,
    retries=3,
    connect_timeout=5,
    failures_before_recovery=2,
    max_restarts_per_hour=3,
    recovery_wait_seconds=120,
    db_stop_timeout=60,
    bot_stop_timeout=30,
    realert_minutes=60,
    state_file='/var/lib/soulnear/health-state.json',
    maintenance_file='/var/lib/soulnear/maintenance.json',
    log_file=None,
    resources_log=None,
    diagnose={},
)


def local_now():
    return datetime.now().astimezone().isoformat(timespec='seconds')


def append_line(path, line):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a') as handle:
        handle.write(line.rstrip('\n') + '\n')


class Config:
    """soulnear.json (soulnear role: connection, containers, alert) + monitoring.json (monitoring role)."""

    def __init__(self, config_path, monitoring_path):
        self.base = self._load(config_path, 'the soulnear role (ansible-playbook deploy.yml) writes it')
        self.monitoring = dict(MONITOR_DEFAULTS)
        if monitoring_path and os.path.exists(monitoring_path):
            self.monitoring.update(self._load(monitoring_path, ''))
        log_dir = self.base.get('log_dir') or '/var/log/soulnear'
        self.monitoring['log_file'] = self.monitoring['log_file'] or os.path.join(log_dir, 'health.log')
        self.monitoring['resources_log'] = self.monitoring['resources_log'] or os.path.join(log_dir,
                                                                                           'resources.log')
        db = self.base.get('db', {})
        self.db_container = db.get('container')
        self.db_volume = db.get('volume')
        self.bot_container = (self.base.get('bot') or {}).get('container') if self.monitoring['check_bot'] else None

    @staticmethod
    def _load(path, hint):
        try:
            with open(path) as handle:
                return json.load(handle)
        except (OSError, ValueError) as exc:
            raise SystemExit('soulnear-health: cannot read %s (%s)%s'
                             % (path, exc, '; ' + hint if hint else '')) from None

    def connection(self):
        db = self.base.get('db', {})
        return dict(login_host=db.get('host', '127.0.0.1'), login_port=int(db.get('port', 5432)),
                    login_user=db.get('app_user'), login_password=db.get('app_password'), login_db=db.get('name'),
                    connect_timeout=int(self.monitoring['connect_timeout']),
                    retries=int(self.monitoring['retries']), db_container=self.db_container)

    def health_options(self, restart_counts=None):
        mon = self.monitoring
        options = self.connection()
        options.update(required_tables=mon['required_tables'], migrations_path=mon['migrations_dir'],
                       connections_warn_percent=mon['connections_warn_percent'], db_container=self.db_container,
                       bot_container=self.bot_container, restart_counts=restart_counts,
                       backup_dir=self.base.get('backup_dir'), backup_max_age_hours=mon['backup_max_age_hours'],
                       backup_name_pattern=mon['backup_name_pattern'],
                       require_backup=mon['require_backup'], disk_paths=mon['disk_paths'],
                       db_volume=self.db_volume, disk_max_used_percent=mon['disk_max_used_percent'])
        return options

    def diagnose_config(self, overrides=None):
        config = dict(db_container=self.db_container, bot_container=(self.base.get('bot') or {}).get('container'),
                      db_volume=self.db_volume, log_dir=self.base.get('log_dir'),
                      backup_dir=self.base.get('backup_dir'))
        config.update(self.monitoring.get('diagnose') or {})
        config.update(dict((k, v) for k, v in (overrides or {}).items() if v is not None))
        return config


class Monitor:
    """One monitoring run: check, log one line, recover after consecutive failures, alert."""

    def __init__(self, config, sleep=time.sleep, clock=time.time):
        self.config = config
        self.mon = config.monitoring
        self.sleep = sleep
        self.clock = clock
        self.state = self._load_state()
        self.events = []       # what this run did, appended to the log line
        self.alert_errors = []

    # -- state ---------------------------------------------------------------
    def _load_state(self):
        try:
            with open(self.mon['state_file']) as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            state = {}
        for key in ('failures', 'alerted', 'restarts', 'restart_counts'):
            state.setdefault(key, {})
        return state

    def _save_state(self):
        path = self.mon['state_file']
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + '.tmp'
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as handle:
            json.dump(self.state, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)

    # -- alerts ----------------------------------------------------------------
    def alert(self, subject, text):
        channels = self.config.base.get('alert') or {}
        if not any(channels.get(k) for k in ('command', 'webhook_url', 'telegram_token')):
            self.events.append('alert not sent (no alert channel configured; set soulnear_alert_*): %s' % subject)
            return
        errors = alert.send(channels, subject, text)
        self.alert_errors += errors
        self.events.append('alert sent: %s' % subject if not errors else 'alert FAILED: %s' % '; '.join(errors))

    def _alert_due(self, key):
        last = self.state['alerted'].get(key)
        return last is None or self.clock() - last >= float(self.mon['realert_minutes']) * 60

    def _alert_once(self, key, subject, text):
        if self._alert_due(key):
            self.alert(subject, text)
            self.state['alerted'][key] = self.clock()

    # -- recovery --------------------------------------------------------------
    def _recent_restarts(self, target):
        hour_ago = self.clock() - 3600
        recent = [t for t in self.state['restarts'].get(target, []) if t > hour_ago]
        self.state['restarts'][target] = recent
        return recent

    def restart_and_wait(self, target):
        """Restart the database or bot container and wait until it works; returns (ok, text)."""
        name = self.config.db_container if target == 'database' else self.config.bot_container
        started = self.clock()
        timeout = int(self.mon['db_stop_timeout'] if target == 'database' else self.mon['bot_stop_timeout'])
        try:
            state = containers.container_state(name)
            if not state['exists']:
                return False, 'container %s does not exist; run deploy.yml to create it' % name
            containers.restart(name, timeout=timeout)
        except containers.DockerError as exc:
            return False, 'docker restart %s failed: %s' % (name, exc)
        deadline = started + float(self.mon['recovery_wait_seconds'])
        last = 'not checked yet'
        while True:
            ok, last = self._works(target, name)
            if ok:
                return True, 'restarted %s, working again after %.0fs' % (name, self.clock() - started)
            if self.clock() >= deadline:
                return False, 'restarted %s but it is not working after %ss: %s' % (
                    name, self.mon['recovery_wait_seconds'], last)
            self.sleep(2)

    def _works(self, target, name):
        if target == 'database':
            params = dict(self.config.connection(), retries=0, connect_timeout=3)
            result, conn = check_database(params, RetryPolicy(retries=0))
            if conn is not None:
                conn.close()
            return result['ok'], result['message']
        result = check_container(name, role='bot')
        healthy = result['ok'] and result['value'].get('health') in (None, 'healthy')
        return healthy, result['message']

    def _recover(self, target, checks):
        name = self.config.db_container if target == 'database' else self.config.bot_container
        recent = self._recent_restarts(target)
        if len(recent) >= int(self.mon['max_restarts_per_hour']):
            self.events.append('recovery skipped for %s: restarted %d time(s) in the last hour already; a human is '
                               'needed' % (name, len(recent)))
            self._alert_once('restart-limit-%s' % target, '%s keeps failing after %d restarts' % (name, len(recent)),
                             'The health monitor restarted %s %d time(s) within an hour and stops trying now.\n%s\n'
                             'Run make diagnose.' % (name, len(recent), checks))
            return
        self.state['restarts'].setdefault(target, []).append(self.clock())
        ok, text = self.restart_and_wait(target)
        self.state['failures'] = dict((k, 0) for k in self.state['failures'])
        if ok:
            self.events.append('recovered: %s' % text)
            self.alert('%s recovered by restart' % name, 'The health monitor restarted %s after %s consecutive '
                       'failed checks: %s\nFailing checks were:\n%s' % (name, self.mon['failures_before_recovery'],
                                                                         text, checks))
        else:
            self.events.append('recovery failed: %s' % text)
            self.alert('%s is down and recovery failed' % name, '%s\nFailing checks were:\n%s\nRun make diagnose.'
                       % (text, checks))

    # -- one run ------------------------------------------------------------------
    def run(self):
        report = run_checks(self.config.health_options(self.state['restart_counts']))
        self.state['restart_counts'].update(report['restart_counts'])
        pause = maintenance(self.mon['maintenance_file'], self.clock())
        if pause:
            # Deploys, restores and operators stop containers on purpose: check and log, never act or alert.
            self.state['failures'] = {}
            line = ' '.join(('%s %s MAINTENANCE (%s): %s || no recovery and no alerts until %s' % (
                local_now(), 'INFO' if report['ok'] else 'WARNING', pause['reason'], report['msg'],
                datetime.fromtimestamp(pause['until']).astimezone().isoformat(timespec='seconds'))).split())
            append_line(self.mon['log_file'], line)
            self._save_state()
            return report, line
        checks = report['checks']
        failed = set(report['failed'])
        for name in CHECK_ORDER:
            self.state['failures'][name] = self.state['failures'].get(name, 0) + 1 if name in failed else 0
        text = '\n'.join(report_lines(report))
        threshold = int(self.mon['failures_before_recovery'])
        data_loss = self._data_loss(report)
        db_down = self._database_down(checks)
        if db_down:
            # A bot that lost its database is unhealthy until the database is back: do not count that against it.
            self.state['failures']['bot_container'] = 0
        if data_loss:
            # Never restart anything here: a restarted bot or a re-run deploy could put an empty schema over the
            # volume an operator still has to restore from backup.
            self.events.append('no container was restarted and nothing was created')
            self._alert_once('data-loss', 'DATA LOSS SUSPECTED on the database', data_loss + '\n\n' + text)
        elif db_down:
            count = max(self.state['failures']['database'], self.state['failures']['db_container'])
            if count >= threshold:
                self._recover('database', text)
            else:
                self.events.append('database down (%d/%d failures before recovery)' % (count, threshold))
        elif 'bot_container' in failed:
            count = self.state['failures']['bot_container']
            if count >= threshold:
                self._recover('bot', text)
            else:
                self.events.append('bot failing (%d/%d failures before recovery)' % (count, threshold))
        elif 'database' in failed:
            self._alert_once('database-login', 'the database refuses the health check', checks['database']['message'])
        for name in report['failed']:
            if data_loss or name in ('database', 'db_container', 'bot_container'):
                continue  # the data-loss alert (with the whole report) or the recovery speaks for these
            if self.state['failures'][name] >= threshold:
                self._alert_once(name, 'health check %s failing' % name, checks[name]['message'])
        self._alert_restarts(report)
        if report['ok'] and not data_loss:
            self._resolve(report)
        if data_loss:
            line = '%s ERROR %s || %s' % (local_now(), data_loss, report['msg'])
        else:
            level = 'ERROR' if failed else ('WARNING' if report['warnings'] else 'INFO')
            line = '%s %s %s' % (local_now(), level, report['msg'])
        if self.events:
            line += ' || ' + ' || '.join(self.events)
        line = ' '.join(line.split())
        append_line(self.mon['log_file'], line)
        self._save_state()
        return report, line

    def _database_down(self, checks):
        """True when restarting the database container can help: it is not running or does not answer."""
        db, container = checks['database'], checks.get('db_container')
        if container is not None and not container['ok'] and not container['value'].get('running', False):
            return True
        # A refused login (wrong password, missing role) is not fixed by a restart.
        return not db['ok'] and db['value'].get('server_unreachable', True)

    def _data_loss(self, report):
        """A message when the database answers but looks re-initialised; None otherwise."""
        checks = report['checks']
        db, tables = checks['database'], checks.get('tables')
        if not db['ok']:
            return None
        ident = db['value'].get('system_identifier')
        previous = self.state.get('system_identifier')
        self.state['system_identifier'] = ident
        reasons = []
        if tables is not None and not tables['ok']:
            reasons.append('required table(s) %s are missing' % ', '.join(tables['value']['missing']))
        if previous and ident and previous != ident:
            reasons.append('the database cluster was re-initialised since the last check (system identifier %s -> '
                           '%s)' % (previous, ident))
        if not reasons:
            return None
        return ('DATA LOSS SUSPECTED: %s. The data volume was probably lost or re-initialised: restore the latest '
                'verified backup with make restore (backups in %s). Do not run anything that creates an empty '
                'schema before that' % ('; '.join(reasons), self.config.base.get('backup_dir') or 'the backups dir'))

    def _alert_restarts(self, report):
        for name, result in report['checks'].items():
            warning = result.get('warning') or ''
            if name.endswith('_container') and 'since the last check' in warning:
                self.alert('%s restarted by Docker' % result['value']['name'], warning)

    def _resolve(self, report):
        if any(not k.startswith('restart-limit') for k in self.state['alerted']):
            self.alert('health checks pass again', 'All health checks pass again (%s).' % report['msg'])
        self.state['alerted'] = {}


def maintenance(path, now=None):
    """The active maintenance window {reason, until, by} written by `soulnear-health pause`; None when there is
    none or it expired (an expired window is ignored, so a forgotten pause cannot silence the monitor for good)."""
    try:
        with open(path) as handle:
            data = json.load(handle)
        until = float(data['until'])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if until <= (time.time() if now is None else now):
        return None
    return dict(reason=str(data.get('reason') or 'maintenance'), until=until, by=data.get('by'))


def pause(path, minutes, reason):
    """Open a maintenance window: the monitor keeps checking and logging but neither restarts nor alerts."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = dict(reason=reason, until=time.time() + float(minutes) * 60, by='%s (pid %d)' % (socket.gethostname(),
                                                                                      os.getpid()))
    tmp = path + '.tmp'
    with open(tmp, 'w') as handle:
        json.dump(data, handle)
    os.replace(tmp, path)
    return data


# -- resource snapshot ------------------------------------------------------------------------------------

def snapshot_line(config):
    info = meminfo()
    total, available = info.get('MemTotal', 0), info.get('MemAvailable', 0)
    parts = [local_now(), 'mem_total=%s' % human(total), 'mem_available=%s (%.0f%%)'
             % (human(available), 100.0 * available / total if total else 0),
             'swap_used=%s' % human(info.get('SwapTotal', 0) - info.get('SwapFree', 0)),
             'load=%s' % ','.join('%.2f' % v for v in os.getloadavg())]
    paths = ['/'] + [p for p in (config.base.get('log_dir'), config.base.get('backup_dir')) if p]
    try:
        if config.db_volume:
            mount = volume_mountpoint(config.db_volume)
            if mount:
                paths.append(mount)
    except containers.DockerError:
        pass
    seen = set()
    for path in paths:
        usage = disk_usage(path)
        if usage['device'] not in seen:
            seen.add(usage['device'])
            parts.append('disk[%s]=%.0f%% (%d MB free)' % (path, usage['used_percent'], usage['free_mb']))
    names = [n for n in (config.db_container, (config.base.get('bot') or {}).get('container')) if n]
    if names:
        try:
            proc = containers.run(['stats', '--no-stream', '--format', '{{.Name}}={{.MemUsage}} cpu {{.CPUPerc}}']
                                       + names, check=False, timeout=60)
            for line in proc.stdout.decode('utf-8', 'replace').splitlines():
                parts.append('container[%s]' % ' '.join(line.split()))
        except containers.DockerError as exc:
            parts.append('containers: %s' % exc)
    return ' '.join(parts)


# -- command line ---------------------------------------------------------------------------------------------

DEFAULT_CONFIG = '/etc/soulnear/soulnear.json'
DEFAULT_MONITORING_CONFIG = '/etc/soulnear/monitoring.json'


def _parser(config_path, monitoring_path):
    parser = argparse.ArgumentParser(prog='soulnear-health', description='Health report, monitor, resource '
                                     'snapshot and diagnostics of the SoulNear deployment on this host.')
    parser.add_argument('--config', default=config_path, help='shared configuration (default %(default)s)')
    parser.add_argument('--monitoring-config', default=monitoring_path, help='default %(default)s')
    sub = parser.add_subparsers(dest='command')
    report = sub.add_parser('report', help='print the health report; exit 1 when unhealthy (the default)')
    report.add_argument('--json', action='store_true')
    monitor = sub.add_parser('monitor', help='one monitoring run (systemd timer / cron, every 60 s)')
    monitor.add_argument('-v', '--verbose', action='store_true', help='also print the log line')
    sub.add_parser('snapshot', help='append a disk/memory line to the resources log (hourly)')
    diag = sub.add_parser('diagnose', help='run the diagnostics checklist and write a report file')
    diag.add_argument('--output', help='report file (default <log_dir>/diagnose-<timestamp>.txt)')
    diag.add_argument('--json', action='store_true', help='print the result as JSON (for the playbook)')
    diag.add_argument('--disk-threshold', type=float, dest='disk_threshold_percent')
    diag.add_argument('--since-hours', type=float, dest='since_hours')
    diag.add_argument('--memory-min-available', type=float, dest='memory_min_available_percent')
    restart = sub.add_parser('restart', help='restart the database and/or the bot and wait until they work')
    restart.add_argument('target', choices=['db', 'bot', 'all'])
    hold = sub.add_parser('pause', help='maintenance window: keep checking, but no restarts and no alerts')
    hold.add_argument('--minutes', type=float, default=30, help='length of the window (default %(default)s)')
    hold.add_argument('--reason', default='maintenance', help='shown in health.log')
    sub.add_parser('resume', help='end the maintenance window now')
    return parser


def _locked(path, wait=False):
    """The monitor's exclusive lock, so overlapping cron runs and an operator's restart do not act at once;
    None when busy and not waiting."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handle = open(path + '.lock', 'a')
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        handle.close()
        return None
    return handle


def main(argv=None, config_path=DEFAULT_CONFIG, monitoring_config_path=DEFAULT_MONITORING_CONFIG):
    args = _parser(config_path, monitoring_config_path).parse_args(argv)
    config = Config(args.config, args.monitoring_config)
    command = args.command or 'report'
    if command == 'report':
        report = run_checks(config.health_options())
        if getattr(args, 'json', False):
            print(json.dumps(report, indent=2, default=str))
        else:
            print('\n'.join(report_lines(report) + ['', report['msg']]))
        return 0 if report['ok'] else 1
    if command == 'monitor':
        lock = _locked(config.monitoring['state_file'])
        if lock is None:
            return 0  # the previous run (waiting for a restarted container) is still going
        try:
            _report, line = Monitor(config).run()
        except Exception as exc:  # noqa: BLE001 - recorded where operators look, then raised for the journal
            append_line(config.monitoring['log_file'], '%s ERROR monitor run failed: %s: %s'
                        % (local_now(), exc.__class__.__name__, ' '.join(str(exc).split())))
            raise
        finally:
            lock.close()
        if args.verbose:
            print(line)
        return 0
    if command == 'snapshot':
        append_line(config.monitoring['resources_log'], snapshot_line(config))
        return 0
    if command == 'diagnose':
        overrides = dict(disk_threshold_percent=args.disk_threshold_percent, since_hours=args.since_hours,
                         memory_min_available_percent=args.memory_min_available_percent)
        dconfig = config.diagnose_config(overrides)
        result = diagnose(dconfig)
        output = args.output or os.path.join(config.base.get('log_dir') or '.', 'diagnose-%s.txt'
                                             % datetime.now().strftime('%Y%m%d-%H%M%S'))
        result['report_file'] = write_diagnosis(result, output, keep=dconfig.get('keep_reports'))
        if args.json:
            print(json.dumps(result, indent=1, sort_keys=True))
        else:
            print('\n'.join(result['summary'] + ['', 'report: %s' % result['report_file']]))
        return 0
    if command == 'pause':
        data = pause(config.monitoring['maintenance_file'], args.minutes, args.reason)
        print('monitor paused until %s (%s)' % (datetime.fromtimestamp(data['until']).astimezone().isoformat(
            timespec='seconds'), data['reason']))
        return 0
    if command == 'resume':
        try:
            os.unlink(config.monitoring['maintenance_file'])
        except FileNotFoundError:
            pass
        print('monitor active')
        return 0
    lock = _locked(config.monitoring['state_file'], wait=True)  # never while the monitor is recovering
    try:
        monitor = Monitor(config)
        targets = ['database', 'bot'] if args.target == 'all' else ['database' if args.target == 'db' else 'bot']
        for target in targets:
            if target == 'bot' and not config.bot_container:
                continue
            print('restarting %s ...' % target, flush=True)
            ok, text = monitor.restart_and_wait(target)
            print(('ok: ' if ok else 'FAILED: ') + text, flush=True)
            if not ok:
                return 1
        return 0
    finally:
        lock.close()


if __name__ == '__main__':  # pragma: no cover - the installed wrapper calls main()
    sys.exit(main())
