"""Locking DDL named before it runs (issue 22, part 2), against a real PostgreSQL 15: the incident's rewriting ADD
COLUMN on a table of 300,000 rows is flagged with its size in check mode and in a run's warnings, refused with
lint: refuse before anything ran, allowed by the directive; CREATE INDEX CONCURRENTLY and a table created in the
same run are not warned about; a large first file is linted as it is read; the module warns and refuses through
Ansible. Each rewrite, scan and lock the rules
claim is observed on the server (relfilenode, pg_stat_xact_user_tables.seq_scan, pg_locks), and the ALTER COLUMN
TYPE changes accepted without a rewrite really keep the relfilenode. statement_timeout: a migration exceeding it
fails cleanly, rolled back (in a transaction) or recorded as failed (outside one)."""

import importlib.util
import os
import re
import threading
import time
import uuid

import psycopg2
import pytest

from ansible.module_utils.soulnear.ddl_facts import LiveFacts
from ansible.module_utils.soulnear.ddl_lint import Finding, lint_sql
from ansible.module_utils.soulnear.migrate import Migrator
from ansible.module_utils.soulnear.migration_files import MigrationError
from ansiblerun import run_module
from pgclient import connect, query, wait_until

from ansiblerun import ROOT
ROWS = 300000
INCIDENT = 'ALTER TABLE events ADD COLUMN score int DEFAULT (random()*1000)::int;\n'


def write(directory, files):
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def run(params, path, check_mode=False, **options):
    """(result, warnings, log lines) of a Migrator run."""
    warned, logged = [], []
    result = Migrator(dict(params, path=str(path), **options), check_mode=check_mode, warn=warned.append,
                      log=logged.append).run()
    return result, warned, logged


def refused(params, path, check_mode=False, **options):
    warned = []
    with pytest.raises(MigrationError) as info:
        Migrator(dict(params, path=str(path), **options), check_mode=check_mode, warn=warned.append).run()
    return str(info.value), info.value.result, warned


def exists(params, name):
    return query(params, 'SELECT to_regclass(%s) IS NOT NULL', (name,))[0][0]


@pytest.fixture(scope='module')
def events_template(pg_server):
    """A database holding the bot's busy table (events: 300,000 rows, analysed, as autovacuum leaves it) and a
    small one (users), used as the template of each test's database."""
    name = 'lint_tpl_' + uuid.uuid4().hex[:8]
    pg_server.query('CREATE DATABASE %s' % name)
    query(pg_server.params(db=name),
          'CREATE TABLE users (id int PRIMARY KEY, name text);'
          "INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 100) g;"
          'CREATE TABLE events (id bigint PRIMARY KEY, user_id int NOT NULL, body text, created timestamptz '
          'NOT NULL DEFAULT now());'
          "INSERT INTO events (id, user_id, body) SELECT g, g %% 100 + 1, 'event number ' || g "
          'FROM generate_series(1, %d) g;' % ROWS)
    query(pg_server.params(db=name), 'ANALYZE')
    # No connections to a template (autovacuum skips a database that allows none).
    pg_server.query('ALTER DATABASE %s WITH IS_TEMPLATE true ALLOW_CONNECTIONS false' % name)
    yield name
    pg_server.query('ALTER DATABASE %s WITH IS_TEMPLATE false' % name)
    pg_server.query('DROP DATABASE %s' % name)


@pytest.fixture
def events_db(pg_server, events_template):
    name = 'lint_' + uuid.uuid4().hex[:12]

    def copied():
        try:
            pg_server.query('CREATE DATABASE %s TEMPLATE %s' % (name, events_template))
            return True
        except psycopg2.errors.ObjectInUse:  # a session still leaving the template
            return False
    wait_until(copied, timeout=30, what='a copy of the template database')
    yield pg_server.params(db=name)
    pg_server.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s '
                    'AND pid <> pg_backend_pid()', (name,))
    pg_server.query('DROP DATABASE IF EXISTS %s' % name)


def size_of(params, table):
    return query(params, 'SELECT pg_total_relation_size(%s::regclass)', (table,))[0][0]


