"""The data-loss guard (guard.py) and the data_guard module against real PostgreSQL clusters.

With no required tables (the default) the guard watches the database's own tables, whatever the bot calls them:
the first deploy onto an empty database passes, a freshly migrated schema has held no data, a database whose tables
that held rows came back empty (or as another cluster) is refused with the restore instructions, a table dropped on
purpose while others hold rows is not data loss, the flag stays raised until it is cleared, and
allow_empty_database lets a clean redeploy through. The record has one entry per database name: a new database on
the same host starts afresh, and an older flat record is read as its database's entry and rewritten.
"""

import json
import os
import stat
import time
from datetime import datetime, timedelta

import pytest
from ansible.module_utils.soulnear import guard
from ansible.module_utils.soulnear.backup_files import write_sidecar
from ansible.module_utils.soulnear.backup_settings import make_settings
from ansible.module_utils.soulnear.checks import run_checks
from ansible.module_utils.soulnear.files import sha256_file
from ansible.module_utils.soulnear.pg import connect
from ansible.module_utils.soulnear.restore import record_restored
from ansiblerun import run_module
from healthenv import app_database, execute, migrate
from healthenv import app_db_fixture  # noqa: F401 - the app_db fixture
from pgcluster import Cluster

# A bot that is not the project's example: its own schema, table names that need quoting, and no table the guard
# was ever told about.
BOT_SCHEMA = '''
CREATE SCHEMA shop;
CREATE TABLE shop."Customers" (id bigint PRIMARY KEY, name text);
CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer bigint REFERENCES shop."Customers" (id), total numeric);
CREATE TABLE shop."line items" (order_id bigint, sku text);
CREATE TABLE public.kv_store (k text PRIMARY KEY, v jsonb);
CREATE TABLE public.feature_flags (name text PRIMARY KEY);
CREATE TABLE public.schema_migrations (version text PRIMARY KEY);
INSERT INTO public.schema_migrations VALUES ('1'), ('2');
'''
BOT_ROWS = '''
INSERT INTO shop."Customers" SELECT g, 'c' || g FROM generate_series(1, 30) g;
INSERT INTO shop.orders SELECT g, 1 + g % 30, g FROM generate_series(1, 200) g;
INSERT INTO shop."line items" SELECT 1 + g % 200, 'sku' || g FROM generate_series(1, 500) g;
INSERT INTO public.kv_store VALUES ('greeting', '"hi"');
'''
HOLDING = ['public.kv_store', 'shop.Customers', 'shop.line items', 'shop.orders']


def observe(params, required=(), path=None, **options):
    conn = connect(params)
    try:
        return guard.observe(conn, list(required), state_file=str(path) if path else None, **options)
    finally:
        conn.close()


def check(params, path, required=(), **options):
    return guard.check(str(path), observe(params, required, path), **options)


def raw(path):
    return json.loads(path.read_text())


def verified_backup(directory, database, hours_old):
    """A verified backup file of database as the backup command names and seals it."""
    directory.mkdir(exist_ok=True)
    name = (datetime.now() - timedelta(hours=hours_old)).strftime('backup_%Y%m%d_%H%M%S.dump')
    (directory / name).write_bytes(b'PGDMP archive of ' + database.encode())
    write_sidecar(str(directory / name), sha256_file(str(directory / name)), database)
    return name


@pytest.fixture(name='bot')
def bot_fixture(pg_server, pg_db):
    """A database owned by an app role, with the bot's schema created (no rows but the migration versions)."""
    params = app_database(pg_server, pg_db)
    execute(params, BOT_SCHEMA)
    return params


# -- the database's own tables ---------------------------------------------------------------------------------

