"""pg_migrate's logic against a real PostgreSQL: ordering, tracking, failures, drift, locking, retries."""

import threading
import time

import psycopg2
import pytest

from ansible.module_utils.soulnear.migrate import Migrator
from ansible.module_utils.soulnear.migration_files import MigrationError, discover
from ansible.module_utils.soulnear.migration_text import normalise
from pgclient import query
from pgcluster import Cluster


def write(directory, files):
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        path = directory / name
        if text is None:
            path.unlink()
        elif isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    return directory


def run(params, path, check_mode=False, **options):
    args = dict(params, path=str(path))
    args.update(options)
    return Migrator(args, check_mode=check_mode).run()


rows = query


def table_exists(params, name):
    return rows(params, 'SELECT to_regclass(%s) IS NOT NULL', (name,))[0][0]


BASIC = {
    '001_init.sql': 'CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);\n'
                    "INSERT INTO users VALUES (1, 'ann'), (2, 'bob');\n",
    '002_states.sql': 'CREATE TABLE aiogram_states (key text PRIMARY KEY, state text);\n',
    'V3__index.sql': 'CREATE INDEX users_name ON users (name);\n',
}


def test_fresh_apply_then_noop(pg_db, tmp_path):
    path = write(tmp_path / 'm', BASIC)
    first = run(pg_db, path)
    assert first['changed'] is True
    assert first['applied'] == ['001_init.sql', '002_states.sql', 'V3__index.sql']
    assert first['current_version'] == '3'
    assert first['pending'] == []
    recorded = rows(pg_db, 'SELECT version, name, kind, length(checksum), success, applied_by IS NOT NULL, '
                           'execution_ms >= 0, applied_at IS NOT NULL FROM schema_migrations ORDER BY id')
    assert recorded == [('1', '001_init.sql', 'versioned', 64, True, True, True, True),
                        ('2', '002_states.sql', 'versioned', 64, True, True, True, True),
                        ('3', 'V3__index.sql', 'versioned', 64, True, True, True, True)]
    second = run(pg_db, path)
    assert second['changed'] is False
    assert second['applied'] == []
    assert rows(pg_db, 'SELECT count(*) FROM schema_migrations') == [(3,)]


def test_check_mode_touches_nothing(pg_db, tmp_path):
    path = write(tmp_path / 'm', BASIC)
    result = run(pg_db, path, check_mode=True)
    assert result['changed'] is True
    assert [p['name'] for p in result['pending']] == ['001_init.sql', '002_states.sql', 'V3__index.sql']
    assert all(len(p['checksum']) == 64 for p in result['pending'])
    assert not table_exists(pg_db, 'schema_migrations')
    assert not table_exists(pg_db, 'users')
    run(pg_db, path)
    write(path, {'004_more.sql': 'CREATE TABLE more (id int);'})
    result = run(pg_db, path, check_mode=True)
    assert [p['name'] for p in result['pending']] == ['004_more.sql']
    assert not table_exists(pg_db, 'more')
    assert rows(pg_db, 'SELECT count(*) FROM schema_migrations') == [(3,)]
    write(path, {'004_more.sql': None})
    assert run(pg_db, path, check_mode=True)['changed'] is False


def test_numeric_ordering_and_repeatables(pg_db, tmp_path):
    log = 'INSERT INTO log (name) VALUES (%r);'
    path = write(tmp_path / 'm', {
        '000_log.sql': 'CREATE TABLE log (n serial, name text);',
        '2_b.sql': log % 'two', '10_c.sql': log % 'ten', 'V10.1__d.sql': log % 'ten.one',
        '20251105_e.sql': log % 'date', 'R__view.sql': 'CREATE OR REPLACE VIEW v AS SELECT count(*) FROM log;\n'
                                                       + log % 'repeatable',
        'notes.txt': 'ignored, not sql',
    })
    result = run(pg_db, path)
    assert result['applied'] == ['000_log.sql', '2_b.sql', '10_c.sql', 'V10.1__d.sql', '20251105_e.sql',
                                 'R__view.sql']
    assert [r[0] for r in rows(pg_db, 'SELECT name FROM log ORDER BY n')] == \
        ['two', 'ten', 'ten.one', 'date', 'repeatable']
    assert result['current_version'] == '20251105'
    assert run(pg_db, path)['changed'] is False
    write(path, {'R__view.sql': 'DROP VIEW v;\nCREATE VIEW v AS SELECT count(*) AS c FROM log;\n' + log % 'again'})
    again = run(pg_db, path)
    assert again['applied'] == ['R__view.sql']
    assert rows(pg_db, "SELECT count(*) FROM schema_migrations WHERE kind = 'repeatable'") == [(1,)]


