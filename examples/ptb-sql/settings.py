"""Configuration from the environment, shared by bot.py and migrate.py."""

import os
import ssl


def require(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit('%s is not set' % name)
    return value


def ssl_option(mode, rootcert):
    """libpq's sslmode/sslrootcert as asyncpg's ssl argument (asyncpg does not read libpq's names here)."""
    mode = (mode or '').strip().lower()
    if mode in ('', 'prefer', 'allow'):
        return mode or None          # asyncpg's own default is prefer
    if mode == 'disable':
        return False
    if mode not in ('require', 'verify-ca', 'verify-full'):
        raise SystemExit('DB_SSLMODE=%s is not one of disable, allow, prefer, require, verify-ca, verify-full' % mode)
    if mode == 'require' and not rootcert:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # verify-ca, verify-full, and require with a root certificate (libpq then verifies the chain, as verify-ca)
    context = ssl.create_default_context(cafile=rootcert or None)
    context.check_hostname = mode == 'verify-full'
    return context


def db_options():
    """Keyword arguments for asyncpg.connect()/create_pool()."""
    return {
        'host': os.environ.get('DB_HOST', 'localhost'),
        'port': int(os.environ.get('DB_PORT', '5432')),
        'database': require('DB_NAME'),
        'user': require('DB_USER'),
        'password': os.environ.get('DB_PASSWORD') or None,
        'ssl': ssl_option(os.environ.get('DB_SSLMODE'), os.environ.get('DB_SSLROOTCERT')),
        'timeout': float(os.environ.get('DB_CONNECT_TIMEOUT', '10')),
    }
