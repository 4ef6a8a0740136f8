"""Point-in-time recovery on the deployed VPS (issue 13; docs/pitr.md): WAL archiving on, the local repository and
pgBackRest's configuration private, the schedule, the health checks, and `make backups` / the refusals of
`make restore TIME=...`. The restores themselves are tested against real containers in
tests/integration/module_utils/test_pitr_restore.py."""

import json

from conftest import DB, psql, run_make

REPO = '/var/lib/soulnear/pgbackrest'
CONF = '/etc/soulnear/pgbackrest/pgbackrest.conf'


def test_wal_archiving_is_on_with_pgbackrest(host):
    assert psql(host, 'SHOW archive_mode') == 'on'
    assert psql(host, 'SHOW archive_timeout') == '1min'
    assert psql(host, 'SHOW archive_command').startswith('pgbackrest --stanza=soulnear archive-push')
    image = host.check_output('docker inspect -f "{{.Config.Image}}" %s', DB)
    assert image.startswith('soulnear/postgres-pitr:15-')
    assert host.run('docker exec %s pgbackrest version', DB).rc == 0


def test_repository_and_configuration_are_private(host):
    for path, mode in ((REPO, 0o700), ('/etc/soulnear/pgbackrest', 0o700), (CONF, 0o600)):
        item = host.file(path)
        assert item.exists and item.mode == mode and item.uid == 999, path


def test_schedule_has_full_diff_and_verify(host):
    """The pitr role's own schedule and settings (/etc/cron.d/soulnear-pitr, pitr.json); the backup role's cron file
    holds the logical backups only."""
    cron = host.file('/etc/cron.d/soulnear-pitr')
    assert cron.mode == 0o644 and cron.user == 'root'
    assert 'soulnear-backup pitr-backup --type full >>' in cron.content_string
    assert 'soulnear-backup pitr-backup --type diff >>' in cron.content_string
    assert 'soulnear-backup pitr-verify >>' in cron.content_string
    assert 'pitr-' not in host.file('/etc/cron.d/soulnear-backup').content_string
    settings = host.file('/etc/soulnear/pitr.json')
    assert settings.mode == 0o600 and settings.user == 'root'
    assert {k: v for k, v in json.loads(settings.content_string).items() if k != '_managed'} == dict(
        retention_full=2, retention_diff=7)


def test_check_and_health_report_the_physical_side(host):
    host.run_expect([0], '/opt/soulnear/bin/soulnear-backup pitr-check')
    report = json.loads(host.check_output('soulnear health --json'))
    assert report['checks']['wal_archiving']['ok'], report['checks']['wal_archiving']
    assert report['checks']['physical_backup']['ok'], report['checks']['physical_backup']
    text = host.check_output('soulnear backups')
    assert 'repo1 (%s): ok' % REPO in text and 'Recovery window' in text


def test_restore_to_a_time_is_refused_without_confirmation_and_outside_the_window(host):
    refused = run_make('restore', "TIME=2026-01-01 00:00:00+00")
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0 and 'CONFIRM=soul_bot' in text, text[-2000:]
    outside = run_make('restore', "TIME=2001-01-01 00:00:00+00", 'CONFIRM=soul_bot')
    text = outside.stdout + outside.stderr
    assert outside.returncode != 0 and 'outside the recovery window' in text, text[-2000:]
    assert psql(host, 'SELECT 1') == '1'
