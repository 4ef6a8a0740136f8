"""Startup sequence, signal handling and shutdown.

Exit codes: 0 after SIGTERM/SIGINT, 1 when the database is unusable (unreachable,
wrong credentials, tables missing, migrations pending), 2 for a bad configuration.
"""

import logging
import signal
import sys
import threading
import time

import psycopg2

from .config import Config, ConfigError
from .db import RETRY_DELAYS, Database, describe, is_retryable
from .health import HealthMonitor, Status, start_http_server
from .schema import StartupCheckFailed, check_migrations, verify_tables
from .worker import Worker

log = logging.getLogger('bot')


class _RedactingFormatter(logging.Formatter):
    """Masks the database password wherever it would appear, tracebacks included."""

    def __init__(self, fmt):
        super().__init__(fmt)
        self.secret = None

    def format(self, record):
        text = super().format(record)
        return text.replace(self.secret, '***') if self.secret else text


def _setup_logging():
    handler = logging.StreamHandler(sys.stdout)
    formatter = _RedactingFormatter('%(asctime)s %(levelname)s %(name)s: %(message)s')
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return formatter


def wait_for_database(db, cfg, stop):
    """Retry connection failures until BOT_DB_WAIT_TIMEOUT; True when connected."""
    deadline = time.monotonic() + cfg.db_wait_timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            db.probe(connect_timeout=min(cfg.connect_timeout, max(deadline - time.monotonic(), 0)))
            return True
        except psycopg2.Error as exc:
            if not is_retryable(exc):
                log.error('Cannot connect to PostgreSQL at %s as %s (not retried): %s - check POSTGRES_USER, '
                          'POSTGRES_PASSWORD and POSTGRES_DB', cfg.address, cfg.user, describe(exc))
                return False
            delay = RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)]
            left = deadline - time.monotonic()
            if left <= 0:
                log.error('Database at %s did not become available within %gs (%d attempt(s)): %s - is PostgreSQL '
                          'running and reachable (POSTGRES_HOST/POSTGRES_PORT)?',
                          cfg.address, cfg.db_wait_timeout, attempt, describe(exc))
                return False
            log.warning('Waiting for database at %s (attempt %d): %s', cfg.address, attempt, describe(exc))
            if stop.wait(min(delay, left)):
                return False


def main():
    formatter = _setup_logging()
    try:
        cfg = Config.from_env()
    except ConfigError as exc:
        log.error('Invalid configuration: %s', exc)
        return 2
    if len(cfg.password) >= 4:  # masking a 1-3 character "password" would garble every line
        formatter.secret = cfg.password

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info('Received %s, shutting down', signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log.info('Starting SoulNear example bot: database %s, pool %d+%d, work every %gs',
             cfg.target, cfg.pool_size, cfg.max_overflow, cfg.work_interval)
    status = Status(cfg.work_interval)
    try:
        # Up before the database, so /health answers 503 "starting" instead of refusing connections.
        server = start_http_server(cfg.health_port, status)
    except OSError as exc:
        log.error('Cannot serve /health on 0.0.0.0:%d: %s (BOT_HEALTH_PORT)', cfg.health_port, exc)
        return 1
    db = Database(cfg, stop=stop)
    monitor = None
    try:
        if not wait_for_database(db, cfg, stop):
            return 0 if stop.is_set() else 1
        log.info('Database connection successful!')
        verify_tables(db)
        log.info('Database tables created/verified')
        applied = check_migrations(db, cfg.migrations_dir)
        log.info('All migrations up to date (%d applied)', applied)
        monitor = HealthMonitor(db, status, cfg.health_monitor_interval, stop)
        monitor.start()
        status.set_phase('running')
        Worker(db, status, cfg.work_interval, stop).run()
    except StartupCheckFailed as exc:
        log.error('%s', exc)
        return 1
    except psycopg2.Error as exc:
        log.error('Database error during startup checks at %s: %s', cfg.address, describe(exc))
        return 1
    finally:
        stop.set()
        status.set_phase('stopping')
        server.shutdown()
        server.server_close()
        if monitor is not None:
            monitor.join(timeout=5)
        db.close()
    log.info('Stopped after %d processed update(s)', status.work_done)
    return 0
