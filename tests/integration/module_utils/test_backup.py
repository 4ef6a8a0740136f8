"""create_backup (backup.py) and the pg_backup module against a real PostgreSQL container: pg_dump runs inside it
through `docker exec`.

Databases hold real data: pgbench tables (pgbench -i, the binary on this machine, against the
container's port) plus the sample bot's tables from examples/bot/database/migrations with rows
(tests/support/backupenv.py, shared with the restore, rehearsal and backup command tests).
"""

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from ansible.module_utils.soulnear.backup import create_backup
from ansible.module_utils.soulnear.backup_files import BackupError, archive_database, list_backups, read_sidecar
from ansible.module_utils.soulnear.backup_settings import make_settings
from psycopg2 import sql
from ansiblerun import ansible_playbook, task_result
from backupenv import bot_db_fixture, bot_template_fixture  # noqa: F401 - the bot_db and bot_template fixtures
from backupenv import settings_for

from ansiblerun import ROOT


def archive_list(pg_container, path):
    with open(path, 'rb') as handle:
        return subprocess.run(['docker', 'exec', '-i', pg_container.name, 'pg_restore', '--list'], stdin=handle,
                              capture_output=True, text=True)


def test_backup_is_verified_private_and_sha256sum_compatible(pg_container, bot_db, tmp_path):
    backup_dir = tmp_path / 'backups'
    steps = []
    result = create_backup(settings_for(pg_container, bot_db, backup_dir), log=steps.append)

    path = result['path']
    name = os.path.basename(path)
    assert name.startswith('backup_') and name.endswith('.dump') and os.path.dirname(path) == str(backup_dir)
    assert result['changed'] is True and result['verified'] is True and result['created_dir'] is True
    assert result['size'] == os.path.getsize(path) > 100000
    assert result['tables'] == 7  # 4 pgbench tables + users, events, aiogram_states
    assert result['compression'] == 'gzip'  # auto on PostgreSQL 15
    assert result['pruned'] == [] and result['duration'] > 0
    assert stat.S_IMODE(os.stat(backup_dir).st_mode) == 0o700
    for item in (path, path + '.sha256'):
        assert stat.S_IMODE(os.stat(item).st_mode) == 0o600
    # Only the dump, its sidecar and the lock file: no temporary file left.
    assert sorted(os.listdir(backup_dir)) == sorted(['.soulnear-backup.lock', name, name + '.sha256'])
    check = subprocess.run(['sha256sum', '--strict', '-c', name + '.sha256'], cwd=backup_dir, capture_output=True,
                           text=True)
    assert check.returncode == 0 and check.stdout.strip() == name + ': OK'
    assert (backup_dir / (name + '.sha256')).read_text() == '%s  %s\n# database: %s\n' % (result['sha256'], name,
                                                                                           bot_db['name'])
    # The archive's own header names the database too (what older sidecars are attributed by).
    assert archive_database(path) == bot_db['name']
    assert list_backups(str(backup_dir), database=bot_db['name'])[0]['database'] == bot_db['name']
    listed = archive_list(pg_container, path)
    assert listed.returncode == 0 and 'TABLE DATA public events' in listed.stdout
    assert any(s.startswith('dumping %s' % bot_db['name']) for s in steps)

    # A second backup in the same second gets the next free name instead of overwriting.
    again = create_backup(settings_for(pg_container, bot_db, backup_dir))
    assert again['path'] != path and len(list_backups(str(backup_dir))) == 2


def test_check_mode_writes_nothing(pg_container, bot_db, tmp_path):
    backup_dir = tmp_path / 'not-yet'
    result = create_backup(settings_for(pg_container, bot_db, backup_dir), check_mode=True)
    assert result['changed'] is True and result['created_dir'] is True
    assert result['size'] is None and result['sha256'] is None
    assert result['path'].startswith(str(backup_dir) + '/backup_')
    assert not backup_dir.exists()

    backup_dir.mkdir()
    first = create_backup(settings_for(pg_container, bot_db, backup_dir, keep_last=1, keep_daily=1))
    before = sorted(os.listdir(backup_dir))
    planned = create_backup(settings_for(pg_container, bot_db, backup_dir, keep_last=1, keep_daily=1),
                            check_mode=True)
    assert sorted(os.listdir(backup_dir)) == before
    # A real run would make a newer backup of the same day and prune the first one.
    assert planned['pruned'] == [os.path.basename(first['path'])]


