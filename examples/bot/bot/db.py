"""Connection pool and retry policy.

Retry policy (same rules as the project's module_utils/soulnear/pg.py; the bot
ships on its own, so it carries its own copy): retry only what can succeed on
retry - connection failures (SQLSTATE class 08 except 08007, OperationalError /
InterfaceError without a code), 57P01, 57P03, 53300 and 25006 - with 0.5 s / 1 s / 2 s
backoff. 25006 (read_only_sql_transaction) means the primary was demoted by a
switchover or failover: the connection is discarded and the retry reconnects
through the endpoint to the new primary. Data, integrity, syntax, permission and authentication errors are
never retried: repeating them only hides the real problem for a few seconds.
"""

import logging
import re
import threading
import time
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
import psycopg2.pool

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.5, 1.0, 2.0)
RETRYABLE_SQLSTATES = frozenset(('57P01', '57P03', '53300', '25006'))

# libpq reports connection-time failures without a SQLSTATE, so a wrong password
# looks like a refused connection except for its text. These must fail at once.
_NOT_RETRYABLE_TEXT = re.compile(
    r'password authentication failed|no password supplied|fe_sendauth|no pg_hba\.conf entry'
    r'|role "[^"]*" does not exist|is not permitted to log in|database "[^"]*" does not exist'
    r'|authentication failed', re.IGNORECASE)


class PoolTimeout(Exception):
    """No connection became free within DB_POOL_TIMEOUT."""


def is_retryable(exc):
    """True when retrying `exc` can succeed: a connection-class failure, nothing else."""
    if not isinstance(exc, psycopg2.Error):
        return False
    code = exc.pgcode
    if code:
        if code.startswith('08'):
            return code != '08007'  # transaction_resolution_unknown: a retry could apply it twice
        return code in RETRYABLE_SQLSTATES
    if _NOT_RETRYABLE_TEXT.search(str(exc)):
        return False
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))


def describe(exc):
    """The error on one line, with its SQLSTATE when the server sent one."""
    text = ' '.join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or exc.__class__.__name__
    code = getattr(exc, 'pgcode', None)
    return f'{text} (SQLSTATE {code})' if code else text


class _TimedConnection(psycopg2.extensions.connection):
    """Remembers when it was opened, so the pool can recycle old connections (DB_POOL_RECYCLE)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opened_at = time.monotonic()


class Database:
    """A ThreadedConnectionPool with a wait for a free slot, recycling and the retry policy."""

    def __init__(self, cfg, stop=None, application_name='soulnear_bot'):
        self.cfg = cfg
        # Backoff sleeps wait on the stop event, so SIGTERM is not held up by a retry.
        self._stop = stop or threading.Event()
        self.max_connections = cfg.pool_size + cfg.max_overflow
        self._connect_kwargs = {
            'host': cfg.host, 'port': cfg.port, 'user': cfg.user, 'password': cfg.password, 'dbname': cfg.dbname,
            'connect_timeout': cfg.connect_timeout, 'application_name': application_name,
            'options': f'-c statement_timeout={int(cfg.command_timeout * 1000)}',
            # Keepalives so a dead server or a dropped NAT entry is noticed, not waited on forever.
            'keepalives': 1, 'keepalives_idle': 30, 'keepalives_interval': 10, 'keepalives_count': 3,
            'sslmode': cfg.sslmode, 'target_session_attrs': cfg.target_session_attrs,
        }
        if cfg.sslrootcert:
            self._connect_kwargs['sslrootcert'] = cfg.sslrootcert
        # Opened lazily (minconn=0 here), but up to pool_size idle connections are kept
        # afterwards: opening 20 connections at start would only burn server slots.
        self._pool = psycopg2.pool.ThreadedConnectionPool(
            0, self.max_connections, connection_factory=_TimedConnection, **self._connect_kwargs)
        self._pool.minconn = cfg.pool_size
        # ThreadedConnectionPool fails at once when exhausted; the semaphore makes callers
        # wait up to pool_timeout for a free connection instead.
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def probe(self, connect_timeout=None):
        """Open a fresh connection outside the pool and run SELECT 1 (startup wait)."""
        kwargs = dict(self._connect_kwargs)
        if connect_timeout is not None:
            kwargs['connect_timeout'] = max(2, int(connect_timeout))  # libpq treats < 2 as 2
        conn = psycopg2.connect(**kwargs)
        try:
            with conn.cursor() as cur:
                cur.execute('SELECT 1')
        finally:
            conn.close()

    @contextmanager
    def connection(self):
        """Borrow a connection; it is discarded, not returned, when it broke while borrowed."""
        if not self._slots.acquire(timeout=self.cfg.pool_timeout):
            raise PoolTimeout(f'no free database connection within {self.cfg.pool_timeout:g}s '
                              f'(pool of {self.max_connections})')
        try:
            conn = self._pool.getconn()
            if conn.closed or time.monotonic() - conn.opened_at > self.cfg.pool_recycle:
                self._pool.putconn(conn, close=True)
                conn = self._pool.getconn()
            discard = False
            try:
                yield conn
            except Exception as exc:
                discard = conn.closed or is_retryable(exc)
                raise
            finally:
                self._give_back(conn, discard or conn.closed)
        finally:
            self._slots.release()

    def _give_back(self, conn, discard):
        try:
            self._pool.putconn(conn, close=discard)
        except psycopg2.pool.PoolError:  # the pool was closed meanwhile (shutdown)
            conn.close()

    def _once(self, work):
        with self.connection() as conn:
            try:
                with conn.cursor() as cur:
                    result = work(cur)
                conn.commit()
                return result
            except Exception:
                if not conn.closed:
                    try:
                        conn.rollback()
                    except psycopg2.Error:
                        pass  # the connection is broken; connection() discards it
                raise

    def run(self, work, what='query'):
        """Run work(cursor) in one transaction, retrying connection-class failures only."""
        for attempt, delay in enumerate(RETRY_DELAYS + (None,)):
            try:
                return self._once(work)
            except psycopg2.Error as exc:
                if delay is None or not is_retryable(exc) or self._stop.is_set():
                    raise
                log.warning('%s failed (%s); retry %d/%d in %.1fs',
                            what, describe(exc), attempt + 1, len(RETRY_DELAYS), delay)
                if self._stop.wait(delay):
                    raise

    def close(self):
        if not self._pool.closed:
            self._pool.closeall()
