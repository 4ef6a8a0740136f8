# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `soulnear-health` host command: report (default), monitor, snapshot, diagnose, restart, pause, resume, guard,
leader (run | status | wait: several bot hosts, one bot) and failover.

The monitoring role installs a copy of this package and a small wrapper that calls main() with the paths of
soulnear.json and monitoring.json.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import getpass
import json
import os
import sys
import time
from datetime import datetime

from . import guard, lease, watch
from . import leader as bot_leader
from .checks import check_bot_of_leader, check_leader, read_lease, report_lines, run_checks
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
    lead = sub.add_parser('leader', help='several bot hosts, one bot: run (the soulnear-leader service), status '
                          '(which host holds the bot lease; exit 1 when unhealthy), wait (until a host holds it and, '
                          'on that host, the bot runs)')
    lead.add_argument('action', nargs='?', choices=['run', 'status', 'wait'], default='status')
    lead.add_argument('--json', action='store_true', help='status: the checks as JSON')
    lead.add_argument('--brief', action='store_true', help='status: one line (make ps); nothing without a leader')
    lead.add_argument('--timeout', type=float, default=120, help='wait: seconds (default %(default)s)')
    move = sub.add_parser('failover', help='move the bot to another bot host: its holder stops its bot, then '
                          'releases the lease to HOST (default: any other bot host), which starts its own')
    move.add_argument('--to', dest='to', help='the bot host (its inventory name) that takes the bot over')
    move.add_argument('--timeout', type=float, default=120, help='seconds to wait for the move (default '
                      '%(default)s)')
    move.add_argument('--json', action='store_true', help='the outcome as JSON')
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
            if target == 'bot' and args.target == 'all' and config.leader:
                allowed, why = bot_leader.may_start(config.leader_options()['state_file'])
                if not allowed:
                    print('not restarting the bot: %s' % why, flush=True)
                    continue
            print('restarting %s ...' % target, flush=True)
            ok, text = monitor.restart_and_wait(target)
            print(('ok: ' if ok else 'FAILED: ') + text, flush=True)
            if not ok:
                return 1
        return 0
    finally:
        held.close()


# -- several bot hosts, one bot (issue 25) ---------------------------------------------------------------------

def leader_report(config):
    """This host's view of the bot lease: {ok, checks (leader, bot_container), lines, lease, me, holder, active}."""
    options = config.leader_options()
    row, error = None, None
    try:
        conn = connect(dict(config.connection(), retries=1), application_name='soulnear-health leader')
    except ConnectError as exc:
        error = str(exc)
    else:
        try:
            row, error = read_lease(conn, options)
        finally:
            conn.close()
    checks = dict(bot_container=check_bot_of_leader(config.base['bot']['container'], options, row),
                  leader=check_leader(options, row, error))
    ok = all(c['ok'] for c in checks.values())
    lines = report_lines(dict(checks=checks))
    return dict(ok=ok, checks=checks, lines=lines, lease=lease.jsonable(row), me=options['me'],
                holder=(row or {}).get('holder'), active=bool(row and row.get('holder') == options['me']),
                msg=('healthy' if ok else 'unhealthy: ' + ' | '.join(
                    '%s: %s' % (name, c['message']) for name, c in checks.items() if not c['ok'])))


def _no_leader(config, args):
    if not getattr(args, 'brief', False):
        print('no leader on this host (%s absent or not enabled): every bot host runs its bot (one bot host, or '
              'app_instances: all)' % config.leader_path)
    return 0


def _leader(config, args):
    if args.action == 'run':
        try:
            return bot_leader.run_leader(config)
        except bot_leader.LeaderError as exc:
            print('soulnear-leader: %s' % exc, flush=True)
            return 2
    if not config.leader:
        return _no_leader(config, args)
    if args.action == 'wait':
        return _leader_wait(config, args)
    report = leader_report(config)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    elif args.brief:
        print('bot lease %s: %s' % (config.leader_options()['lease'], report['checks']['leader']['message']))
    else:
        print('\n'.join(report['lines'] + ['', report['msg']]))
    return 0 if report['ok'] else 1


