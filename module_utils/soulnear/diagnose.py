# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The operators' diagnostics checklist: `soulnear-health diagnose` (make diagnose, playbooks/diagnose.yml).

diagnose(config) reads what a person would look at after an incident - PostgreSQL's logs, container
restarts and OOM kills, the data volume, disk, the kernel's OOM killer, memory, the Docker daemon - over
a look-back window, and returns the anomalies (each with its fix) plus a readable report (render_diagnosis).

An operator who has dealt with an incident acknowledges it (`soulnear-health diagnose --acknowledge`,
acknowledge()): the look-back window then starts at the acknowledgement, and a container's restarts count only
beyond the restart count it had then, so the next diagnosis shows what happened since, not the incident again
for a day.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import json
import os
import re
import shutil
import socket
import subprocess
from datetime import datetime, timedelta, timezone

from . import containers
from .files import disk_usage, human, write_private

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
    ack_file=None,
)


def _run_tool(args, timeout=30):
    """(rc, text) of a host tool; rc None when it is not installed."""
    if not shutil.which(args[0]):
        return None, ''
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
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
        acknowledged = int((config.get('acknowledged_restarts') or {}).get(name) or 0)
        if state['restart_count'] > acknowledged:
            diag.anomaly('containers', 'Docker restarted %s %d time(s) since it was last started by hand%s'
                         % (name, state['restart_count'] - acknowledged,
                            ' (beyond the %d acknowledged)' % acknowledged if acknowledged else ''),
                         '%s shows why it exited' % logs)
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
            mount = containers.volume_mountpoint(config['db_volume'])
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
            key, _unused, rest = line.partition(':')
            values[key] = int(rest.split()[0]) * 1024
    return values


def memory():
    """This host's memory in bytes: total, available (and its percent of total), swap total and used."""
    info = meminfo()
    total, available = info.get('MemTotal', 0), info.get('MemAvailable', info.get('MemFree', 0))
    return dict(total=total, available=available, percent=100.0 * available / total if total else 0.0,
                swap_total=info.get('SwapTotal', 0), swap_used=info.get('SwapTotal', 0) - info.get('SwapFree', 0))


def _check_memory(diag, config):
    mem = memory()
    diag.section('Memory', ['total %s, available %s (%.0f%%), swap used %s of %s'
                            % (human(mem['total']), human(mem['available']), mem['percent'], human(mem['swap_used']),
                               human(mem['swap_total']))])
    if mem['percent'] < float(config['memory_min_available_percent']):
        diag.anomaly('memory', 'only %.1f%% of memory available (%s of %s)' % (mem['percent'], human(mem['available']),
                                                                               human(mem['total'])),
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


def read_acknowledgement(path):
    """{at (aware datetime), restart_counts, by} of the last acknowledgement, or None."""
    if not path:
        return None
    try:
        with open(path) as handle:
            data = json.load(handle)
        at = datetime.fromisoformat(data['at'])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(at=at if at.tzinfo else at.replace(tzinfo=timezone.utc), restart_counts=data.get('restart_counts')
                or {}, by=data.get('by'))


def acknowledge(config, by=None, now=None):
    """Record that the anomalies up to now were dealt with: the next diagnoses look back no further than now, and
    count container restarts beyond today's counts. Returns the acknowledgement written."""
    config = dict(DIAGNOSE_DEFAULTS, **dict((k, v) for k, v in config.items() if v is not None))
    if not config.get('ack_file'):
        raise ValueError('no ack_file configured')
    counts = {}
    for key in ('db_container', 'bot_container'):
        name = config.get(key)
        if name:
            try:
                counts[name] = containers.container_state(name)['restart_count']
            except containers.DockerError:
                pass
    now = now or datetime.now(timezone.utc)
    data = dict(at=now.isoformat(timespec='seconds'), restart_counts=counts, by=by or socket.gethostname())
    write_private(config['ack_file'], json.dumps(data, sort_keys=True))
    return data


def diagnose(config, now=None):
    """Run the diagnostics checklist; config: containers, volume, log/backup dirs and DIAGNOSE_DEFAULTS keys."""
    config = dict(DIAGNOSE_DEFAULTS, **dict((k, v) for k, v in config.items() if v is not None))
    now = now or datetime.now(timezone.utc)
    since = now - timedelta(hours=float(config['since_hours']))
    ack = read_acknowledgement(config.get('ack_file'))
    if ack and ack['at'] > since:
        since = ack['at']
    config['acknowledged_restarts'] = (ack or {}).get('restart_counts') or {}
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
                summary=diagnosis_summary(diag.anomalies),
                acknowledged=dict(at=ack['at'].isoformat(timespec='seconds'), by=ack['by']) if ack else None)


def diagnosis_summary(anomalies):
    if not anomalies:
        return ['No anomalies found']
    return ['%d anomal%s found:' % (len(anomalies), 'y' if len(anomalies) == 1 else 'ies')] + [
        '[%s] %s -> %s' % (a['check'], a['message'], a['fix']) for a in anomalies]


def render_diagnosis(result):
    out = ['SoulNear diagnostics for %s' % result['host'], 'generated %s, looking back to %s%s'
           % (result['generated_at'], result['since'], ' (anomalies acknowledged %s by %s)' % (
               result['acknowledged']['at'], result['acknowledged']['by']) if result.get('acknowledged') else ''),
           '']
    out += ['== Summary'] + result['summary'] + ['']
    for section in result['sections']:
        out.append('== %s' % section['title'])
        out += ['  ' + line for line in section['lines']]
        out.append('')
    return '\n'.join(out)


def write_diagnosis(result, path, keep=None):
    """Write the report (0600: it quotes log lines) and prune older diagnose-*.txt next to it."""
    write_private(path, render_diagnosis(result))
    if keep:
        reports = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)), 'diagnose-*.txt')))
        for old in reports[:-int(keep)]:
            os.unlink(old)
    return path
