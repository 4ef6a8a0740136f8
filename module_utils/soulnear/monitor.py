# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host monitor: what `soulnear-health monitor` does every 60 s (systemd timer or cron), and its snapshot.

- Config: soulnear.json (soulnear role) + monitoring.json (monitoring role), turned into the checks' options.
- Monitor.run(): run the checks, log one line, count consecutive failures, recover, alert. The rules:
  - Maintenance: while a deploy, redeploy or restore holds the deploy lock (lock.status: held and not stale) or
    an operator paused the monitor, it checks and logs "MAINTENANCE (deploy by X since T)" but restarts nothing,
    alerts nothing and raises no flag; it resumes by itself when the lock is released or goes stale.
  - The database down: an alert at the first failed check ("down, will recover at the next failure"), a restart
    at the `failures_before_recovery`-th. A database container that EXITED WITH A NON-ZERO CODE (killed or
    crashed: `docker kill`, an OOM kill) and was not brought back by Docker's restart policy is restarted at the
    first failed check: no deploy stopped it (a deploy holds the lock) and no operator did (`docker stop` and the
    project's commands stop PostgreSQL cleanly, exit code 0; a planned stop is announced with
    `soulnear-health pause`). A recovery that works sends one "recovered" alert, which also ends the incident.
  - Crash recovery: while the server answers "starting up / in recovery" (SQLSTATE 57P03) and its container
    runs, the monitor waits instead of counting it down; after `startup_wait_minutes` it alerts (once), never
    restarts it (a restart would start the recovery over).
  - The bot: restarted after `failures_before_recovery` failed checks; a bot that is restarting, exited, or
    stayed "starting" past its start period fails its check (checks.check_container), so a crash loop never
    "passes again".
  - At most `max_restarts_per_hour` restarts of a container, then one alert and a human.
  - Data loss (the tables check: the data-loss guard's flag, another cluster, an empty database that held data,
    missing tables): nothing is restarted or created; the DATA LOSS alert repeats every `realert_minutes` until a
    restore or an operator lowers the guard's flag.
  - A newest backup that fails its checksum alerts at once.
  - A host reboot (boot id and the start of PID 1 changed) is reported once: when everything passes again, or
    still failing after `boot_grace_minutes`, during which the containers get time to come back by themselves.
  - Several bot hosts, one bot (leader.json, issue 25): the bot belongs to soulnear-leader. The bot check expects it
    to run on the lease's holder only, a standby's stopped bot is "standing by", not down, and the monitor never
    starts or restarts it (the leader does, on the host that holds the lease); it alerts instead.
- maintenance / pause: the operator's maintenance window.
- snapshot_line: the hourly disk and memory line of resources.log.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import time
from datetime import datetime

from . import alert, containers, defaults, metrics
from . import leader as bot_leader
from . import lock as deploy_lock
from .checks import CHECK_ORDER, DEFAULTS, check_container, check_database, docker_time, report_lines, run_checks
from .diagnose import memory
from .files import append_line, disk_usage, human, write_private
from .pg import RetryPolicy

# The checks' settings default to the checks' own DEFAULTS (also the db_health module's defaults).
MONITOR_DEFAULTS = dict(
    dict((key, DEFAULTS[key]) for key in ('required_tables', 'connections_warn_percent', 'backup_max_age_hours',
                                          'backup_name_pattern', 'require_backup', 'disk_max_used_percent',
                                          'disk_paths', 'pitr_backup_max_age_hours', 'pitr_archive_ready_max',
                                          'pitr_archive_slack_seconds',
                                          'migrations_table', 'migrations_format')),
    migrations_dir=None,
    migrations_mode='sql',
    migrations_probe={},
    check_bot=True,
    retries=3,
    connect_timeout=5,
    failures_before_recovery=2,
    max_restarts_per_hour=3,
    recovery_wait_seconds=120,
    db_stop_timeout=defaults.DB_STOP_TIMEOUT,
    bot_stop_timeout=defaults.BOT_STOP_TIMEOUT,
    realert_minutes=60,
    interval_seconds=60,
    startup_wait_minutes=15,
    boot_grace_minutes=3,
    recover_exited_at_once=True,
    hung_grace_seconds=5,
    state_file='/var/lib/soulnear/health-state.json',
    maintenance_file='/var/lib/soulnear/maintenance.json',
    data_guard_file=None,
    log_file=None,
    resources_log=None,
    diagnose={},
)


