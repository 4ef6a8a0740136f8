"""The data-loss guard (guard.py) and the data_guard module against real PostgreSQL clusters: the first deploy
onto an empty database passes, an empty database that held data and another cluster with the same tables are
refused with the restore instructions, the flag stays raised until it is cleared, and allow_empty_database lets
a clean redeploy through.
"""

import json
import os
import stat
from datetime import datetime, timedelta

import pytest
from ansible.module_utils.soulnear import guard
from ansible.module_utils.soulnear.backup_files import write_sidecar
from ansible.module_utils.soulnear.backup_settings import make_settings
from ansible.module_utils.soulnear.files import sha256_file
from ansible.module_utils.soulnear.pg import connect
from ansible.module_utils.soulnear.restore import record_restored
from ansiblerun import run_module
from healthenv import app_database, execute, migrate
from healthenv import app_db_fixture  # noqa: F401 - the app_db fixture
from pgcluster import Cluster

TABLES = ['aiogram_states', 'schema_migrations']


def observe(params, tables=TABLES):
    conn = connect(params)
    try:
        return guard.observe(conn, tables)
    finally:
        conn.close()


def check(params, path, **options):
    return guard.check(str(path), observe(params), **options)


def verified_backup(directory, database, hours_old):
    """A verified backup file of database as the backup command names and seals it."""
    directory.mkdir(exist_ok=True)
    name = (datetime.now() - timedelta(hours=hours_old)).strftime('backup_%Y%m%d_%H%M%S.dump')
    (directory / name).write_bytes(b'PGDMP archive of ' + database.encode())
    write_sidecar(str(directory / name), sha256_file(str(directory / name)), database)
    return name


def test_first_deploy_passes_then_an_emptied_database_is_refused_until_cleared(pg_server, pg_db, tmp_path):
    app = app_database(pg_server, pg_db)
    path = tmp_path / 'state' / 'data-guard.json'

    first = check(app, path)  # the first deploy, before its migrations: nothing to lose
    assert first['ok'] and first['status'] == 'recorded' and first['observed']['empty']
    record = json.loads(path.read_text())
    assert record['had_data'] is False and record['flag'] is None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    migrate(app)
    after = check(app, path)  # the same check after the migrations records that the data exists
    assert after['ok'] and after['status'] == 'updated' and after['changed']
    record = json.loads(path.read_text())
    assert record['had_data'] is True and record['tables']['schema_migrations'] >= 1

    # The volume came back empty: the tables are gone.
    execute(app, 'DROP TABLE aiogram_states, schema_migrations, users, events')
    backups = tmp_path / 'backups'
    newest = verified_backup(backups, pg_db['login_db'], hours_old=3)
    verified_backup(backups, 'another_db', hours_old=1)  # newer, but of another database
    refused = check(app, path, by='deploy test', advice=lambda: guard.restore_advice(pg_db['login_db'],
                                                                                      str(backups)))
    assert not refused['ok'] and refused['problem'] == 'empty' and refused['status'] == 'refused'
    message = refused['msg']
    assert message.startswith('DATA LOSS SUSPECTED: the database %s is empty' % pg_db['login_db'])
    assert 'aiogram_states missing' in message and 'Nothing was migrated, started or created' in message
    assert 'Restore the newest verified backup, %s' % newest in message
    assert 'make restore BACKUP=latest CONFIRM=%s' % pg_db['login_db'] in message
    assert 'make guard-clear CONFIRM=%s' % pg_db['login_db'] in message
    flag = json.loads(path.read_text())['flag']
    assert flag['problem'] == 'empty' and flag['by'] == 'deploy test'

    # The flag stays raised: migrations run by hand bring the tables back, the guard still refuses.
    migrate(app)
    again = check(app, path)
    assert not again['ok'] and again['problem'] == 'flag' and 'the data-loss flag was raised' in again['msg']
    assert guard.status(str(path))['message'].startswith('FLAG RAISED')

    # Check mode decides the same and writes nothing.
    before = path.read_text()
    assert not check(app, path, check_mode=True)['ok'] and path.read_text() == before

    cleared = guard.accept(str(path), observe(app), by='operator', reason='accepted by operator')
    assert cleared['previous_flag']['problem'] == 'empty' and 'the flag raised' in cleared['msg']
    assert check(app, path)['ok']
    events = [e['what'] for e in json.loads(path.read_text())['events']]
    assert events[0].startswith('first record') and events[1].startswith('flag raised: the database')
    assert events[2].startswith('accepted by operator; flag lowered')


