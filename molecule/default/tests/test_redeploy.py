"""Verify shipping new bot versions on the converged VPS (issue: safe redeploy with automatic rollback).

The versions are examples/bot copied into a temporary directory on the controller with small edits, shipped with
make redeploy SOURCE=<copy>: v2 adds a migration and must ship with the data intact; v3
crashes at start and v4 carries a failing migration, and both must leave v2 running and healthy. Then an
explicit rollback, the clean redeploy (refused without the confirmation; with it, a verified backup and a fresh
database with every migration), and a no-change redeploy. The clean redeploy runs the default source
(examples/bot), so the VPS ends as deploy.yml leaves it: v1, its three migrations, healthy.
"""

import json
import os
import re
import shutil

import pytest
from conftest import BOT, DB, PROJECT, container_health, psql, run_make, run_playbook, wait_healthy

CURRENT = '/opt/soulnear/app/current'
AUDIT_LOG = '/var/log/soulnear/audit.log'
BACKUPS = '/var/backups/soulnear'
EXAMPLE = os.path.join(PROJECT, 'examples', 'bot')
PROFILES = 'CREATE TABLE IF NOT EXISTS profiles (\n    user_id bigint PRIMARY KEY,\n    bio text\n);\n'
# The first statement would work; the second fails at run time, so the file's transaction must undo both.
BROKEN = 'CREATE TABLE half_done (id int);\nALTER TABLE no_such_table ADD COLUMN x int;\n'


@pytest.fixture(scope='module')
def versions(tmp_path_factory):
    """Source directories of v2 (a new migration), v3 (v2 crashing at start) and v4 (v2 plus a failing one)."""
    base = tmp_path_factory.mktemp('versions')

    def make(name, migrations=None, edits=None):
        path = base / name
        shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        for file_name, sql in (migrations or {}).items():
            (path / 'database' / 'migrations' / file_name).write_text(sql)
        for file_name, text in (edits or {}).items():
            (path / file_name).write_text(text)
        return str(path)

    return dict(
        v2=make('v2', {'004_profiles.sql': PROFILES}),
        v3=make('v3', {'004_profiles.sql': PROFILES},
                {'bot/__main__.py': 'raise RuntimeError("v3 cannot start: simulated crash at start")\n'}),
        v4=make('v4', {'004_profiles.sql': PROFILES, '005_broken.sql': BROKEN}))


def redeploy(source):
    return run_make('redeploy', 'SOURCE=%s' % source)


def flat(proc):
    """The play's output on one line per paragraph (the YAML callback wraps long messages)."""
    return ' '.join((proc.stdout + proc.stderr).split())


def running_version(host):
    return host.check_output('docker inspect -f %s %s', '{{index .Config.Labels "soulnear.version"}}', BOT)


def current_release(host):
    return os.path.basename(host.check_output('readlink %s', CURRENT))


def audit(host):
    return [json.loads(line) for line in host.file(AUDIT_LOG).content_string.splitlines()]


def bot_id(host):
    return host.check_output('docker inspect -f "{{.Id}} {{.State.StartedAt}}" %s', BOT)


def test_v2_with_a_new_migration_ships_with_the_data_intact(host, versions):
    wait_healthy(host)
    v1 = running_version(host)
    psql(host, "INSERT INTO users (id, username) VALUES (777001, 'before-v2') ON CONFLICT DO NOTHING")
    events = int(psql(host, 'SELECT count(*) FROM events'))
    proc = redeploy(versions['v2'])
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert re.search(r'Deployed %s -> \w+: applied 004_profiles.sql' % v1, proc.stdout)
    v2 = running_version(host)
    assert v2 != v1 and current_release(host) == v2
    assert wait_healthy(host)[BOT] == 'running healthy'
    assert psql(host, "SELECT name FROM schema_migrations WHERE name = '004_profiles.sql' AND success") \
        == '004_profiles.sql'
    assert psql(host, 'SELECT username FROM users WHERE id = 777001') == 'before-v2'
    assert int(psql(host, 'SELECT count(*) FROM events')) >= events
    assert host.check_output('docker ps -q --filter label=soulnear.component=bot | wc -l') == '1'
    line = audit(host)[-1]
    assert (line['event'], line['from_version'], line['to_version'], line['result']) == ('deploy', v1, v2, 'success')
    assert os.path.basename(line['backup']).startswith('pre_deploy_%s_' % v2)
    assert host.file(line['backup']).exists and host.file(line['backup'] + '.sha256').exists
    # The monitor reads the migrations of the running version: no pending migration is reported.
    health = run_playbook('playbooks/health.yml')
    assert health.returncode == 0, health.stdout[-3000:]