def test_retention_runs_after_a_real_backup(pg_container, bot_db, tmp_path):
    backup_dir = tmp_path / 'backups'
    real = create_backup(settings_for(pg_container, bot_db, backup_dir, prune=False))
    data = open(real['path'], 'rb').read()
    sidecar = open(real['path'] + '.sha256').read().split()[0]
    old = ['backup_201901%02d_020000.dump' % day for day in range(1, 11)]
    for name in old:
        (backup_dir / name).write_bytes(data)
        (backup_dir / (name + '.sha256')).write_text('%s  %s\n' % (sidecar, name))

    result = create_backup(settings_for(pg_container, bot_db, backup_dir, keep_daily=3, keep_weekly=0,
                                        keep_monthly=0, keep_last=1))
    # Daily 3: today's newest backup and the two newest old days; everything else goes.
    kept = sorted(k['name'] for k in result['kept'])
    assert kept == sorted([os.path.basename(result['path']), 'backup_20190110_020000.dump',
                           'backup_20190109_020000.dump'])
    assert sorted(result['pruned']) == sorted(old[:8] + [os.path.basename(real['path'])])
    assert sorted(b['name'] for b in list_backups(str(backup_dir))) == kept
    assert not [n for n in os.listdir(backup_dir) if n.endswith('.sha256') and n[:-7] not in kept]


def test_offsite_copy_to_a_second_directory_and_a_failed_copy(pg_container, bot_db, tmp_path):
    offsite = tmp_path / 'offsite' / 'soulnear'
    result = create_backup(settings_for(pg_container, bot_db, tmp_path / 'backups', offsite=str(offsite)))
    name = os.path.basename(result['path'])
    assert result['offsite'] == dict(target=str(offsite), ok=True, kind='path', pruned=[])
    assert sorted(os.listdir(offsite)) == [name, name + '.sha256']
    assert stat.S_IMODE(os.stat(offsite).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(offsite / name).st_mode) == 0o600
    assert subprocess.run(['sha256sum', '-c', name + '.sha256'], cwd=offsite, capture_output=True).returncode == 0

    # A second location that cannot be written: reported, and the local backup is still good.
    blocker = tmp_path / 'not-a-directory'
    blocker.write_text('')
    result = create_backup(settings_for(pg_container, bot_db, tmp_path / 'backups', offsite=str(blocker / 'x')))
    assert result['offsite']['ok'] is False and 'not-a-directory' in result['offsite']['error']
    assert result['verified'] is True and os.path.exists(result['path'])


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KB file system (tmpfs): too small for any of the test databases' dumps."""
    path = tmp_path / 'tiny'
    path.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', str(path)], check=True)
    yield path
    subprocess.run(['umount', str(path)], check=True)


def test_backup_refused_when_the_disk_is_too_small(pg_container, bot_db, tiny_disk):
    with pytest.raises(BackupError) as failure:
        create_backup(settings_for(pg_container, bot_db, tiny_disk))
    message = str(failure.value)
    assert 'not enough free disk space' in message and 'Nothing was written' in message
    assert 'space_margin 1.2' in message
    assert os.listdir(tiny_disk) == []


def test_disk_filling_up_during_the_dump_leaves_no_partial_file(pg_container, bot_db, tiny_disk):
    # A margin so low that the check passes: the disk then really fills up half-way through the dump.
    with pytest.raises(BackupError) as failure:
        create_backup(settings_for(pg_container, bot_db, tiny_disk, space_margin=0.001))
    assert 'filled up after' in str(failure.value) and 'partial file was removed' in str(failure.value)
    # What reached the disk before it was full, not "0 B".
    written = str(failure.value).split('filled up after ')[1].split(' of the dump')[0]
    assert written != '0 B' and written.endswith(('KB', 'MB')), written
    assert os.listdir(tiny_disk) == ['.soulnear-backup.lock']
    # pg_dump inside the container does not linger after its reader went away.
    deadline = time.time() + 30
    while pg_container.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                             "AND datname = %s", (bot_db['name'],)):
        assert time.time() < deadline, 'pg_dump is still connected 30 s after the failed backup'
        time.sleep(0.1)


