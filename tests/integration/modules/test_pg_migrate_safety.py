"""pg_migrate never reports success while doing nothing or the opposite of what a file says, and the hardening
found in review: every point is reproduced against a real PostgreSQL."""

import os
import threading
import time
import uuid

import pytest

from ansible.module_utils.soulnear.migrate import Migrator, status
from ansible.module_utils.soulnear.migration_files import MigrationError, discover
from ansible.module_utils.soulnear.migration_tracking import LOCK_CLASS, lock_key
from pgclient import connect, query


def write(directory, files):
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    return directory


def run(params, path, check_mode=False, **options):
    return Migrator(dict(params, path=str(path), **options), check_mode=check_mode).run()


def exists(params, name):
    return query(params, 'SELECT to_regclass(%s) IS NOT NULL', (name,))[0][0]


def failure(params, path, check_mode=False, **options):
    with pytest.raises(MigrationError) as info:
        run(params, path, check_mode=check_mode, **options)
    return str(info.value), info.value.result


# -- never a silent success ---------------------------------------------------------------------------------
def test_wrong_path_and_a_directory_without_migrations_fail(tmp_path):
    with pytest.raises(MigrationError, match='does not exist'):
        discover(str(tmp_path / 'nowhere'))
    (tmp_path / 'file.sql').write_text('SELECT 1;')
    with pytest.raises(MigrationError, match='does not exist or is not a directory'):
        discover(str(tmp_path / 'file.sql'))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(MigrationError, match='holds no migration'):
        discover(str(empty))
    write(empty, {'README.md': 'notes', '.gitkeep': ''})
    with pytest.raises(MigrationError, match=r'holds no migration.*ignored: \.gitkeep, README\.md'):
        discover(str(empty))


def test_prisma_folders_are_migrations_and_other_subfolders_fail(tmp_path):
    # The issue's first failure mode: folders were skipped and the run said "All migrations up to date".
    path = write(tmp_path / 'm', {'20240101000000_init/migration.sql': 'CREATE TABLE a (id int);'})
    assert [f.name for f in discover(str(path)).versioned] == ['20240101000000_init']
    with pytest.raises(MigrationError, match='format: prisma reads it'):
        discover(str(path), 'plain')
    flat = write(tmp_path / 'flat', {'001_a.sql': 'SELECT 1;', 'archive/000_old.sql': 'SELECT 1;',
                                     'docs/notes.txt': 'not sql'})
    with pytest.raises(MigrationError) as info:
        discover(str(flat))
    assert 'subfolder archive holds SQL files pg_migrate would never run (archive/000_old.sql)' in str(info.value)
    assert 'docs' not in str(info.value)


def test_unknown_files_and_foreign_language_migrations_fail_listed(tmp_path):
    path = write(tmp_path / 'm', {'001_a.sql': 'SELECT 1;', 'fix_users.sql': 'SELECT 1;', '00002_seed.go': 'package x',
                                  'notes.txt': 'ignored'})
    with pytest.raises(MigrationError) as info:
        discover(str(path))
    message = str(info.value)
    assert 'fix_users.sql has no version' in message and '00002_seed.go looks like a migration' in message
    assert 'notes.txt' not in message


def test_dangling_symlink_and_directory_named_sql_fail(tmp_path):
    path = write(tmp_path / 'm', {'001_a.sql': 'SELECT 1;'})
    os.symlink(str(tmp_path / 'gone.sql'), str(path / '002_b.sql'))
    (path / '003_c.sql').mkdir()
    with pytest.raises(MigrationError) as info:
        discover(str(path))
    assert '002_b.sql is a symbolic link to' in str(info.value) and 'does not exist' in str(info.value)
    assert '003_c.sql is a directory' in str(info.value)


def test_mixed_styles_are_ambiguous_for_auto(tmp_path):
    path = write(tmp_path / 'm', {'1_a.up.sql': 'SELECT 1;', '1_a.down.sql': 'SELECT 1;', '2_b.sql': 'SELECT 1;'})
    with pytest.raises(MigrationError) as info:
        discover(str(path))
    message = str(info.value)
    assert 'mixes migration styles' in message and 'golang-migrate/sqlx up/down pairs: 1_a.down.sql, 1_a.up.sql' \
        in message and 'plain numbered files: 2_b.sql' in message and 'Set format' in message


