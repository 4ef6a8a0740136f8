"""The statement splitter pg_migrate uses to run files statement by statement and name lines."""

import pytest

from ansible.module_utils.soulnear.sql import (
    SqlSplitError, is_transaction_control, line_of_position, split_statements)


def test_simple_statements_and_lines():
    sql = "CREATE TABLE a (id int);\n\nINSERT INTO a VALUES (1);\n-- comment; with semicolon\nSELECT 1"
    assert split_statements(sql) == [(1, 'CREATE TABLE a (id int)'), (3, 'INSERT INTO a VALUES (1)'),
                                     (5, 'SELECT 1')]


def test_semicolons_inside_literals_identifiers_and_comments():
    sql = ("INSERT INTO t VALUES ('a;b', 'it''s;');\n"
           'SELECT "we;ird" FROM t;\n'
           "SELECT E'back\\'slash;';\n"
           '/* block ; /* nested ; */ still ; */ SELECT 2;\n')
    statements = split_statements(sql)
    assert [line for line, _ in statements] == [1, 2, 3, 4]
    assert statements[0][1] == "INSERT INTO t VALUES ('a;b', 'it''s;')"
    assert statements[2][1] == "SELECT E'back\\'slash;'"


def test_dollar_quoted_function_body():
    sql = ('CREATE FUNCTION f() RETURNS int AS $body$\nBEGIN\n  PERFORM 1;\n  RETURN 1;\nEND;\n'
           '$body$ LANGUAGE plpgsql;\nSELECT $$x;y$$, $1;\n')
    statements = split_statements(sql)
    assert len(statements) == 2
    assert statements[1][0] == 7


def test_begin_atomic_body_is_one_statement():
    sql = ('CREATE FUNCTION g(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n'
           '  SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND;\nSELECT 3;')
    statements = split_statements(sql)
    assert len(statements) == 2
    assert statements[0][1].endswith('END')
    assert statements[1] == (6, 'SELECT 3')


def test_unterminated_literals_name_the_line():
    with pytest.raises(SqlSplitError) as info:
        split_statements("SELECT 1;\nSELECT 'oops;\n")
    assert info.value.line == 2
    with pytest.raises(SqlSplitError):
        split_statements('SELECT $x$ never closed')
    with pytest.raises(SqlSplitError):
        split_statements('/* never closed')


def test_psql_meta_commands_are_refused():
    with pytest.raises(SqlSplitError) as info:
        split_statements('SELECT 1;\n\\i other.sql\n')
    assert info.value.line == 2


def test_transaction_control_detection():
    assert is_transaction_control('BEGIN')
    assert is_transaction_control('begin transaction isolation level serializable')
    assert is_transaction_control('START TRANSACTION')
    assert is_transaction_control('COMMIT')
    assert is_transaction_control('END')
    assert is_transaction_control('ROLLBACK')
    assert not is_transaction_control('ROLLBACK TO SAVEPOINT a')
    assert not is_transaction_control('SAVEPOINT a')
    assert not is_transaction_control('CREATE TABLE begin_x (id int)')


def test_line_of_position():
    statement = 'SELECT 1\nFROM\nWHERE x'
    assert line_of_position(statement, 10, statement.index('WHERE') + 1) == 12
    assert line_of_position(statement, 10, None) == 10


# -- the scanner pg_migrate runs files with -----------------------------------------------------------------------
from ansible.module_utils.soulnear import sql as sqlmod  # noqa: E402


def test_semicolons_inside_parentheses_do_not_end_a_statement():
    sql = ('CREATE RULE r AS ON INSERT TO t DO ALSO (\n  INSERT INTO log VALUES (1);\n'
           '  INSERT INTO log VALUES (2)\n);\nSELECT 1;')
    statements = split_statements(sql)
    assert len(statements) == 2 and statements[0][1].endswith(')') and statements[1] == (5, 'SELECT 1')


def test_statements_are_slices_of_the_file_text():
    sql = "INSERT INTO t VALUES ('a\r\nb');\r\nSELECT 2;\r\n"
    assert split_statements(sql) == [(1, "INSERT INTO t VALUES ('a\r\nb')"), (3, 'SELECT 2')]


def test_e_strings_with_escaped_quotes():
    sql = "SELECT E'it\\'s; fine', e'\\\\';\nSELECT 'x''y;';\nSELECT note'x';"
    assert [line for line, _ in split_statements(sql)] == [1, 2, 3]
    with pytest.raises(SqlSplitError):
        split_statements("SELECT E'never closed\\';")