def test_unversioned_and_duplicate_files_are_errors(tmp_path):
    path = write(tmp_path / 'm', {'001_a.sql': 'SELECT 1;', 'fix_users.sql': 'SELECT 1;'})
    with pytest.raises(MigrationError, match='fix_users.sql'):
        discover(str(path))
    path = write(tmp_path / 'd', {'001_a.sql': 'SELECT 1;', '1_b.sql': 'SELECT 1;'})
    with pytest.raises(MigrationError, match='same version 1'):
        discover(str(path))
    with pytest.raises(MigrationError, match='does not exist'):
        discover(str(tmp_path / 'nowhere'))


def test_checksum_ignores_bom_and_line_endings(tmp_path):
    text = 'CREATE TABLE x (id int);\nSELECT 1;\n'
    path = write(tmp_path / 'a', {'001_x.sql': text})
    crlf = write(tmp_path / 'b', {'001_x.sql': b'\xef\xbb\xbf' + text.replace('\n', '\r\n').encode()})
    assert discover(str(path))[0][0].checksum == discover(str(crlf))[0][0].checksum
    assert normalise(b'\xef\xbb\xbfa\r\nb\rc') == 'a\nb\nc'


def test_syntax_error_in_the_middle(pg_db, tmp_path):
    path = write(tmp_path / 'm', dict(BASIC, **{
        '002_states.sql': 'CREATE TABLE aiogram_states (key text PRIMARY KEY);\n'
                          'INSERT INTO aiogram_states VALUES (\'k\');\n'
                          '\n'
                          'CREATE TABL broken (id int);\n'}))
    with pytest.raises(MigrationError) as info:
        run(pg_db, path)
    message = str(info.value)
    assert '002_states.sql' in message and 'line 4' in message and 'syntax error' in message
    assert '001_init.sql' in message  # says what stays applied
    assert info.value.result['applied'] == ['001_init.sql']
    assert not table_exists(pg_db, 'aiogram_states')  # nothing of the failing file stays
    assert table_exists(pg_db, 'users')  # the file before it does
    assert not rows(pg_db, "SELECT 1 FROM pg_indexes WHERE indexname = 'users_name'")  # later files did not run
    assert [r[0] for r in rows(pg_db, 'SELECT name FROM schema_migrations')] == ['001_init.sql']
    # Fix the file: the next run just works.
    write(path, {'002_states.sql': BASIC['002_states.sql']})
    result = run(pg_db, path)
    assert result['applied'] == ['002_states.sql', 'V3__index.sql']


def test_constraint_violation_on_existing_data(pg_db, tmp_path):
    path = write(tmp_path / 'm', BASIC)
    run(pg_db, path)
    write(path, {'004_unique.sql': "INSERT INTO users VALUES (3, 'ann');\n"
                                   'ALTER TABLE users\n  ADD CONSTRAINT users_name_key UNIQUE (name);\n',
                 '005_after.sql': 'CREATE TABLE after_five (id int);'})
    with pytest.raises(MigrationError) as info:
        run(pg_db, path)
    message = str(info.value)
    assert '004_unique.sql' in message and 'line 2' in message and '23505' in message
    assert rows(pg_db, 'SELECT count(*) FROM users') == [(2,)]  # the insert of the failed file was rolled back
    assert not table_exists(pg_db, 'after_five')
    write(path, {'004_unique.sql': 'ALTER TABLE users ADD CONSTRAINT users_name_key UNIQUE (name);\n'})
    assert run(pg_db, path)['applied'] == ['004_unique.sql', '005_after.sql']


