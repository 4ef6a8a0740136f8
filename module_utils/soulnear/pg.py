# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection helper and retry policy shared by every SoulNear module and host command.

This file has no Ansible imports on purpose: the monitoring and backup roles
install it on the host next to the small commands they run from cron/systemd,
so the host commands and the Ansible modules use one implementation.

Retry policy: retry only what can succeed on retry -
connection failures (SQLSTATE class 08 except 08007, psycopg2
OperationalError/InterfaceError without a code), 57P01 admin_shutdown,
57P03 cannot_connect_now, 53300 too_many_connections, and 25006
read_only_sql_transaction. Never retry data, integrity, syntax, permission or
authentication errors.

25006 means "reconnect to the endpoint": behind a highly available endpoint
(a Patroni cluster, a managed service's failover) the server this connection
reached was the primary and has been demoted to a read-only replica. The
statement did not run (a read-only transaction writes nothing), so a retry on a
NEW connection - which the endpoint, libpq's target_session_attrs=read-write or
the provider's DNS sends to the new primary - is safe. Retries here always
reconnect: connect() retries opening the connection, and pg_migrate runs a
failed migration again from a new connection, never on the old one. Given the
connection the error came from, is_retryable() first asks the server
(still_writable): a migration's own START TRANSACTION READ ONLY on a primary
that still takes writes fails as written, without retries.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import time

try:
    import psycopg2
    import psycopg2.extensions

    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by the caller
    psycopg2 = None
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = exc

DEFAULT_RETRY_DELAYS = (0.5, 1.0, 2.0)
# 25006 read_only_sql_transaction: the primary was demoted (switchover/failover); reconnect (module docstring).
RETRYABLE_SQLSTATES = frozenset(('57P01', '57P03', '53300', '25006'))

# libpq reports connection-time failures without a SQLSTATE (psycopg2 leaves
# pgcode empty), so the server's message is the only way to tell a wrong
# password from a refused connection. Patterns map to the SQLSTATE the server
# would have sent; the first match wins.
_MESSAGE_SQLSTATES = (
    (re.compile(r'password authentication failed', re.I), '28P01'),
    (re.compile(r'no password supplied|fe_sendauth', re.I), '28P01'),
    (re.compile(r'no pg_hba\.conf entry', re.I), '28000'),
    (re.compile(r'role "[^"]*" does not exist', re.I), '28000'),
    (re.compile(r'is not permitted to log in', re.I), '28000'),
    (re.compile(r'database "[^"]*" does not exist', re.I), '3D000'),
    (re.compile(r'the database system is (starting up|shutting down|in recovery mode|'
                r'not yet accepting connections|not accepting connections)', re.I), '57P03'),
    (re.compile(r'too many clients|remaining connection slots are reserved', re.I), '53300'),
    (re.compile(r'terminating connection due to administrator command', re.I), '57P01'),
)

_HINTS = {
    '28P01': 'check the password (login_password / the vault_ variable it comes from)',
    '28000': 'check the user name and that pg_hba.conf allows this client',
    '3D000': 'create the database or fix login_db',
    '57P03': 'the server is starting up or shutting down; wait for it to become ready',
    '53300': 'all connection slots are in use; raise max_connections or find the client holding them '
             '(SELECT application_name, count(*) FROM pg_stat_activity GROUP BY 1)',
    '57P01': 'the server or an administrator terminated the connection',
    '25006': 'the server is read-only: a primary demoted by a switchover or failover, or an endpoint that '
             'points at a replica; point the endpoint at the primary (libpq target_session_attrs=read-write, '
             'the cluster\'s leader address) and retry',
}


def connection_argument_spec():
    """Connection options, named as community.postgresql names them."""
    return dict(
        login_user=dict(type='str', default='postgres'),
        login_password=dict(type='str', default='', no_log=True),
        login_host=dict(type='str', default=''),
        login_unix_socket=dict(type='str', default=''),
        login_port=dict(type='int', default=5432, aliases=['port']),
        login_db=dict(type='str', default='', aliases=['db']),
        connect_timeout=dict(type='int', default=10),
        ssl_mode=dict(type='str', default='prefer',
                      choices=['allow', 'disable', 'prefer', 'require', 'verify-ca', 'verify-full']),
        ca_cert=dict(type='str', aliases=['ssl_rootcert']),
        retries=dict(type='int', default=3),
    )


# TLS failures are final: a certificate that does not verify, a CA file that is missing, a name that does not
# match. libpq reports them without a SQLSTATE, like a refused connection; retrying only delays the message.
_TLS_FAILURE = re.compile(r'certificate verify failed|root certificate file .* does not exist|server certificate for '
                          r'"[^"]*" does not match|SSL error|server does not support SSL', re.I)


def tls_failure(exc):
    """True when a connection failed on TLS (certificate, CA file, name): retrying cannot help."""
    return bool(_TLS_FAILURE.search(str(exc)))


def sqlstate_of(exc):
    """Return the SQLSTATE of a psycopg2 error, inferring it for code-less connection errors."""
    code = getattr(exc, 'pgcode', None)
    if code:
        return code
    text = str(exc)
    for pattern, state in _MESSAGE_SQLSTATES:
        if pattern.search(text):
            return state
    return None


def still_writable(conn):
    """After a 25006 on conn: True when the server still takes writes, i.e. the read-only transaction was the
    statement's own (START TRANSACTION READ ONLY) and retrying cannot help; False when the server became read-only
    (a primary demoted by a switchover or failover) or the connection is gone - reconnecting can help."""
    try:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'")
            return bool(cur.fetchone()[0])
    except Exception:  # noqa: BLE001 - a connection that cannot answer is one to replace
        return False


def is_retryable(exc, conn=None):
    """True when retrying `exc` can succeed: a connection-class failure, nothing else. With the connection the
    error came from, a 25006 is retryable only when the server itself became read-only (still_writable)."""
    if not HAS_PSYCOPG2 or not isinstance(exc, psycopg2.Error):
        return False
    if getattr(exc, 'pgcode', None) == '25006' and conn is not None and not conn.closed:
        return not still_writable(conn)
    if not getattr(exc, 'pgcode', None) and tls_failure(exc):
        return False
    code = sqlstate_of(exc)
    if code:
        if code.startswith('08'):
            return code != '08007'  # transaction_resolution_unknown: a retry could apply twice
        return code in RETRYABLE_SQLSTATES
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))