def test_up_down_pairs_never_get_the_advice_to_renumber(tmp_path):
    # The issue's third failure mode: "give one of them a new version" would run a down file forward.
    path = write(tmp_path / 'm', {'1_a.up.sql': 'CREATE TABLE a (id int);', '1_a.down.sql': 'DROP TABLE a;'})
    with pytest.raises(MigrationError) as info:
        discover(str(path), 'plain')
    assert 'format: golang-migrate' in str(info.value) and 'new version' not in str(info.value)
    catalog = discover(str(path))
    assert catalog.layout == 'golang-migrate' and [f.name for f in catalog.versioned] == ['1_a.up.sql']
    write(path, {'2_b.down.sql': 'DROP TABLE b;'})
    with pytest.raises(MigrationError, match='2_b.down.sql has no matching up file'):
        discover(str(path))


def test_flyway_only_files_get_advice_for_their_kind_never_rename(tmp_path):
    path = write(tmp_path / 'm', {'001_a.sql': 'SELECT 1;', 'U1__undo.sql': 'SELECT 1;', 'B1__base.sql': 'SELECT 1;',
                                  'afterMigrate.sql': 'SELECT 1;'})
    with pytest.raises(MigrationError) as info:
        discover(str(path), 'plain')
    message = str(info.value)
    assert 'U1__undo.sql is a Flyway undo migration: it must never run forward' in message
    assert 'B1__base.sql is a Flyway baseline migration' in message
    assert 'afterMigrate.sql is a Flyway callback' in message
    assert 'rename' not in message.lower()
    with pytest.raises(MigrationError, match='Flyway callbacks, undo or baseline files next to plain numbered'):
        discover(str(path))
    flyway = write(tmp_path / 'f', {'V1__a.sql': 'SELECT 1;', 'beforeEachMigrateStatement.sql': 'SELECT 1;',
                                    'beforeClean.sql': 'DROP SCHEMA public CASCADE;'})
    with pytest.raises(MigrationError) as info:
        discover(str(flyway))
    assert 'beforeEachMigrateStatement.sql is a Flyway beforeEachMigrateStatement callback: pg_migrate has no ' \
           'per-statement event' in str(info.value)
    (flyway / 'beforeEachMigrateStatement.sql').unlink()
    assert discover(str(flyway)).ignored == ['beforeClean.sql']  # an event pg_migrate never has: never runs


def test_dbmate_down_section_never_runs(pg_db, tmp_path):
    # The issue's second failure mode: both sections ran as one script and undid themselves.
    path = write(tmp_path / 'm', {'20240101000000_users.sql': '-- migrate:up\nCREATE TABLE users (id int);\n\n'
                                                               '-- migrate:down\nDROP TABLE users;\n'})
    result = run(pg_db, path)
    assert result['layout'] == 'dbmate' and result['applied'] == ['20240101000000_users.sql']
    assert exists(pg_db, 'users')
    message, _ = failure(pg_db, write(tmp_path / 'p', {'001_users.sql': 'CREATE TABLE u2 (id int);\n-- migrate:down'
                                                                        '\nDROP TABLE u2;\n'}), format='plain',
                          table='plain_migrations')
    assert "001_users.sql line 2: a down section marker ('-- migrate:down')" in message and 'set format' in message
    assert not exists(pg_db, 'u2')


