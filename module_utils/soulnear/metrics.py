# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Project metrics as Prometheus text files, read by node_exporter's textfile collector (the metrics role).

The code that knows a fact writes it here, in one call:

    monitor.Monitor.run      @metrics.monitor_run   every check's state, connections, pending migrations, containers,
                                                    backup age, disk, recoveries, the deploy lock (each monitor run)
    backup.create_backup     @metrics.backup_run    backup result, last success, size, verification, duration
    restore.restore_test     @metrics.restore_test_run   restore-test result and time
    audit.write              @metrics.audit_written deploy / rollback / migrate / restore / clean-redeploy results,
                                                    times, durations, downtime, "the last deploy was rolled back"

(or the plain functions record_health, record_lock, record_backup, record_restore_test, record_operation).

- One file per source in the textfile directory (TEXTFILE_DIR, Debian's node_exporter default; SOULNEAR_METRICS_DIR
  overrides it): soulnear_health.prom, soulnear_lock.prom, soulnear_backup.prom, soulnear_restore.prom,
  soulnear_operations.prom. Each is rewritten atomically (files.private_file: hidden temporary file, fsync,
  rename; then mode 0644 so node_exporter, running as the prometheus user, can read it) under one lock, so a
  scrape never sees half a file and two writers never lose each other's series. A metric name lives in one file.
- Every family has its HELP and TYPE lines (METRICS below, the one list of names); names follow Prometheus
  conventions: soulnear_ prefix, base units (_seconds, _bytes, _ratio), counters end in _total, times are
  _timestamp_seconds (Unix time).
