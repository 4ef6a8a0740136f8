# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host monitor: what `soulnear-health monitor` does every 60 s (systemd timer or cron), and its snapshot.

- Config: soulnear.json (soulnear role) + monitoring.json (monitoring role), turned into the checks' options.
- Monitor.run(): run the checks, log one line, count consecutive failures, restart the failing container
  after `failures_before_recovery` runs, alert. Missing tables on an answering database are reported as
  suspected data loss and never "repaired".
- maintenance / pause: a maintenance window in which the monitor checks and logs but neither acts nor alerts.
- snapshot_line: the hourly disk and memory line of resources.log.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import time
from datetime import datetime

from . import alert, containers
from .checks import CHECK_ORDER, DEFAULTS, check_container, check_database, report_lines, run_checks
from .diagnose import memory
from .files import append_line, disk_usage, human, write_private
from .pg import RetryPolicy

# The checks' settings default to the checks' own DEFAULTS (also the db_health module's defaults).
MONITOR_DEFAULTS = dict(
    dict((key, DEFAULTS[key]) for key in ('required_tables', 'connections_warn_percent', 'backup_max_age_hours',
                                          'backup_name_pattern', 'require_backup', 'disk_max_used_percent',
                                          'disk_paths')),
    migrations_dir=None,
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
        write_private(self.mon['state_file'], json.dumps(self.state, indent=1, sort_keys=True))

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
    data = dict(reason=reason, until=time.time() + float(minutes) * 60, by='%s (pid %d)' % (socket.gethostname(),
                                                                                      os.getpid()))
    write_private(path, json.dumps(data))
    return data


# -- resource snapshot ------------------------------------------------------------------------------------

def snapshot_line(config):
    mem = memory()
    parts = [local_now(), 'mem_total=%s' % human(mem['total']),
             'mem_available=%s (%.0f%%)' % (human(mem['available']), mem['percent']),
             'swap_used=%s' % human(mem['swap_used']), 'load=%s' % ','.join('%.2f' % v for v in os.getloadavg())]
    paths = ['/'] + [p for p in (config.base.get('log_dir'), config.base.get('backup_dir')) if p]
    try:
        if config.db_volume:
            mount = containers.volume_mountpoint(config.db_volume)
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