def test_a_bot_of_any_schema_is_watched_without_naming_its_tables(bot, pg_server, tmp_path):
    path = tmp_path / 'state' / 'data-guard.json'
    fresh = check(bot, path)  # migrated, no data yet: the migration versions are not data
    assert fresh['ok'] and fresh['status'] == 'recorded' and fresh['observed']['empty']
    assert fresh['observed']['bookkeeping'] == ['public.schema_migrations'] and fresh['observed']['holding'] == []
    assert guard.entry(str(path), bot['login_db'])['had_data'] is False
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    # Unlogged tables (a crash empties them) and the tables of extensions are not the bot's data.
    execute(bot, 'CREATE UNLOGGED TABLE cache (k text); INSERT INTO cache VALUES (\'x\'); '
                 'CREATE TABLE ext_data (k text); INSERT INTO ext_data VALUES (\'x\')')
    pg_server.query('ALTER EXTENSION plpgsql ADD TABLE public.ext_data', db=bot['login_db'])
    assert check(bot, path)['observed']['empty'], 'unlogged and extension tables are not data'

    execute(bot, BOT_ROWS)
    held = check(bot, path)
    assert held['ok'] and held['status'] == 'updated' and held['changed']
    assert held['observed']['holding'] == HOLDING
    assert held['observed']['tables']['shop.line items'] == 500 and held['observed']['tables']['shop.Customers'] == 30
    assert 'public.cache' not in held['observed']['tables'] and 'public.ext_data' not in held['observed']['tables']
    record = guard.entry(str(path), bot['login_db'])
    assert record['had_data'] is True and record['held'] == HOLDING and record['flag'] is None
    assert held['record']['held'] == HOLDING
    # The health report says so, with no required table configured.
    report = run_checks(dict(bot, retries=0, data_guard_file=str(path)))
    tables = report['checks']['tables']
    assert report['ok'] and tables['value']['required'] == [] and tables['value']['data_guard']['holding'] == 4
    assert tables['message'].startswith('no required tables set; the database has 8 table(s)'), tables['message']
    assert tables['message'].endswith('data-loss guard: 4 table(s) hold data')

    # A table the bot dropped on purpose while others hold rows is not data loss; the record follows.
    execute(bot, 'DROP TABLE shop."line items"; TRUNCATE public.kv_store')
    dropped = check(bot, path)
    assert dropped['ok'] and dropped['status'] == 'updated'
    assert guard.entry(str(path), bot['login_db'])['held'] == ['shop.Customers', 'shop.orders']

    # Every table that held rows emptied (the migration versions still there): refused, naming them.
    execute(bot, 'TRUNCATE shop.orders, shop."Customers"')
    refused = check(bot, path, by='deploy test')
    assert not refused['ok'] and refused['problem'] == 'empty' and refused['status'] == 'refused'
    assert refused['msg'].startswith('DATA LOSS SUSPECTED: the database %s is empty: the 2 table(s) that held rows '
                                     'when last recorded' % bot['login_db']), refused['msg']
    assert 'shop.Customers 0 rows, 30 rows before' in refused['msg']
    assert 'shop.orders 0 rows, 200 rows before' in refused['msg'] and 'no other table holds rows' in refused['msg']
    assert 'public.schema_migrations' not in refused['msg'].split('Nothing was migrated')[0]
    entry = guard.entry(str(path), bot['login_db'])
    assert entry['flag']['problem'] == 'empty' and entry['flag']['by'] == 'deploy test'
    assert entry['events'][-1]['what'].startswith('flag raised: the database %s is empty' % bot['login_db'])


def test_a_migrated_again_schema_and_many_lost_tables_are_refused(app_db, tmp_path):
    """The example bot's schema migrated again over lost data: schema_migrations has its rows back, the data not;
    a refusal names a few tables and how many more."""
    path = tmp_path / 'data-guard.json'
    assert check(app_db, path)['ok'] and not guard.entry(str(path), app_db['login_db'])['had_data']
    extra = ['t_%02d' % i for i in range(8)]
    execute(app_db, "INSERT INTO users (id) VALUES (1), (2); INSERT INTO events (update_id, user_id, kind) "
                    "VALUES (10, 1, 'message'); " + ' '.join('CREATE TABLE %s AS SELECT 1 AS one;' % t for t in extra))
    assert check(app_db, path)['observed']['holding'] == sorted(['public.events', 'public.users'] +
                                                                ['public.' + t for t in extra])
    execute(app_db, 'DROP TABLE users, events, aiogram_states, %s; DROP TABLE schema_migrations' % ', '.join(extra))
    migrate(app_db)  # the empty schema back, with its migration versions
    refused = check(app_db, path)
    assert not refused['ok'] and refused['problem'] == 'empty'
    assert 'the 10 table(s) that held rows' in refused['msg'] and ' and 5 more)' in refused['msg'], refused['msg']
    assert 'public.events 0 rows, 1 row before' in refused['msg'] and 'public.t_00 missing, 1 row before' in \
        refused['msg']