def test_failures_name_the_cause(pg_container, bot_db, tmp_path):
    with pytest.raises(BackupError, match='database container no-such-container is missing'):
        create_backup(make_settings(pg_container.params(bot_db['name']), container='no-such-container',
                                    backup_dir=str(tmp_path)))
    with pytest.raises(BackupError, match='password authentication failed'):
        create_backup(make_settings(pg_container.params(bot_db['name'], password='wrong'),
                                    container=pg_container.name, backup_dir=str(tmp_path)))
    with pytest.raises(BackupError, match='compression=zstd needs pg_dump 16 or later'):
        create_backup(settings_for(pg_container, bot_db, tmp_path, compression='zstd'))
    with pytest.raises(BackupError, match='no database given'):
        make_settings(pg_container.params(''), container=pg_container.name, backup_dir=str(tmp_path))
    assert list_backups(str(tmp_path)) == []


def test_module_through_ansible_check_real_and_password_hidden(pg_container, bot_db, tmp_path):
    backup_dir = tmp_path / 'backups'
    params = dict(pg_container.params(bot_db['name']), container=pg_container.name, backup_dir=str(backup_dir))
    tasks = [{'name': 'Take a backup', 'pg_backup': params},
             {'name': 'Take a backup that cannot fit', 'pg_backup': dict(params, space_margin=1000000.0),
              'ignore_errors': True}]
    book = tmp_path / 'backup.yml'
    book.write_text(yaml.safe_dump([{'name': 'Backup', 'hosts': 'localhost', 'gather_facts': False,
                                     'tasks': tasks}]))

    check = ansible_playbook(book, '--check', '--diff')
    assert check.returncode == 0, check.stdout + check.stderr
    result = task_result(check)
    assert result['changed'] is True and result['msg'].startswith('Would back up %s' % bot_db['name'])
    assert 'backup_' in result['diff']['after'] and not backup_dir.exists()

    proc = ansible_playbook(book, '-vvv')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backed_up, refused = [t['hosts']['localhost'] for t in
                          json.loads(proc.stdout[proc.stdout.index('{'):])['plays'][0]['tasks']]
    assert backed_up['changed'] is True and os.path.exists(backed_up['path'])
    assert set(backed_up) >= {'path', 'size', 'duration', 'sha256', 'pruned'}
    assert refused['failed'] is True and refused['changed'] is False
    assert 'not enough free disk space' in refused['msg']
    assert 'Traceback' not in proc.stdout
    assert pg_container.password not in proc.stdout + proc.stderr


# -- faults inside pg_dump and the backup process ------------------------------------------------------------------

PG_DUMP = '/usr/lib/postgresql/15/bin/pg_dump'  # first on the image's PATH


@contextlib.contextmanager
def pg_dump_replaced(pg_container, script):
    """pg_dump in the container replaced by a shell script (the real one is pg_dump.real) for the block."""
    def root(*argv, check=True):
        return subprocess.run(['docker', 'exec', '-u', 'root', pg_container.name] + list(argv), check=check,
                              capture_output=True, text=True)
    root('mv', PG_DUMP, PG_DUMP + '.real')
    try:
        root('sh', '-c', 'cat > %s && chmod 755 %s' % (PG_DUMP, PG_DUMP))
        proc = subprocess.run(['docker', 'exec', '-i', '-u', 'root', pg_container.name, 'sh', '-c',
                               'cat > %s && chmod 755 %s' % (PG_DUMP, PG_DUMP)], input='#!/bin/sh\n' + script,
                              text=True, capture_output=True)
        assert proc.returncode == 0, proc.stderr
        yield
    finally:
        root('mv', '-f', PG_DUMP + '.real', PG_DUMP, check=False)


def test_a_corrupt_archive_from_pg_dump_is_never_accepted(pg_container, bot_db, tmp_path):
    """pg_dump exits 0 but its archive is damaged (its header overwritten): pg_restore --list refuses it, so no
    file gets a final name or a sidecar."""
    backup_dir = tmp_path / 'backups'
    script = '{ printf PGDMP; head -c 64 /dev/zero | tr "\\0" "\\377"; %s.real "$@" | tail -c +70; }\n' % PG_DUMP
    with pg_dump_replaced(pg_container, script):
        with pytest.raises(BackupError) as failure:
            create_backup(settings_for(pg_container, bot_db, backup_dir))
    assert 'is not a readable PostgreSQL custom-format archive' in str(failure.value)
    assert list_backups(str(backup_dir)) == []
    assert sorted(os.listdir(backup_dir)) == ['.soulnear-backup.lock'], 'no dump, no sidecar, no partial file'


