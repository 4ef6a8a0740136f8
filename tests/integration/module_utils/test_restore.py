"""restore_database and restore_test (restore.py) and the pg_restore module against a real PostgreSQL container
and a real (sleeping) bot container.

Real data (pgbench tables plus the bot's tables, tests/support/backupenv.py): back up,
damage, restore, compare row counts and per-table content checksums; corrupt and truncated
backups; a restore that fails half-way; the swap with the bot stopped and started.
"""

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid

import psycopg2
import pytest
import yaml
from ansible.module_utils.soulnear import guard
from ansible.module_utils.soulnear.backup import create_backup
from ansible.module_utils.soulnear.backup_files import BackupError
from ansible.module_utils.soulnear.restore import restore_database, restore_test
from psycopg2 import sql
from ansiblerun import ansible_playbook
from backupenv import app_connect, bot_db_fixture, bot_template_fixture  # noqa: F401 - the bot_db fixture
from backupenv import settings_for, table_checksums

BOT_IMAGE = os.environ.get('SOULNEAR_TEST_BOT_IMAGE', 'soulnear/python:3-bookworm')


@pytest.fixture
def bot_container():
    """A real container standing in for the bot (--init so docker stop is quick)."""
    name = 'soulnear-test-bot-' + uuid.uuid4().hex[:8]
    subprocess.run(['docker', 'run', '-d', '--init', '--name', name, BOT_IMAGE, 'sleep', 'infinity'], check=True,
                   capture_output=True)
    yield name
    subprocess.run(['docker', 'rm', '-f', name], capture_output=True)


def docker_time(value):
    """Docker's RFC 3339 timestamp with nanoseconds -> aware datetime."""
    stamp = value.rstrip('Z')
    if '.' in stamp:
        head, frac = stamp.split('.')
        stamp = head + '.' + frac[:6]
    return datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc)


def container_times(name):
    out = subprocess.run(['docker', 'inspect', '--format', '{{.State.Running}} {{.State.StartedAt}} '
                          '{{.State.FinishedAt}}', name], check=True, capture_output=True, text=True).stdout.split()
    return out[0] == 'true', out[1], out[2]


def databases_like(pg_container, pattern):
    return sorted(r[0] for r in pg_container.query('SELECT datname FROM pg_database WHERE datname LIKE %s',
                                                   (pattern,)))


def damage(pg_container, db):
    """What an operator wants undone: deleted rows, changed rows, a dropped table, a new table."""
    conn = app_connect(pg_container, db)
    with conn.cursor() as cur:
        cur.execute('DELETE FROM pgbench_accounts WHERE aid % 3 = 0')
        cur.execute('UPDATE pgbench_branches SET bbalance = bbalance + 100')
        cur.execute("UPDATE users SET username = 'renamed' WHERE id < 50")
        cur.execute('DROP TABLE aiogram_states')
        cur.execute('CREATE TABLE junk (id int)')
    conn.close()


def rewrite_sidecar(path):
    digest = hashlib.sha256(open(path, 'rb').read()).hexdigest()
    with open(path + '.sha256', 'w') as handle:
        handle.write('%s  %s\n' % (digest, os.path.basename(path)))