def test_every_pending_file_is_checked_before_the_first_runs_and_all_problems_are_reported(pg_db, tmp_path):
    files = {
        '001_ok.sql': 'CREATE TABLE ok (id int);',
        '002_commit.sql': 'CREATE TABLE c1 (id int);\nCOMMIT;\nCREATE TABLE c2 (id int);\n',
        '003_meta.sql': 'CREATE TABLE m (id int);\n\\i other.sql\n\\set x 1\n',
        '004_copy.sql': 'CREATE TABLE cp (id int, name text);\nCOPY cp FROM stdin;\n1\tann\n\\.\nSELECT 1;\n',
        '005_down.sql': 'CREATE TABLE d (id int);\n-- +goose Down\nDROP TABLE d;\n',
        '006_rollback.sql': 'BEGIN;\nCREATE TABLE r (id int);\nROLLBACK;\n',
        '007_unterminated.sql': "SELECT 'oops;\n",
        '008_discard.sql': 'DISCARD ALL;\n',
    }
    path = write(tmp_path / 'm', files)
    for check_mode in (True, False):
        message, result = failure(pg_db, path, check_mode=check_mode)
        assert 'nothing was applied' in message and result['changed'] is False
        for expected in ("002_commit.sql line 2: 'COMMIT' controls the transaction itself",
                         '003_meta.sql line 2: psql meta-command \\i', '003_meta.sql line 3: psql meta-command \\set',
                         '004_copy.sql line 2: COPY ... FROM STDIN', "005_down.sql line 2: a down section marker",
                         '006_rollback.sql line 3: the file is wrapped in BEGIN ... ROLLBACK',
                         '007_unterminated.sql line 1: unterminated quoted string',
                         "008_discard.sql line 1: DISCARD ALL would release pg_migrate's lock"):
            assert expected in message, expected
        assert not exists(pg_db, 'ok') and not exists(pg_db, 'schema_migrations')


def test_unresolved_flyway_placeholder_is_named_before_anything_runs(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'V1__a.sql': 'CREATE TABLE ${schema_name}.a (id int);',
                                  'V2__b.sql': "CREATE TABLE b (note text DEFAULT '${Greeting} ${app}');"})
    message, _ = failure(pg_db, path, placeholders={'schema_name': 'public', 'greeting': 'hi'})
    assert 'V2__b.sql line 1: placeholder ${app} has no value' in message and 'Greeting' not in message
    assert not exists(pg_db, 'a')
    run(pg_db, path, placeholders={'schema_name': 'public', 'greeting': 'hi', 'APP': 'bot'})
    assert query(pg_db, "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'b'::regclass") == \
        [("'hi bot'::text",)]
    # format: plain runs the same text as it is.
    plain = write(tmp_path / 'p', {'V1__c.sql': "CREATE TABLE c (note text DEFAULT '${kept}');"})
    run(pg_db, plain, format='plain', table='plain_migrations')
    assert query(pg_db, "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'c'::regclass") == \
        [("'${kept}'::text",)]


def test_repeatables_rerun_when_a_placeholder_value_changes(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'V1__t.sql': 'CREATE TABLE t (id int);',
                                  'R__v.sql': "CREATE OR REPLACE VIEW v AS SELECT '${label}'::text AS label;"})
    assert run(pg_db, path, placeholders={'label': 'one'})['applied'] == ['V1__t.sql', 'R__v.sql']
    assert run(pg_db, path, placeholders={'label': 'one'})['changed'] is False
    assert run(pg_db, path, placeholders={'label': 'two'})['applied'] == ['R__v.sql']
    assert query(pg_db, 'SELECT label FROM v') == [('two',)]
    assert status(pg_db, str(path))['pending'] == []  # the health check does not know the values


# -- transactions ----------------------------------------------------------------------------------------------
def test_begin_options_are_honoured(pg_db, tmp_path):
    path = write(tmp_path / 'm', {
        '001_iso.sql': 'BEGIN ISOLATION LEVEL SERIALIZABLE;\n'
                       "CREATE TABLE iso AS SELECT current_setting('transaction_isolation') AS level;\nCOMMIT;\n"})
    run(pg_db, path)
    assert query(pg_db, 'SELECT level FROM iso') == [('serializable',)]
    write(path, {'002_ro.sql': 'START TRANSACTION READ ONLY;\nCREATE TABLE ro (id int);\nEND;\n'})
    message, _ = failure(pg_db, path)
    assert '002_ro.sql failed at line 2' in message and 'read-only transaction' in message
    assert not exists(pg_db, 'ro')


def test_rollback_and_abort_wrappers_are_refused(pg_db, tmp_path):
    for name, last in (('001_rb.sql', 'ROLLBACK'), ('001_ab.sql', 'ABORT')):
        path = write(tmp_path / name, {name: 'BEGIN;\nCREATE TABLE rb (id int);\n%s;\n' % last})
        message, _ = failure(pg_db, path)
        assert 'wrapped in BEGIN ... %s' % last in message
        assert not exists(pg_db, 'rb') and not exists(pg_db, 'schema_migrations')