def test_a_backup_killed_mid_dump_leaves_no_final_name_and_the_next_run_cleans_up(pg_container, bot_db, tmp_path):
    backup_dir = tmp_path / 'backups'
    settings = settings_for(pg_container, bot_db, backup_dir)
    # The dump stalls after its first 64 KB: the backup is killed while it streams it.
    marker = '/tmp/stalled-' + uuid.uuid4().hex[:8]
    script = '%s.real "$@" | { head -c 65536; touch %s; sleep 20; cat; }\n' % (PG_DUMP, marker)
    code = ('import json, sys; sys.path.insert(0, %r); from soulnear.backup import create_backup; '
            'from soulnear.backup_settings import make_settings; s = json.loads(sys.argv[1]); '
            'create_backup(make_settings(s.pop("conn"), **s))' % os.path.join(ROOT, 'module_utils'))
    args = dict(conn=pg_container.params(bot_db['name']), container=pg_container.name, backup_dir=str(backup_dir))
    with pg_dump_replaced(pg_container, script):
        proc = subprocess.Popen([sys.executable, '-c', code, json.dumps(args)], start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            partial = []
            while True:
                assert proc.poll() is None, 'the backup ended before it could be killed: %s' % proc.stdout.read()
                assert time.time() < deadline, 'the dump did not start within 60 s'
                partial = [n for n in os.listdir(backup_dir) if '.partial-' in n] if backup_dir.exists() else []
                stalled = subprocess.run(['docker', 'exec', pg_container.name, 'test', '-e', marker],
                                         capture_output=True).returncode == 0
                if partial and stalled:  # the dump is half-way: its first 64 KB are out, the rest is not
                    break
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # as systemd or an OOM kill ends a cron job: the whole group
            proc.wait(timeout=30)
    names = os.listdir(backup_dir)
    assert list_backups(str(backup_dir)) == [] and not [n for n in names if n.endswith('.sha256')], names
    assert partial[0] in names, 'the killed run leaves only its hidden partial file'

    result = create_backup(settings)
    assert result['stale_removed'] == partial
    assert sorted(os.listdir(backup_dir)) == sorted(['.soulnear-backup.lock', os.path.basename(result['path']),
                                                     os.path.basename(result['path']) + '.sha256'])
    assert read_sidecar(result['path']) == result['sha256']


def test_databases_sharing_a_backups_directory_keep_their_own_retention(pg_container, bot_db, bot_template,
                                                                       tmp_path):
    backup_dir = tmp_path / 'backups'
    other = dict(bot_template, name=bot_db['name'] + '_other')
    pg_container.query(sql.SQL('CREATE DATABASE {} TEMPLATE {} OWNER {}').format(
        sql.Identifier(other['name']), sql.Identifier(bot_template['name']), sql.Identifier(other['owner'])))
    tight = dict(keep_daily=1, keep_weekly=0, keep_monthly=0, keep_last=1)
    theirs = create_backup(settings_for(pg_container, other, backup_dir, **tight))
    ours = [create_backup(settings_for(pg_container, bot_db, backup_dir, **tight)) for _ in range(2)]
    assert ours[1]['pruned'] == [os.path.basename(ours[0]['path'])], 'only its own older backup'
    assert os.path.exists(theirs['path']), "one database's retention never prunes another's backups"
    assert [b['database'] for b in list_backups(str(backup_dir))] == [bot_db['name'], other['name']]


def test_a_backup_drops_the_databases_a_killed_restore_left(pg_container, bot_db, tmp_path):
    leftovers = [bot_db['name'] + '__restore_20250105_101500', bot_db['name'] + '__restore_test_101500']
    busy = bot_db['name'] + '__restore_20250105_111500'
    for name in leftovers + [busy]:
        pg_container.query(sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name)))
    session = pg_container.connect(db=busy)  # a restore that is still running holds a session
    try:
        steps = []
        result = create_backup(settings_for(pg_container, bot_db, tmp_path / 'backups'), log=steps.append)
    finally:
        session.close()
    assert result['dropped_databases'] == sorted(leftovers)
    assert 'dropped %s, left by an interrupted restore' % leftovers[0] in steps
    present = [r[0] for r in pg_container.query('SELECT datname FROM pg_database')]
    assert busy in present and not set(leftovers) & set(present)
    assert bot_db['name'] in present
