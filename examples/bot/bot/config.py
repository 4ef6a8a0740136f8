"""Configuration from environment variables (the deploy writes them into a 0600 env file)."""

import os
from dataclasses import dataclass, field


class ConfigError(Exception):
    """A variable is set to something unusable; the message names it."""


def _number(name, default, kind, minimum):
    raw = os.environ.get(name, '').strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f'{name}={raw!r} is not a valid {kind.__name__}') from None
    if value < minimum:
        raise ConfigError(f'{name}={raw} must be >= {minimum}')
    return value


def _ports(name, default):
    """POSTGRES_PORT: one port, or one per host of a multi-host POSTGRES_HOST (a Patroni cluster)."""
    raw = os.environ.get(name, '').strip()
    if not raw:
        return str(default)
    parts = [p.strip() for p in raw.split(',')]
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in parts):
        raise ConfigError(f'{name}={raw!r} must be a port, or a comma-separated list of ports (one per host)')
    return ','.join(parts)


_SSLMODES = ('disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full')
_SESSION_ATTRS = ('any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby')


def _choice(name, default, choices):
    raw = os.environ.get(name, '').strip() or default
    if raw not in choices:
        raise ConfigError(f'{name}={raw!r} must be one of {", ".join(choices)}')
    return raw


@dataclass(frozen=True)
class Config:
    host: str
    port: str
    user: str
    password: str = field(repr=False)  # never in repr, hence never in a log line by accident
    dbname: str
    pool_size: int
    max_overflow: int
    pool_recycle: float
    pool_timeout: float
    connect_timeout: int
    command_timeout: float
    health_port: int
    health_monitor_interval: float
    work_interval: float
    migrations_dir: str
    db_wait_timeout: float
    # TLS to the database (an external or managed server: verify-full with the provider's CA file) and, for a
    # multi-host POSTGRES_HOST, which server to use (read-write: the primary, so a switchover is followed).
    sslmode: str = 'prefer'
    sslrootcert: str = ''
    target_session_attrs: str = 'any'

    @classmethod
    def from_env(cls):
        env = os.environ.get
        return cls(
            host=env('POSTGRES_HOST') or 'localhost',
            port=_ports('POSTGRES_PORT', 5432),
            user=env('POSTGRES_USER') or 'postgres',
            password=env('POSTGRES_PASSWORD', ''),
            dbname=env('POSTGRES_DB') or 'soul_bot',
            pool_size=_number('DB_POOL_SIZE', 20, int, 1),
            max_overflow=_number('DB_MAX_OVERFLOW', 10, int, 0),
            pool_recycle=_number('DB_POOL_RECYCLE', 3600.0, float, 0),
            pool_timeout=_number('DB_POOL_TIMEOUT', 30.0, float, 0),
            connect_timeout=_number('DB_CONNECT_TIMEOUT', 10, int, 1),
            command_timeout=_number('DB_COMMAND_TIMEOUT', 30.0, float, 0),
            health_port=_number('BOT_HEALTH_PORT', 8080, int, 0),
            health_monitor_interval=_number('BOT_HEALTH_MONITOR_INTERVAL', 60.0, float, 0.05),
            work_interval=_number('BOT_WORK_INTERVAL', 10.0, float, 0.05),
            migrations_dir=env('BOT_MIGRATIONS_DIR') or '/app/database/migrations',
            db_wait_timeout=_number('BOT_DB_WAIT_TIMEOUT', 30.0, float, 0),
            sslmode=_choice('POSTGRES_SSLMODE', 'prefer', _SSLMODES),
            sslrootcert=env('POSTGRES_SSLROOTCERT') or '',
            target_session_attrs=_choice('POSTGRES_TARGET_SESSION_ATTRS', 'any', _SESSION_ATTRS),
        )

    @property
    def address(self):
        """host:port, for messages."""
        return f'{self.host}:{self.port}'

    @property
    def target(self):
        """user@host:port/db, for messages (no password)."""
        return f'{self.user}@{self.address}/{self.dbname}'