def test_drift_policies(pg_db, tmp_path):
    path = write(tmp_path / 'm', BASIC)
    run(pg_db, path)
    write(path, {'002_states.sql': BASIC['002_states.sql'] + '-- edited after it was applied\n',
                 '004_new.sql': 'CREATE TABLE four (id int);'})
    with pytest.raises(MigrationError, match='002_states.sql') as info:
        run(pg_db, path)
    assert 'drift' in str(info.value)
    assert not table_exists(pg_db, 'four')  # fail stops before applying anything
    warnings = []
    result = Migrator(dict(pg_db, path=str(path), drift='warn'), warn=warnings.append).run()
    assert result['applied'] == ['004_new.sql'] and result['drift'] == ['002_states.sql']
    assert any('002_states.sql' in w for w in warnings)
    adopted = run(pg_db, path, drift='adopt')
    assert adopted['changed'] is True and adopted['drift'] == []
    assert run(pg_db, path)['changed'] is False


def test_missing_file_is_reported(pg_db, tmp_path):
    path = write(tmp_path / 'm', BASIC)
    run(pg_db, path)
    write(path, {'V3__index.sql': None})
    warnings = []
    result = Migrator(dict(pg_db, path=str(path)), warn=warnings.append).run()
    assert result['missing'] == ['V3__index.sql']
    assert result['changed'] is False
    assert any('V3__index.sql' in w for w in warnings)


def test_out_of_order_file_is_refused_unless_allowed(pg_db, tmp_path):
    path = write(tmp_path / 'm', BASIC)
    run(pg_db, path)
    write(path, {'V2.5__late.sql': 'CREATE TABLE late (id int);'})
    with pytest.raises(MigrationError, match='V2.5__late.sql'):
        run(pg_db, path)
    assert run(pg_db, path, out_of_order=True)['applied'] == ['V2.5__late.sql']


def test_baseline_existing_database(pg_db, tmp_path):
    path = write(tmp_path / 'm', BASIC)
    rows(pg_db, 'CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL); SELECT 1')
    result = run(pg_db, path, baseline='2')
    assert result['baselined'] == ['001_init.sql', '002_states.sql']
    assert result['applied'] == ['V3__index.sql']
    assert not table_exists(pg_db, 'aiogram_states')  # baselined files are not run
    assert rows(pg_db, "SELECT count(*) FROM schema_migrations WHERE kind = 'baseline'") == [(2,)]
    assert run(pg_db, path)['changed'] is False


