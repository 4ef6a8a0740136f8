"""The migration rehearsal (module_utils/soulnear/rehearsal.py) for a login that may not create databases - the app
role of a bot host whose database lives on another host - against a real PostgreSQL container: it rehearses in the
<db>__rehearsal database the database host keeps for it (emptied before and after), never creates one, leaves the
live database alone, and without that database refuses with the fix. The superuser's path (a scratch database
created and dropped) is test_safe_redeploy's."""

import psycopg2
import pytest
from psycopg2 import sql

from ansible.module_utils.soulnear.backup import create_backup
from ansible.module_utils.soulnear.backup_files import BackupError
from ansible.module_utils.soulnear.backup_settings import make_settings
from ansible.module_utils.soulnear.rehearsal import kept_name, rehearse
from backupenv import bot_db_fixture, bot_template_fixture  # noqa: F401 - the bot_db fixture
from backupenv import table_checksums


def app_settings(pg_container, db, backup_dir):
    """The backup code's settings as the app role (no superuser, no CREATEDB), as on a bot host."""
    conn = dict(pg_container.params(db['name']), login_user=db['owner'], login_password=db['password'])
    return make_settings(conn, container=pg_container.name, backup_dir=str(backup_dir))


def databases(pg_container):
    return sorted(r[0] for r in pg_container.query('SELECT datname FROM pg_database'))


def user_tables(pg_container, db):
    return sorted('%s.%s' % r for r in pg_container.query(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        db=db))


@pytest.fixture
def kept(pg_container, bot_db):
    """The database host's <db>__rehearsal, owned by the app role (what the postgres role makes)."""
    name = kept_name(bot_db['name'])
    pg_container.query(sql.SQL('CREATE DATABASE {} OWNER {}').format(sql.Identifier(name),
                                                                     sql.Identifier(bot_db['owner'])))
    yield name
    pg_container.query(sql.SQL('DROP DATABASE IF EXISTS {}').format(sql.Identifier(name)))


def test_a_login_without_createdb_rehearses_in_the_kept_database(pg_container, bot_db, kept, tmp_path):
    settings = app_settings(pg_container, bot_db, tmp_path)
    backup = create_backup(settings, retention=False, offsite=False)
    live_before = table_checksums(pg_container, bot_db['name'])
    # A leftover of an earlier rehearsal that was killed: emptied first.
    pg_container.query(sql.SQL('SET ROLE {}; CREATE TABLE leftover (id int)').format(
        sql.Identifier(bot_db['owner'])), db=kept)
    before = databases(pg_container)
    seen = {}

    def apply(scratch):
        conn = psycopg2.connect(host=pg_container.host, port=pg_container.port, user=bot_db['owner'],
                                password=bot_db['password'], dbname=scratch, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute('SELECT count(*) FROM users')
                seen['users'] = cur.fetchone()[0]
                cur.execute('ALTER TABLE events ADD COLUMN rehearsed int DEFAULT 1')
        finally:
            conn.close()
        seen['tables'] = user_tables(pg_container, scratch)
        seen['databases'] = databases(pg_container)

    done = rehearse(settings, backup['path'], apply)
    assert done['database'] == kept and done['migrate_seconds'] >= 0, done
    assert seen['users'] == live_before['public.users'][0] > 0
    assert 'public.leftover' not in seen['tables'] and 'public.events' in seen['tables'], seen['tables']
    assert seen['databases'] == before == databases(pg_container)  # no database created, none dropped
    assert user_tables(pg_container, kept) == []  # emptied after
    assert table_checksums(pg_container, bot_db['name']) == live_before  # the live database untouched


def test_a_bot_host_never_drops_the_scratch_database_of_another_hosts_rehearsal(pg_container, bot_db, kept,
                                                                              tmp_path):
    """The database host's rehearsal creates <db>__restore_rehearsal_<time> and restores into it; in between it has
    no session, which is what a killed run's leftover looks like to the host that holds the lock. A bot host's
    rehearsal at the same moment (its app role owns that database too) must leave it alone."""
    settings = app_settings(pg_container, bot_db, tmp_path)
    other = bot_db['name'] + '__restore_rehearsal_010101'
    pg_container.query(sql.SQL('CREATE DATABASE {} OWNER {}').format(sql.Identifier(other),
                                                                     sql.Identifier(bot_db['owner'])))
    try:
        backup = create_backup(settings, retention=False, offsite=False)  # the pre-deploy backup clears leftovers too
        assert other in databases(pg_container)
        rehearse(settings, backup['path'], lambda _scratch: None)
        assert other in databases(pg_container)
    finally:
        pg_container.query(sql.SQL('DROP DATABASE IF EXISTS {}').format(sql.Identifier(other)))


def test_a_failing_migration_on_the_kept_database_still_empties_it(pg_container, bot_db, kept, tmp_path):
    settings = app_settings(pg_container, bot_db, tmp_path)
    backup = create_backup(settings, retention=False, offsite=False)

    def apply(_scratch):
        raise RuntimeError('syntax error at or near "TABEL"')

    with pytest.raises(RuntimeError, match='TABEL'):
        rehearse(settings, backup['path'], apply)
    assert user_tables(pg_container, kept) == []


def test_without_the_kept_database_it_refuses_with_the_fix(pg_container, bot_db, tmp_path):
    settings = app_settings(pg_container, bot_db, tmp_path)
    backup = create_backup(settings, retention=False, offsite=False)
    before = databases(pg_container)
    called = []
    with pytest.raises(BackupError) as raised:
        rehearse(settings, backup['path'], called.append)
    text = str(raised.value)
    assert 'no CREATEDB' in text and kept_name(bot_db['name']) in text and 'Fix: deploy the database host' in text
    assert called == [] and databases(pg_container) == before
