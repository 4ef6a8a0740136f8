"""A bot's database for the backup, restore and rehearsal tests, on the session's PostgreSQL container (pg_container):
real data - pgbench tables (pgbench -i, the binary on this machine, against the container's port) plus the sample
bot's tables from examples/bot/database/migrations with rows - and the helpers that compare it.

Import a fixture into a test module to use it: from backupenv import bot_db_fixture, bot_template_fixture makes bot_db
and bot_template available.
"""

import glob
import os
import subprocess
import uuid

import psycopg2
import pytest
from ansible.module_utils.soulnear.backup_settings import make_settings
from psycopg2 import sql

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIGRATIONS = os.path.join(ROOT, 'examples', 'bot', 'database', 'migrations')


def app_connect(pg_container, db):
    conn = psycopg2.connect(host=pg_container.host, port=pg_container.port, user=db['owner'],
                            password=db['password'], dbname=db['name'], connect_timeout=5)
    conn.autocommit = True
    return conn


def fill_bot_tables(conn, users=300, events=1500):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO users (id, username) SELECT g, 'user_' || g FROM generate_series(1, %s) g", (users,))
        cur.execute("INSERT INTO events (update_id, user_id, chat_id, kind, payload) "
                    "SELECT g, 1 + g %% %s, -1000 - g %% 7, 'message', "
                    "jsonb_build_object('text', 'привет ' || g, 'n', g) FROM generate_series(1, %s) g",
                    (users, events))
        cur.execute("INSERT INTO aiogram_states (key, chat_id, user_id, state, data) "
                    "SELECT 'fsm:' || g || ':' || g, g, g, 'Form:name', '{\"step\": 2}' FROM generate_series(1, 50) g")


@pytest.fixture(scope='session', name='bot_template')
def bot_template_fixture(pg_container):
    """Filled once: an app role and a template database with pgbench tables and the bot's tables filled."""
    uid = uuid.uuid4().hex[:8]
    db = dict(name='bk_tpl_' + uid, owner='app_' + uid, password='app-secret-' + uid)
    pg_container.query(sql.SQL('CREATE ROLE {} LOGIN PASSWORD {}').format(sql.Identifier(db['owner']),
                                                                         sql.Literal(db['password'])))
    pg_container.query(sql.SQL('CREATE DATABASE {} OWNER {}').format(sql.Identifier(db['name']),
                                                                     sql.Identifier(db['owner'])))
    subprocess.run(['pgbench', '-i', '-s', '1', '-q', '-h', pg_container.host, '-p', str(pg_container.port),
                    '-U', db['owner'], db['name']], check=True, capture_output=True,
                   env=dict(os.environ, PGPASSWORD=db['password']))
    conn = app_connect(pg_container, db)
    with conn.cursor() as cur:
        for path in sorted(glob.glob(os.path.join(MIGRATIONS, '*.sql'))):
            with open(path) as handle:
                cur.execute(handle.read())
    fill_bot_tables(conn)
    conn.close()
    yield db
    pg_container.query(sql.SQL('DROP DATABASE {}').format(sql.Identifier(db['name'])))
    pg_container.query(sql.SQL('DROP ROLE {}').format(sql.Identifier(db['owner'])))


@pytest.fixture(name='bot_db')
def bot_db_fixture(pg_container, bot_template):
    """A fresh copy of the template (its own name, the same app role), dropped with its restore leftovers."""
    db = dict(bot_template, name='bk_' + uuid.uuid4().hex[:8])
    pg_container.query(sql.SQL('CREATE DATABASE {} TEMPLATE {} OWNER {}').format(
        sql.Identifier(db['name']), sql.Identifier(bot_template['name']), sql.Identifier(db['owner'])))
    yield db
    for (name,) in pg_container.query('SELECT datname FROM pg_database WHERE datname LIKE %s',
                                      (db['name'] + '%',)):
        pg_container.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s', (name,))
        pg_container.query(sql.SQL('DROP DATABASE {}').format(sql.Identifier(name)))


def settings_for(pg_container, db, backup_dir, **options):
    return make_settings(pg_container.params(db['name']), container=pg_container.name, backup_dir=str(backup_dir),
                         **options)


def table_checksums(pg_container, dbname):
    """{schema.table: (rows, md5 of every row's text in a fixed order)} for every user table."""
    tables = pg_container.query("SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
                                "('pg_catalog', 'information_schema') ORDER BY 1, 2", db=dbname)
    sums = {}
    for schema, table in tables:
        sums['%s.%s' % (schema, table)] = tuple(pg_container.query(sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {}.{} t").format(
            sql.Identifier(schema), sql.Identifier(table)), db=dbname)[0])
    return sums