- Series carry over between writes: a write sets the series it names and keeps the others of its file (a backup
  of one database keeps the other database's series); counters are incremented from the value in the file.
- Off when the directory does not exist (the metrics role is off, node_exporter not installed): every call is a
  no-op. Nothing here raises into its caller: a failed write returns False; metrics never fail a backup or deploy.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import inspect
import math
import os
import re
import time

from . import files

TEXTFILE_DIR = '/var/lib/prometheus/node-exporter'
DIR_ENV = 'SOULNEAR_METRICS_DIR'
LOCK_NAME = '.soulnear-metrics.lock'  # node_exporter reads *.prom files only

GAUGE, COUNTER = 'gauge', 'counter'

# name -> (file, type, help). The one list of the project's metric names; a name outside it is refused.
METRICS = dict(
    # soulnear_health.prom: the monitor, once a run (soulnear-health monitor, every 60 s)
    soulnear_health_ok=('health', GAUGE, '1 when every health check passed in the last monitor run, else 0.'),
    soulnear_health_check_ok=('health', GAUGE, '1 when the health check passed in the last monitor run, else 0.'),
    soulnear_health_check_warning=('health', GAUGE, '1 when the health check passed with a warning, else 0.'),
    soulnear_health_last_run_timestamp_seconds=('health', GAUGE, 'Unix time of the last monitor run.'),
    soulnear_health_check_duration_seconds=('health', GAUGE, 'Seconds the last monitor run took for its checks.'),
    soulnear_monitor_maintenance=('health', GAUGE, '1 while the monitor holds off (deploy lock held or paused): '
                                                   'it checks but restarts and alerts nothing.'),
    soulnear_monitor_recoveries_total=('health', COUNTER, 'Container restarts by the monitor, by result '
                                                          '(recovered, failed, skipped at the hourly limit).'),
    soulnear_db_connections=('health', GAUGE, 'Client connections to PostgreSQL in use.'),
    soulnear_db_connections_usable=('health', GAUGE, 'Connection slots usable by clients (max_connections minus '
                                                     'the reserved ones).'),
    soulnear_db_max_connections=('health', GAUGE, 'PostgreSQL max_connections.'),
    soulnear_migrations_pending=('health', GAUGE, 'Migrations of the running version not applied to the database.'),
    soulnear_migrations_failed=('health', GAUGE, 'Migrations recorded as failed in the tracking table.'),
    soulnear_container_up=('health', GAUGE, '1 when the container runs and its healthcheck does not report '
                                            'unhealthy, else 0.'),
    soulnear_container_restarts_total=('health', COUNTER, 'Restarts of the container by Docker (its RestartCount; '
                                                          'starting it by hand resets it).'),
    soulnear_backup_newest_age_seconds=('health', GAUGE, 'Age of the newest verified backup seen by the monitor.'),
    soulnear_disk_used_ratio=('health', GAUGE, 'Used share of the file system holding the path (df), 0 to 1.'),
    soulnear_wal_archiving_ok=('health', GAUGE, '1 when WAL archiving to the pgBackRest repositories works (the '
                                                'archiver\'s last attempt succeeded, few segments wait), else 0.'),
    soulnear_wal_archive_last_age_seconds=('health', GAUGE, 'Seconds since the archiver last archived a WAL segment '
                                                            '(grows on an idle database too).'),
    soulnear_wal_archive_failed_total=('health', COUNTER, 'Failed WAL archive attempts (pg_stat_archiver).'),
    soulnear_wal_segments_waiting=('health', GAUGE, 'Finished WAL segments waiting to be archived.'),
    soulnear_pitr_backup_newest_age_seconds=('health', GAUGE, 'Age of the newest physical backup of the pgBackRest '
                                                              'repository.'),
    soulnear_pitr_repo_free_bytes=('health', GAUGE, 'Free bytes on the disk of the local pgBackRest repository.'),
    # soulnear_lock.prom: the monitor (each run) and whoever else reports the lock
    soulnear_deploy_lock_held=('lock', GAUGE, '1 while a deploy, redeploy or restore holds the deploy lock '
                                              '(a stale lock counts as 0).'),
    soulnear_deploy_lock_acquired_timestamp_seconds=('lock', GAUGE, 'Unix time the held deploy lock was taken.'),
    # soulnear_backup.prom: create_backup (the soulnear-backup cron job, the pg_backup module)
    soulnear_backup_last_run_timestamp_seconds=('backup', GAUGE, 'Unix time the last backup run ended.'),
    soulnear_backup_last_run_success=('backup', GAUGE, '1 when the last backup run wrote a verified backup, else 0.'),
    soulnear_backup_last_success_timestamp_seconds=('backup', GAUGE, 'Unix time of the last verified backup.'),
    soulnear_backup_last_size_bytes=('backup', GAUGE, 'Size of the last verified backup.'),
    soulnear_backup_last_verified=('backup', GAUGE, '1 when pg_restore --list accepted the last backup run\'s dump, '
                                                    'else 0.'),
    soulnear_backup_last_duration_seconds=('backup', GAUGE, 'Seconds the last backup run took.'),
    soulnear_backup_runs_total=('backup', COUNTER, 'Backup runs by result (success, failed).'),
    # soulnear_restore.prom: restore_test (weekly cron job, pg_restore test_only)
    soulnear_restore_test_last_run_timestamp_seconds=('restore', GAUGE, 'Unix time the last restore test ended.'),
    soulnear_restore_test_last_success=('restore', GAUGE, '1 when the last restore test restored and checked the '
                                                          'backup, else 0.'),
    soulnear_restore_test_last_success_timestamp_seconds=('restore', GAUGE, 'Unix time of the last passed restore '
                                                                            'test.'),
    soulnear_restore_test_last_duration_seconds=('restore', GAUGE, 'Seconds the last restore test took.'),
    soulnear_restore_test_runs_total=('restore', COUNTER, 'Restore tests by result (success, failed).'),
    # soulnear_operations.prom: every audit log line (safe_redeploy, the restore and clean redeploy playbooks)
    soulnear_operations_total=('operations', COUNTER, 'Deploys, rollbacks, migrates, restores and clean redeploys '
                                                      'that changed something or failed, by result.'),
    soulnear_operation_last_timestamp_seconds=('operations', GAUGE, 'Unix time of the last operation of the kind.'),
    soulnear_operation_last_success=('operations', GAUGE, '1 when the last operation of the kind succeeded, else 0.'),
    soulnear_operation_last_success_timestamp_seconds=('operations', GAUGE, 'Unix time of the last successful '
                                                                            'operation of the kind.'),
    soulnear_operation_last_duration_seconds=('operations', GAUGE, 'Seconds the last operation of the kind took.'),
    soulnear_operation_last_downtime_seconds=('operations', GAUGE, 'Seconds the bot was down during the last '
                                                                   'operation of the kind.'),
    soulnear_deploy_rolled_back=('operations', GAUGE, '1 after a deploy that failed and was rolled back (or whose '
                                                      'rollback failed), until a deploy, rollback or clean redeploy '
                                                      'succeeds; else 0.'),
    soulnear_app_version_info=('operations', GAUGE, 'The bot version the last successful deploy, rollback or clean '
                                                    'redeploy started (value 1).'),
)

FILES = ('health', 'lock', 'backup', 'restore', 'operations')
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# -- where -------------------------------------------------------------------------------------------------------

def directory():
    return os.environ.get(DIR_ENV) or TEXTFILE_DIR


def enabled():
    """Metrics are written only where the textfile directory exists (the metrics role installed node_exporter)."""
    return os.path.isdir(directory())


def path_of(source):
    return os.path.join(directory(), 'soulnear_%s.prom' % source)


# -- the text format ---------------------------------------------------------------------------------------------

def _escape(value):
    return str(value).replace('\\', '\\\\').replace('\n', '\\n').replace('"', '\\"')


def _unescape(value):
    return re.sub(r'\\(.)', lambda m: '\n' if m.group(1) == 'n' else m.group(1), value)


def format_value(value):
    value = float(value)
    if math.isnan(value):
        return 'NaN'
    if math.isinf(value):
        return '+Inf' if value > 0 else '-Inf'
    if value.is_integer() and abs(value) < 1e15:
        return '%d' % value
    return repr(value)


def parse(text):
    """name -> {labels (sorted tuple of pairs) -> value} of a text file this module wrote."""
    series = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or line.startswith('#'):
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        key = tuple(sorted((k, _unescape(v)) for k, v in _LABEL.findall(labels or '')))
        series.setdefault(name, {})[key] = number
    return series


def render(series):
    """The text file: families in METRICS order, each with HELP and TYPE, samples sorted by labels."""
    lines = []
    for name in [n for n in METRICS if n in series] + sorted(n for n in series if n not in METRICS):
        samples = series[name]
        if not samples:
            continue
        _source, kind, text = METRICS.get(name, (None, GAUGE, name))
        lines.append('# HELP %s %s' % (name, text.replace('\\', '\\\\').replace('\n', '\\n')))
        lines.append('# TYPE %s %s' % (name, kind))
        for labels in sorted(samples):
            inner = ','.join('%s="%s"' % (k, _escape(v)) for k, v in labels)
            lines.append('%s%s %s' % (name, '{%s}' % inner if inner else '', format_value(samples[labels])))
    return '\n'.join(lines) + '\n' if lines else ''


def _key(labels):
    return tuple(sorted((str(k), '' if v is None else str(v)) for k, v in (labels or {}).items()))


# -- writing -------------------------------------------------------------------------------------------------------

def update(source, values=(), increments=(), replace=(), now=None):
    """Rewrite one source's file: values [(name, labels, value)] set, increments [(name, labels, by)] added to the
    counter in the file, families named in replace lose their other series. True when written, False when metrics
    are off or the write failed (never raises)."""
    if source not in FILES or not enabled():
        return False
    for name, _labels, _value in list(values) + list(increments):
        if METRICS.get(name, (None,))[0] != source:
            raise ValueError('metric %s does not belong in soulnear_%s.prom (see metrics.METRICS)' % (name, source))
    path = path_of(source)
    handle = None
    try:
        handle = files.lock(os.path.join(directory(), LOCK_NAME), wait=True)
        try:
            with open(path) as current:
                series = parse(current.read())
        except (OSError, UnicodeDecodeError):
            series = {}
        for name in replace:
            series.pop(name, None)
        for name, labels, value in values:
            if value is None:
                continue
            series.setdefault(name, {})[_key(labels)] = float(value)
        for name, labels, by in increments:
            samples = series.setdefault(name, {})
            samples[_key(labels)] = samples.get(_key(labels), 0.0) + float(by)
        text = render(series)
        with files.private_file(path, 'w') as out:
            out.write(text)
            os.fchmod(out.fileno(), 0o644)  # node_exporter reads it as the prometheus user
        return True
    except (OSError, ValueError):
        return False
    finally:
        if handle is not None:
            handle.close()


def _safely(func, *args, **kwargs):
    """Record without ever failing the caller (its own work is done or has failed on its own)."""
    try:
        return func(*args, **kwargs)
    except Exception:  # noqa: BLE001 - metrics must never break a backup, a deploy or the monitor
        return False


def _bool(value):
    return 1 if value else 0


# -- what the project records -------------------------------------------------------------------------------------

def record_health(report, events=(), maintenance=False, now=None):
    """One monitor run: checks.run_checks()'s report, the run's event texts (Monitor.events: 'recovered: ...',
    'recovery failed: ...', 'recovery skipped ...') and whether it held off for maintenance."""
    now = time.time() if now is None else now
    checks = report.get('checks') or {}
    values = [('soulnear_health_ok', {}, _bool(report.get('ok'))),
              ('soulnear_health_last_run_timestamp_seconds', {}, now),
              ('soulnear_monitor_maintenance', {}, _bool(maintenance))]
    if report.get('duration_ms') is not None:
        values.append(('soulnear_health_check_duration_seconds', {}, report['duration_ms'] / 1000.0))
    for name, result in checks.items():
        values.append(('soulnear_health_check_ok', dict(check=name), _bool(result.get('ok'))))
        values.append(('soulnear_health_check_warning', dict(check=name), _bool(result.get('warning'))))
        value = result.get('value')
        if name == 'connections' and isinstance(value, dict):
            values += [('soulnear_db_connections', {}, value.get('used')),
                       ('soulnear_db_connections_usable', {}, value.get('usable')),
                       ('soulnear_db_max_connections', {}, value.get('max_connections'))]
        elif name == 'migrations' and isinstance(value, dict) and 'pending' in value:
            values += [('soulnear_migrations_pending', {}, len(value.get('pending') or ())),
                       ('soulnear_migrations_failed', {}, len(value.get('failed') or ()))]
        elif name.endswith('_container') and isinstance(value, dict) and value.get('name'):
            labels = dict(container=value['name'], role='database' if name == 'db_container' else 'bot')
            up = value.get('running') and not value.get('restarting') and value.get('health') != 'unhealthy'
            values.append(('soulnear_container_up', labels, _bool(up)))
            if value.get('exists'):
                values.append(('soulnear_container_restarts_total', labels, value.get('restart_count') or 0))
        elif name == 'backup_age' and isinstance(value, dict) and value.get('age_hours') is not None:
            values.append(('soulnear_backup_newest_age_seconds', dict(database=value.get('database') or ''),
                           float(value['age_hours']) * 3600))
        elif name == 'wal_archiving' and isinstance(value, dict):
            values += [('soulnear_wal_archiving_ok', {}, _bool(result.get('ok'))),
                       ('soulnear_wal_archive_last_age_seconds', {}, value.get('last_archived_age_seconds')),
                       ('soulnear_wal_archive_failed_total', {}, value.get('failed_count')),
                       ('soulnear_wal_segments_waiting', {}, value.get('ready'))]
        elif name == 'physical_backup' and isinstance(value, dict):
            for repo in value.get('repositories') or ():
                if repo.get('age_hours') is not None:
                    values.append(('soulnear_pitr_backup_newest_age_seconds', dict(repo=str(repo.get('repo'))),
                                   float(repo['age_hours']) * 3600))
            values.append(('soulnear_pitr_repo_free_bytes', {}, value.get('repo_free_bytes')))
        elif name == 'disk' and isinstance(value, list):
            for usage in value:
                if isinstance(usage, dict) and usage.get('used_percent') is not None:
                    values.append(('soulnear_disk_used_ratio', dict(path=usage.get('path')),
                                   float(usage['used_percent']) / 100.0))
    increments = []
    for event in events or ():
        result = ('recovered' if event.startswith('recovered:') else 'failed' if event.startswith('recovery failed')
                  else 'skipped' if event.startswith('recovery skipped') else None)
        if result:
            increments.append(('soulnear_monitor_recoveries_total', dict(result=result), 1))
    # The run's gauges replace the previous run's (a check that is gone leaves no stale series); counters stay.
    replace = [n for n, (src, kind, _h) in METRICS.items() if src == 'health' and kind == GAUGE] + [
        'soulnear_container_restarts_total', 'soulnear_wal_archive_failed_total']
    return update('health', values, increments, replace)


def record_lock(status):
    """The deploy lock as lock.status() reports it ({held, stale, record})."""
    status = status or {}
    held = bool(status.get('held')) and not status.get('stale')
    record = status.get('record') or {}
    values = [('soulnear_deploy_lock_held', {}, _bool(held))]
    if held and record.get('since'):
        values.append(('soulnear_deploy_lock_acquired_timestamp_seconds', {}, float(record['since'])))
    return update('lock', values, replace=['soulnear_deploy_lock_held',
                                           'soulnear_deploy_lock_acquired_timestamp_seconds'])


def record_backup(database, ok, size=None, verified=None, duration=None, now=None):
    """One backup run of database: ok (a verified backup under its final name), its size in bytes, whether
    pg_restore --list accepted it, and the run's duration in seconds."""
    now = time.time() if now is None else now
    labels = dict(database=database or '')
    values = [('soulnear_backup_last_run_timestamp_seconds', labels, now),
              ('soulnear_backup_last_run_success', labels, _bool(ok)),
              ('soulnear_backup_last_verified', labels, _bool(ok if verified is None else verified)),
              ('soulnear_backup_last_duration_seconds', labels, duration)]
    if ok:
        values += [('soulnear_backup_last_success_timestamp_seconds', labels, now),
                   ('soulnear_backup_last_size_bytes', labels, size)]
    return update('backup', values, [('soulnear_backup_runs_total', dict(labels, result='success' if ok
                                                                         else 'failed'), 1)])


def record_restore_test(database, ok, duration=None, now=None):
    """One restore test of database's newest (or a named) backup."""
    now = time.time() if now is None else now
    labels = dict(database=database or '')
    values = [('soulnear_restore_test_last_run_timestamp_seconds', labels, now),
              ('soulnear_restore_test_last_success', labels, _bool(ok)),
              ('soulnear_restore_test_last_duration_seconds', labels, duration)]
    if ok:
        values.append(('soulnear_restore_test_last_success_timestamp_seconds', labels, now))
    return update('restore', values, [('soulnear_restore_test_runs_total', dict(labels, result='success' if ok
                                                                                else 'failed'), 1)])


SKIPPED_BACKUP_PREFIX = 'pre_'
ROLLED_BACK = ('rolled back', 'rollback failed')


def _timestamp(record, now):
    stamp = record.get('time')
    if stamp:
        try:
            from datetime import datetime
            return datetime.fromisoformat(str(stamp)).timestamp()
        except ValueError:
            pass
    return now


def record_operation(record, now=None):
    """One audit record (audit.entry()): event deploy | rollback | migrate | restore | clean-redeploy, result
    success | failed | rolled back | rollback failed | refused, duration, downtime, to_version."""
    now = time.time() if now is None else now
    event = str(record.get('event') or 'unknown')
    result = str(record.get('result') or 'success')
    when = _timestamp(record, now)
    labels = dict(operation=event)
    ok = result == 'success'
    values = [('soulnear_operation_last_timestamp_seconds', labels, when),
              ('soulnear_operation_last_success', labels, _bool(ok)),
              ('soulnear_operation_last_duration_seconds', labels, record.get('duration')),
              ('soulnear_operation_last_downtime_seconds', labels, record.get('downtime'))]
    replace = []
    if ok:
        values.append(('soulnear_operation_last_success_timestamp_seconds', labels, when))
    if event == 'deploy' and result in ROLLED_BACK:
        values.append(('soulnear_deploy_rolled_back', {}, 1))
    elif ok and event in ('deploy', 'rollback', 'clean-redeploy'):
        values.append(('soulnear_deploy_rolled_back', {}, 0))
        if record.get('to_version'):
            replace.append('soulnear_app_version_info')
            values.append(('soulnear_app_version_info', dict(version=record['to_version']), 1))
    increments = [('soulnear_operations_total', dict(operation=event, result=result.replace(' ', '_')), 1)]
    return update('operations', values, increments, replace)


# -- one line where the facts are known: decorators ------------------------------------------------------------

def _bound(func, args, kwargs):
    try:
        return inspect.signature(func).bind(*args, **kwargs).arguments
    except TypeError:
        return {}


def _database(arguments):
    settings = arguments.get('settings') or {}
    return arguments.get('db') or (settings.get('conn') or {}).get('login_db') or ''


def backup_run(func):
    """For backup.create_backup: records each real run (not check mode) of the regular backups; the pre_* ones
    (pre-deploy, pre-migrate, pre-restore safety dumps) are not the daily backup the alerts are about."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        arguments = _bound(func, args, kwargs)
        settings = arguments.get('settings') or {}
        pattern = arguments.get('pattern') or settings.get('name_pattern') or ''
        if arguments.get('check_mode') or os.path.basename(pattern).startswith(SKIPPED_BACKUP_PREFIX):
            return func(*args, **kwargs)
        started = time.time()
        try:
            result = func(*args, **kwargs)
        except Exception:
            _safely(record_backup, _database(arguments), False, duration=time.time() - started)
            raise
        _safely(record_backup, result.get('database') or _database(arguments), True, size=result.get('size'),
                verified=result.get('verified', True), duration=result.get('duration'))
        return result
    return wrapper


def restore_test_run(func):
    """For restore.restore_test: records whether the restore test passed."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        arguments = _bound(func, args, kwargs)
        started = time.time()
        try:
            result = func(*args, **kwargs)
        except Exception:
            _safely(record_restore_test, _database(arguments), False, duration=time.time() - started)
            raise
        _safely(record_restore_test, _database(arguments), True, duration=result.get('duration'))
        return result
    return wrapper


def monitor_run(func):
    """For monitor.Monitor.run (returns (report, line)): the run's report, its events, maintenance, the lock."""
    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        report, line = func(self, *args, **kwargs)
        _safely(record_health, report, getattr(self, 'events', ()), ' MAINTENANCE (' in (line or ''))
        _safely(_record_lock_of, self)
        return report, line
    return wrapper


def _record_lock_of(monitor):
    from . import lock
    config = monitor.config
    return record_lock(lock.status(config.lock_dir, config.lock_ttl_minutes))


def audit_written(func):
    """For audit.write(path, record): every audit line also counts as an operation."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        written = func(*args, **kwargs)
        if isinstance(written, dict):
            _safely(record_operation, written)
        return written
    return wrapper