def test_round_trip_restores_identical_data_with_the_bot_stopped_for_the_swap(pg_container, bot_db, bot_container,
                                                                             tmp_path):
    settings = settings_for(pg_container, bot_db, tmp_path / 'backups', bot_container=bot_container,
                            bot_stop_timeout=5)
    conn = app_connect(pg_container, bot_db)
    with conn.cursor() as cur:  # names that need quoting survive too
        cur.execute('CREATE SCHEMA "ops data"')
        cur.execute('CREATE TABLE "ops data"."odd Table" (id int PRIMARY KEY, note text)')
        cur.execute('INSERT INTO "ops data"."odd Table" SELECT g, %s || g FROM generate_series(1, 10) g', ('n',))
    conn.close()
    original = table_checksums(pg_container, bot_db['name'])
    assert original['ops data.odd Table'][0] == 10
    backup = create_backup(settings)
    damage(pg_container, bot_db)
    damaged = table_checksums(pg_container, bot_db['name'])
    assert damaged != original and 'public.junk' in damaged

    _, started_before, _ = container_times(bot_container)
    t0 = datetime.datetime.now(datetime.timezone.utc)
    steps = []
    result = restore_database(settings, 'latest', confirm=bot_db['name'], log=steps.append)
    t1 = datetime.datetime.now(datetime.timezone.utc)

    # Identical content, table by table (row count and md5 of all rows).
    assert table_checksums(pg_container, bot_db['name']) == original
    assert result['changed'] is True and result['restored_from'] == backup['path']
    assert result['checks']['missing_tables'] == [] and result['checks']['tables'] == 8
    assert result['sha256'] == backup['sha256']
    counts = result['row_counts']
    assert counts['after']['public.pgbench_accounts'] == 100000
    assert counts['before']['public.pgbench_accounts'] == 100000 - 33333
    assert counts['after']['public.events'] == counts['before']['public.events'] == 1500
    assert counts['after']['public.aiogram_states'] == 50 and counts['before']['public.aiogram_states'] is None

    # The bot was stopped and started again, both inside the restore, and runs.
    running, started_after, finished = container_times(bot_container)
    assert running and started_after != started_before
    assert t0 < docker_time(finished) < docker_time(started_after) < t1
    assert result['bot'] == dict(container=bot_container, was_running=True, stopped=True, started=True)
    assert steps.index('stopping the bot (%s) for the swap' % bot_container) < \
        [i for i, s in enumerate(steps) if s.startswith('swapped:')][0] < \
        steps.index('starting the bot (%s)' % bot_container)

    # The damaged database is kept under the reported name, with the damage in it.
    previous = result['previous_database']
    assert previous.startswith(bot_db['name'] + '__pre_restore_')
    assert table_checksums(pg_container, previous) == damaged
    assert 'dropdb' in result['drop_previous_command'] and previous in result['msg']
    assert databases_like(pg_container, bot_db['name'] + '__restore_%') == []

    # The safety backup holds the damaged state and is verified like any backup.
    safety = result['safety_backup']
    assert os.path.basename(safety).startswith('pre_restore_') and os.path.exists(safety + '.sha256')

    # The bot's role still owns the database and its tables, and can work with them.
    owner = pg_container.query('SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s',
                               (bot_db['name'],))[0][0]
    assert owner == bot_db['owner'] == result['owner']
    assert pg_container.query("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
                              db=bot_db['name']) == [(bot_db['owner'],)]
    conn = app_connect(pg_container, bot_db)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO users (id, username) VALUES (999999, 'after-restore')")
        cur.execute('CREATE TABLE after_restore (id int)')
    conn.close()


