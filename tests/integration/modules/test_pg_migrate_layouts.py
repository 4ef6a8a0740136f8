"""Each layout pg_migrate reads (tests/fixtures/migrations/<style>/), applied to a real PostgreSQL and compared
with psql applying the same files the way the original tool does: the same schema (pg_dump --schema-only)."""

import pytest

from ansible.module_utils.soulnear.migrate import Migrator
from migration_tools import apply_like, fixture, other_db, schema  # noqa: F401 - other_db is a fixture
from pgclient import query

PLACEHOLDERS = {'PREFIX': 'app_'}  # Flyway matches placeholder names case-insensitively

CASES = {
    'plain': ('plain', ['001_init.sql', '002-events.sql', '003.rule.sql', 'V4__index.sql', '005_more.sql',
                        'R__views.sql']),
    'flyway': ('flyway', ['V1__init.sql', 'V1_1__add_email.sql', 'V2__orders.sql', 'V2.1__indexes.sql',
                          'R__views.sql']),
    'flyway-baseline': ('flyway', ['B2__accounts.sql', 'V3__sessions.sql']),
    'golang-migrate': ('golang-migrate', ['1_init.up.sql', '2_posts.up.sql', '3_posts_user_idx.up.sql',
                                          '4_status.up.sql']),
    'sqlx': ('sqlx', ['20240101000000_init.up.sql', '20240102000000_members.up.sql',
                      '20240103000000_members_email_idx.up.sql']),
    'dbmate': ('dbmate', ['20240101120000_create_users.sql', '20240102120000_users_created_at.sql',
                          '20240103120000_users_created_at_idx.sql']),
    'goose': ('goose', ['00001_create_items.sql', '00002_items_func.sql', '00003_items_idx.sql']),
    'sql-migrate': ('sql-migrate', ['1_initial.sql', '2_record.sql', '3_index.sql']),
    'prisma': ('prisma', ['20240101000000_init', '20240115093000_add_profile']),
    'diesel': ('diesel', ['00000000000000_diesel_initial_setup', '2024-01-01-000000_create_posts',
                          '2024-01-02-000000_posts_title_idx']),
}


def tool_of(style):
    return 'flyway' if style.startswith('flyway') else style


@pytest.mark.parametrize('style', sorted(CASES))
def test_same_schema_as_the_tool_itself(pg_server, pg_db, other_db, style):  # noqa: F811
    layout, names = CASES[style]
    result = Migrator(dict(pg_db, path=fixture(style), placeholders=PLACEHOLDERS)).run()
    assert result['layout'] == layout
    assert result['applied'] == names
    assert result['changed'] is True
    apply_like(tool_of(style), fixture(style), pg_server, other_db, placeholders=PLACEHOLDERS)
    ours, theirs = schema(pg_server, pg_db), schema(pg_server, other_db)
    assert ours == theirs
    again = Migrator(dict(pg_db, path=fixture(style), placeholders=PLACEHOLDERS)).run()
    assert again['changed'] is False and again['applied'] == [] and again['pending'] == []


@pytest.mark.parametrize('style', sorted(CASES))
def test_explicit_format_reads_the_same(pg_db, style):
    layout, names = CASES[style]
    check = Migrator(dict(pg_db, path=fixture(style), format=layout, placeholders=PLACEHOLDERS),
                     check_mode=True).run()
    assert [p['name'] for p in check['pending']] == names
    assert query(pg_db, "SELECT to_regclass('schema_migrations') IS NULL") == [(True,)]


def test_down_files_and_undo_files_are_reported_and_never_run(pg_db):
    result = Migrator(dict(pg_db, path=fixture('golang-migrate'))).run()
    assert result['down_files'] == ['1_init.down.sql', '2_posts.down.sql', '3_posts_user_idx.down.sql',
                                    '4_status.down.sql']
    assert query(pg_db, "SELECT count(*) FROM users") == [(1,)]  # 1_init.down.sql would have dropped it
    flyway = Migrator(dict(pg_db, path=fixture('flyway'), placeholders=PLACEHOLDERS,
                           table='flyway_run')).run()
    assert flyway['down_files'] == ['U1_1__add_email.sql']
    assert query(pg_db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'app_users'::regclass "
                        "AND attname = 'email'") == [(1,)]


def test_flyway_placeholders_callbacks_and_script_configuration(pg_db):
    result = Migrator(dict(pg_db, path=fixture('flyway'), placeholders=PLACEHOLDERS)).run()
    assert result['callbacks'] == ['beforeMigrate.sql'] + ['afterEachMigrate.sql'] * 5 + ['afterMigrate.sql']
    assert 'afterClean.sql' in result['ignored']
    assert query(pg_db, "SELECT obj_description('app_users'::regclass)") == \
        [('created by V1__init.sql in schema public',)]
    assert query(pg_db, 'SELECT script FROM migrate_log ORDER BY at, script') == [
        ('afterEachMigrate.sql',)] * 5  # ${flyway:filename} is the script's own name
    assert [p['transaction'] for p in
            Migrator(dict(pg_db, path=fixture('flyway'), placeholders=PLACEHOLDERS, table='other_table'),
                     check_mode=True).run()['pending']] == [True, True, True, False, True]
    # Nothing pending: no callback runs (a no-op run stays a no-op, changed=false).
    again = Migrator(dict(pg_db, path=fixture('flyway'), placeholders=PLACEHOLDERS)).run()
    assert again['callbacks'] == [] and again['changed'] is False


def test_flyway_baseline_file_is_used_on_a_fresh_database_only(pg_db):
    result = Migrator(dict(pg_db, path=fixture('flyway-baseline'))).run()
    assert result['applied'] == ['B2__accounts.sql', 'V3__sessions.sql']
    assert query(pg_db, 'SELECT version, name, kind FROM schema_migrations ORDER BY id') == [
        ('2', 'B2__accounts.sql', 'versioned'), ('3', 'V3__sessions.sql', 'versioned')]
    again = Migrator(dict(pg_db, path=fixture('flyway-baseline'))).run()
    assert again['changed'] is False and again['pending'] == [] and again['drift'] == []


def test_flyway_baseline_file_is_ignored_on_a_database_already_migrated(pg_db, tmp_path):
    import shutil
    path = tmp_path / 'm'
    shutil.copytree(fixture('flyway-baseline'), path)
    (path / 'B2__accounts.sql').rename(tmp_path / 'B2__accounts.sql')
    (path / 'V3__sessions.sql').rename(tmp_path / 'V3__sessions.sql')
    assert Migrator(dict(pg_db, path=str(path))).run()['applied'] == ['V1__accounts.sql', 'V2__account_email.sql']
    (tmp_path / 'B2__accounts.sql').rename(path / 'B2__accounts.sql')
    (tmp_path / 'V3__sessions.sql').rename(path / 'V3__sessions.sql')
    result = Migrator(dict(pg_db, path=str(path))).run()
    assert result['applied'] == ['V3__sessions.sql']
    assert query(pg_db, "SELECT obj_description('accounts'::regclass)") == [(None,)]