def test_copy_from_stdin_is_reported_and_its_data_skipped():
    sql = "COPY t (a, b) FROM stdin;\n1\t'x\n2\ty;\n\\.\nSELECT 1;\n"
    script = sqlmod.scan(sql)
    assert script.statements == [(1, 'COPY t (a, b) FROM stdin'), (5, 'SELECT 1')]
    assert [(line, message.split(':')[0]) for line, message in script.problems] == [(1, 'COPY ... FROM STDIN')]
    assert sqlmod.scan("COPY t FROM '/srv/data.csv';").problems == []


def test_every_meta_command_is_reported_with_its_line():
    script = sqlmod.scan('SELECT 1;\n\\set x 1\n\\i other.sql\nSELECT 2;\n')
    assert [(line, message.split(' is not')[0]) for line, message in script.problems] == [
        (2, 'psql meta-command \\set'), (3, 'psql meta-command \\i')]
    assert script.statements == [(1, 'SELECT 1'), (4, 'SELECT 2')]


CORPUS = [
    "SELECT 1; SELECT 'a;b'; SELECT \"x;y\" FROM t; SELECT $$;$$, $tag$ $$ ; $tag$;",
    'CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql;\n-- c;\n/* a /* b; */ c; */ x;',
    "SELECT E'\\\\'; CREATE OR REPLACE RULE r AS ON DELETE TO t DO INSTEAD (DELETE FROM a WHERE id IN "
    "(SELECT (1)); NOTIFY x); SELECT ')';",
    "INSERT INTO t VALUES (1, 'a'), (2, E'b\\'c;'), (3, now()), (4, coalesce((SELECT max(x) FROM y), 0));",
    'SELECT a$b, $1, x$$y FROM t;  ;; \n\n SELECT -1 - -2 / 3 ;',
    "CREATE RULE r AS ON UPDATE TO t DO INSTEAD (UPDATE a SET x = ';'; NOTIFY n);\nVALUES ('\u00e9;');",
    "COPY t FROM STDIN;\n1\n\\.\nSELECT 'tail'",
]


@pytest.mark.parametrize('sql', CORPUS)
def test_fast_scanner_agrees_with_the_token_scanner(sql):
    fast, tokens = sqlmod._scan_fast(sql), sqlmod._scan_tokens(sql)
    assert fast.statements == tokens.statements and fast.problems == tokens.problems


def test_scanning_is_linear_even_for_unbalanced_parentheses():
    import time
    # CREATE RULE counts parentheses (with a C pattern two levels deep): a long rule whose outer parenthesis
    # holds what the pattern stops at ($ and a third level) must not backtrack exponentially.
    sql = 'CREATE RULE r AS ON INSERT TO t DO ALSO (' + '; '.join(
        'INSERT INTO log VALUES (%d, numeric(10, (2)), $$a$$)' % i for i in range(20000)) + ');\n' + \
        'SELECT ((((1;\n' * 2000 + ')))) ;'
    started = time.perf_counter()
    script = sqlmod.scan(sql)
    assert time.perf_counter() - started < 2.0
    assert len(script.statements) == 2002 and script.statements[0][1].endswith('$$a$$))')
    big = "INSERT INTO t VALUES " + ', '.join("(%d, 'r%d', E'x\\\\n')" % (i, i) for i in range(100000)) + ';'
    started = time.perf_counter()
    assert len(sqlmod.scan(big * 3).statements) == 3
    assert time.perf_counter() - started < 3.0


def test_a_semicolon_inside_parentheses_ends_a_statement_outside_create_rule():
    # psql would keep reading; the text before such a semicolon has an unclosed parenthesis either way, so the
    # server refuses it: splitting there changes which syntax error is reported, never what runs.
    assert [t for _, t in split_statements('SELECT (1; SELECT 2);')] == ['SELECT (1', 'SELECT 2)']
    assert [t for _, t in split_statements('create or replace rule r as on insert to t do also (select 1; '
                                           'select 2);')] == ['create or replace rule r as on insert to t do also '
                                                              '(select 1; select 2)']


def test_statements_that_refuse_a_transaction_block():
    refuse = sqlmod.outside_transaction
    assert refuse('CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)') == 'CREATE INDEX CONCURRENTLY'
    assert refuse('drop index concurrently if exists i') == 'DROP INDEX CONCURRENTLY'
    assert refuse('REINDEX (VERBOSE) TABLE CONCURRENTLY t') == 'REINDEX ... CONCURRENTLY'
    assert refuse('REINDEX (CONCURRENTLY) INDEX i') == 'REINDEX ... CONCURRENTLY'
    assert refuse('VACUUM (ANALYZE) t') == 'VACUUM'
    assert refuse('ALTER SYSTEM SET work_mem = 1') == 'ALTER SYSTEM'
    assert refuse('CREATE DATABASE d') == 'CREATE DATABASE' and refuse('DROP TABLESPACE s') == 'DROP TABLESPACE'
    assert refuse("ALTER TABLE p DETACH PARTITION c CONCURRENTLY") is not None
    assert refuse("CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p") is not None
    assert refuse("CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p WITH (create_slot = false)") is None
    assert refuse("ALTER TYPE mood ADD VALUE 'x'") is None
    assert refuse("ALTER TYPE mood ADD VALUE 'x'", server_version=110000) is not None
    for fine in ('CREATE INDEX i ON t (a)', 'REINDEX TABLE t', 'CLUSTER t USING i', 'ANALYZE t',
                 'CREATE TABLE concurrently (id int)'):
        assert refuse(fine) is None, fine


