"""The database engine from DATABASE_URL, as the bot and Alembic use it."""

import os
import ssl

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# libpq's TLS parameters: asyncpg takes an ssl argument instead, so they are turned into one.
LIBPQ_SSL = ('sslmode', 'sslrootcert', 'sslcert', 'sslkey')


def ssl_argument(query):
    """asyncpg's ssl= for libpq's sslmode/sslrootcert/sslcert/sslkey; None when nothing is asked."""
    mode = (query.get('sslmode') or '').lower()
    rootcert, cert, key = query.get('sslrootcert'), query.get('sslcert'), query.get('sslkey')
    if mode in ('', 'prefer', 'allow') and not cert:
        return mode or None
    if mode == 'disable':
        return False
    if mode not in ('', 'require', 'verify-ca', 'verify-full'):
        raise ValueError('sslmode=%s is not one of disable, allow, prefer, require, verify-ca, verify-full' % mode)
    if mode == 'require' and not rootcert:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        # verify-ca, verify-full, and require with a root certificate (libpq then verifies the chain, as verify-ca)
        context = ssl.create_default_context(cafile=rootcert or None)
        context.check_hostname = mode == 'verify-full'
    if cert:
        context.load_cert_chain(cert, key)
    return context


def database_url():
    """(URL for SQLAlchemy's asyncpg driver, connect_args) from DATABASE_URL in any of the usual spellings:
    postgres://, postgresql://, postgresql+psycopg2://, postgresql+asyncpg://, with libpq's ssl parameters."""
    raw = os.environ.get('DATABASE_URL')
    if not raw:
        raise SystemExit('DATABASE_URL is not set')
    url = make_url(raw)
    if url.get_backend_name() not in ('postgres', 'postgresql'):
        raise SystemExit('DATABASE_URL must be a PostgreSQL URL, not %s' % url.drivername)
    query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()}
    connect_args = {}
    ssl_arg = ssl_argument(query)
    if ssl_arg is not None:
        connect_args['ssl'] = ssl_arg
    url = url.set(drivername='postgresql+asyncpg').difference_update_query(LIBPQ_SSL)
    return url, connect_args


def make_engine(**options) -> AsyncEngine:
    url, connect_args = database_url()
    return create_async_engine(url, connect_args=connect_args, pool_pre_ping=True, **options)


def shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)
