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
