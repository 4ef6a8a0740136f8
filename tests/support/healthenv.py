"""Helpers and fixtures of the health tests (test_checks, test_monitor, test_diagnose): an app role and database
as the postgres role sets them up, a PostgreSQL container of their own, throwaway containers, and the
configuration files the soulnear and monitoring roles write for the soulnear-health command.

Import a fixture into a test module to use it: from healthenv import app_db_fixture makes app_db available.
"""

import json
import os
import time
import uuid

import psycopg2
import pytest
from ansible.module_utils.soulnear.migrate import Migrator
from pgcluster import free_port
from pgcontainer import PgContainer, docker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIGRATIONS = os.path.join(ROOT, 'examples', 'bot', 'database', 'migrations')


def app_database(server, params):
    """An app role with a password that owns the database of `params` (as the postgres role sets it up)."""
    user = 'app_' + uuid.uuid4().hex[:8]
    password = 'app-secret-' + uuid.uuid4().hex[:6]
    server.query("CREATE ROLE %s LOGIN PASSWORD '%s'" % (user, password))
    server.query('ALTER DATABASE %s OWNER TO %s' % (params['login_db'], user))
    return dict(params, login_user=user, login_password=password)


def migrate(params, path=MIGRATIONS):
    return Migrator(dict(params, path=str(path))).run()


def execute(params, sql):
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user=params['login_user'],
                            password=params['login_password'], dbname=params['login_db'])
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()




def inspect(name, fmt):
    return docker('inspect', '--format', fmt, name).stdout.strip()


def wait_healthy(name, timeout=30):
    deadline = time.time() + timeout
    while inspect(name, '{{.State.Health.Status}}') != 'healthy':
        assert time.time() < deadline, 'container %s did not become healthy' % name
        time.sleep(0.3)


@pytest.fixture(name='app_db')
def app_db_fixture(pg_server, pg_db):
    params = app_database(pg_server, pg_db)
    migrate(params)
    return params


@pytest.fixture(scope='module', name='own_pg')
def own_pg_fixture():
    """A PostgreSQL container on a fixed host port (a restart keeps the port), for this module only: the monitor
    stops and restarts it, and the diagnostics read its log."""
    port = free_port()
    container = PgContainer(extra_args=['-p', '127.0.0.1:%d:5432' % port, '--restart', 'unless-stopped'])
    container.start()
    container.port = port
    wait_healthy(container.name)
    yield container
    container.remove()


@pytest.fixture(name='throwaway')
def throwaway_fixture():
    """Creates containers from the local images; removes them afterwards."""
    names = []

    def create(*args, image='soulnear/debian:bookworm', command=('sleep', 'infinity')):
        name = 'soulnear-test-' + uuid.uuid4().hex[:8]
        docker('run', '-d', '--name', name, *args, image, *command)
        names.append(name)
        return name
    yield create
    for name in names:
        docker('rm', '-f', name, check=False)




# -- the host command's configuration ------------------------------------------------------------------

def host_config(tmp_path, db_params, db_container=None, bot_container=None, **monitoring):
    """soulnear.json and monitoring.json as the soulnear and monitoring roles write them."""
    alerts = tmp_path / 'alerts.txt'
    base = dict(name='soulnear', log_dir=str(tmp_path / 'log'), backup_dir=str(tmp_path / 'backups'),
                db=dict(container=db_container, volume=None, host=db_params['login_host'],
                        port=db_params['login_port'], name=db_params['login_db'], superuser='postgres',
                        superuser_password='', app_user=db_params['login_user'],
                        app_password=db_params['login_password']),
                bot=dict(container=bot_container),
                alert=dict(command='{ echo "== $SOULNEAR_ALERT_SUBJECT"; cat; echo; } >> %s' % alerts,
                           webhook_url='', telegram_token='', telegram_chat_id=''))
    mon = dict(migrations_dir=MIGRATIONS, state_file=str(tmp_path / 'state' / 'health-state.json'), retries=0,
               connect_timeout=3, recovery_wait_seconds=90, check_bot=bool(bot_container))
    mon.update(monitoring)
    (tmp_path / 'soulnear.json').write_text(json.dumps(base))
    (tmp_path / 'monitoring.json').write_text(json.dumps(mon))
    return ['--config', str(tmp_path / 'soulnear.json'), '--monitoring-config', str(tmp_path / 'monitoring.json')]


def log_lines(tmp_path, name='health.log'):
    path = tmp_path / 'log' / name
    return path.read_text().splitlines() if path.exists() else []


def alerts(tmp_path):
    path = tmp_path / 'alerts.txt'
    return path.read_text() if path.exists() else ''


def container_db(own_pg):
    """A fresh database in the module's container with an app role that owns it."""
    name = 'db_' + uuid.uuid4().hex[:8]
    own_pg.query('CREATE DATABASE %s' % name)
    params = own_pg.params(db=name)
    user, password = 'app_' + uuid.uuid4().hex[:8], 'app-' + uuid.uuid4().hex[:8]
    own_pg.query("CREATE ROLE %s LOGIN PASSWORD '%s'" % (user, password))
    own_pg.query('ALTER DATABASE %s OWNER TO %s' % (name, user))
    return dict(params, login_user=user, login_password=password)
