"""The diagnostics checklist (diagnose.py) and `soulnear-health diagnose` against a real PostgreSQL container
and log files with planted anomalies.
"""

import json
import os
import time
from datetime import datetime, timedelta, timezone

from ansible.module_utils.soulnear import diagnose as soulnear_diagnose
from ansible.module_utils.soulnear import health_command
from ansible.module_utils.soulnear.files import disk_usage
from healthenv import docker, host_config
from healthenv import own_pg_fixture  # noqa: F401 - the own_pg fixture


def inspect_root():
    return docker('info', '--format', '{{.DockerRootDir}}').stdout.strip()


def diagnose_config(own_pg, tmp_path, **overrides):
    volume = json.loads(docker('inspect', own_pg.name).stdout)[0]['Mounts'][0]['Name']
    log_dir = tmp_path / 'log'
    (log_dir / 'postgres').mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.000 UTC')
    with open(log_dir / 'postgres' / 'postgresql.log', 'a') as handle:
        handle.write('%s [42] LOG:  database system is ready to accept connections\n' % now)
        handle.write('%s [77] soulnear@soul_bot FATAL:  the database system is starting up\n' % now)
        handle.write('2020-01-01 00:00:00.000 UTC [13] FATAL:  role "ancient" does not exist\n')  # out of window
    (tmp_path / 'kern.log').write_text('')
    # The threshold sits above what this machine's disks really use, so "healthy" does not depend on them.
    disk = max(disk_usage(path)['used_percent']
               for path in ('/', str(tmp_path), inspect_root()))
    config = dict(db_container=own_pg.name, db_volume=volume, log_dir=str(log_dir), backup_dir=str(tmp_path),
                  kernel_log=str(tmp_path / 'kern.log'), journal=False, dmesg=False,
                  disk_threshold_percent=min(100, max(90, disk + 1)), disk_paths=[str(tmp_path)],
                  memory_min_available_percent=1)
    config.update(overrides)
    return config


def test_diagnose_reports_nothing_on_a_healthy_setup(own_pg, tmp_path):
    result = soulnear_diagnose.diagnose(diagnose_config(own_pg, tmp_path))
    assert result['anomalies'] == [], result['anomalies']
    assert result['summary'] == ['No anomalies found']
    titles = [s['title'] for s in result['sections']]
    for expected in ('PostgreSQL logs', 'Containers', 'Data volume', 'Disk', 'OOM killer', 'Memory',
                     'Docker daemon'):
        assert any(t.startswith(expected) for t in titles), titles
    text = soulnear_diagnose.render_diagnosis(result)
    assert 'volume %s: present' % diagnose_config(own_pg, tmp_path)['db_volume'] in text
    assert 'FATAL line(s) of normal starts/shutdowns' in text


def test_diagnose_finds_planted_anomalies(own_pg, tmp_path):
    config = diagnose_config(own_pg, tmp_path, disk_threshold_percent=0.001, db_volume='soulnear-test-lost-volume')
    now = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.000 UTC')
    with open(tmp_path / 'log' / 'postgres' / 'postgresql.log', 'a') as handle:
        for pid in (100, 101, 102):
            handle.write('%s [%d] root@soul_bot FATAL:  role "root" does not exist\n' % (now, pid))
        handle.write('%s [9] PANIC:  could not write to file "pg_wal/xlogtemp.9": No space left on device\n' % now)
        handle.write('%s [9] LOG:  database system was interrupted; last known up at %s\n' % (now, now))
        handle.write('%s [9] LOG:  redo starts at 0/1A2B3C4\n' % now)
        handle.write('%s [9] LOG:  database system was interrupted; last known up at %s\n' % (now, now))
        handle.write('%s [9] LOG:  redo starts at 0/1A2B3D0\n' % now)
    stamp = datetime.now().astimezone().strftime('%Y-%m-%dT%H:%M:%S.000000%z')
    (tmp_path / 'kern.log').write_text(
        '%s host kernel: Out of memory: Killed process 4242 (postgres) total-vm:1234kB\n' % stamp)
    result = soulnear_diagnose.diagnose(config)
    messages = [a['message'] for a in result['anomalies']]
    text = '\n'.join(messages)
    assert '3 x FATAL: role "root" does not exist' in text
    assert 'PANIC: could not write to file' in text
    assert '"No space left on device"' in text
    assert 'crash recovery ran 2 time(s)' in text and 'recovery loop' in text
    assert any(a['check'] == 'disk' and 'threshold 0.001%' in a['message']
                                          for a in result['anomalies'])
    assert 'data volume soulnear-test-lost-volume does not exist' in text
    assert 'does not mount volume soulnear-test-lost-volume' in text
    assert 'OOM killer fired 1 time(s)' in text
    assert 'ancient' not in text, 'lines older than the window are not anomalies'
    root = [a for a in result['anomalies'] if 'role "root"' in a['message']][0]
    assert '-U' in root['fix']
    assert result['summary'][0] == '%d anomalies found:' % len(result['anomalies'])