def test_first_deploy_passes_then_an_emptied_database_is_refused_until_cleared(pg_server, pg_db, tmp_path):
    app = app_database(pg_server, pg_db)
    path = tmp_path / 'state' / 'data-guard.json'

    first = check(app, path)  # the first deploy, before its migrations: nothing to lose
    assert first['ok'] and first['status'] == 'recorded' and first['observed']['empty']
    assert first['observed']['tables'] == {} and 'nothing to lose yet' in first['msg']
    entry = guard.entry(str(path), pg_db['login_db'])
    assert entry['had_data'] is False and entry['flag'] is None

    migrate(app)
    after = check(app, path)  # after the migrations: still nothing to lose
    assert after['ok'] and after['status'] == 'updated' and not after['changed']
    assert 'has held no data yet' in after['msg']
    execute(app, "INSERT INTO users (id, username) VALUES (1, 'ann'), (2, 'bob')")  # the bot's first users
    stored = check(app, path)
    assert stored['ok'] and stored['changed'] and guard.entry(str(path), pg_db['login_db'])['had_data'] is True

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
    assert 'public.users missing, 2 rows before' in message and 'Nothing was migrated, started or created' in message
    assert 'Restore the newest verified backup, %s' % newest in message
    assert 'make restore BACKUP=latest CONFIRM=%s' % pg_db['login_db'] in message
    assert 'make guard-clear CONFIRM=%s' % pg_db['login_db'] in message
    flag = guard.entry(str(path), pg_db['login_db'])['flag']
    assert flag['problem'] == 'empty' and flag['by'] == 'deploy test'

    # The flag stays raised: migrations run by hand bring the tables back, the guard still refuses.
    migrate(app)
    execute(app, "INSERT INTO users (id) VALUES (3)")
    again = check(app, path)
    assert not again['ok'] and again['problem'] == 'flag' and 'the data-loss flag was raised' in again['msg']
    assert guard.status(str(path), pg_db['login_db'])['message'].startswith('FLAG RAISED')

    # Check mode decides the same and writes nothing.
    before = path.read_text()
    assert not check(app, path, check_mode=True)['ok'] and path.read_text() == before

    cleared = guard.accept(str(path), observe(app, path=path), by='operator', reason='accepted by operator')
    assert cleared['previous_flag']['problem'] == 'empty' and 'the flag raised' in cleared['msg']
    assert check(app, path)['ok']
    events = [e['what'] for e in raw(path)['events']]
    assert events[0].startswith('first record') and events[1].startswith('flag raised: the database')
    assert events[2].startswith('accepted by operator; flag lowered')


