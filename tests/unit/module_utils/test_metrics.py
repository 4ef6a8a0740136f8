"""The textfile metrics writer (module_utils/soulnear/metrics.py): Prometheus naming and format (checked by
promtool), atomic 0644 files, series and counters that carry over, off without its directory, never failing its
caller, and the one-line hooks for the monitor, backups, restore tests and the audit log."""

import os
import re
import shutil
import stat
import subprocess

import pytest

from ansible.module_utils.soulnear import audit, metrics

PROMTOOL = shutil.which('promtool')


@pytest.fixture
def textdir(tmp_path, monkeypatch):
    directory = tmp_path / 'node-exporter'
    directory.mkdir()
    monkeypatch.setenv(metrics.DIR_ENV, str(directory))
    return directory


def read(directory, source):
    return (directory / ('soulnear_%s.prom' % source)).read_text()


def promtool_check(text):
    assert PROMTOOL, 'promtool is missing: scripts/test-deps.sh installs it (Debian package prometheus)'
    proc = subprocess.run([PROMTOOL, 'check', 'metrics'], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


REPORT = dict(ok=False, duration_ms=840, failed=['backup_age'], checks=dict(
    database=dict(ok=True, value=dict(), message='ok'),
    connections=dict(ok=True, value=dict(used=12, usable=197, max_connections=200, reserved=3, percent=6.1),
                     message='12 of 197', warning=None),
    migrations=dict(ok=True, value=dict(pending=['0003_x.sql'], failed=[], drift=[]), message='1 pending'),
    db_container=dict(ok=True, value=dict(name='soulnear_postgres', exists=True, running=True, health='healthy',
                                          restart_count=0), message='running'),
    bot_container=dict(ok=True, value=dict(name='soulnear_bot', exists=True, running=True, health='starting',
                                           restart_count=3), message='running', warning='restarted'),
    backup_age=dict(ok=False, value=dict(database='soul_bot', age_hours=30.5, newest='backup_x.dump'), message='old'),
    disk=dict(ok=True, value=[dict(path='/var/lib/docker/volumes/x', used_percent=41.5, free_mb=1, total_mb=2)],
              message='41%')))


def test_names_follow_the_prometheus_conventions():
    for name, (source, kind, text) in metrics.METRICS.items():
        assert re.match(r'^soulnear_[a-z0-9_]+$', name), name
        assert source in metrics.FILES and kind in ('gauge', 'counter') and text.endswith('.'), name
        assert name.endswith('_total') == (kind == 'counter'), name
        assert not re.search(r'(milli|micro)?seconds?_|_ms$|_minutes|_hours|_percent|_kb|_mb', name), name
        if 'timestamp' in name:
            assert name.endswith('_timestamp_seconds'), name


def test_off_without_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.DIR_ENV, str(tmp_path / 'missing'))
    assert metrics.enabled() is False
    assert metrics.record_backup('soul_bot', True, size=10) is False
    assert not (tmp_path / 'missing').exists()


def test_health_file_has_help_type_and_passes_promtool(textdir):
    assert metrics.record_health(REPORT, events=['recovered: restarted soulnear_bot, working again after 4s'],
                                 now=1700000000) is True
    text = read(textdir, 'health')
    promtool_check(text)
    for name in re.findall(r'^([a-z_]+)[{ ]', text, re.M):
        assert '# HELP %s ' % name in text and '# TYPE %s ' % name in text
    assert 'soulnear_health_ok 0\n' in text
    assert 'soulnear_health_check_ok{check="backup_age"} 0\n' in text
    assert 'soulnear_health_check_ok{check="database"} 1\n' in text
    assert 'soulnear_health_check_warning{check="bot_container"} 1\n' in text
    assert 'soulnear_health_last_run_timestamp_seconds 1700000000\n' in text
    assert 'soulnear_health_check_duration_seconds 0.84\n' in text
    assert 'soulnear_db_connections 12\n' in text and 'soulnear_db_max_connections 200\n' in text
    assert 'soulnear_migrations_pending 1\n' in text
    assert 'soulnear_container_restarts_total{container="soulnear_bot",role="bot"} 3\n' in text
    assert 'soulnear_container_up{container="soulnear_postgres",role="database"} 1\n' in text
    assert 'soulnear_backup_newest_age_seconds{database="soul_bot"} 109800\n' in text
    assert 'soulnear_disk_used_ratio{path="/var/lib/docker/volumes/x"} 0.415\n' in text
    assert 'soulnear_monitor_recoveries_total{result="recovered"} 1\n' in text
    assert '# TYPE soulnear_monitor_recoveries_total counter' in text
    assert stat.S_IMODE(os.stat(textdir / 'soulnear_health.prom').st_mode) == 0o644
    assert sorted(p.name for p in textdir.iterdir() if not p.name.startswith('.soulnear-metrics')) == [
        'soulnear_health.prom']  # no temporary file left behind