def test_diagnose_command_writes_a_report(own_pg, tmp_path, capsys):
    params = own_pg.params()
    (tmp_path / 'kern.log').write_text('')
    args = host_config(tmp_path, params, db_container=own_pg.name,
                       diagnose=dict(journal=False, dmesg=False, kernel_log=str(tmp_path / 'kern.log')))
    (tmp_path / 'log' / 'postgres').mkdir(parents=True)
    (tmp_path / 'log' / 'postgres' / 'postgresql.log').write_text(
        '%s [5] FATAL:  password authentication failed for user "soulnear"\n'
        % datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.000 UTC'))
    output = tmp_path / 'log' / 'diagnose-test.txt'
    assert health_command.main(args + ['diagnose', '--json', '--output', str(output), '--disk-threshold', '100',
                                        '--memory-min-available', '1']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['report_file'] == str(output)
    assert [a['message'] for a in result['anomalies'] if a['check'] == 'postgres_log'] == [
        '1 x FATAL: password authentication failed for user "soulnear"']
    report = output.read_text()
    assert report.startswith('SoulNear diagnostics for ') and '== Summary' in report and '== Disk' in report
    assert oct(os.stat(output).st_mode & 0o777) == '0o600'


def test_acknowledged_anomalies_are_not_reported_again(own_pg, tmp_path, capsys):
    """After an incident was dealt with, `soulnear-health acknowledge` starts the look-back there: the crash
    recovery and FATAL lines before it are no anomalies any more, new ones after it are; and the monitor's restart
    budget starts over."""
    params = own_pg.params()
    (tmp_path / 'kern.log').write_text('')
    args = host_config(tmp_path, params, db_container=own_pg.name,
                       diagnose=dict(journal=False, dmesg=False, kernel_log=str(tmp_path / 'kern.log'),
                                     disk_threshold_percent=100, memory_min_available_percent=1))
    log = tmp_path / 'log' / 'postgres' / 'postgresql.log'
    log.parent.mkdir(parents=True)
    before = (datetime.now(timezone.utc) - timedelta(seconds=30)).strftime('%Y-%m-%d %H:%M:%S.000 UTC')
    log.write_text('%s [7] LOG:  database system was interrupted; last known up at %s\n'
                   '%s [8] soulnear@soul_bot FATAL:  terminating connection due to unexpected postmaster exit\n'
                   % (before, before, before))

    def anomalies():
        assert health_command.main(args + ['diagnose', '--json', '--output', str(tmp_path / 'r.txt')]) == 0
        return [a['message'] for a in json.loads(capsys.readouterr().out)['anomalies']]
    found = anomalies()
    assert any('crash recovery ran once' in m for m in found), found
    state = tmp_path / 'state' / 'health-state.json'
    state.parent.mkdir(exist_ok=True)
    state.write_text(json.dumps(dict(restarts={'database': [time.time()] * 3}, alerted={'restart-limit-database': 1})))
    assert health_command.main(args + ['acknowledge']) == 0
    assert 'acknowledged' in capsys.readouterr().out
    assert json.loads(state.read_text())['restarts'] == {} and json.loads(state.read_text())['alerted'] == {}
    assert anomalies() == []
    ack = json.loads((tmp_path / 'state' / 'diagnose-ack.json').read_text())
    assert ack['restart_counts'] == {own_pg.name: 0}
    later = (datetime.now(timezone.utc) + timedelta(seconds=5)).strftime('%Y-%m-%d %H:%M:%S.000 UTC')
    with open(log, 'a') as handle:
        handle.write('%s [9] FATAL:  role "root" does not exist\n' % later)
    assert anomalies() == ['1 x FATAL: role "root" does not exist']
    assert 'anomalies acknowledged' in (tmp_path / 'r.txt').read_text()