def _leader_wait(config, args):
    """Until some host holds the lease and, when it is this host, its bot runs (healthy when it has a healthcheck)."""
    deadline = time.monotonic() + max(0.0, args.timeout)
    while True:
        report = leader_report(config)
        bot = report['checks']['bot_container']
        settled = report['ok'] and (not report['active'] or (bot['value'].get('running') and
                                                             bot['value'].get('health') in (None, 'healthy')))
        if settled or time.monotonic() >= deadline:
            break
        time.sleep(1)
    print('\n'.join(report['lines']))
    if not settled:
        print('not settled within %.0f s: %s' % (args.timeout, report['msg']))
        return 1
    return 0


def _failover(config, args):
    """Ask the lease's holder to hand the bot over, and wait until another host holds the lease."""
    if not config.leader:
        print('no leader on this host (%s): the bot is not moved between hosts in this deployment (one bot host, or '
              'app_instances: all)' % config.leader_path)
        return 2
    options = config.leader_options()
    name, me = options['lease'], options['me']
    hosts = config.leader.get('hosts') or []
    if args.to and hosts and args.to not in hosts:
        print('%s is not one of the bot hosts (%s): nothing was changed' % (args.to, ', '.join(hosts)))
        return 2
    try:
        conn = connect(dict(config.connection(), retries=1), application_name='soulnear-health failover')
    except ConnectError as exc:
        print('cannot reach the database that holds the bot lease: %s' % exc)
        return 1
    started = time.monotonic()
    result = dict(lease=name, asked_by=me, to=args.to, moved=False)
    try:
        row = lease.read(conn, name)
        if row is None or not row['holder']:
            print('nobody holds the bot lease %s (%s): there is no bot to move; the leaders start it on a host by '
                  'themselves' % (name, lease.describe(row, me)))
            return 1
        old = result['from'] = row['holder']
        if args.to and args.to == old:
            print('%s already runs the bot (bot lease %s, generation %d): nothing to move' % (old, name,
                                                                                              row['generation']))
            result.update(moved=False, already=True, holder=old)
            if args.json:
                print(json.dumps(result))
            return 0
        lease.ask_handover(conn, name, args.to or lease.ANY, '%s@%s' % (getpass.getuser(), me))
        print('asked %s to hand the bot over to %s' % (old, args.to or 'any other bot host'), flush=True)
        released_at = None
        deadline = started + max(1.0, args.timeout)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            row = lease.read(conn, name)
            if row is None:
                continue
            if not row['holder'] and released_at is None:
                released_at = time.monotonic()
                print('%s stopped its bot and released the lease after %.1f s' % (old, released_at - started),
                      flush=True)
            if row['holder'] and row['holder'] != old and (not args.to or row['holder'] == args.to):
                took = time.monotonic()
                result.update(moved=True, to=row['holder'], seconds=round(took - started, 1),
                              released_after=None if released_at is None else round(released_at - started, 1),
                              generation=row['generation'])
                print('the bot moved from %s to %s in %.1f s: %s' % (old, row['holder'], took - started,
                                                                     lease.describe(row, me)))
                if args.json:
                    print(json.dumps(result))
                return 0
            if row['holder'] == old and released_at is not None:
                print('%s took the lease back: no other host took it (is soulnear-leader running there?)' % old)
                return 1
        print('the bot did not move within %.0f s: the lease is %s. Look at journalctl -u soulnear-leader on %s%s'
              % (args.timeout, lease.describe(row, me), old, ' and on %s' % args.to if args.to else ''))
        return 1
    finally:
        conn.close()


COMMANDS = dict(report=_report, monitor=_monitor, snapshot=_snapshot, watch=_watch, diagnose=_diagnose, pause=_pause,
                resume=_resume, acknowledge=_acknowledge, restart=_restart, guard=_guard, leader=_leader,
                failover=_failover)


if __name__ == '__main__':  # pragma: no cover - the installed wrapper calls main()
    sys.exit(main())