def test_a_new_run_replaces_gauges_and_keeps_counting(textdir):
    metrics.record_health(REPORT, events=['recovery failed: restarted soulnear_postgres but ...'])
    down = dict(ok=False, duration_ms=3000, checks=dict(database=dict(ok=False, value={}, message='refused')))
    metrics.record_health(down, events=['recovery failed: again', 'recovery skipped for x'])
    text = read(textdir, 'health')
    assert 'soulnear_db_connections' not in text and 'check="backup_age"' not in text  # no stale series
    assert 'soulnear_monitor_recoveries_total{result="failed"} 2\n' in text
    assert 'soulnear_monitor_recoveries_total{result="skipped"} 1\n' in text
    promtool_check(text)


def test_backup_series_of_two_databases_and_counters(textdir):
    assert metrics.record_backup('soul_bot', True, size=123456, verified=True, duration=2.5, now=1700000000)
    assert metrics.record_backup('other', False, duration=0.25, now=1700000100)
    assert metrics.record_backup('soul_bot', True, size=123999, verified=True, duration=2.0, now=1700000200)
    text = read(textdir, 'backup')
    promtool_check(text)
    assert 'soulnear_backup_last_success_timestamp_seconds{database="soul_bot"} 1700000200\n' in text
    assert 'soulnear_backup_last_size_bytes{database="soul_bot"} 123999\n' in text
    assert 'soulnear_backup_last_run_success{database="other"} 0\n' in text
    assert 'soulnear_backup_last_verified{database="other"} 0\n' in text
    assert 'soulnear_backup_last_success_timestamp_seconds{database="other"}' not in text
    assert 'soulnear_backup_runs_total{database="soul_bot",result="success"} 2\n' in text
    assert 'soulnear_backup_runs_total{database="other",result="failed"} 1\n' in text


def test_label_values_are_escaped_and_read_back(textdir):
    odd = 'we"ird\\name\nx'
    metrics.record_backup(odd, True, size=1)
    metrics.record_backup(odd, True, size=2)
    text = read(textdir, 'backup')
    assert 'database="we\\"ird\\\\name\\nx"' in text
    assert 'soulnear_backup_runs_total{database="we\\"ird\\\\name\\nx",result="success"} 2\n' in text
    promtool_check(text)


def test_operations_from_audit_records(textdir, tmp_path):
    # The hook around audit.write, whether audit.py is wired with it already or not.
    write = metrics.audit_written(getattr(audit.write, '__wrapped__', audit.write))
    log = str(tmp_path / 'audit.log')
    write(log, audit.entry('deploy', to_version='v2', result='success', duration=14.2, downtime=1.3))
    text = read(textdir, 'operations')
    assert 'soulnear_deploy_rolled_back 0\n' in text and 'soulnear_app_version_info{version="v2"} 1\n' in text
    write(log, audit.entry('deploy', to_version='v3', result='rolled back', failed_step='wait_healthy',
                           duration=40))
    write(log, audit.entry('restore', result='success', duration=8))
    text = read(textdir, 'operations')
    promtool_check(text)
    assert 'soulnear_deploy_rolled_back 1\n' in text
    assert 'soulnear_operation_last_success{operation="deploy"} 0\n' in text
    assert 'soulnear_operation_last_success{operation="restore"} 1\n' in text
    assert 'soulnear_operations_total{operation="deploy",result="rolled_back"} 1\n' in text
    assert 'soulnear_operations_total{operation="deploy",result="success"} 1\n' in text
    assert 'soulnear_operation_last_downtime_seconds{operation="deploy"} 1.3\n' in text  # a rollback has none
    assert 'soulnear_app_version_info{version="v2"} 1\n' in text
    write(log, audit.entry('rollback', to_version='v1', result='success', duration=5))
    text = read(textdir, 'operations')
    assert 'soulnear_deploy_rolled_back 0\n' in text
    assert 'version="v2"' not in text and 'soulnear_app_version_info{version="v1"} 1\n' in text
    assert len(audit.read(log)) == 4  # the audit log itself is untouched by the hook


def test_backup_hook_records_real_runs_of_regular_backups_only(textdir):
    calls = []

    @metrics.backup_run
    def create_backup(settings, check_mode=False, log=None, directory=None, pattern=None, retention=True,
                      offsite=True, db=None, lock=True):
        calls.append(pattern)
        if settings.get('fail'):
            raise RuntimeError('pg_dump failed')
        return dict(database=db or settings['conn']['login_db'], size=4096, verified=True, duration=1.5)

    settings = dict(conn=dict(login_db='soul_bot'), name_pattern='backup_%Y%m%d_%H%M%S.dump')
    create_backup(settings, check_mode=True)
    create_backup(settings, pattern='pre_restore_%Y%m%d_%H%M%S.dump')
    create_backup(dict(settings, name_pattern='pre_deploy_v2_%Y%m%d_%H%M%S.dump'))
    assert not (textdir / 'soulnear_backup.prom').exists()
    assert create_backup(settings)['size'] == 4096
    with pytest.raises(RuntimeError, match='pg_dump failed'):
        create_backup(dict(settings, fail=True), db='other')
    text = read(textdir, 'backup')
    assert 'soulnear_backup_last_size_bytes{database="soul_bot"} 4096\n' in text
    assert 'soulnear_backup_last_run_success{database="other"} 0\n' in text
    assert len(calls) == 5 and create_backup.__name__ == 'create_backup'