def local_now():
    return datetime.now().astimezone().isoformat(timespec='seconds')


class Config:
    """soulnear.json (soulnear role: connection, containers, alert) + monitoring.json (monitoring role)."""

    def __init__(self, config_path, monitoring_path, leader_path=None):
        self.base = self._load(config_path, 'the soulnear role (ansible-playbook deploy.yml) writes it')
        self.monitoring = dict(MONITOR_DEFAULTS)
        if monitoring_path and os.path.exists(monitoring_path):
            self.monitoring.update(self._load(monitoring_path, ''))
        log_dir = self.base.get('log_dir') or '/var/log/soulnear'
        self.monitoring['log_file'] = self.monitoring['log_file'] or os.path.join(log_dir, 'health.log')
        self.monitoring['resources_log'] = self.monitoring['resources_log'] or os.path.join(log_dir,
                                                                                            'resources.log')
        db = self.base.get('db', {})
        # A database this deployment does not own (db.mode external: a managed server, a Patroni cluster, the database
        # host of a two-host deployment) has no container here: it is checked over the network, never restarted.
        self.db_external = '%s:%s' % (db.get('host'), db.get('port', 5432)) if db.get('mode') == 'external' else None
        self.db_container = None if self.db_external else db.get('container')
        self.db_volume = None if self.db_external else db.get('volume')
        self.patroni_url = db.get('patroni_url') or None
        self.patroni_ca_cert = db.get('patroni_ca_file') or None
        self.bot_container = (self.base.get('bot') or {}).get('container') if self.monitoring['check_bot'] else None
        # The host's state directory holds the deploy lock and the data-loss guard's record next to the monitor's
        # state; soulnear.json names them (soulnear role), else they sit next to the state file.
        state_dir = os.path.dirname(os.path.abspath(self.monitoring['state_file']))
        lock_config = self.base.get('lock') or {}
        self.lock_dir = lock_config.get('dir') or os.path.join(state_dir, 'deploy.lock')
        self.lock_ttl_minutes = float(lock_config.get('ttl_minutes') or deploy_lock.DEFAULT_TTL_MINUTES)
        self.data_guard_file = (self.monitoring.get('data_guard_file') or self.base.get('data_guard_file')
                                or os.path.join(state_dir, 'data-guard.json'))
        # Several bot hosts, one bot: leader.json next to soulnear.json (the monitoring role's leader tasks write it
        # where the bot hosts share one lease; absent or enabled: false elsewhere).
        self.leader_path = leader_path or os.path.join(os.path.dirname(os.path.abspath(config_path)), 'leader.json')
        self.leader = None
        if os.path.exists(self.leader_path):
            data = self._load(self.leader_path, '')
            if data.get('enabled') and (self.base.get('bot') or {}).get('container'):
                self.leader = data

    def leader_options(self):
        """The checks' leader option: this host's part in the lease, or None without a leader."""
        if not self.leader:
            return None
        settings = dict(bot_leader.DEFAULTS, **dict((k, v) for k, v in self.leader.items() if v is not None))
        return dict(lease=settings['lease'], me=settings['me'], state_file=settings['state_file'],
                    ttl_seconds=float(settings['ttl_seconds']))

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
                    retries=int(self.monitoring['retries']), db_container=self.db_container,
                    ssl_mode=db.get('sslmode') or 'prefer', ca_cert=db.get('ca_file') or None,
                    db_external=self.db_external)

    def health_options(self, restart_counts=None, update_guard=False):
        """The checks' options. update_guard: the data-loss guard records and raises its flag (the monitor outside
        maintenance); otherwise it is only read (the report)."""
        mon = self.monitoring
        options = self.connection()
        # The bot's own migration probe runs a container: make health and each deploy run it, not every minute
        # (migrations_probe without a container says so).
        options.update(required_tables=mon['required_tables'], migrations_path=mon['migrations_dir'],
                       migrations_mode=mon['migrations_mode'], migrations_probe=dict(mon['migrations_probe'] or {}),
                       migrations_table=mon['migrations_table'], migrations_format=mon['migrations_format'],
                       connections_warn_percent=mon['connections_warn_percent'], db_container=self.db_container,
                       bot_container=self.bot_container, restart_counts=restart_counts,
                       backup_dir=self.base.get('backup_dir'), backup_max_age_hours=mon['backup_max_age_hours'],
                       backup_name_pattern=mon['backup_name_pattern'],
                       require_backup=mon['require_backup'], disk_paths=mon['disk_paths'],
                       db_volume=self.db_volume, disk_max_used_percent=mon['disk_max_used_percent'],
                       data_guard_file=self.data_guard_file, data_guard_update=update_guard,
                       data_guard_actor='soulnear-health monitor', read_only=not update_guard,
                       patroni_url=self.patroni_url, patroni_ca_cert=self.patroni_ca_cert,
                       leader=self.leader_options() if self.bot_container else None)
        pitr = self.base.get('pitr') or {}
        if pitr.get('enabled'):
            options.update(pitr_stanza=pitr.get('stanza'), pitr_repo_dir=pitr.get('repo_dir'),
                           pitr_backup_max_age_hours=mon['pitr_backup_max_age_hours'],
                           pitr_archive_ready_max=mon['pitr_archive_ready_max'],
                           pitr_archive_slack_seconds=mon['pitr_archive_slack_seconds'])
        return options

    def diagnose_config(self, overrides=None):
        config = dict(db_container=self.db_container, bot_container=(self.base.get('bot') or {}).get('container'),
                      db_volume=self.db_volume, log_dir=self.base.get('log_dir'),
                      backup_dir=self.base.get('backup_dir'),
                      ack_file=os.path.join(os.path.dirname(os.path.abspath(self.monitoring['state_file'])),
                                            'diagnose-ack.json'))
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

    def restart_and_wait(self, target, grace=None):
        """Restart the database or bot container and wait until it works; returns (ok, text). grace: seconds the
        container gets to stop before it is killed (default its clean-stop timeout)."""
        name = self.config.db_container if target == 'database' else self.config.bot_container
        if not name:
            return False, 'no %s container is configured (soulnear.json), so there is nothing to restart' % target
        if target == 'bot' and self.config.leader:
            allowed, why = bot_leader.may_start(self.config.leader_options()['state_file'])
            if not allowed:
                return False, ('not restarting %s: %s. The bot runs on the host that holds the lease: restart it '
                               'there (SOULNEAR_HOST=<host> make restart-bot), or move it with make failover'
                               % (name, why))
        started = self.clock()
        timeout = int(self.mon['db_stop_timeout'] if target == 'database' else self.mon['bot_stop_timeout'])
        if grace is not None:
            timeout = int(grace)
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

    def _recover(self, target, checks, why=None, grace=None):
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
        ok, text = self.restart_and_wait(target, grace=grace)
        self.state['failures'] = dict((k, 0) for k in self.state['failures'])
        why = why or 'after %s consecutive failed checks' % self.mon['failures_before_recovery']
        if ok:
            self.events.append('recovered: %s' % text)
            self.alert('%s recovered by restart' % name, 'The health monitor restarted %s %s: %s\nFailing checks '
                       'were:\n%s' % (name, why, text, checks))
            # This alert ends the incident: no "pass again" follows for the outage it reported.
            self.state['alerted'].pop('%s-down' % target, None)
        else:
            self.events.append('recovery failed: %s' % text)
            self.alert('%s is down and recovery failed' % name, '%s (%s)\nFailing checks were:\n%s\nRun make '
                       'diagnose.' % (text, why, checks))

    def _wake_checkpointer(self):
        """Commits wait longer than archive_timeout to be archived while the archiver reports no failure: wake
        PostgreSQL's checkpointer (SIGHUP to the postmaster, as pg_reload_conf does). It then sees archive_timeout
        passed and switches the WAL segment at once, and honours archive_timeout from then on (after a start it
        sleeps for checkpoint_timeout first: docs/pitr.md)."""
        name = self.config.db_container
        try:
            containers.run(['kill', '--signal', 'HUP', name], timeout=30)
        except containers.DockerError as exc:
            self.events.append('WAL archiving stalled; waking the checkpointer (docker kill --signal HUP %s) failed: '
                               '%s' % (name, exc))
            return
        self.events.append('WAL archiving stalled: woke the checkpointer of %s (SIGHUP), which switches the WAL '
                           'segment so its commits reach the repositories' % name)

    # -- maintenance, reboots -------------------------------------------------------------
    def hold(self):
        """Why the monitor must not act now: {reason, until} of an operator's pause, or the deploy lock held by a
        live run ({reason: 'deploy by X since T'}); None otherwise. A stale lock (killed run) does not hold it."""
        pause = maintenance(self.mon['maintenance_file'], self.clock())
        if pause:
            until = datetime.fromtimestamp(pause['until']).astimezone().isoformat(timespec='seconds')
            return dict(reason=pause['reason'], until='until %s' % until)
        try:
            held = deploy_lock.status(self.config.lock_dir, self.config.lock_ttl_minutes, now=self.clock())
        except OSError:
            return None
        if held['held'] and not held['stale']:
            record = held['record']
            since = datetime.fromtimestamp(float(record.get('since') or 0)).astimezone().isoformat(
                timespec='seconds')
            return dict(reason='%s by %s since %s' % (record.get('operation') or 'deploy',
                                                      record.get('holder') or 'unknown', since),
                        until='while the deploy lock %s is held' % self.config.lock_dir)
        return None

    def _note_boot(self):
        """Remember this boot; a boot other than the last one seen opens a pending reboot report."""
        ident, booted = boot_identity()
        previous = self.state.get('boot')
        self.state['boot'] = ident
        if previous and ident and previous != ident:
            self.state['reboot'] = dict(booted=booted or self.clock(), seen=self.clock())
            self.events.append('the host restarted (up since %s)' % _iso(booted))

    def _in_boot_grace(self, container=None):
        """True shortly after a reboot while the container (its check) has not been started since the boot: Docker
        is still bringing the deployment back. A container started after the boot that is down again is an
        incident like any other."""
        pending = self.state.get('reboot')
        if not pending:
            return False
        booted = pending.get('booted') or pending.get('seen') or self.clock()
        if self.clock() - booted >= float(self.mon['boot_grace_minutes']) * 60:
            return False
        started = docker_time((container or {}).get('value', {}).get('started_at'))
        return not (started and started > booted)

    def _report_reboot(self, report):
        """The one alert about a reboot: when everything passes, or when the grace time is over."""
        pending = self.state.get('reboot')
        if not pending:
            return
        booted = pending.get('booted') or pending.get('seen')
        if report['ok']:
            self.alert('the host restarted; all checks pass', 'The host restarted (up since %s); %.0f s after boot '
                       'everything passes again: %s' % (_iso(booted), self.clock() - booted, report['msg']))
        elif not self._in_boot_grace():
            self.alert('the host restarted and the deployment is NOT healthy', 'The host restarted (up since %s); '
                       '%.0f s after boot it is still unhealthy: %s\nThe monitor now recovers as usual.\n%s'
                       % (_iso(booted), self.clock() - booted, report['msg'], '\n'.join(report_lines(report))))
        else:
            return
        self.state.pop('reboot', None)

    # -- one run ------------------------------------------------------------------
    @metrics.monitor_run
    def run(self):
        hold = self.hold()
        report = run_checks(self.config.health_options(self.state['restart_counts'], update_guard=hold is None))
        self.state['restart_counts'].update(report['restart_counts'])
        self._note_boot()
        if hold:
            # Deploys, restores and operators stop containers on purpose: check and log, never act or alert.
            self.state['failures'] = {}
            self.state.pop('starting_since', None)
            line = ' '.join(('%s %s MAINTENANCE (%s): %s || no recovery and no alerts %s' % (
                local_now(), 'INFO' if report['ok'] else 'WARNING', hold['reason'], report['msg'],
                hold['until'])).split())
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
        starting = self._database_starting(checks)
        db_down = self._database_down(checks)
        if not starting:
            self.state.pop('starting_since', None)
        if db_down or starting:
            # A bot that lost its database is unhealthy until the database is back: do not count that against it.
            self.state['failures']['bot_container'] = 0
        if data_loss:
            # Never restart anything here: a restarted bot or a re-run deploy could put an empty schema over the
            # volume an operator still has to restore from backup.
            self.events.append('no container was restarted and nothing was created')
            self._alert_once('data-loss', 'DATA LOSS SUSPECTED on the database', data_loss + '\n\n' + text)
        elif starting:
            self._wait_for_startup(checks)
        elif db_down and self._in_boot_grace(checks.get('db_container')):
            self.state['failures']['database'] = self.state['failures']['db_container'] = 0
            self.events.append('the host booted %.0f s ago: waiting for Docker to start the containers'
                               % (self.clock() - self.state['reboot']['booted']))
        elif db_down:
            self._database_is_down(checks, text, threshold)
        elif 'bot_container' in failed and self._in_boot_grace(checks.get('bot_container')):
            self.state['failures']['bot_container'] = 0
            self.events.append('the host booted recently: waiting for the bot to come back')
        elif 'bot_container' in failed:
            self._bot_failing(checks, text, threshold)
        elif 'database' in failed:
            self._alert_once('database-login', 'the database refuses the health check', checks['database']['message'])
        self._other_checks(report, data_loss, threshold)
        self._alert_restarts(report)
        self._report_reboot(report)
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

    def _bot_failing(self, checks, text, threshold):
        """The bot's container fails: restarted at once when it exited nobody asked it to, else after threshold
        failed checks."""
        count = self.state['failures']['bot_container']
        exited = self._exited_unexpectedly(checks, 'bot_container')
        if self.config.leader:
            # The bot is soulnear-leader's: it starts it on the lease's holder and stops it everywhere else. A
            # restart from here would fight it (and on a standby start a second poller).
            self.events.append('bot failing (%d/%d failures before an alert); soulnear-leader starts and stops it, '
                               'the monitor does not' % (count, threshold))
            if count >= threshold:
                self._alert_once('bot-down', 'the bot fails its check on %s' % (self.config.leader.get('me')
                                                                                or 'this host'),
                                 'The bot check failed %d times in a row. The bot is started and stopped by '
                                 'soulnear-leader on the host that holds the lease, so the monitor does not restart '
                                 'it: look at journalctl -u soulnear-leader and make logs-bot.\n%s' % (count, text))
            return
        if exited and self.mon['recover_exited_at_once']:
            name = self.config.bot_container
            self.events.append('%s exited with code %s without a stop by a deploy or an operator: restarting it '
                               'at once' % (name, exited))
            self._alert_once('bot-down', '%s exited (code %s): restarting it' % (name, exited),
                             'The bot exited with code %s although no deploy or operator stopped it (a kill from '
                             'outside, or a stop Docker counts as manual), so Docker does not restart it. The '
                             'monitor restarts it now and says when it is healthy again.\n%s' % (exited, text))
            self._recover('bot', text, why='at once: it had exited with code %s without a stop by a deploy or an '
                                           'operator' % exited)
        elif count >= threshold:
            self._recover('bot', text)
        else:
            self.events.append('bot failing (%d/%d failures before recovery)' % (count, threshold))

    def _other_checks(self, report, data_loss, threshold):
        """The failing checks no recovery speaks for are alerted: after threshold runs, or at once for a corrupt
        newest backup and a stalled recovery point (which also wakes the checkpointer)."""
        checks = report['checks']
        stalled = 'wal_archiving' in report['failed'] and (checks['wal_archiving'].get('value') or {}).get('stalled')
        if stalled and not data_loss and self.config.db_container:
            self._wake_checkpointer()
        for name in report['failed']:
            if data_loss or name in ('database', 'db_container', 'bot_container'):
                continue  # the data-loss alert (with the whole report) or the recovery speaks for these
            # A corrupt newest backup, and commits that already wait longer than archive_timeout to reach the
            # repositories (a lost disk would take them), are said at the first failed check.
            at_once = (name == 'backup_age' and checks[name]['value'].get('corrupt')) or \
                (name == 'wal_archiving' and stalled)
            if at_once or self.state['failures'][name] >= threshold:
                self._alert_once(name, 'health check %s failing' % name, checks[name]['message'])

    def _database_is_down(self, checks, text, threshold):
        if self.config.db_external:
            self.events.append('the external database at %s is down; this deployment does not own it, so nothing is '
                               'restarted' % self.config.db_external)
            self._alert_once('database-down', 'the external database at %s is down' % self.config.db_external,
                             'The database failed its health check. This deployment does not own it (soulnear_db_mode '
                             'external), so the monitor does not restart anything: check the network path to it and '
                             'its provider or cluster (a Patroni cluster elects a new leader by itself).\n%s' % text)
            return
        name = self.config.db_container
        count = max(self.state['failures']['database'], self.state['failures']['db_container'])
        exited = self._exited_unexpectedly(checks)
        hung = self._database_hung(checks)
        if hung and count >= threshold:
            grace = int(self.mon['hung_grace_seconds'])
            self.events.append('database HUNG at %d checks in a row: stopping it with %d s of grace, then starting it'
                               % (count, grace))
            self._recover('database', text, grace=grace, why='as HUNG: running but not answering within the '
                          'connect timeout at %d checks in a row; stopped with %d s of grace (a frozen process cannot '
                          'honour a clean stop), then started' % (count, grace))
        elif hung:
            self.events.append('database HUNG: its container runs but the server does not answer (%d/%d failures '
                               'before recovery)' % (count, threshold))
            self._alert_once('database-down', '%s is HUNG: running but not answering' % name,
                             'The database container runs, but its server did not answer within the connect timeout '
                             '(%s). A hung server does not come back by itself: if the next check (in about %s s) '
                             'fails too, the monitor kills it after %s s and starts it (crash recovery replays its '
                             'WAL: no committed row is lost).\n%s' % (checks['database']['value'].get('seconds'),
                                                                      self.mon['interval_seconds'],
                                                                      self.mon['hung_grace_seconds'], text))
        elif exited and self.mon['recover_exited_at_once']:
            self.events.append('%s exited with code %s without a stop by a deploy or an operator: restarting it '
                               'at once' % (name, exited))
            self._recover('database', text, why='at once: it had exited with code %s without a stop by a deploy '
                                                'or an operator (Docker does not restart a container it counts as '
                                                'stopped by hand)' % exited)
        elif count >= threshold:
            self._recover('database', text)
        else:
            self.events.append('database down (%d/%d failures before recovery)' % (count, threshold))
            self._alert_once('database-down', '%s is down: the monitor restarts it at the next failed check'
                             % (name or 'the database'),
                             'The database failed its health check; the monitor restarts it if the next check (in '
                             'about %s s) fails too.\n%s' % (self.mon['interval_seconds'], text))

    def _wait_for_startup(self, checks):
        now = self.clock()
        since = self.state.setdefault('starting_since', now)
        waited = now - since
        self.state['failures']['database'] = self.state['failures']['db_container'] = 0
        self.events.append('the database is starting up or recovering from a crash (SQLSTATE 57P03) for %.0f s while '
                           'its container runs: waiting, not restarting it' % waited)
        if waited >= float(self.mon['startup_wait_minutes']) * 60:
            self._alert_once('database-starting', 'the database is still starting after %.0f min' % (waited / 60),
                             'PostgreSQL has answered "starting up / in recovery" (SQLSTATE 57P03) for %.0f s. The '
                             'monitor does not restart it (that would start the recovery over). Look at make logs-db '
                             'and make diagnose.\n%s' % (waited, checks['database']['message']))

    def _database_hung(self, checks):
        """True when the database container runs (not restarting) but its server did not answer a connection within
        the connect timeout: stopped (SIGSTOP), deadlocked or swapped out - alive to Docker, dead to the bot."""
        db, container = checks['database'], checks.get('db_container')
        if db['ok'] or container is None or not container['value'].get('running') or \
                container['value'].get('restarting'):
            return False
        return bool(db['value'].get('server_unreachable')) and 'timeout' in db['message'].lower()

    def _database_starting(self, checks):
        """True while PostgreSQL answers 57P03 (starting up, in crash recovery, shutting down) and its container
        runs: waiting helps, a restart does not."""
        db, container = checks['database'], checks.get('db_container')
        if db['ok'] or db['value'].get('sqlstate') != '57P03':
            return False
        return container is None or bool(container['value'].get('running'))

    def _exited_unexpectedly(self, checks, key='db_container'):
        """The exit code of a container (the database's, or key's) that exited on its own or was killed (non-zero,
        or OOM); None when it runs, is missing, or stopped cleanly (exit code 0: docker stop, a deploy)."""
        container = checks.get(key)
        if container is None or container['ok']:
            return None
        value = container['value']
        if not value.get('exists') or value.get('running') or value.get('restarting'):
            return None
        code = value.get('exit_code')
        if value.get('oom_killed'):
            return '%s (OOM killed)' % code
        return code if code not in (None, 0) else None

    def _database_down(self, checks):
        """True when restarting the database container can help: it is not running or does not answer."""
        db, container = checks['database'], checks.get('db_container')
        if container is not None and not container['ok'] and not container['value'].get('running', False):
            return True
        # A refused login (wrong password, missing role) is not fixed by a restart.
        return not db['ok'] and db['value'].get('server_unreachable', True)

    def _data_loss(self, report):
        """The tables check's message when the database answers but its data looks lost (the data-loss guard, or
        required tables missing); None otherwise."""
        checks = report['checks']
        db, tables = checks['database'], checks.get('tables')
        if not db['ok'] or tables is None or tables['ok']:
            return None
        if tables['value'].get('data_guard', {}).get('error'):
            return None
        message = tables['message']
        if not message.startswith('DATA LOSS SUSPECTED'):
            message = ('DATA LOSS SUSPECTED: required table(s) %s are missing. The data volume was probably lost '
                       'or re-initialised: restore the latest verified backup with make restore (backups in %s). '
                       'Do not run anything that creates an empty schema before that'
                       % (', '.join(tables['value'].get('missing') or []),
                          self.config.base.get('backup_dir') or 'the backups dir'))
        return message

    def _alert_restarts(self, report):
        for name, result in report['checks'].items():
            warning = result.get('warning') or ''
            if name.endswith('_container') and 'since the last check' in warning:
                self.alert('%s restarted by Docker' % result['value']['name'], warning)

    def _resolve(self, report):
        if any(not k.startswith('restart-limit') for k in self.state['alerted']):
            self.alert('health checks pass again', 'All health checks pass again (%s).' % report['msg'])
        self.state['alerted'] = {}


def _iso(stamp):
    if not stamp:
        return 'an unknown time'
    return datetime.fromtimestamp(float(stamp)).astimezone().isoformat(timespec='seconds')


def boot_identity():
    """(identity of this boot, when it booted): the kernel's boot id and the start of PID 1, so restarting a
    container that runs systemd (the sandbox, a Molecule VPS) counts as a reboot too."""
    try:
        with open('/proc/sys/kernel/random/boot_id') as handle:
            boot_id = handle.read().strip()
    except OSError:
        boot_id = ''
    booted = None
    start = ''
    try:
        with open('/proc/1/stat') as handle:
            start = handle.read().rsplit(')', 1)[1].split()[19]  # field 22: start time in clock ticks after boot
        with open('/proc/stat') as handle:
            btime = [int(line.split()[1]) for line in handle if line.startswith('btime ')][0]
        booted = btime + int(start) / float(os.sysconf('SC_CLK_TCK'))
    except (OSError, IndexError, ValueError):
        pass
    return ('%s/%s' % (boot_id, start) if boot_id or start else None), booted


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