def test_executed_text_is_the_files_text_only_the_bom_removed(pg_db, tmp_path):
    text = "CREATE TABLE lit (v text);\r\nINSERT INTO lit VALUES ('a\r\nb');\r\n"
    path = write(tmp_path / 'm', {'001_crlf.sql': b'\xef\xbb\xbf' + text.encode()})
    run(pg_db, path)
    assert query(pg_db, 'SELECT v FROM lit') == [('a\r\nb',)]  # what psql stores too
    lf = write(tmp_path / 'lf', {'001_crlf.sql': text.replace('\r\n', '\n')})
    assert discover(str(lf)).versioned[0].checksum == discover(str(path)).versioned[0].checksum


def test_create_rule_with_several_actions_is_one_statement(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_rule.sql': 'CREATE TABLE t (id int);\nCREATE TABLE log (n int);\n'
                                                  'CREATE RULE t_log AS ON INSERT TO t DO ALSO (\n'
                                                  '  INSERT INTO log VALUES (1);\n  INSERT INTO log VALUES (2)\n);\n'})
    run(pg_db, path)
    query(pg_db, 'INSERT INTO t VALUES (1)')
    assert query(pg_db, 'SELECT n FROM log ORDER BY n') == [(1,), (2,)]


def test_enum_value_added_inside_a_transaction(pg_db, tmp_path):
    # PostgreSQL 12+ allows ALTER TYPE ... ADD VALUE in a transaction (the value is usable after the commit);
    # before 12 such a statement counts as one that refuses a transaction (not testable: 15 only here).
    path = write(tmp_path / 'm', {'001_enum.sql': "CREATE TYPE mood AS ENUM ('sad');\n"
                                                  "ALTER TYPE mood ADD VALUE 'happy';\n"})
    check = run(pg_db, path, check_mode=True)
    assert check['pending'][0]['transaction'] is True
    run(pg_db, path)
    assert query(pg_db, 'SELECT enum_range(NULL::mood)::text') == [('{sad,happy}',)]


def test_changed_is_true_when_the_database_changed_before_a_failure(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_a.sql': 'CREATE TABLE a (id int);',
                                  '002_b.sql': 'CREATE TABLE b (id int);\nINSERT INTO missing VALUES (1);'})
    _, result = failure(pg_db, path)
    assert result['changed'] is True and result['applied'] == ['001_a.sql']
    _, again = failure(pg_db, path)  # nothing new applied, nothing created: unchanged
    assert again['changed'] is False and again['applied'] == []
    # The first file's transaction also creates the tracking table: when it fails, nothing changed at all.
    fresh = write(tmp_path / 'f', {'001_bad.sql': 'INSERT INTO missing VALUES (1);'})
    _, result = failure(pg_db, fresh, table='fresh_migrations')
    assert result['changed'] is False and result['applied'] == []
    assert not exists(pg_db, 'fresh_migrations')
    # Outside a transaction the table is created first, and the failure is recorded in it.
    outside = write(tmp_path / 'o', {'001_bad.sql': 'CREATE INDEX CONCURRENTLY bad ON missing (x);'})
    _, result = failure(pg_db, outside, table='outside_migrations')
    assert result['changed'] is True and exists(pg_db, 'outside_migrations')
    assert query(pg_db, 'SELECT name, success FROM outside_migrations') == [('001_bad.sql', False)]


# -- locks -------------------------------------------------------------------------------------------------------
def blocker(params, sql, application_name='pg_dump'):
    """A session inside an open transaction holding the locks of `sql` (a backup, a long bot transaction)."""
    conn = connect(params, autocommit=False, application_name=application_name)
    pid = conn.get_backend_pid()
    with conn.cursor() as cur:
        cur.execute(sql)
    return conn, pid


