"""The retry classifier against errors raised by a real server (SQLSTATEs via RAISE ... USING ERRCODE)."""

import psycopg2
import pytest

from ansible.module_utils.soulnear.pg import RetryPolicy, describe_error, is_retryable, sqlstate_of

RETRY = ['08000', '08003', '08006', '08001', '08004', '08P01', '57P01', '57P03', '53300', '25006']
NO_RETRY = ['08007', '22012', '23505', '23503', '42601', '42501', '42P01', '28P01', '28000', '40001', '57014',
            '53100', 'XX000']


def raise_sqlstate(pg_server, code):
    conn = pg_server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("DO $$ BEGIN RAISE EXCEPTION 'synthetic' USING ERRCODE = '%s'; END $$" % code)
    except psycopg2.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError('no error raised for %s' % code)


@pytest.mark.parametrize('code', RETRY)
def test_connection_class_errors_are_retried(pg_server, code):
    exc = raise_sqlstate(pg_server, code)
    assert exc.pgcode == code
    assert is_retryable(exc)


@pytest.mark.parametrize('code', NO_RETRY)
def test_data_integrity_syntax_permission_auth_errors_are_not_retried(pg_server, code):
    exc = raise_sqlstate(pg_server, code)
    assert exc.pgcode == code
    assert not is_retryable(exc)


def test_a_write_on_a_read_only_server_means_reconnect(pg_server):
    # What a client sees on a primary that a switchover demoted: the write is refused, nothing was written, and a
    # new connection through the endpoint reaches the new primary.
    conn = pg_server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute('SET default_transaction_read_only = on')  # what a demoted primary looks like to a session
            with pytest.raises(psycopg2.Error) as caught:
                cur.execute('CREATE TEMP TABLE t (x int); CREATE TABLE soulnear_ro_probe (x int)')
        assert is_retryable(caught.value, conn)  # the server itself is read-only: reconnect
        # A read-only transaction of the statement's own on a server that takes writes: retrying cannot help.
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute('SET default_transaction_read_only = off')
            conn.commit()
            cur.execute('START TRANSACTION READ ONLY')
            with pytest.raises(psycopg2.Error) as own:
                cur.execute('CREATE TABLE soulnear_ro_probe (x int)')
        assert own.value.pgcode == '25006' and not is_retryable(own.value, conn)
    finally:
        conn.close()
    assert caught.value.pgcode == '25006'
    assert is_retryable(caught.value)  # without the connection: reconnect
    assert 'target_session_attrs=read-write' in describe_error(caught.value)


def test_real_syntax_and_constraint_errors_are_not_retried(pg_server):
    conn = pg_server.connect()
    try:
        with conn.cursor() as cur:
            for statement in ('SELEC 1', 'SELECT 1/0', 'SELECT * FROM no_such_table'):
                with pytest.raises(psycopg2.Error) as info:
                    cur.execute(statement)
                assert not is_retryable(info.value), statement
    finally:
        conn.close()


def test_wrong_password_has_no_code_and_is_not_retried(pg_server):
    with pytest.raises(psycopg2.OperationalError) as info:
        pg_server.connect(password='wrong')
    exc = info.value
    assert exc.pgcode is None  # libpq gives no SQLSTATE at connect time: the message decides
    assert sqlstate_of(exc) == '28P01'
    assert not is_retryable(exc)
    assert 'check the password' in describe_error(exc)


def test_unknown_database_is_not_retried(pg_server):
    with pytest.raises(psycopg2.OperationalError) as info:
        pg_server.connect(db='no_such_db')
    assert sqlstate_of(info.value) == '3D000'
    assert not is_retryable(info.value)


def test_refused_connection_is_retried():
    from pgcluster import free_port
    with pytest.raises(psycopg2.OperationalError) as info:
        psycopg2.connect(host='127.0.0.1', port=free_port(), user='x', connect_timeout=2)
    assert sqlstate_of(info.value) is None
    assert is_retryable(info.value)


@pytest.mark.parametrize('message, code, retry', [
    ('FATAL:  the database system is starting up', '57P03', True),
    ('FATAL:  the database system is shutting down', '57P03', True),
    ('FATAL:  sorry, too many clients already', '53300', True),
    ('FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute', '53300', True),
    ('server closed the connection unexpectedly', None, True),
    ('FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "x", database "y"', '28000', False),
    ('FATAL:  role "root" does not exist', '28000', False),
    ('fe_sendauth: no password supplied', '28P01', False),
])
def test_codeless_connection_messages(message, code, retry):
    exc = psycopg2.OperationalError(message)
    assert sqlstate_of(exc) == code
    assert is_retryable(exc) is retry


def test_non_database_errors_are_not_retried():
    assert not is_retryable(ValueError('x'))
    assert not is_retryable(KeyError('x'))


class Flaky:
    def __init__(self, errors, result='ok'):
        self.errors = list(errors)
        self.calls = 0
        self.result = result

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def test_policy_backoff_is_half_one_two_seconds():
    slept = []
    refused = psycopg2.OperationalError('could not connect to server: Connection refused')
    func = Flaky([refused] * 3)
    assert RetryPolicy(sleep=slept.append).run(func) == 'ok'
    assert slept == [0.5, 1.0, 2.0]
    assert func.calls == 4


def test_policy_gives_up_after_retries_with_the_last_error():
    slept = []
    refused = psycopg2.OperationalError('could not connect to server: Connection refused')
    func = Flaky([refused] * 5)
    with pytest.raises(psycopg2.OperationalError):
        RetryPolicy(retries=3, sleep=slept.append).run(func)
    assert func.calls == 4 and len(slept) == 3


def test_policy_never_retries_auth_errors():
    slept = []
    func = Flaky([psycopg2.OperationalError('FATAL:  password authentication failed for user "x"')])
    with pytest.raises(psycopg2.OperationalError):
        RetryPolicy(sleep=slept.append).run(func)
    assert func.calls == 1 and slept == []