def test_transaction_wrappers():
    assert sqlmod.begin_modes('BEGIN') == '' and sqlmod.begin_modes('begin work') == ''
    assert sqlmod.begin_modes('BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY') == \
        'ISOLATION LEVEL SERIALIZABLE, READ ONLY'
    assert sqlmod.begin_modes('START TRANSACTION DEFERRABLE') == 'DEFERRABLE'
    assert sqlmod.begin_modes('SELECT 1') is None
    assert sqlmod.is_commit('COMMIT') and sqlmod.is_commit('end transaction')
    assert not sqlmod.is_commit('COMMIT AND CHAIN')
    assert sqlmod.is_rollback('ROLLBACK') and sqlmod.is_rollback('abort') and not sqlmod.is_rollback('ROLLBACK TO s')
    assert is_transaction_control('PREPARE TRANSACTION \'x\'') and not is_transaction_control('COMMIT PREPARED \'x\'')


def test_dbmate_sections():
    text = '-- a comment\n-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON t (a);\n\n' \
           '-- migrate:down\nDROP INDEX i;\n'
    section = sqlmod.dbmate_section(text)
    assert text[section.start:section.end].startswith('-- migrate:up') and 'DROP' not in \
        text[section.start:section.end]
    assert (section.line, section.transaction, section.problems, section.down_line) == (2, False, [], 5)
    assert sqlmod.dbmate_section('SELECT 1;\n-- migrate:up\nSELECT 2;\n').problems[0][1].startswith('statements before')
    reversed_order = '-- migrate:down\nSELECT 1;\n-- migrate:up\nSELECT 2;\n'
    assert 'comes before' in sqlmod.dbmate_section(reversed_order).problems[0][1]
    assert 'unknown dbmate option' in sqlmod.dbmate_section('-- migrate:up foo:bar\nSELECT 1;\n').problems[0][1]
    assert "no '-- migrate:up'" in sqlmod.dbmate_section('SELECT 1;').problems[0][1]


def test_goose_and_sql_migrate_sections():
    text = '-- +goose NO TRANSACTION\n-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose StatementEnd\n' \
           '-- +goose Down\nSELECT 2;\n'
    section = sqlmod.goose_section(text)
    assert (section.line, section.transaction, section.problems) == (2, False, [])
    assert 'SELECT 2' not in text[section.start:section.end]
    assert 'ENVSUB ON' in sqlmod.goose_section('-- +goose ENVSUB ON\n-- +goose Up\nSELECT ${X};\n').problems[0][1]
    text = '-- +migrate Up notransaction\nCREATE INDEX CONCURRENTLY i ON t (a);\n-- +migrate Down\nDROP INDEX i;\n'
    section = sqlmod.sql_migrate_section(text)
    assert (section.transaction, section.down_line, section.problems) == (False, 3, [])


def test_down_markers_of_known_and_unknown_styles():
    for marker in ('-- migrate:down', '-- +goose Down', '-- +migrate Down', '-- !Downs', '-- //@UNDO', '-- down',
                   '--  Down migration', '-- +down'):
        assert sqlmod.down_marker('CREATE TABLE t ();\n%s\nDROP TABLE t;\n' % marker) == (2, marker.strip()), marker
    assert sqlmod.down_marker('-- downgrade notes are elsewhere\nSELECT 1;\n') is None


def test_flyway_placeholders():
    text, missing = sqlmod.replace_placeholders('CREATE TABLE ${Schema}.t (v text DEFAULT \'${x}\'); ${y}',
                                                {'schema': 'app', 'x': 'X'})
    assert text == "CREATE TABLE app.t (v text DEFAULT 'X'); ${y}" and missing == ['y']
    assert sqlmod.placeholders_in('${a} ${b} ${a} $$ ${flyway:user}') == ['a', 'b', 'flyway:user']


def test_watched_words_cover_every_statement_facts_looks_at():
    assert sqlmod._CONTROL_WORDS | set(sqlmod._OUTSIDE) | {'ALTER', 'DISCARD'} <= sqlmod.WATCHED_WORDS
    assert sqlmod.first_word_upper('  insert into t') == '' and sqlmod.first_word_upper('vacuum t') == 'VACUUM'