def relfilenode(params, table):
    return query(params, "SELECT pg_relation_filenode(%s::regclass)", (table,))[0][0]


# -- the incident ------------------------------------------------------------------------------------------------
def test_the_rewriting_add_column_is_flagged_with_its_size_in_check_mode_and_in_a_run(events_db, tmp_path):
    path = write(tmp_path / 'm', {'001_score.sql': INCIDENT})
    size = size_of(events_db, 'events')
    assert size > 20 * 1024 * 1024
    check, warned, _ = run(events_db, path, check_mode=True)
    assert [p['name'] for p in check['pending']] == ['001_score.sql']
    finding, = check['lint']
    assert {k: finding[k] for k in ('file', 'line', 'statement', 'rule', 'table', 'size', 'severity', 'lock',
                                    'rows_how')} == dict(
        file='001_score.sql', line=1, statement=INCIDENT.strip().rstrip(';'), rule='add-column-volatile-default',
        table='public.events', size=size, severity='warning', lock='ACCESS EXCLUSIVE', rows_how='estimate')
    assert abs(finding['rows'] - ROWS) < ROWS * 0.05
    assert finding['fix'].startswith('add the column without a default, SET DEFAULT for new rows')
    assert len(warned) == 1 and warned[0] == finding_message(finding)
    assert 'add-column-volatile-default on public.events (%s, ~%s rows): rewrites the table' % (
        finding['size_pretty'], '{:,}'.format(finding['rows'])) in warned[0]
    assert not exists(events_db, 'schema_migrations')  # check mode changed nothing
    # A run warns the same way before it applies (lint: warn does not stop it), and the server does rewrite.
    before = relfilenode(events_db, 'events')
    result, warned_run, _ = run(events_db, path)
    assert result['applied'] == ['001_score.sql'] and warned_run == warned
    assert result['lint'][0]['size'] == size
    assert relfilenode(events_db, 'events') != before
    # The module's message counts the findings.
    assert module_summary(check, True) == 'Would apply 1 migration(s); 1 locking statement(s) flagged (see lint)'


