"""psycopg2 helpers over module-style connection parameters (login_host, login_port, login_user,
login_password, login_db), shared by the test servers (pgcluster, pgcontainer) and the tests."""

import time

import psycopg2


def connect(params, autocommit=True, **extra):
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user=params['login_user'],
                            password=params['login_password'], dbname=params['login_db'],
                            connect_timeout=params.get('connect_timeout', 5), **extra)
    conn.autocommit = autocommit
    return conn


def query(params, sql, args=None):
    """Run one statement (autocommit); returns its rows, or None when it returns none."""
    conn = connect(params)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


class ServerClient:
    """connect()/query() for a test server that provides params(db=..., user=..., password=...)."""

    def connect(self, db='postgres', autocommit=True, **params):
        return connect(self.params(db=db, **params), autocommit=autocommit)

    def query(self, sql, args=None, db='postgres'):
        return query(self.params(db=db), sql, args)

    def wait_ready(self, timeout=30):
        """Poll until a superuser connection works; after timeout raise not_ready()'s error."""
        deadline = time.time() + timeout
        while True:
            try:
                self.connect().close()
                return
            except psycopg2.OperationalError as exc:
                if time.time() > deadline:
                    raise self.not_ready(exc) from None
                time.sleep(0.1)

    def not_ready(self, exc):
        return exc


def wait_until(predicate, timeout=15, what='condition', interval=0.1):
    """predicate()'s first truthy result, polled every interval; AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %ss waiting for %s' % (timeout, what))
        time.sleep(interval)