def test_v3_crashing_at_start_leaves_v2_running_and_shows_its_log(host, versions):
    v2 = running_version(host)
    proc = redeploy(versions['v3'])
    output = flat(proc)
    assert proc.returncode != 0
    assert 'failed at step wait_healthy' in output
    assert 'Rolled back: the previous bot (%s) runs again and is healthy' % v2 in output
    assert 'v3 cannot start: simulated crash at start' in output  # the new container's last log lines
    assert running_version(host) == v2 and container_health(host, BOT) == 'running healthy'
    assert current_release(host) == v2
    assert audit(host)[-1]['result'] == 'rolled back'


def test_v4_with_a_failing_migration_applies_nothing_and_keeps_v2(host, versions):
    v2 = running_version(host)
    applied = psql(host, 'SELECT count(*) FROM schema_migrations')
    proc = redeploy(versions['v4'])
    output = flat(proc)
    assert proc.returncode != 0
    # Caught by the rehearsal on a copy restored from the pre-deploy backup: the old bot never stopped (issue 22).
    assert 'failed at step rehearse' in output and 'no_such_table' in output
    assert psql(host, 'SELECT count(*) FROM schema_migrations') == applied
    assert psql(host, "SELECT to_regclass('half_done') IS NULL") == 't'
    assert running_version(host) == v2 and wait_healthy(host)[BOT] == 'running healthy'
    backup = re.search(r'make restore BACKUP=(pre_deploy_\w+\.dump) CONFIRM=soul_bot', output)
    assert backup and host.file('%s/%s' % (BACKUPS, backup.group(1))).exists


def test_rollback_starts_the_previous_version(host):
    v2 = running_version(host)
    proc = run_make('rollback')
    assert proc.returncode == 0, proc.stdout[-4000:]
    v1 = running_version(host)
    assert v1 != v2 and current_release(host) == v1
    assert wait_healthy(host)[BOT] == 'running healthy'
    assert audit(host)[-1]['event'] == 'rollback' and audit(host)[-1]['to_version'] == v1


def test_clean_redeploy_without_confirmation_refuses_and_changes_nothing(host):
    db_before = host.check_output('docker inspect -f "{{.Id}}" %s', DB)
    bot_before = bot_id(host)
    users = psql(host, 'SELECT count(*) FROM users')
    proc = run_make('redeploy-clean')
    assert proc.returncode != 0
    assert 'make redeploy-clean CONFIRM=soul_bot' in flat(proc)
    assert host.check_output('docker inspect -f "{{.Id}}" %s', DB) == db_before
    assert bot_id(host) == bot_before
    assert psql(host, 'SELECT count(*) FROM users') == users
    assert not host.file('/var/lib/soulnear/deploy.lock').exists


def test_clean_redeploy_backs_up_then_starts_on_a_fresh_database(host):
    identity = psql(host, 'SELECT system_identifier FROM pg_control_system()')
    psql(host, "INSERT INTO users (id, username) VALUES (777002, 'before-clean') ON CONFLICT DO NOTHING")
    proc = run_make('redeploy-clean', 'CONFIRM=soul_bot')
    assert proc.returncode == 0, proc.stdout[-5000:]
    path = re.search(r'path: (/\S+/backup_\d{8}_\d{6}\.dump)', proc.stdout).group(1)
    assert host.file(path).exists and host.file(path + '.sha256').exists
    assert host.run('cd %s && sha256sum -c %s', os.path.dirname(path), os.path.basename(path) + '.sha256').rc == 0
    assert wait_healthy(host) == {DB: 'running healthy', BOT: 'running healthy'}
    # A new cluster without the old rows, with every migration of the deployed (default) source.
    assert psql(host, 'SELECT system_identifier FROM pg_control_system()') != identity
    assert psql(host, 'SELECT count(*) FROM users WHERE id IN (777001, 777002)') == '0'
    assert psql(host, 'SELECT name FROM schema_migrations WHERE success ORDER BY name').splitlines() == \
        ['001_init.sql', '002_events.sql', '003_indexes.sql']
    line = audit(host)[-1]
    assert (line['event'], line['result'], line['backup']) == ('clean-redeploy', 'success', path)
    # The backup holds the data that was removed.
    listing = host.check_output('docker exec -i %s pg_restore --list < %s', DB, path)
    assert 'TABLE DATA public users' in listing


def test_nothing_to_redeploy_changes_nothing(host):
    before = bot_id(host)
    proc = run_make('redeploy')
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'nothing to do' in proc.stdout
    assert re.search(r'changed=0 ', proc.stdout), proc.stdout[-2000:]
    assert bot_id(host) == before
    migrate = run_make('migrate')
    assert migrate.returncode == 0 and re.search(r'changed=0 ', migrate.stdout), migrate.stdout[-3000:]
    assert bot_id(host) == before
