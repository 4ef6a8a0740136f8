# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `soulnear-health` host command: report (default), monitor, snapshot, diagnose, restart, pause, resume, guard.

The monitoring role installs a copy of this package and a small wrapper that calls main() with the paths of
soulnear.json and monitoring.json.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import os
import sys
from datetime import datetime

from . import guard, watch
from .checks import report_lines, run_checks
from .diagnose import acknowledge, diagnose, write_diagnosis
from .files import append_line, lock, remove
from .monitor import Config, Monitor, local_now, pause, snapshot_line
from .pg import ConnectError, connect

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
    sub.add_parser('watch', help='run the monitor as soon as the database or bot container dies (the soulnear-watch '
                                 'service); exits 1 when the Docker event stream ends')
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
    sub.add_parser('acknowledge', help='an incident was dealt with: diagnose looks back no further than now (and '
                   'counts only new container restarts), and the monitor\'s restart budget starts over')
    data = sub.add_parser('guard', help='the data-loss guard: show its record, or clear its flag')
    data.add_argument('action', nargs='?', choices=['status', 'clear'], default='status')
    data.add_argument('--confirm', help='clear: the database name, to accept the current database as the real data')
    return parser



def _locked(path, wait=False):
    """The monitor's exclusive lock, so overlapping cron runs and an operator's restart do not act at once;
    None when busy and not waiting."""
    return lock(path + '.lock', wait=wait)


def _guard(config, args):
    """soulnear-health guard [status|clear --confirm DB]: the data-loss guard's entry of this host's database, or
    accept the current database and lower its flag (after moving the data by hand, or when the flag was a false
    alarm). The entries of other databases in the record stay as they are."""
    path = config.data_guard_file
    database = config.connection()['login_db']
    if args.action == 'status':
        try:
            found = guard.status(path, database)
        except guard.GuardError as exc:
            print(exc)
            return 1
        print(found['message'])
        return 1 if found['flag'] else 0
    if args.confirm != database:
        print('clearing the data-loss flag accepts the current database %s as the real data; confirm it with '
              '--confirm %s. Nothing was changed' % (database, database))
        return 2
    try:
        conn = connect(config.connection(), application_name='soulnear-health guard')
    except ConnectError as exc:
        print('cannot connect to the database: %s' % exc)
        return 1
    try:
        observed = guard.observe(conn, config.monitoring['required_tables'], state_file=path,
                                 migrations_table=config.monitoring['migrations_table'])
        done = guard.accept(path, observed, reason='accepted by %s (soulnear-health guard clear)'
                            % guard.default_actor())
    except guard.GuardError as exc:
        print(exc)
        return 1
    finally:
        conn.close()
    print(done['msg'])
    return 0


def main(argv=None, config_path=DEFAULT_CONFIG, monitoring_config_path=DEFAULT_MONITORING_CONFIG):
    args = _parser(config_path, monitoring_config_path).parse_args(argv)
    config = Config(args.config, args.monitoring_config)
    return COMMANDS[args.command or 'report'](config, args)


def _report(config, args):
    report = run_checks(config.health_options(update_guard=False))
    if getattr(args, 'json', False):
        print(json.dumps(report, indent=2, default=str))
    else:
        print('\n'.join(report_lines(report) + ['', report['msg']]))
    return 0 if report['ok'] else 1


def _monitor(config, args):
    held = _locked(config.monitoring['state_file'])
    if held is None:
        return 0  # the previous run (waiting for a restarted container) is still going
    try:
        _report_, line = Monitor(config).run()
    except Exception as exc:  # noqa: BLE001 - recorded where operators look, then raised for the journal
        append_line(config.monitoring['log_file'], '%s ERROR monitor run failed: %s: %s'
                    % (local_now(), exc.__class__.__name__, ' '.join(str(exc).split())))
        raise
    finally:
        held.close()
    if args.verbose:
        print(line)
    return 0


def _snapshot(config, _args):
    append_line(config.monitoring['resources_log'], snapshot_line(config))
    return 0


def _watch(config, _args):
    names = [n for n in (config.db_container, config.bot_container) if n]
    if not names:
        print('soulnear-health watch: no container of this host to watch (soulnear.json names none)')
        return 0
    watch.follow(names, watch.start_monitor_unit(), log=lambda m: print(m, flush=True))
    print('soulnear-health watch: the Docker event stream ended (the daemon restarted?); systemd starts the '
          'watcher again', flush=True)
    return 1


def _diagnose(config, args):
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


def _pause(config, args):
    data = pause(config.monitoring['maintenance_file'], args.minutes, args.reason)
    print('monitor paused until %s (%s)' % (datetime.fromtimestamp(data['until']).astimezone().isoformat(
        timespec='seconds'), data['reason']))
    return 0


def _resume(config, _args):
    remove(config.monitoring['maintenance_file'])
    print('monitor active')
    return 0


def _acknowledge(config, _args):
    data = acknowledge(config.diagnose_config())
    held = _locked(config.monitoring['state_file'], wait=True)
    try:
        monitor = Monitor(config)
        monitor.state['restarts'] = {}
        monitor.state['alerted'] = dict((k, v) for k, v in monitor.state['alerted'].items()
                                        if not k.startswith('restart-limit'))
        monitor._save_state()
    finally:
        held.close()
    print('acknowledged at %s: diagnose looks back no further than now (container restart counts %s), and the '
          'monitor may restart containers again' % (data['at'], data['restart_counts']))
    return 0


def _restart(config, args):
    held = _locked(config.monitoring['state_file'], wait=True)  # never while the monitor is recovering
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
        held.close()


COMMANDS = dict(report=_report, monitor=_monitor, snapshot=_snapshot, watch=_watch, diagnose=_diagnose, pause=_pause,
                resume=_resume, acknowledge=_acknowledge, restart=_restart, guard=_guard)


if __name__ == '__main__':  # pragma: no cover - the installed wrapper calls main()
    sys.exit(main())