def test_begin_commit_wrapper_is_accepted_other_transaction_control_refused(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_wrapped.sql': 'BEGIN;\nCREATE TABLE w (id int);\nCOMMIT;\n'})
    assert run(pg_db, path)['applied'] == ['001_wrapped.sql']
    write(path, {'002_commit.sql': 'CREATE TABLE c1 (id int);\nCOMMIT;\nCREATE TABLE c2 (id int);\n'})
    with pytest.raises(MigrationError, match='002_commit.sql line 2'):
        run(pg_db, path)
    assert not table_exists(pg_db, 'c1')


def test_no_transaction_file_with_create_index_concurrently(pg_db, tmp_path):
    path = write(tmp_path / 'm', dict(BASIC, **{
        '004_concurrent.sql': '-- pg_migrate: no-transaction\n'
                              'CREATE INDEX CONCURRENTLY users_id_name ON users (id, name);\n'}))
    result = run(pg_db, path)
    assert result['applied'][-1] == '004_concurrent.sql'
    assert rows(pg_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_id_name'::regclass") == [(True,)]
    assert run(pg_db, path)['changed'] is False


def test_a_file_of_statements_that_refuse_a_transaction_runs_outside_one(pg_db, tmp_path):
    # Decision (as Flyway): no directive needed when every statement refuses a transaction block.
    path = write(tmp_path / 'm', dict(BASIC, **{
        '004_concurrent.sql': 'SET lock_timeout = 0;\n'
                              'CREATE INDEX CONCURRENTLY users_id_name ON users (id, name);\n'
                              'DROP INDEX CONCURRENTLY users_name;\n'}))
    check = run(pg_db, path, check_mode=True)
    assert [(p['name'], p['transaction']) for p in check['pending']][-1] == ('004_concurrent.sql', False)
    result = run(pg_db, path)
    assert result['applied'][-1] == '004_concurrent.sql'
    assert rows(pg_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_id_name'::regclass") == [(True,)]
    assert not rows(pg_db, "SELECT 1 FROM pg_indexes WHERE indexname = 'users_name'")


def test_a_file_mixing_such_a_statement_with_others_is_refused_naming_the_directive(pg_db, tmp_path):
    path = write(tmp_path / 'm', dict(BASIC, **{
        '004_mixed.sql': 'CREATE TABLE four (id int);\n'
                         'CREATE INDEX CONCURRENTLY users_id_name ON users (id, name);\n'}))
    with pytest.raises(MigrationError) as info:
        run(pg_db, path)
    message = str(info.value)
    assert '004_mixed.sql line 2' in message and 'CREATE INDEX CONCURRENTLY' in message
    assert '-- pg_migrate: no-transaction' in message and 'line 1: CREATE TABLE four' in message
    assert not table_exists(pg_db, 'users')  # checked before the first file ran


def test_failed_no_transaction_file_is_recorded_and_blocks_until_repaired(pg_db, tmp_path):
    path = write(tmp_path / 'm', dict(BASIC, **{
        '004_partial.sql': '-- pg_migrate: no-transaction\n'
                           'CREATE TABLE partial_a (id int);\n'
                           'CREATE TABLE users (id int);\n'}))
    with pytest.raises(MigrationError) as info:
        run(pg_db, path)
    assert '004_partial.sql' in str(info.value) and 'line 3' in str(info.value)
    assert 'repair' in str(info.value)
    assert rows(pg_db, "SELECT success, error LIKE '%%line 3%%' FROM schema_migrations "
                       "WHERE name = '004_partial.sql'") == [(False, True)]
    # Next run refuses with instructions, also in check mode.
    with pytest.raises(MigrationError, match='failed outside a transaction.*repair'):
        run(pg_db, path)
    # Operator cleans up by hand and fixes the file, then repairs.
    rows(pg_db, 'DROP TABLE partial_a; SELECT 1')
    write(path, {'004_partial.sql': '-- pg_migrate: no-transaction\nCREATE TABLE partial_a (id int);\n'})
    result = run(pg_db, path, repair=True)
    assert result['applied'] == ['004_partial.sql']
    assert rows(pg_db, 'SELECT bool_and(success) FROM schema_migrations') == [(True,)]


def test_legacy_table_with_version_column_is_adopted(pg_db, tmp_path):
    rows(pg_db, "CREATE TABLE schema_migrations (version varchar(255) PRIMARY KEY, applied_at timestamp DEFAULT now());"
                "INSERT INTO schema_migrations (version) VALUES ('001'), ('002');"
                'CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);'
                'CREATE TABLE aiogram_states (key text PRIMARY KEY, state text); SELECT 1')
    path = write(tmp_path / 'm', BASIC)
    check = run(pg_db, path, check_mode=True)
    assert [p['name'] for p in check['pending']] == ['V3__index.sql']
    result = run(pg_db, path)
    assert result['applied'] == ['V3__index.sql']
    assert any('adopted' in n for n in result['notes'])
    assert rows(pg_db, 'SELECT version, name, checksum IS NOT NULL FROM schema_migrations ORDER BY version') == \
        [('001', '001_init.sql', True), ('002', '002_states.sql', True), ('3', 'V3__index.sql', True)]
    assert run(pg_db, path)['changed'] is False


def test_legacy_table_with_filename_column_is_adopted(pg_db, tmp_path):
    rows(pg_db, 'CREATE TABLE schema_migrations (filename text PRIMARY KEY, applied_at timestamptz DEFAULT now());'
                "INSERT INTO schema_migrations (filename) VALUES ('001_init.sql');"
                'CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL); SELECT 1')
    path = write(tmp_path / 'm', BASIC)
    result = run(pg_db, path)
    assert result['applied'] == ['002_states.sql', 'V3__index.sql']
    assert rows(pg_db, 'SELECT filename, version FROM schema_migrations ORDER BY 2') == \
        [('001_init.sql', '1'), ('002_states.sql', '2'), ('V3__index.sql', '3')]
    assert run(pg_db, path)['changed'] is False


SLOW = {
    '001_a.sql': 'CREATE TABLE once_a (id int);\nINSERT INTO once_a VALUES (1);\n',
    '002_slow.sql': 'CREATE TABLE once_b (id int);\nINSERT INTO once_b VALUES (1);\nSELECT pg_sleep(1.5);\n'
                    'INSERT INTO once_b VALUES (2);\n',
    '003_c.sql': 'CREATE TABLE once_c (id int);\nINSERT INTO once_c VALUES (1);\n',
}


def test_two_runners_started_together_apply_each_file_once(pg_db, tmp_path):
    path = write(tmp_path / 'm', SLOW)
    barrier = threading.Barrier(2)
    results, errors, spans, logs = [], [], [], []

    def runner():
        log = []
        logs.append(log)
        barrier.wait()
        started = time.time()
        try:
            results.append(Migrator(dict(pg_db, path=str(path)), log=log.append).run())
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        spans.append((started, time.time()))

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    applied = sorted(len(r['applied']) for r in results)
    assert applied == [0, 3]  # one runner did everything, the other waited and found nothing to do
    # The runs really overlapped: both were running at once, and one of them waited for the other's lock.
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    waited = [log for log in logs if any('waiting for the migration lock' in line for line in log)]
    assert len(waited) == 1 and not any('applying' in line for line in waited[0])
    for table, count in (('once_a', 1), ('once_b', 2), ('once_c', 1)):
        assert rows(pg_db, 'SELECT count(*) FROM %s' % table) == [(count,)]
    assert rows(pg_db, 'SELECT count(*) FROM schema_migrations') == [(3,)]


def test_statements_and_tracking_row_commit_together(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_a.sql': 'CREATE TABLE a (id int);'})
    run(pg_db, path)
    rows(pg_db, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'tracking refused'; END $$; "
                "CREATE TRIGGER refuse BEFORE INSERT ON schema_migrations FOR EACH ROW "
                "WHEN (NEW.name = '002_b.sql') EXECUTE FUNCTION refuse(); SELECT 1")
    write(path, {'002_b.sql': 'CREATE TABLE b (id int);\nINSERT INTO a VALUES (1);\n'})
    with pytest.raises(MigrationError) as info:
        run(pg_db, path)
    assert '002_b.sql: recording it in public.schema_migrations failed' in str(info.value)
    assert 'tracking refused' in str(info.value)
    assert not table_exists(pg_db, 'b')  # the file's changes went with the failed row
    assert rows(pg_db, 'SELECT count(*) FROM a') == [(0,)]


def test_function_bodies_with_semicolons_in_dollar_quotes(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_functions.sql':
                                  'CREATE TABLE counter (n int NOT NULL);\n'
                                  'INSERT INTO counter VALUES (0);\n'
                                  'CREATE FUNCTION bump(step int) RETURNS int LANGUAGE plpgsql AS $$\n'
                                  'DECLARE\n  result int;\nBEGIN\n'
                                  '  UPDATE counter SET n = n + step RETURNING n INTO result;\n'
                                  "  RAISE NOTICE 'bumped; now %', result;\n"
                                  '  RETURN result;\nEND;\n$$;\n'
                                  'CREATE FUNCTION twice(x int) RETURNS int LANGUAGE sql AS $body$ SELECT x * 2; '
                                  '$body$;\n'
                                  'SELECT bump(twice(2));\n'})
    run(pg_db, path)
    assert rows(pg_db, 'SELECT n FROM counter') == [(4,)]
    assert rows(pg_db, 'SELECT bump(1)') == [(5,)]


def test_lock_timeout_names_the_holder(pg_db, tmp_path):
    from ansible.module_utils.soulnear.migration_tracking import LOCK_CLASS, lock_key
    path = write(tmp_path / 'm', BASIC)
    holder = psycopg2.connect(host=pg_db['login_host'], port=pg_db['login_port'], user=pg_db['login_user'],
                              password=pg_db['login_password'], dbname=pg_db['login_db'],
                              application_name='deploy-by-alice')
    try:
        with holder.cursor() as cur:
            cur.execute('SELECT pg_advisory_lock(%s, %s), pg_backend_pid()',
                        (LOCK_CLASS, lock_key('public.schema_migrations')))
            pid = cur.fetchone()[1]
        started = time.time()
        with pytest.raises(MigrationError) as info:
            run(pg_db, path, lock_timeout=1)
        assert 1 <= time.time() - started < 5
        assert 'deploy-by-alice' in str(info.value) and 'pid %d' % pid in str(info.value)
        assert not table_exists(pg_db, 'users')
    finally:
        holder.close()
    assert run(pg_db, path)['applied'] == ['001_init.sql', '002_states.sql', 'V3__index.sql']


def terminate_when_sleeping(params, done):
    """Terminate the migration backend once, while it runs pg_sleep in the middle of 002_slow.sql."""
    deadline = time.time() + 20
    while time.time() < deadline:
        hit = rows(params, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name "
                           "LIKE 'pg_migrate%%' AND query LIKE '%%pg_sleep%%' AND state = 'active'")
        if hit:
            done.append(True)
            return
        time.sleep(0.05)


@pytest.mark.parametrize('retries', [0, 3])
def test_connection_terminated_mid_file_leaves_nothing_half_applied(pg_db, tmp_path, retries):
    path = write(tmp_path / 'm', SLOW)
    done = []
    killer = threading.Thread(target=terminate_when_sleeping, args=(pg_db, done))
    killer.start()
    try:
        result = run(pg_db, path, retries=retries)
        outcome = None
    except MigrationError as exc:
        result, outcome = exc.result, exc
    killer.join()
    assert done, 'the backend was never terminated'
    if retries == 0:
        assert outcome is not None and 'while applying 002_slow.sql' in str(outcome), outcome
        assert result['applied'] == ['001_a.sql']
        assert not table_exists(pg_db, 'once_b')  # the interrupted file left nothing behind
        assert [r[0] for r in rows(pg_db, 'SELECT name FROM schema_migrations')] == ['001_a.sql']
        result = run(pg_db, path)
        assert result['applied'] == ['002_slow.sql', '003_c.sql']
    else:
        assert outcome is None  # reconnected and finished in the same run
        assert result['applied'] == ['001_a.sql', '002_slow.sql', '003_c.sql']
    assert rows(pg_db, 'SELECT count(*) FROM once_b') == [(2,)]  # applied once, completely
    assert rows(pg_db, 'SELECT count(*) FROM schema_migrations') == [(3,)]


def test_wrong_password_fails_fast_without_retry(pg_db, tmp_path):
    path = write(tmp_path / 'm', BASIC)
    params = dict(pg_db, login_password='not-the-password')
    started = time.time()
    with pytest.raises(MigrationError) as info:
        run(params, path, retries=3)
    assert time.time() - started < 0.5  # the backoff would take 3.5 s
    message = str(info.value)
    assert 'password authentication failed' in message and '1 attempt' in message
    assert 'not-the-password' not in message


def test_server_still_starting_up_is_retried(tmp_path):
    cluster = Cluster(standby=True).init().start()
    try:
        params = cluster.params()
        with pytest.raises(psycopg2.OperationalError) as info:
            cluster.connect()
        assert 'not accepting connections' in str(info.value) or 'starting up' in str(info.value)
        timer = threading.Timer(1.0, cluster.promote)
        timer.start()
        retries = []
        path = write(tmp_path / 'm', BASIC)
        result = Migrator(dict(params, path=str(path)), log=retries.append).run()
        timer.join()
        assert result['applied'] == ['001_init.sql', '002_states.sql', 'V3__index.sql']
        retried = [r for r in retries if r.startswith('retry')]
        assert retried and all('57P03' in r for r in retried)
    finally:
        cluster.destroy()


def test_server_down_is_retried_then_fails_clearly(tmp_path):
    from pgcluster import free_port
    path = write(tmp_path / 'm', BASIC)
    params = dict(login_host='127.0.0.1', login_port=free_port(), login_user='postgres', login_password='x',
                  login_db='postgres', connect_timeout=2)
    logged = []
    started = time.time()
    with pytest.raises(MigrationError) as info:
        Migrator(dict(params, path=str(path)), log=logged.append).run()
    assert 3.0 < time.time() - started < 10
    assert len(logged) == 3 and '4 attempt(s)' in str(info.value)
    assert 'running and reachable' in str(info.value)