def test_truncated_backup_is_refused_before_anything_is_touched(pg_container, bot_db, bot_container, tmp_path):
    settings = settings_for(pg_container, bot_db, tmp_path / 'backups', bot_container=bot_container)
    backup = create_backup(settings)
    size = os.path.getsize(backup['path'])
    with open(backup['path'], 'r+b') as handle:
        handle.truncate(size // 2)
    before = table_checksums(pg_container, bot_db['name'])
    bot_before = container_times(bot_container)

    with pytest.raises(BackupError) as failure:
        restore_database(settings, os.path.basename(backup['path']), confirm=bot_db['name'])
    message = str(failure.value)
    assert 'is corrupt or truncated' in message and backup['sha256'] in message and 'nothing was changed' in message
    assert table_checksums(pg_container, bot_db['name']) == before
    assert container_times(bot_container) == bot_before
    assert databases_like(pg_container, bot_db['name'] + '\\_\\_%') == []
    assert not [n for n in os.listdir(tmp_path / 'backups') if n.startswith('pre_restore_')]


def test_corrupt_archive_with_a_matching_sidecar_is_refused_by_the_list_check(pg_container, bot_db, tmp_path):
    settings = settings_for(pg_container, bot_db, tmp_path / 'backups')
    backup = create_backup(settings)
    with open(backup['path'], 'r+b') as handle:
        handle.seek(5)  # just after the PGDMP magic: the header and table of contents
        handle.write(b'\xff' * 64)
    rewrite_sidecar(backup['path'])
    before = table_checksums(pg_container, bot_db['name'])
    with pytest.raises(BackupError, match='is not a readable PostgreSQL custom-format archive'):
        restore_database(settings, 'latest', confirm=bot_db['name'])
    assert table_checksums(pg_container, bot_db['name']) == before
    assert databases_like(pg_container, bot_db['name'] + '\\_\\_%') == []


def test_a_restore_failing_half_way_leaves_the_live_database_intact(pg_container, bot_db, bot_container, tmp_path):
    settings = settings_for(pg_container, bot_db, tmp_path / 'backups', bot_container=bot_container)
    backup = create_backup(settings)
    # Garbage in the middle of the data (pgbench_accounts' compressed rows) with a sidecar that matches:
    # the checksum and the table of contents pass, pg_restore fails while loading the data.
    size = os.path.getsize(backup['path'])
    with open(backup['path'], 'r+b') as handle:
        handle.seek(size // 2)
        handle.write(os.urandom(4096))
    rewrite_sidecar(backup['path'])
    damage(pg_container, bot_db)
    live = table_checksums(pg_container, bot_db['name'])
    bot_before = container_times(bot_container)

    steps = []
    with pytest.raises(BackupError) as failure:
        restore_database(settings, 'latest', confirm=bot_db['name'], log=steps.append)
    message = str(failure.value)
    assert 'pg_restore of %s' % os.path.basename(backup['path']) in message
    assert 'The live database %s was not changed' % bot_db['name'] in message
    assert any(s.startswith('restoring ') for s in steps)  # it really got to pg_restore
    assert table_checksums(pg_container, bot_db['name']) == live
    assert databases_like(pg_container, bot_db['name'] + '\\_\\_%') == []  # temp database dropped
    assert container_times(bot_container) == bot_before  # the bot was never stopped
    # The safety backup taken before the attempt is there (and verified).
    assert [n for n in os.listdir(tmp_path / 'backups') if n.startswith('pre_restore_') and n.endswith('.sha256')]


def test_restore_requires_the_confirmation_value(pg_container, bot_db, tmp_path):
    settings = settings_for(pg_container, bot_db, tmp_path / 'backups')
    create_backup(settings)
    for confirm in (None, '', 'yes', 'soul_bot'):
        with pytest.raises(BackupError) as failure:
            restore_database(settings, 'latest', confirm=confirm)
        assert 'confirm it by passing confirm=%s' % bot_db['name'] in str(failure.value)
        assert 'Nothing was changed' in str(failure.value)
    assert databases_like(pg_container, bot_db['name'] + '\\_\\_%') == []


def test_check_mode_changes_nothing(pg_container, bot_db, bot_container, tmp_path):
    settings = settings_for(pg_container, bot_db, tmp_path / 'backups', bot_container=bot_container)
    create_backup(settings)
    files = sorted(os.listdir(tmp_path / 'backups'))
    bot_before = container_times(bot_container)
    result = restore_database(settings, 'latest', confirm=bot_db['name'], check_mode=True)
    assert result['changed'] is False and result['msg'].startswith('Would restore %s' % bot_db['name'])
    assert result['row_counts']['before']['public.pgbench_accounts'] == 100000
    assert sorted(os.listdir(tmp_path / 'backups')) == files
    assert databases_like(pg_container, bot_db['name'] + '\\_\\_%') == []
    assert container_times(bot_container) == bot_before


def test_restore_test_uses_a_throwaway_database(pg_container, bot_db, tmp_path):
    settings = settings_for(pg_container, bot_db, tmp_path / 'backups')
    create_backup(settings)
    live = table_checksums(pg_container, bot_db['name'])
    result = restore_test(settings)
    assert result['changed'] is False and 'passed: 7 tables' in result['msg']
    assert result['checks']['rows'] == 100000 + 10 + 1 + 300 + 1500 + 50 + 0
    assert result['checks']['missing_tables'] == []
    assert databases_like(pg_container, bot_db['name'] + '\\_\\_%') == []
    assert table_checksums(pg_container, bot_db['name']) == live


def test_restore_recreates_a_lost_database(pg_container, bot_db, tmp_path):
    settings = settings_for(pg_container, bot_db, tmp_path / 'backups', owner=bot_db['owner'])
    create_backup(settings)
    original = table_checksums(pg_container, bot_db['name'])
    pg_container.query('DROP DATABASE %s' % bot_db['name'])
    result = restore_database(settings, 'latest', confirm=bot_db['name'])
    assert result['previous_database'] is None and result['safety_backup'] is None
    assert table_checksums(pg_container, bot_db['name']) == original
    assert result['owner'] == bot_db['owner']


def test_module_through_ansible(pg_container, bot_db, tmp_path):
    backup_dir = tmp_path / 'backups'
    create_backup(settings_for(pg_container, bot_db, backup_dir))
    audit_log = tmp_path / 'audit.log'
    params = dict(pg_container.params(bot_db['name']), container=pg_container.name, backup_dir=str(backup_dir),
                  audit_log=str(audit_log), audit_who='pytest@controller')
    tasks = [
        {'name': 'Restore without the confirmation', 'pg_restore': dict(params, confirm='yes'), 'ignore_errors': True},
        {'name': 'Restore test', 'pg_restore': dict(params, test_only=True)},
        {'name': 'Restore', 'pg_restore': dict(params, confirm=bot_db['name'])},
    ]
    book = tmp_path / 'restore.yml'
    book.write_text(yaml.safe_dump([{'name': 'Restore', 'hosts': 'localhost', 'gather_facts': False,
                                     'tasks': tasks}]))
    proc = ansible_playbook(book, '-vvv')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    refused, tested, restored = [t['hosts']['localhost'] for t in
                                 json.loads(proc.stdout[proc.stdout.index('{'):])['plays'][0]['tasks']]
    assert refused['failed'] is True and refused['changed'] is False
    assert 'confirm it by passing confirm=%s' % bot_db['name'] in refused['msg']
    assert 'passed: 7 tables' in tested['msg'] and tested['changed'] is False
    assert restored['changed'] is True
    assert restored['previous_database'].startswith(bot_db['name'] + '__pre_restore_')
    # The module writes its own audit line: the refusal and the restore, not the restore test.
    lines = [json.loads(line) for line in audit_log.read_text().splitlines()]
    assert [(x['event'], x['result'], x['who']) for x in lines] == [('restore', 'refused', 'pytest@controller'),
                                                                      ('restore', 'success', 'pytest@controller')]
    assert lines[1]['backup'] == restored['restored_from'] and lines[1]['duration'] > 0
    assert 'Traceback' not in proc.stdout
    assert pg_container.password not in proc.stdout + proc.stderr


def test_backup_without_sidecar_needs_an_explicit_override(pg_container, bot_db, tmp_path):
    settings = settings_for(pg_container, bot_db, tmp_path / 'backups')
    backup = create_backup(settings)
    legacy = str(tmp_path / 'legacy.dump')
    shutil.copy(backup['path'], legacy)
    with pytest.raises(BackupError, match='has no .sha256 sidecar'):
        restore_database(settings, legacy, confirm=bot_db['name'])
    started = time.time()
    result = restore_test(dict(settings, require_checksum=False), legacy)
    assert 'passed' in result['msg'] and time.time() - started < 30
    with pytest.raises(psycopg2.Error):
        pg_container.query('SELECT 1', db=result['database'])


# -- several databases, damaged files, leftovers and the data-loss guard ---------------------------------------

def copy_database(pg_container, bot_db, suffix):
    other = dict(bot_db, name=bot_db['name'] + suffix)
    pg_container.query(sql.SQL('CREATE DATABASE {} TEMPLATE {} OWNER {}').format(
        sql.Identifier(other['name']), sql.Identifier(bot_db['name']), sql.Identifier(bot_db['owner'])))
    return other


def test_latest_is_the_newest_intact_backup_of_this_database(pg_container, bot_db, tmp_path):
    backup_dir = tmp_path / 'backups'
    settings = settings_for(pg_container, bot_db, backup_dir)
    older = create_backup(settings)
    newer = create_backup(settings)
    other = copy_database(pg_container, bot_db, '_other')
    theirs = create_backup(settings_for(pg_container, other, backup_dir))  # the newest file in the directory
    with open(newer['path'], 'r+b') as handle:  # damaged after it was verified
        handle.seek(os.path.getsize(newer['path']) // 2)
        handle.write(b'\0' * 512)

    steps = []
    result = restore_database(settings, 'latest', confirm=bot_db['name'], log=steps.append)
    assert result['restored_from'] == older['path'], 'not the other database\'s, not the damaged one'
    assert 'the newer backup %s does not match its .sha256 sidecar (corrupt, truncated or changed): skipped' \
        % os.path.basename(newer['path']) in steps
    assert 'latest: using %s, the newest backup of %s that verifies' % (os.path.basename(older['path']),
                                                                         bot_db['name']) in steps
    # Named explicitly, the damaged one is refused before anything is touched.
    with pytest.raises(BackupError, match='is corrupt or truncated'):
        restore_database(settings, os.path.basename(newer['path']), confirm=bot_db['name'])
    assert os.path.exists(theirs['path'])


def test_a_backup_of_another_database_is_refused(pg_container, bot_db, tmp_path):
    backup_dir = tmp_path / 'backups'
    other = copy_database(pg_container, bot_db, '_other')
    theirs = create_backup(settings_for(pg_container, other, backup_dir))
    damage(pg_container, bot_db)
    before = table_checksums(pg_container, bot_db['name'])
    settings = settings_for(pg_container, bot_db, backup_dir)
    with pytest.raises(BackupError, match='no verified backup of %s' % bot_db['name']):
        restore_database(settings, 'latest', confirm=bot_db['name'])
    with pytest.raises(BackupError) as failure:
        restore_database(settings, os.path.basename(theirs['path']), confirm=bot_db['name'])
    assert 'is a backup of the database %s, not of %s; nothing was changed' % (other['name'], bot_db['name']) \
        in str(failure.value)
    # A sidecar without the database line (written before it existed) does not get past the check either:
    # the archive itself names its database.
    with open(theirs['path'] + '.sha256') as handle:
        first = handle.readline()
    with open(theirs['path'] + '.sha256', 'w') as handle:
        handle.write(first)
    with pytest.raises(BackupError, match='is a backup of the database %s' % other['name']):
        restore_database(settings, os.path.basename(theirs['path']), confirm=bot_db['name'])
    with pytest.raises(BackupError, match='is a backup of the database'):
        restore_test(settings, os.path.basename(theirs['path']))
    assert table_checksums(pg_container, bot_db['name']) == before
    assert databases_like(pg_container, bot_db['name'] + '\\_\\_%') == []


def test_restore_drops_leftovers_prunes_safety_backups_and_records_the_guard(pg_container, bot_db, tmp_path):
    backup_dir = tmp_path / 'backups'
    guard_file = tmp_path / 'state' / 'data-guard.json'
    settings = settings_for(pg_container, bot_db, backup_dir, keep_safety_backups=1,
                            data_guard_file=str(guard_file))
    create_backup(settings)
    leftover = bot_db['name'] + '__restore_20250105_101500'  # a restore killed before its swap
    pg_container.query(sql.SQL('CREATE DATABASE {}').format(sql.Identifier(leftover)))
    # The flag a deploy raised when it found the database empty.
    guard_file.parent.mkdir()
    guard_file.write_text(json.dumps(dict(system_identifier='1', had_data=True, tables={'public.users': 300},
                                          flag=dict(raised_at=time.time(), by='deploy', reason='test flag'))))
    steps = []
    first = restore_database(settings, 'latest', confirm=bot_db['name'], log=steps.append)
    assert first['dropped_databases'] == [leftover]
    assert 'dropped %s, left by an interrupted restore' % leftover in steps
    assert first['data_guard']['previous_flag']['reason'] == 'test flag'
    assert '; the data-loss flag is lowered' in first['msg']
    record = guard.entry(str(guard_file), bot_db['name'])
    assert record['flag'] is None and record['had_data'] is True
    ident = pg_container.query('SELECT system_identifier::text FROM pg_control_system()')[0][0]
    assert record['system_identifier'] == ident and record['tables']['public.users'] == 300
    assert record['events'][-1]['by'] == 'pg_restore' and 'completed' in record['events'][-1]['what']

    second = restore_database(settings, 'latest', confirm=bot_db['name'])
    assert second['pruned_safety'] == [os.path.basename(first['safety_backup'])]
    safety = sorted(n for n in os.listdir(backup_dir) if n.startswith('pre_restore_'))
    assert safety == sorted([os.path.basename(second['safety_backup']),
                             os.path.basename(second['safety_backup']) + '.sha256'])
    assert second['data_guard']['previous_flag'] is None and 'flag' not in second['msg']
