"""Verify the monitoring role on the deployed VPS: the health monitor runs every minute from its systemd
timer, restarts a stopped database and logs the recovery, diagnose.yml reports planted anomalies and
nothing on a healthy host, and logrotate accepts the configuration.
"""

import json
import os
import re
import time

from conftest import BOT, DB, run_playbook, wait_healthy

COMMAND = '/opt/soulnear/bin/soulnear-health'
HEALTH_LOG = '/var/log/soulnear/health.log'
RESOURCES_LOG = '/var/log/soulnear/resources.log'
PG_LOG_DIR = '/var/log/soulnear/postgres'


def log_lines(host, path=HEALTH_LOG):
    result = host.run('cat %s', path)
    return result.stdout.splitlines() if result.rc == 0 else []


def wait_for(predicate, timeout, interval=3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def diagnose(tmp_path, *extra):
    """diagnose.yml from the controller; returns (completed process, the summary lines it printed)."""
    proc = run_playbook('playbooks/diagnose.yml', '-e', 'monitoring_diagnose_fetch_dir=%s' % tmp_path, *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc, proc.stdout[proc.stdout.index('Show what is anomalous'):]


def test_command_and_configuration_installed(host):
    command = host.file(COMMAND)
    assert command.exists and command.user == 'root' and command.mode == 0o755
    config = host.file('/etc/soulnear/monitoring.json')
    assert config.user == 'root' and config.mode == 0o600
    settings = json.loads(config.content_string)
    assert settings['migrations_dir'] == '/opt/soulnear/app/current/database/migrations'
    assert settings['failures_before_recovery'] == 2
    assert host.file('/var/lib/soulnear').mode == 0o700


def test_timers_active_and_no_cron_duplicate(host):
    for timer in ('soulnear-health.timer', 'soulnear-resources.timer'):
        assert host.service(timer).is_enabled and host.service(timer).is_running, timer
    timer = host.file('/etc/systemd/system/soulnear-health.timer').content_string
    assert 'OnUnitActiveSec=60s' in timer
    assert not host.file('/etc/cron.d/soulnear-monitoring').exists


def test_monitor_runs_every_minute_and_logs_one_line(host, healthy):
    before = len(log_lines(host))
    lines = wait_for(lambda: len(log_lines(host)) > before and log_lines(host), timeout=100)
    assert lines, 'the timer did not run the monitor within 100 s'
    assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d (INFO|WARNING) healthy: 10 check\(s\) passed',
                    lines[-1]), lines[-1]
    assert host.run('systemctl is-failed soulnear-health.service').stdout.strip() != 'failed'


def test_report_command(host, healthy):
    result = host.run('%s report --json', COMMAND)
    assert result.rc == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report['ok'] is True and report['failed'] == []
    assert list(report['checks']) == ['database', 'tables', 'migrations', 'connections', 'db_container',
                                      'bot_container', 'backup_age', 'wal_archiving', 'physical_backup', 'disk']
    assert report['checks']['database']['value']['user'] == 'soulnear'


def test_resource_snapshot(host):
    host.run_expect([0], 'systemctl start soulnear-resources.service')
    last = log_lines(host, RESOURCES_LOG)[-1]
    assert 'mem_available=' in last and 'disk[/]=' in last and 'container[%s=' % DB in last


def test_logrotate_accepts_the_configuration(host):
    own = host.run('logrotate -d /etc/logrotate.d/soulnear')
    assert own.rc == 0, own.stderr
    # All configurations together: two roles naming one file would make logrotate skip a file with an error.
    everything = host.run('logrotate -d /etc/logrotate.conf')
    assert everything.rc == 0 and 'duplicate' not in everything.stderr, everything.stderr[-2000:]
    text = host.file('/etc/logrotate.d/soulnear').content_string
    assert '/var/log/soulnear/health.log' in text and '%s/*.log {' % PG_LOG_DIR in text
    for directive in ('daily', 'rotate 7', 'compress', 'copytruncate', 'missingok', 'notifempty'):
        assert len(re.findall(r'^\s+%s$' % directive, text, re.M)) == 2, directive


def test_diagnose_reports_nothing_on_a_healthy_host(host, healthy, tmp_path):
    proc, summary = diagnose(tmp_path)
    assert 'No anomalies found' in summary, summary
    reports = os.listdir(tmp_path)
    assert len(reports) == 1 and reports[0].endswith('.txt')
    text = (tmp_path / reports[0]).read_text()
    assert '== Summary\nNo anomalies found' in text and '== Data volume' in text and '== Docker daemon' in text


def test_diagnose_reports_planted_anomalies(host, healthy, tmp_path):
    # A log file of its own in PostgreSQL's log directory: the server's live file stays untouched.
    planted = '%s/planted-by-test.log' % PG_LOG_DIR
    stamp = host.check_output("date -u '+%Y-%m-%d %H:%M:%S.000 UTC'")
    host.run_expect([0], "printf '%%s\\n' %s > %s",
                    '%s [4242] soulnear@soul_bot FATAL:  planted by the monitoring test' % stamp, planted)
    try:
        proc, summary = diagnose(tmp_path, '-e', 'monitoring_diagnose_disk_threshold_percent=1')
    finally:
        host.run('rm -f %s', planted)
    assert '[postgres_log] 1 x FATAL: planted by the monitoring test' in summary, summary
    assert re.search(r'\[disk\] file system of / is [\d.]+% full \(threshold 1%', summary), summary
    proc, summary = diagnose(tmp_path)
    assert 'No anomalies found' in summary, summary


def test_monitor_restarts_a_stopped_database_and_logs_it(host, healthy):
    """A stopped container stays stopped under Docker's restart policy (unless-stopped): only the monitor
    brings it back, after two failed runs."""
    before = len(log_lines(host))
    host.run_expect([0], 'docker stop %s', DB)
    started = time.time()
    try:
        def recovered():
            running = host.run('docker inspect -f "{{.State.Running}}" %s', DB).stdout.strip() == 'true'
            lines = log_lines(host)[before:]
            return running and [line for line in lines if 'recovered: restarted %s' % DB in line]
        found = wait_for(recovered, timeout=180, interval=5)
        new_lines = log_lines(host)[before:]
        assert found, 'no recovery within 180 s; health.log since the stop:\n%s' % '\n'.join(new_lines)
        assert time.time() - started < 180
        down = [line for line in new_lines if 'database down (1/2 failures before recovery)' in line]
        assert down and new_lines.index(down[0]) < new_lines.index(found[0]), 'must wait for a second failure'
        assert ' ERROR unhealthy: database: could not connect' in found[0]
    finally:
        if host.run('docker inspect -f "{{.State.Running}}" %s', DB).stdout.strip() != 'true':
            host.run('docker start %s', DB)
    assert wait_healthy(host, timeout=240) == {DB: 'running healthy', BOT: 'running healthy'}