def test_a_statement_waiting_for_a_lock_gives_up_and_names_the_blocker(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_users.sql': 'CREATE TABLE users (id int);'})
    run(pg_db, path)
    write(path, {'002_alter.sql': 'SELECT 1;\nALTER TABLE users ADD COLUMN email text;\n'})
    conn, pid = blocker(pg_db, 'SELECT count(*) FROM users')
    logged = []
    try:
        started = time.time()
        with pytest.raises(MigrationError) as info:
            Migrator(dict(pg_db, path=str(path), ddl_lock_timeout=0.3, ddl_lock_retries=2),
                     log=logged.append).run()
        took = time.time() - started
    finally:
        conn.close()
    message = str(info.value)
    assert '002_alter.sql failed at line 2' in message and 'ddl_lock_timeout (0.3s) 3 time(s)' in message
    assert 'pid %d' % pid in message and "application_name 'pg_dump'" in message
    assert 'SELECT count(*) FROM users' in message and 'pg_terminate_backend' in message
    assert len([line for line in logged if 'retrying' in line]) == 2
    assert 0.9 + 1.5 <= took < 10  # 3 waits of 0.3 s and backoff of 0.5 s + 1 s
    assert info.value.result['changed'] is False
    assert query(pg_db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'users'::regclass "
                        "AND attname = 'email'") == [(0,)]


def test_a_lock_released_during_the_backoff_lets_the_retry_succeed(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_users.sql': 'CREATE TABLE users (id int);'})
    run(pg_db, path)
    write(path, {'002_alter.sql': 'ALTER TABLE users ADD COLUMN email text;'})
    conn, _ = blocker(pg_db, 'LOCK TABLE users IN ACCESS SHARE MODE')
    timer = threading.Timer(0.5, conn.commit)
    timer.start()
    try:
        result = run(pg_db, path, ddl_lock_timeout=0.2, ddl_lock_retries=5)
    finally:
        timer.join()
        conn.close()
    assert result['applied'] == ['002_alter.sql']


def test_concurrently_waits_for_older_transactions_without_the_lock_timeout(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_users.sql': 'CREATE TABLE users (id int);'})
    run(pg_db, path)
    write(path, {'002_idx.sql': 'CREATE INDEX CONCURRENTLY users_id_idx ON users (id);'})
    conn, _ = blocker(pg_db, 'INSERT INTO users VALUES (1)', application_name='bot')
    timer = threading.Timer(1.0, conn.commit)
    timer.start()
    try:
        result = run(pg_db, path, ddl_lock_timeout=0.2, ddl_lock_retries=0)
    finally:
        timer.join()
        conn.close()
    assert result['applied'] == ['002_idx.sql']
    assert query(pg_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_id_idx'::regclass") == [(True,)]


def test_statement_timeout(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_slow.sql': 'CREATE TABLE s (id int);\nSELECT pg_sleep(3);\n'})
    started = time.time()
    message, _ = failure(pg_db, path, statement_timeout=0.3)
    assert time.time() - started < 2.5
    assert '001_slow.sql failed at line 2' in message and '57014' in message
    assert not exists(pg_db, 's')


def test_lock_holder_message_names_only_sessions_of_the_same_database(pg_server, pg_db, tmp_path):
    name = 'lockother_' + uuid.uuid4().hex[:8]
    pg_server.query('CREATE DATABASE %s' % name)
    key = lock_key('public.schema_migrations')
    elsewhere = here = None
    try:
        elsewhere = connect(pg_server.params(db=name), application_name='other-database-run')
        here = connect(pg_db, application_name='this-database-run')
        for conn in (elsewhere, here):
            with conn.cursor() as cur:
                cur.execute('SELECT pg_advisory_lock(%s, %s)', (LOCK_CLASS, key))
        with here.cursor() as cur:
            cur.execute('SELECT pg_backend_pid()')
            pid = cur.fetchone()[0]
        message, _ = failure(pg_db, write(tmp_path / 'm', {'001_a.sql': 'SELECT 1;'}), lock_timeout=0.5)
        assert "'this-database-run'" in message and 'pid %d' % pid in message
        assert 'other-database-run' not in message
    finally:
        for conn in (elsewhere, here):
            if conn is not None:
                conn.close()
        pg_server.query('DROP DATABASE %s' % name)


def test_the_lock_key_comes_from_the_resolved_schema_qualified_name(pg_db, tmp_path):
    holder = connect(pg_db, application_name='qualified-run')
    try:
        with holder.cursor() as cur:  # a run with table: public.schema_migrations
            cur.execute('SELECT pg_advisory_lock(%s, %s)', (LOCK_CLASS, lock_key('public.schema_migrations')))
        message, _ = failure(pg_db, write(tmp_path / 'm', {'001_a.sql': 'SELECT 1;'}), lock_timeout=0.5,
                             table='schema_migrations')
        assert 'qualified-run' in message and 'public.schema_migrations' in message
    finally:
        holder.close()


def test_mixed_case_and_schema_qualified_tables_work_on_the_second_run(pg_db, tmp_path):
    query(pg_db, 'CREATE SCHEMA "Ops"')
    path = write(tmp_path / 'm', {'001_a.sql': 'CREATE TABLE IF NOT EXISTS a (id int);'})
    for table in ('MyMigrations', 'Ops.Applied'):
        first = run(pg_db, path, table=table)
        assert first['applied'] == ['001_a.sql']
        again = run(pg_db, path, table=table)
        assert again['changed'] is False and again['applied'] == []
    assert query(pg_db, 'SELECT count(*) FROM "MyMigrations"') == [(1,)]
    assert query(pg_db, 'SELECT count(*) FROM "Ops"."Applied"') == [(1,)]


# -- the session between files ---------------------------------------------------------------------------------------
def test_session_state_does_not_leak_into_the_next_file_and_the_lock_is_kept(pg_server, pg_db, tmp_path):
    # As the database owner (not a superuser), like the deploy.
    user = 'owner_' + uuid.uuid4().hex[:8]
    pg_server.query("CREATE ROLE %s LOGIN PASSWORD 'pw'; CREATE ROLE %s_helper" % (user, user))
    pg_server.query('GRANT %s_helper TO %s' % (user, user))
    pg_server.query('ALTER DATABASE %s OWNER TO %s' % (pg_db['login_db'], user))
    query(pg_db, 'CREATE SCHEMA side; GRANT CREATE ON SCHEMA public TO %s_helper;'
                 'GRANT ALL ON SCHEMA side TO %s' % (user, user))
    params = dict(pg_db, login_user=user, login_password='pw')
    holds_lock = ("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                  "AND pid = pg_backend_pid() AND classid = %d) THEN RAISE EXCEPTION 'lock lost'; END IF; END $$;\n"
                  % LOCK_CLASS)
    path = write(tmp_path / 'm', {
        '001_leaky.sql': 'SET search_path = side, public;\nSET ROLE %s_helper;\nCREATE TEMP TABLE scratch (id int);\n'
                         "SET statement_timeout = '1ms';\nPREPARE p AS SELECT 1;\n" % user,
        '002_clean.sql': holds_lock + 'CREATE TABLE second (id int);\nPREPARE p AS SELECT 2;\n'
                         "CREATE TABLE env AS SELECT current_user AS who, current_setting('search_path') AS path, "
                         "to_regclass('pg_temp.scratch') IS NULL AS no_temp, pg_sleep(0.01) IS NOT NULL AS slept;\n",
    })
    result = run(params, path)
    assert result['applied'] == ['001_leaky.sql', '002_clean.sql']
    assert query(pg_db, "SELECT n.nspname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE c.relname = 'second'") == [('public', user)]
    assert query(pg_db, 'SELECT who, path, no_temp, slept FROM env') == [(user, '"$user", public', True, True)]


def test_discard_all_would_drop_the_advisory_lock_reset_does_not(pg_db):
    conn = connect(pg_db)
    try:
        with conn.cursor() as cur:
            held = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
            cur.execute('SELECT pg_advisory_lock(1, 2)')
            cur.execute('CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; '
                        'DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES')
            cur.execute(held)
            assert cur.fetchone() == (1,)
            cur.execute('DISCARD ALL')
            cur.execute(held)
            assert cur.fetchone() == (0,)
    finally:
        conn.close()


def test_a_file_that_releases_the_run_lock_stops_the_run(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_a.sql': 'SELECT pg_advisory_unlock_all();', '002_b.sql': 'CREATE TABLE b ();'})
    message, result = failure(pg_db, path)
    assert 'lost its advisory lock' in message and result['applied'] == ['001_a.sql']
    assert not exists(pg_db, 'b')


def test_transaction_blocks_in_a_no_transaction_file_are_the_files_own(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_own.sql': '-- pg_migrate: no-transaction\nBEGIN;\nCREATE TABLE own (id int);\n'
                                                 'COMMIT;\nCREATE INDEX CONCURRENTLY own_id ON own (id);\n'})
    assert run(pg_db, path)['applied'] == ['001_own.sql']
    assert query(pg_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'own_id'::regclass") == [(True,)]