def test_allow_empty_database_lets_a_clean_redeploy_through(app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    execute(app_db, "INSERT INTO aiogram_states (key) VALUES ('fsm:1:1')")
    assert check(app_db, path)['ok']
    execute(app_db, 'TRUNCATE aiogram_states')  # empty, tables still there
    refused = check(app_db, path)
    assert not refused['ok'] and refused['problem'] == 'empty'
    assert 'public.aiogram_states 0 rows, 1 row before' in refused['msg']
    accepted = check(app_db, path, allow_empty=True, by='clean redeploy')
    assert accepted['ok'] and accepted['status'] == 'accepted empty' and accepted['changed']
    assert 'allow_empty_database' in accepted['msg'] and 'the flag is lowered' in accepted['msg']
    entry = guard.entry(str(path), app_db['login_db'])
    assert entry['flag'] is None and entry['had_data'] is False
    assert entry['events'][-1]['what'].startswith('accepted an empty database (allow_empty_database)')
    # allow_empty_database never lets a database with data through a problem.
    execute(app_db, "INSERT INTO aiogram_states (key) VALUES ('fsm:1:1')")
    assert check(app_db, path, allow_empty=True)['status'] == 'updated'


def test_another_cluster_with_the_same_tables_is_refused(app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    execute(app_db, "INSERT INTO users (id) VALUES (1)")
    assert check(app_db, path)['ok']
    ident = guard.entry(str(path), app_db['login_db'])['system_identifier']
    other = Cluster().init().start()  # the volume re-initialised, and the migrations rerun on it
    try:
        other.wait_ready()
        other.query('CREATE DATABASE %s' % app_db['login_db'])
        twin = app_database(other, other.params(db=app_db['login_db']))
        migrate(twin)
        execute(twin, "INSERT INTO users (id) VALUES (1)")
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
    path.write_text('{"databases": []}')
    with pytest.raises(guard.GuardError, match='no valid "databases"'):
        check(app_db, path)


def test_required_tables_are_an_optional_addition(app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    options = dict(app_db, retries=0, data_guard_file=str(path), data_guard_update=True)
    execute(app_db, "INSERT INTO users (id) VALUES (1); INSERT INTO aiogram_states (key) VALUES ('k')")
    assert run_checks(options)['ok']
    report = run_checks(dict(options, required_tables=['aiogram_states', 'payments']))
    tables = report['checks']['tables']
    assert report['failed'] == ['tables'] and tables['value']['missing'] == ['payments']
    assert 'required table(s) missing: payments' in tables['message']
    # Every required table missing or empty counts as an empty database, though other tables hold rows.
    execute(app_db, 'TRUNCATE aiogram_states')
    required = check(app_db, path, required=['aiogram_states', 'payments'])
    assert not required['ok'] and required['problem'] == 'empty'
    assert 'every required table is missing or without rows (public.aiogram_states 0 rows, payments missing)' in \
        required['msg'], required['msg']
    assert check(app_db, path, required=['users'], check_mode=True)['ok'] is False  # the flag is raised now


# -- one entry per database ----------------------------------------------------------------------------------

def test_a_new_database_name_on_the_same_host_is_a_first_record(pg_server, app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    execute(app_db, "INSERT INTO users (id) VALUES (1)")
    assert check(app_db, path)['ok']
    execute(app_db, 'TRUNCATE users CASCADE')
    assert check(app_db, path)['problem'] == 'empty'  # the old database's flag is raised

    pg_server.query('CREATE DATABASE %s_v2' % app_db['login_db'])
    new_db = dict(app_db, login_db=app_db['login_db'] + '_v2')
    pg_server.query('ALTER DATABASE %s OWNER TO %s' % (new_db['login_db'], app_db['login_user']))
    try:
        first = check(new_db, path)  # soulnear_db_name changed: nothing to lose there yet
        assert first['ok'] and first['status'] == 'recorded' and first['record']['flag'] is None
        migrate(new_db)
        execute(new_db, "INSERT INTO users (id) VALUES (7)")
        assert check(new_db, path)['ok']
        record = raw(path)
        assert sorted(record['databases']) == sorted([app_db['login_db'], new_db['login_db']])
        assert record['databases'][app_db['login_db']]['flag']['problem'] == 'empty', 'its flag stays its own'
        assert record['databases'][new_db['login_db']]['flag'] is None
        assert guard.status(str(path), new_db['login_db'])['flag'] is None
        assert guard.status(str(path), app_db['login_db'])['message'].startswith('FLAG RAISED')
        assert 'no data-loss guard record of database other' in guard.status(str(path), 'other')['message']

        # Each database keeps its own progress samples (the point-in-time restore reads them per database).
        before = dict((p['login_db'], len(guard.entry(str(path), p['login_db'])['progress'])) for p in (app_db, new_db))
        for params in (app_db, new_db, new_db):
            execute(params, 'CREATE TABLE IF NOT EXISTS ticks (n int); INSERT INTO ticks VALUES (1)')
            guard.accept(str(path), observe(params, path=path), by='test')
        ident = first['observed']['system_identifier']
        for name, more in ((app_db['login_db'], 1), (new_db['login_db'], 2)):
            progress = guard.entry(str(path), name)['progress']
            assert len(progress) == before[name] + more, progress
            assert all(len(s) == 4 and s[1] == ident for s in progress), progress
        assert guard.entry(str(path), new_db['login_db'])['progress'][-1][3] > \
            guard.entry(str(path), app_db['login_db'])['progress'][-1][3]
        # Clearing one database leaves the others alone.
        assert guard.entry(str(path), app_db['login_db'])['flag'] is None
        assert [e['database'] for e in raw(path)['events']].count(new_db['login_db']) == 3
    finally:
        pg_server.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s',
                        (new_db['login_db'],))
        pg_server.query('DROP DATABASE IF EXISTS %s' % new_db['login_db'])


def test_an_older_flat_record_is_read_and_rewritten(app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    execute(app_db, "INSERT INTO aiogram_states (key) VALUES ('k1'), ('k2'), ('k3')")
    ident = observe(app_db)['system_identifier']
    old = dict(database=app_db['login_db'], system_identifier=ident, database_oid=1,
               tables={'aiogram_states': 3, 'schema_migrations': 3}, had_data=True, recorded_at=time.time() - 60,
               recorded_by='soulnear-health monitor', progress=[[time.time() - 60, ident, 1, 5]], flag=None,
               events=[dict(at=time.time() - 600, by='ansible', what='first record (...)')])
    path.write_text(json.dumps(old))
    entry = guard.entry(str(path), app_db['login_db'])
    assert entry['had_data'] is True and entry['progress'] == old['progress'] and entry['events'][0]['by'] == 'ansible'
    assert guard.entry(str(path), 'another_db') is None

    passed = check(app_db, path)
    assert passed['ok'] and passed['status'] == 'updated'
    record = raw(path)
    assert set(record) == {'databases', 'events'} and list(record['databases']) == [app_db['login_db']]
    entry = record['databases'][app_db['login_db']]
    assert entry['held'] == ['public.aiogram_states'] and entry['progress'][0] == old['progress'][0]
    assert [e['database'] for e in record['events']] == [app_db['login_db']] * 1

    # An older record of the same database says data existed: emptied now, it is refused.
    path.write_text(json.dumps(old))
    execute(app_db, 'TRUNCATE aiogram_states')
    refused = check(app_db, path)
    assert refused['problem'] == 'empty' and 'aiogram_states 0 rows, 3 rows before' in refused['msg']
    assert raw(path)['databases'][app_db['login_db']]['flag']['problem'] == 'empty'

    # A hand-written older record without a database name: taken over by the database that asks.
    path.write_text(json.dumps(dict(system_identifier='1', had_data=True, tables={}, flag=dict(
        raised_at=time.time(), by='ansible deploy', reason='the database soul_bot is empty', problem='empty'))))
    flagged = check(app_db, path)
    assert flagged['problem'] == 'flag' and 'by ansible deploy' in flagged['msg']
    assert guard.entry(str(path), app_db['login_db'])['flag']['by'] == 'ansible deploy'
    guard.accept(str(path), observe(app_db, path=path), by='operator')
    assert list(raw(path)['databases']) == [app_db['login_db']]


def test_a_database_with_more_tables_than_the_bound_stays_quick(bot, tmp_path):
    path = tmp_path / 'data-guard.json'
    execute(bot, "CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)")
    assert check(bot, path)['observed']['holding'] == ['public.precious']
    count = 2 * guard.TABLES_OBSERVED + 300
    execute(bot, 'CREATE SCHEMA many; ' + ''.join(
        'CREATE TABLE many.t%d (id int); INSERT INTO many.t%d SELECT generate_series(1, %d);' % (i, i, i + 1)
        for i in range(count)) + ' ANALYZE')
    started = time.monotonic()
    observed = observe(bot, path=path)
    took = time.monotonic() - started
    assert took < 5, 'observing %d tables took %.1f s' % (count, took)
    assert observed['tables_total'] == count + 7
    # The largest 100, plus the table that held rows when last recorded (the smallest of all).
    assert len(observed['tables']) == guard.TABLES_OBSERVED + 1 and observed['tables']['public.precious'] == 1
    assert min(v for k, v in observed['tables'].items() if k.startswith('many.')) == count - 99
    assert guard.check(str(path), observed)['ok']
    assert len(guard.entry(str(path), bot['login_db'])['held']) == guard.TABLES_OBSERVED + 1
    print('observed %d of %d tables in %.3f s' % (len(observed['tables']), observed['tables_total'], took))


def test_a_restore_records_the_restored_database(app_db, tmp_path):
    path = tmp_path / 'data-guard.json'
    execute(app_db, "INSERT INTO users (id) VALUES (1)")
    assert check(app_db, path)['ok']
    execute(app_db, 'DROP TABLE aiogram_states, events, users')
    assert not check(app_db, path)['ok']
    execute(app_db, "CREATE TABLE users (id bigint PRIMARY KEY); INSERT INTO users VALUES (1)")
    settings = make_settings(app_db, data_guard_file=str(path))
    steps = []
    done = record_restored(settings, app_db['login_db'], '/backups/backup_20250105_020001.dump', steps.append)
    assert done['previous_flag']['problem'] == 'empty' and done['tables']['public.users'] == 1
    assert 'restore of backup_20250105_020001.dump into %s completed' % app_db['login_db'] in steps[-1]
    assert check(app_db, path)['ok']


# -- the module through Ansible ------------------------------------------------------------------------------

def test_module_refuses_clears_and_hides_the_password(app_db, tmp_path):
    path = tmp_path / 'state' / 'data-guard.json'
    args = dict(app_db, state_file=str(path), backup_dir=str(tmp_path / 'backups'), actor='pytest deploy')
    code, result, out = run_module(tmp_path, 'data_guard', args, '--check')
    assert code == 0 and result['status'] == 'recorded' and not path.exists(), out
    execute(app_db, "INSERT INTO users (id) VALUES (1), (2)")
    code, result, out = run_module(tmp_path, 'data_guard', args)
    assert code == 0 and result['ok'] and result['observed']['tables']['public.users'] == 2, out
    assert result['observed']['bookkeeping'] == ['public.schema_migrations'] and result['record']['had_data']

    execute(app_db, 'DROP TABLE aiogram_states, schema_migrations, users, events')
    code, result, out = run_module(tmp_path, 'data_guard', args, '-vvv')
    assert code != 0 and result['failed'] and result['problem'] == 'empty'
    assert 'public.users missing, 2 rows before' in result['msg']
    assert 'There is no verified backup of %s' % app_db['login_db'] in result['msg']
    assert result['flag']['by'] == 'pytest deploy'
    assert app_db['login_password'] not in out and 'Traceback' not in out

    code, result, out = run_module(tmp_path, 'data_guard', dict(args, operation='query'))
    assert code == 0 and result['ok'] is False and result['msg'].startswith('FLAG RAISED')
    assert result['databases'] == [app_db['login_db']] and result['record']['flag']['problem'] == 'empty'
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
    assert first < dump and newest in advice and 'pitr_new_history=true' in advice


def test_without_a_record_an_empty_database_with_a_backup_that_holds_rows_is_refused(app_db, tmp_path):
    """A rebuilt host pointed at the old backup disk (issue 23): no record, the database empty, but the newest
    verified backup of it has rows - refused like any other data loss, naming the backup and the restore; a backup
    of a database that never held rows (only the migrations' bookkeeping) lets the first deploy through."""
    from pgcontainer import IMAGE
    from ansible.module_utils.soulnear.backup import create_backup
    execute(app_db, 'INSERT INTO users (id) VALUES (1), (2)')
    backups = tmp_path / 'backups'
    settings = make_settings(app_db, client_image=IMAGE, backup_dir=str(backups))
    taken = create_backup(settings, retention=False, offsite=False)
    execute(app_db, 'DROP TABLE aiogram_states, users, events; DELETE FROM schema_migrations')
    args = dict(app_db, state_file=str(tmp_path / 'state' / 'data-guard.json'), backup_dir=str(backups),
                client_image=IMAGE, actor='pytest deploy')
    code, result, out = run_module(tmp_path, 'data_guard', args)
    assert code != 0 and result['problem'] == 'unrecorded', out
    assert 'there is no record of %s on this host' % app_db['login_db'] in result['msg']
    assert os.path.basename(taken['path']) in result['msg'] and 'public.users has rows' in result['msg']
    assert 'make restore BACKUP=latest' in result['msg'] and result['flag']['problem'] == 'unrecorded'

    # The same without rows in the backup (a database that was migrated but never used): nothing to lose.
    fresh = tmp_path / 'fresh-backups'
    migrate(app_db)
    create_backup(make_settings(app_db, client_image=IMAGE, backup_dir=str(fresh)), retention=False, offsite=False)
    execute(app_db, 'DROP TABLE aiogram_states, users, events; DELETE FROM schema_migrations')
    code, result, out = run_module(tmp_path, 'data_guard', dict(args, backup_dir=str(fresh),
                                                                state_file=str(tmp_path / 'other-guard.json')))
    assert code == 0 and result['status'] == 'recorded', out