def test_allow_empty_database_lets_a_clean_redeploy_through(app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    assert check(app_db, path)['ok']
    execute(app_db, 'TRUNCATE aiogram_states; DELETE FROM schema_migrations')  # empty, tables still there
    refused = check(app_db, path)
    assert not refused['ok'] and refused['problem'] == 'empty' and 'aiogram_states 0 rows' in refused['msg']
    accepted = check(app_db, path, allow_empty=True, by='clean redeploy')
    assert accepted['ok'] and accepted['status'] == 'accepted empty' and accepted['changed']
    assert 'allow_empty_database' in accepted['msg'] and 'the flag is lowered' in accepted['msg']
    record = json.loads(path.read_text())
    assert record['flag'] is None and record['had_data'] is False
    assert record['events'][-1]['what'].startswith('accepted an empty database (allow_empty_database)')
    # allow_empty_database never lets a database with data through a problem.
    execute(app_db, "INSERT INTO aiogram_states (key) VALUES ('fsm:1:1')")
    assert check(app_db, path, allow_empty=True)['status'] == 'updated'


def test_another_cluster_with_the_same_tables_is_refused(app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    assert check(app_db, path)['ok']
    ident = json.loads(path.read_text())['system_identifier']
    other = Cluster().init().start()  # the volume re-initialised, and the migrations rerun on it
    try:
        other.wait_ready()
        other.query('CREATE DATABASE %s' % app_db['login_db'])
        twin = app_database(other, other.params(db=app_db['login_db']))
        migrate(twin)
        refused = check(twin, path, allow_empty=True)  # not empty: allow_empty_database does not apply
        assert not refused['ok'] and refused['problem'] == 'identity'
        assert 'another cluster than the one recorded' in refused['msg'] and ident in refused['msg']
    finally:
        other.destroy()


def test_an_unreadable_record_is_an_error_not_a_pass(app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    path.write_text('{not json')
    with pytest.raises(guard.GuardError, match='cannot be read'):
        check(app_db, path)


def test_a_restore_records_the_restored_database(app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    assert check(app_db, path)['ok']
    execute(app_db, 'DROP TABLE aiogram_states, schema_migrations')
    assert not check(app_db, path)['ok']
    execute(app_db, "CREATE TABLE aiogram_states (key text PRIMARY KEY); INSERT INTO aiogram_states VALUES ('k')")
    settings = make_settings(app_db, data_guard_file=str(path))
    steps = []
    done = record_restored(settings, app_db['login_db'], '/backups/backup_20250105_020001.dump', steps.append)
    assert done['previous_flag']['problem'] == 'empty'
    assert 'restore of backup_20250105_020001.dump into %s completed' % app_db['login_db'] in steps[-1]
    assert check(app_db, path)['ok']


# -- the module through Ansible ------------------------------------------------------------------------------

def test_module_refuses_clears_and_hides_the_password(app_db, tmp_path):
    path = tmp_path / 'state' / 'data-guard.json'
    args = dict(app_db, state_file=str(path), backup_dir=str(tmp_path / 'backups'), actor='pytest deploy')
    code, result, out = run_module(tmp_path, 'data_guard', args, '--check')
    assert code == 0 and result['status'] == 'recorded' and not path.exists(), out
    code, result, out = run_module(tmp_path, 'data_guard', args)
    assert code == 0 and result['ok'] and result['observed']['tables']['schema_migrations'] >= 1, out

    execute(app_db, 'DROP TABLE aiogram_states, schema_migrations, users, events')
    code, result, out = run_module(tmp_path, 'data_guard', args, '-vvv')
    assert code != 0 and result['failed'] and result['problem'] == 'empty'
    assert 'There is no verified backup of %s' % app_db['login_db'] in result['msg']
    assert result['flag']['by'] == 'pytest deploy'
    assert app_db['login_password'] not in out and 'Traceback' not in out

    code, result, out = run_module(tmp_path, 'data_guard', dict(args, operation='query'))
    assert code == 0 and result['ok'] is False and result['msg'].startswith('FLAG RAISED')
    code, result, out = run_module(tmp_path, 'data_guard', dict(args, operation='clear', confirm='yes'))
    assert code != 0 and 'confirm it with confirm=%s' % app_db['login_db'] in result['msg']
    code, result, out = run_module(tmp_path, 'data_guard', dict(args, operation='clear',
                                                                 confirm=app_db['login_db']))
    assert code == 0 and result['status'] == 'cleared' and 'is lowered' in result['msg'], out
    code, result, out = run_module(tmp_path, 'data_guard', dict(args, allow_empty_database=True))
    assert code == 0 and result['ok'], out


def test_with_point_in_time_recovery_the_advice_is_the_restore_to_latest_first(tmp_path):
    """A lost volume with PITR on: make restore TIME=latest loses at most the last archive_timeout of commits, the
    newest dump everything since it was taken - the refusal names the first, the dump only as the fallback."""
    backups = tmp_path / 'backups'
    newest = verified_backup(backups, 'soul_bot', hours_old=5)
    plain = guard.restore_advice('soul_bot', str(backups))
    assert 'TIME=latest' not in plain and 'make restore BACKUP=latest CONFIRM=soul_bot' in plain
    advice = guard.restore_advice('soul_bot', str(backups), pitr=True)
    first, dump = advice.index('make restore TIME=latest CONFIRM=soul_bot'), advice.index('BACKUP=latest')
    assert first < dump and newest in advice and 'backup_pitr_new_history=true' in advice