def test_restore_test_hook(textdir):
    @metrics.restore_test_run
    def restore_test(settings, backup='latest', log=None):
        if backup == 'broken':
            raise ValueError('archive is damaged')
        return dict(duration=3.25)

    settings = dict(conn=dict(login_db='soul_bot'))
    restore_test(settings)
    text = read(textdir, 'restore')
    assert 'soulnear_restore_test_last_success{database="soul_bot"} 1\n' in text
    assert 'soulnear_restore_test_last_duration_seconds{database="soul_bot"} 3.25\n' in text
    with pytest.raises(ValueError):
        restore_test(settings, 'broken')
    text = read(textdir, 'restore')
    promtool_check(text)
    assert 'soulnear_restore_test_last_success{database="soul_bot"} 0\n' in text
    assert 'soulnear_restore_test_runs_total{database="soul_bot",result="failed"} 1\n' in text
    assert 'soulnear_restore_test_last_success_timestamp_seconds{database="soul_bot"}' in text


def test_monitor_hook_records_the_run_and_the_lock(textdir, tmp_path):
    from ansible.module_utils.soulnear import lock

    lock_dir = str(tmp_path / 'deploy.lock')

    class Config:
        lock_ttl_minutes = 60

    Config.lock_dir = lock_dir

    class Monitor:
        def __init__(self):
            self.config = Config()
            self.events = ['recovered: restarted soulnear_bot']

        @metrics.monitor_run
        def run(self):
            return REPORT, '2025-01-01T00:00:00+00:00 ERROR unhealthy: backup_age: old'

    assert Monitor().run()[0] is REPORT
    assert 'soulnear_deploy_lock_held 0\n' in read(textdir, 'lock')
    assert 'soulnear_monitor_maintenance 0\n' in read(textdir, 'health')
    lock.acquire(lock_dir, 'run-1', 'alice@laptop', operation='deploy')
    Monitor().run()
    text = read(textdir, 'lock')
    promtool_check(text)
    assert 'soulnear_deploy_lock_held 1\n' in text
    assert re.search(r'^soulnear_deploy_lock_acquired_timestamp_seconds \d+', text, re.M)
    assert 'soulnear_monitor_recoveries_total{result="recovered"} 2\n' in read(textdir, 'health')


def test_never_fails_its_caller(textdir):
    (textdir / 'soulnear_backup.prom').mkdir()  # cannot be replaced by a file
    assert metrics.record_backup('soul_bot', True, size=1) is False

    @metrics.audit_written
    def write(path, record):
        return record

    (textdir / 'soulnear_operations.prom').mkdir()
    assert write('x', dict(event='deploy', result='success', time='not a time')) == dict(
        event='deploy', result='success', time='not a time')
    with pytest.raises(ValueError, match='does not belong'):
        metrics.update('backup', [('soulnear_health_ok', {}, 1)])


def test_garbage_in_an_existing_file_is_replaced(textdir):
    (textdir / 'soulnear_restore.prom').write_text('garbage {{\nsoulnear_restore_test_runs_total{x="1" 2\n')
    assert metrics.record_restore_test('soul_bot', True, duration=1)
    promtool_check(read(textdir, 'restore'))


def test_a_reader_never_sees_a_half_written_file(textdir):
    """node_exporter may read the file while a run rewrites it (issue 23: a mutant writing in place survived): the
    new content replaces the file atomically, so a handle opened before still reads the whole old text and a new
    open reads the whole new one - never a truncated or mixed file."""
    metrics.update('backup', values=[('soulnear_backup_last_success_timestamp_seconds', {'database': 'a'}, 1.0)])
    path = metrics.path_of('backup')
    with open(path) as before:
        old = before.read()
        before.seek(0)
        inode = os.fstat(before.fileno()).st_ino
        metrics.update('backup', values=[('soulnear_backup_last_success_timestamp_seconds', {'database': 'b'}, 2.0)])
        assert before.read() == old, 'the file was rewritten in place under an open reader'
        assert os.stat(path).st_ino != inode
    with open(path) as after:
        text = after.read()
    assert 'database="a"' in text and 'database="b"' in text and text.endswith('\n')