def module_summary(result, check_mode):
    spec = importlib.util.spec_from_file_location('pg_migrate_module', os.path.join(ROOT, 'library', 'pg_migrate.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.summary(result, check_mode)


def finding_message(finding):
    return Finding(finding).message()


def test_lint_refuse_fails_before_anything_ran_naming_every_finding(events_db, tmp_path):
    path = write(tmp_path / 'm', {
        '001_notes.sql': 'CREATE TABLE notes (id int);\n',
        '002_score.sql': INCIDENT,
        '003_index.sql': 'CREATE INDEX events_user ON events (user_id);\n',
        '004_rename.sql': 'ALTER TABLE users RENAME COLUMN name TO full_name;\n',
    })
    for check_mode in (True, False):
        message, result, warned = refused(events_db, path, check_mode=check_mode, lint='refuse')
        assert message.startswith('lint: refuse - 2 statement(s) would lock a table the bot uses for long')
        assert 'nothing was applied' in message
        assert '(1) 002_score.sql line 1: ALTER TABLE events ADD COLUMN score' in message
        assert '(2) 003_index.sql line 1: CREATE INDEX events_user ON events (user_id) - create-index' in message
        assert 'public.events (' in message and '(3)' not in message
        assert len(warned) == 1 and 'rename' in warned[0]   # RENAME is warned about, never refused
        assert [f['rule'] for f in result['lint']] == ['add-column-volatile-default', 'create-index', 'rename']
        assert result['changed'] is False and result['applied'] == []
        assert not exists(events_db, 'notes') and not exists(events_db, 'schema_migrations')
    # Thresholds: with lint_min_mb and lint_min_rows above the table, the same files apply.
    result, warned, _ = run(events_db, path, lint='refuse', lint_min_rows=10 ** 7, lint_min_mb=10 ** 4)
    assert result['applied'] == ['001_notes.sql', '002_score.sql', '003_index.sql', '004_rename.sql']
    assert [f['severity'] for f in result['lint']] == ['info', 'info', 'warning']


def test_the_directive_allows_a_known_safe_statement(events_db, tmp_path):
    path = write(tmp_path / 'm', {'001_score.sql': '-- pg_migrate: allow add-column-volatile-default\n' + INCIDENT})
    result, warned, _ = run(events_db, path, lint='refuse')
    assert result['applied'] == ['001_score.sql'] and warned == []
    finding, = result['lint']
    assert finding['severity'] == 'allowed' and finding['line'] == 2 and finding['size'] > 0
    assert finding['note'] == 'allowed by "-- pg_migrate: allow add-column-volatile-default"'


def test_create_index_concurrently_is_not_flagged(events_db, tmp_path):
    path = write(tmp_path / 'm', {'001_index.sql': 'CREATE INDEX CONCURRENTLY events_user ON events (user_id);\n'})
    result, warned, _ = run(events_db, path, lint='refuse')
    assert result['applied'] == ['001_index.sql'] and result['lint'] == [] and warned == []
    assert result['pending'] == [] and query(events_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                                                        "'events_user'::regclass") == [(True,)]
    # Without CONCURRENTLY: flagged with the lock it takes (writes wait, reads go on).
    write(tmp_path / 'm', {'002_index.sql': 'CREATE INDEX events_created ON events (created);\n'})
    check, warned, _ = run(events_db, tmp_path / 'm', check_mode=True)
    assert [(f['rule'], f['lock'], f['severity']) for f in check['lint']] == [
        ('create-index', 'SHARE (writes wait, reads go on)', 'warning')]
    assert 'CREATE INDEX CONCURRENTLY in a migration of its own' in warned[0]


def test_a_statement_on_a_table_created_in_the_same_run_is_not_flagged(events_db, tmp_path):
    path = write(tmp_path / 'm', {
        '001_scores.sql': 'CREATE TABLE scores (id int, user_id int, v int);\n'
                          'INSERT INTO scores SELECT g, g % 100, g FROM generate_series(1, 50000) g;\n',
        '002_index.sql': 'CREATE INDEX scores_user ON scores (user_id);\n'
                         'ALTER TABLE scores ADD COLUMN r int DEFAULT (random()*10)::int, ALTER v SET NOT NULL;\n',
        '003_fk.sql': 'ALTER TABLE scores ADD CONSTRAINT scores_user_fk FOREIGN KEY (user_id) REFERENCES users (id) '
                      'NOT VALID;\n',
    })
    check, warned, _ = run(events_db, path, check_mode=True, lint='refuse')
    assert warned == []
    assert [(f['file'], f['rule'], f['severity'], f['note']) for f in check['lint']] == [
        ('002_index.sql', 'create-index', 'info', 'new: created by 001_scores.sql in this run'),
        ('002_index.sql', 'add-column-volatile-default', 'info', 'new: created by 001_scores.sql in this run'),
        ('002_index.sql', 'set-not-null', 'info', 'new: created by 001_scores.sql in this run')]
    result, warned, _ = run(events_db, path, lint='refuse')
    assert result['applied'] == ['001_scores.sql', '002_index.sql', '003_fk.sql'] and warned == []
    # The next run sees the table as the live, 50,000-row table it now is.
    write(path, {'004_more.sql': 'CREATE INDEX scores_v ON scores (v);\n'})
    check, warned, _ = run(events_db, path, check_mode=True)
    finding, = check['lint']
    assert finding['severity'] == 'warning' and finding['rows'] >= 10000 and finding['table'] == 'public.scores'
    assert finding['rows_how'] in ('estimate', 'at least')  # analysed by autovacuum, or counted up to 10,000


def test_small_tables_are_info_and_never_analysed_ones_are_counted(events_db, tmp_path):
    query(events_db, 'CREATE TABLE tiny (id int); INSERT INTO tiny SELECT generate_series(1, 100)')
    path = write(tmp_path / 'm', {'001_index.sql': 'CREATE INDEX tiny_id ON tiny (id);\n'
                                                   'CREATE INDEX users_name ON users (name);\n'})
    check, warned, _ = run(events_db, path, check_mode=True)
    assert warned == []
    tiny, users = check['lint']
    assert (tiny['severity'], tiny['rows']) == ('info', 100) and tiny['rows_how'] in ('counted', 'estimate')
    assert (users['severity'], users['rows'], users['rows_how']) == ('info', 100, 'estimate')
    assert users['note'] == 'small: below lint_min_rows (10000) and lint_min_mb (10 MB)'
    check, warned, _ = run(events_db, path, check_mode=True, lint_min_rows=0)
    assert [f['severity'] for f in check['lint']] == ['warning', 'warning'] and len(warned) == 2
    assert run(events_db, path, check_mode=True, lint='off')[0]['lint'] == []


def test_a_large_first_file_is_linted_as_it_is_read_or_not_streamed_with_refuse(events_db, tmp_path, monkeypatch):
    monkeypatch.setattr(Migrator, 'STREAM_BYTES', 0)  # every first file takes the path of a 4 MB data load
    inserts = ''.join('INSERT INTO users VALUES (%d, \'u%d\');\n' % (i, i) for i in range(1000, 1200))
    path = write(tmp_path / 'm', {'001_load.sql': inserts + INCIDENT})
    message, _, _ = refused(events_db, path, lint='refuse')
    assert '001_load.sql line 201: ALTER TABLE events ADD COLUMN score' in message
    assert query(events_db, 'SELECT count(*) FROM users') == [(100,)]
    result, warned, logged = run(events_db, path)
    assert any('checked while it runs' in line for line in logged)
    assert result['applied'] == ['001_load.sql'] and len(warned) == 1
    assert warned[0].startswith('001_load.sql line 201: ALTER TABLE events ADD COLUMN score int DEFAULT')
    assert [(f['rule'], f['line']) for f in result['lint']] == [('add-column-volatile-default', 201)]


# -- the rules match the server --------------------------------------------------------------------------------------
SETUP = ("CREATE DOMAIN posint AS int CHECK (VALUE > 0);"
         "CREATE TABLE t2 (id int PRIMARY KEY); INSERT INTO t2 SELECT generate_series(1, 200);"
         "CREATE TABLE t (id int, v varchar(10), n numeric(10,2), ts timestamp(3), c cidr, b varbit(5), ch char(5), "
         "tx text, tm time(2));"
         "INSERT INTO t SELECT g, 'x', 1, now(), '10.0.0.0/8', B'101', 'ab', 'y', '10:00' "
         "FROM generate_series(1, 100) g;"
         "CREATE INDEX t_v ON t (v); CREATE TABLE t3 AS SELECT g AS k FROM generate_series(1, 50) g;"
         "CREATE MATERIALIZED VIEW mv AS SELECT k FROM t3;")

# statement, the rule (None: not flagged), what the server does to t: rewrite, scan, the strongest lock on the
# table (mv for the view).
CASES = [
    ('ALTER TABLE t ADD COLUMN a int DEFAULT (random()*1000)::int', 'add-column-volatile-default', True, False,
     'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a uuid DEFAULT gen_random_uuid()', 'add-column-volatile-default', True, False,
     'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a timestamptz DEFAULT clock_timestamp()', 'add-column-volatile-default', True,
     False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a bigserial', 'add-column-volatile-default', True, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a int GENERATED ALWAYS AS IDENTITY', 'add-column-volatile-default', True, False,
     'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a int GENERATED ALWAYS AS (id * 2) STORED', 'add-column-rewrite', True, False,
     'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a posint', 'add-column-rewrite', True, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a int NOT NULL DEFAULT 5', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a timestamptz DEFAULT now()', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a int REFERENCES t2 (id)', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a int DEFAULT 1 REFERENCES t2 (id)', 'add-foreign-key', False, True,
     'AccessExclusiveLock'),
    ('ALTER TABLE t ADD COLUMN a int CHECK (a > 0)', 'add-check', False, True, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER id TYPE bigint', 'alter-column-type', True, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER v TYPE varchar(5)', 'alter-column-type', True, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER ch TYPE char(10)', 'alter-column-type', True, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER n TYPE numeric(12,3)', 'alter-column-type', True, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER tx TYPE varchar(100)', 'alter-column-type', True, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER id TYPE int USING id + 0', 'alter-column-type', True, False, 'AccessExclusiveLock'),
    # The changes accepted without a rewrite (ACCEPTED_TYPE_CHANGES), each proven here.
    ('ALTER TABLE t ALTER v TYPE varchar(20)', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER v TYPE varchar', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER v TYPE text', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER v TYPE varchar(20) USING v', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER tx TYPE varchar', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER n TYPE numeric(12,2)', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER n TYPE numeric', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER b TYPE varbit(10)', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER ts TYPE timestamp(6)', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER ts TYPE timestamptz', None, False, False, 'AccessExclusiveLock'),  # TimeZone UTC
    ('ALTER TABLE t ALTER tm TYPE time(4)', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER c TYPE inet', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER tx TYPE text COLLATE "C"', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER tx SET NOT NULL', 'set-not-null', False, True, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD CONSTRAINT c CHECK (id > 0)', 'add-check', False, True, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD CONSTRAINT c CHECK (id > 0) NOT VALID', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES t2 (id)', 'add-foreign-key', False, True,
     'ShareRowExclusiveLock'),
    ('ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES t2 (id) NOT VALID', None, False, False,
     'ShareRowExclusiveLock'),
    ('ALTER TABLE t ADD PRIMARY KEY (id)', 'add-unique', False, True, 'AccessExclusiveLock'),
    ('ALTER TABLE t ADD CONSTRAINT u UNIQUE (id)', 'add-unique', False, True, 'AccessExclusiveLock'),
    ('CREATE INDEX t_id ON t (id)', 'create-index', False, True, 'ShareLock'),
    ('DROP INDEX t_v', 'drop-index', False, False, 'AccessExclusiveLock'),
    ('REINDEX TABLE t', 'reindex', False, True, 'ShareLock'),
    ('CLUSTER t USING t_v', 'cluster', True, True, 'AccessExclusiveLock'),
    ('ALTER TABLE t SET UNLOGGED', 'set-logged', True, True, 'AccessExclusiveLock'),
    ('LOCK TABLE t', 'lock-table', False, False, 'AccessExclusiveLock'),
    ('LOCK TABLE t IN SHARE MODE', 'lock-table', False, False, 'ShareLock'),
    ('LOCK TABLE t IN ROW EXCLUSIVE MODE', None, False, False, 'RowExclusiveLock'),
    ('ALTER TABLE t RENAME COLUMN tx TO tx2', 'rename', False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t RENAME TO t_renamed', 'rename', False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER tx SET DEFAULT random()::text', None, False, False, 'AccessExclusiveLock'),
    ('ALTER TABLE t ALTER tx SET STATISTICS 200', None, False, False, 'ShareUpdateExclusiveLock'),
    ('REFRESH MATERIALIZED VIEW mv', 'refresh-materialized-view', True, True, 'AccessExclusiveLock'),
]
_LOCK_NAMES = {'ShareLock': 'SHARE', 'ShareRowExclusiveLock': 'SHARE ROW EXCLUSIVE',
               'AccessExclusiveLock': 'ACCESS EXCLUSIVE'}
_STRENGTH = ['AccessShareLock', 'RowShareLock', 'RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock',
             'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock']


@pytest.fixture(scope='module')
def rules_db(pg_server):
    name = 'lint_rules_' + uuid.uuid4().hex[:8]
    pg_server.query('CREATE DATABASE %s' % name)
    params = pg_server.params(db=name)
    query(params, SETUP)
    yield params
    pg_server.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s '
                    'AND pid <> pg_backend_pid()', (name,))
    pg_server.query('DROP DATABASE %s' % name)


@pytest.mark.parametrize('statement,rule,rewrites,scans,lock', CASES, ids=[c[0][:60] for c in CASES])
def test_the_rules_match_what_the_server_does(rules_db, statement, rule, rewrites, scans, lock):
    conn = connect(rules_db)
    try:
        with conn.cursor() as cur:
            found = lint_sql(statement, LiveFacts(cur, 0), min_rows=0, min_mb=0)
        assert [f['rule'] for f in found] == ([rule] if rule else [])
        assert all(f['severity'] == 'warning' for f in found)
        target = 'mv' if 'MATERIALIZED' in statement else 't'
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute('SELECT %s::regclass::oid, pg_relation_filenode(%s::regclass)', (target, target))
            oid, node = cur.fetchone()
            cur.execute(statement)
            cur.execute('SELECT pg_relation_filenode(%s::oid), (SELECT coalesce(seq_scan, 0) FROM '
                        'pg_stat_xact_all_tables WHERE relid = %s::oid), array(SELECT mode FROM pg_locks WHERE '
                        'relation = %s::oid AND pid = pg_backend_pid() AND granted)', (oid, oid, oid))
            after, seq_scans, modes = cur.fetchone()
        conn.rollback()
    finally:
        conn.close()
    assert (after != node) is rewrites
    if not rewrites:  # a rewrite reads everything anyway (by a scan or by the index CLUSTER follows)
        assert bool(seq_scans) is scans
    assert max(modes, key=_STRENGTH.index) == lock
    if found:  # the lock the finding names is the one the server took
        name = _LOCK_NAMES[lock]
        if rule == 'lock-table':
            assert found[0]['detail'] == 'in %s mode' % name
        else:
            assert re.match(re.escape(name) + r'(?:$| on | \()', found[0]['lock']), found[0]['lock']


def test_a_lookup_that_fails_does_not_break_the_migrations_transaction(events_db, tmp_path):
    # The migration's role may lock the table (UPDATE privilege) but not read it: the lint's bounded count of a
    # never-analysed table fails (permission denied) under a savepoint, its rows stay unknown, and the run goes on
    # in the transaction the lookup happened in.
    role = 'lint_role_' + uuid.uuid4().hex[:6]
    query(events_db, "CREATE ROLE %s LOGIN PASSWORD 'pw'; GRANT CREATE ON SCHEMA public TO %s; "
                     'CREATE TABLE unread (id int); GRANT UPDATE ON unread TO %s' % (role, role, role))
    params = dict(events_db, login_user=role, login_password='pw')
    path = write(tmp_path / 'm', {'001_mine.sql': 'CREATE TABLE mine (id int);\n',
                                  '002_lock.sql': 'LOCK TABLE unread IN SHARE MODE;\nCREATE INDEX ON mine (id);\n'})
    result, _, _ = run(params, path)
    assert result['applied'] == ['001_mine.sql', '002_lock.sql']
    finding, = [f for f in result['lint'] if f['rule'] == 'lock-table']
    assert finding['table'] == 'public.unread' and finding['rows'] is None and finding['size'] == 0
    conn = connect(params, autocommit=False)
    try:
        with conn.cursor() as cur:
            assert LiveFacts(cur).relation(('unread',)).rows is None
            cur.execute('SELECT 1')                       # the transaction is still usable
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


# -- statement_timeout ------------------------------------------------------------------------------------------------
def test_statement_timeout_fails_a_migration_cleanly_rolled_back_and_pending(events_db, tmp_path):
    path = write(tmp_path / 'm', {'001_ok.sql': 'CREATE TABLE ok (id int);\n',
                                  '002_slow.sql': 'CREATE TABLE half (id int);\nSELECT pg_sleep(30);\n',
                                  '003_after.sql': 'CREATE TABLE after (id int);\n'})
    started = time.monotonic()
    message, result, _ = refused(events_db, path, statement_timeout=0.5)
    assert time.monotonic() - started < 10
    assert 'migration 002_slow.sql failed at line 2: ERROR:  canceling statement due to statement timeout ' \
           '(SQLSTATE 57014)' in message
    assert 'Its transaction was rolled back: nothing of this file was applied; the 1 file(s) applied before it ' \
           'in this run stay applied (001_ok.sql), and later files were not run' in message
    assert result['applied'] == ['001_ok.sql'] and result['changed'] is True
    assert exists(events_db, 'ok') and not exists(events_db, 'half') and not exists(events_db, 'after')
    assert query(events_db, 'SELECT name, success FROM schema_migrations') == [('001_ok.sql', True)]
    check, _, _ = run(events_db, path, check_mode=True)
    assert [p['name'] for p in check['pending']] == ['002_slow.sql', '003_after.sql']
    # Without the limit the same file applies.
    assert run(events_db, write(path, {'002_slow.sql': 'CREATE TABLE half (id int);\nSELECT pg_sleep(0.6);\n'}),
               statement_timeout=0)[0]['applied'] == ['002_slow.sql', '003_after.sql']


def test_statement_timeout_outside_a_transaction_is_recorded_and_covers_concurrently(events_db, tmp_path):
    # CREATE INDEX CONCURRENTLY waits for the transactions writing the table (no lock_timeout: it blocks
    # nobody); statement_timeout still ends it.
    writer = connect(events_db, autocommit=False, application_name='bot')
    with writer.cursor() as cur:
        cur.execute("INSERT INTO events (id, user_id, body) VALUES (-1, 1, 'open transaction')")
    path = write(tmp_path / 'm', {'001_index.sql': 'CREATE INDEX CONCURRENTLY events_body ON events (body);\n'})
    waiting = {}

    def watch():
        waiting['seen'] = wait_until(lambda: query(events_db, "SELECT count(*) FROM pg_stat_activity WHERE query "
                                                              "LIKE 'CREATE INDEX CONCURRENTLY%%' AND wait_event_type "
                                                              "= 'Lock'")[0][0], timeout=20,
                                     what='the index build waiting for the open transaction')
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        message, result, _ = refused(events_db, path, statement_timeout=1.5)
    finally:
        watcher.join(30)
        writer.rollback()
        writer.close()
    assert waiting.get('seen')
    assert 'migration 001_index.sql (outside a transaction) failed at line 1: ERROR:  canceling statement due to ' \
           'statement timeout (SQLSTATE 57014)' in message and 'repair: true' in message
    assert result['changed'] is True
    recorded = query(events_db, 'SELECT name, success, error FROM schema_migrations')
    assert [(n, s) for n, s, _ in recorded] == [('001_index.sql', False)]
    assert 'canceling statement due to statement timeout' in recorded[0][2]
    # The next run refuses until the operator has looked (an invalid index is left behind) and repairs.
    assert query(events_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'events_body'::regclass") == \
        [(False,)]
    assert 'failed outside a transaction on an earlier run' in refused(events_db, path)[0]
    query(events_db, 'DROP INDEX events_body')
    assert run(events_db, path, repair=True)[0]['applied'] == ['001_index.sql']


# -- through Ansible -------------------------------------------------------------------------------------------------
def test_the_module_warns_in_check_mode_and_refuses_through_ansible(events_db, tmp_path):
    path = write(tmp_path / 'm', {'001_score.sql': INCIDENT})
    code, result, output = run_module(tmp_path, 'pg_migrate', dict(events_db, path=str(path)), '--check')
    assert code == 0, output[-3000:]
    assert result['msg'] == 'Would apply 1 migration(s); 1 locking statement(s) flagged (see lint)'
    assert [f['rule'] for f in result['lint']] == ['add-column-volatile-default']
    assert len(result['warnings']) == 1 and 'on public.events (' in result['warnings'][0]
    code, result, output = run_module(tmp_path, 'pg_migrate', dict(events_db, path=str(path), lint='refuse',
                                                                   statement_timeout=60))
    assert code != 0 and result['failed'] and result['changed'] is False
    assert result['msg'].startswith('lint: refuse - 1 statement(s) would lock a table the bot uses for long')
    assert result['lint'][0]['severity'] == 'warning' and not exists(events_db, 'schema_migrations')