def describe_error(exc):
    """One line for an operator: the server's message, its SQLSTATE and a hint when we have one."""
    message = (getattr(exc, 'pgerror', None) or str(exc)).strip()
    message = ' '.join(line.strip() for line in message.splitlines() if line.strip())
    code = sqlstate_of(exc)
    parts = [message or exc.__class__.__name__]
    if code:
        parts.append('(SQLSTATE %s)' % code)
    hint = _HINTS.get(code)
    if code is None and tls_failure(exc):
        parts.append('- TLS: check the CA file (sslrootcert / soulnear_db_ca_file) and that the server\'s certificate '
                     'names the address connected to (sslmode verify-full)')
    elif hint:
        parts.append('- ' + hint)
    elif code is None and is_retryable(exc):
        parts.append('- is the server running and reachable from here?')
    return ' '.join(parts)


class RetryPolicy:
    """How many times and how long to wait; `sleep` and `on_retry` are injectable for callers."""

    def __init__(self, retries=3, delays=DEFAULT_RETRY_DELAYS, sleep=time.sleep, on_retry=None):
        self.retries = max(0, int(retries))
        self.delays = tuple(delays) or (1.0,)
        self.sleep = sleep
        self.on_retry = on_retry

    def delay(self, attempt):
        """Backoff before retry number `attempt` (0-based); the last delay repeats."""
        return self.delays[min(attempt, len(self.delays) - 1)]

    def run(self, func, *args, **kwargs):
        """Call func, retrying retryable errors; the last error propagates unchanged."""
        attempt = 0
        while True:
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not retryable
                if attempt >= self.retries or not is_retryable(exc):
                    raise
                wait = self.delay(attempt)
                if self.on_retry:
                    self.on_retry(attempt + 1, wait, exc)
                self.sleep(wait)
                attempt += 1


class ConnectError(Exception):
    """Connecting failed for good; the message is meant for the operator."""


def connect_kwargs(params, application_name='soulnear'):
    """psycopg2.connect() keyword arguments from module-style parameters."""
    kwargs = dict(
        user=params.get('login_user') or None,
        password=params.get('login_password') or None,
        dbname=params.get('login_db') or None,
        port=params.get('login_port') or params.get('port') or 5432,
        connect_timeout=params.get('connect_timeout') or 10,
        application_name=application_name,
        sslmode=params.get('ssl_mode') or 'prefer',
    )
    host = params.get('login_unix_socket') or params.get('login_host')
    if host:
        kwargs['host'] = host
        if ',' in host:
            # A multi-host endpoint (the members of a Patroni cluster): libpq tries them in turn and keeps the one
            # that takes writes, so a switchover is followed by reconnecting (see 25006 above).
            kwargs['target_session_attrs'] = 'read-write'
    if params.get('ca_cert'):
        kwargs['sslrootcert'] = params['ca_cert']
    # TCP keepalives so a dead peer is noticed during a long migration or dump.
    kwargs.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    return dict((k, v) for k, v in kwargs.items() if v is not None)


def target_of(params):
    """Where we connect to, for messages (never includes the password)."""
    host = params.get('login_unix_socket') or params.get('login_host') or 'local socket'
    return '%s@%s:%s/%s' % (params.get('login_user') or 'postgres', host,
                            params.get('login_port') or params.get('port') or 5432,
                            params.get('login_db') or '')


def connect(params, policy=None, application_name='soulnear', autocommit=True):
    """Open a connection with the retry policy; raise ConnectError with a readable message."""
    if not HAS_PSYCOPG2:
        raise ConnectError('psycopg2 is not installed for this Python (%s); install python3-psycopg2 '
                           'or psycopg2-binary' % PSYCOPG2_IMPORT_ERROR)
    if policy is None:
        policy = RetryPolicy(retries=params.get('retries', 3))
    kwargs = connect_kwargs(params, application_name)

    def attempt():
        conn = psycopg2.connect(**kwargs)
        conn.autocommit = autocommit
        return conn

    try:
        return policy.run(attempt)
    except psycopg2.Error as exc:
        tried = policy.retries + 1 if is_retryable(exc) else 1
        raise ConnectError('could not connect to PostgreSQL as %s (%d attempt(s)): %s'
                           % (target_of(params), tried, describe_error(exc))) from None


def server_version_num(conn):
    """Integer server version, e.g. 150004."""
    return conn.server_version
