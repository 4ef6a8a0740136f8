"""Taking over a database another tool migrated: for each tool, its history table is created with the tool's own
DDL and rows, the first migrations are applied the way the tool applies them, then pg_migrate takes over. The
other tool's table is never altered, the result equals the tool applying everything, and a refused takeover
changes nothing."""

import shutil

import pytest

from ansible.module_utils.soulnear.checks import run_checks
from ansible.module_utils.soulnear.migrate import Migrator, status
from ansible.module_utils.soulnear.migration_files import MigrationError
from migration_tools import (apply_like, fixture, migrations_of, other_db, record_history,  # noqa: F401
                             schema, table_dump)
from pgclient import query

PLACEHOLDERS = {'prefix': 'app_'}
# tool -> (fixture, history table, pg_migrate's table: its own when the tool's is schema_migrations)
TOOLS = {
    'flyway': ('flyway', 'flyway_schema_history', 'schema_migrations'),
    'golang-migrate': ('golang-migrate', 'schema_migrations', 'pg_schema_migrations'),
    'dbmate': ('dbmate', 'schema_migrations', 'pg_schema_migrations'),
    'goose': ('goose', 'goose_db_version', 'schema_migrations'),
    'sql-migrate': ('sql-migrate', 'gorp_migrations', 'schema_migrations'),
    'sqlx': ('sqlx', '_sqlx_migrations', 'schema_migrations'),
    'prisma': ('prisma', '_prisma_migrations', 'schema_migrations'),
    'diesel': ('diesel', '__diesel_schema_migrations', 'schema_migrations'),
}


def names_of(tool, style):
    if tool == 'flyway':
        return ['V1__init.sql', 'V1_1__add_email.sql', 'V2__orders.sql', 'V2.1__indexes.sql']
    return [name for name, _ in migrations_of(tool, fixture(style))]


def migrate(params, path, **options):
    return Migrator(dict(params, path=path, placeholders=PLACEHOLDERS, **options)).run()


def exists(params, table):
    return query(params, 'SELECT to_regclass(%s) IS NOT NULL', (table,))[0][0]


@pytest.mark.parametrize('tool', sorted(TOOLS))
def test_takeover_records_what_the_tool_applied_and_runs_the_rest(pg_server, pg_db, other_db, tool):  # noqa: F811
    style, history, table = TOOLS[tool]
    names = names_of(tool, style)
    done = apply_like(tool, fixture(style), pg_server, pg_db, count=2, placeholders=PLACEHOLDERS)
    assert done == names[:2]
    record_history(tool, pg_server, pg_db, done, fixture(style))
    before = table_dump(pg_server, pg_db, history)

    check = Migrator(dict(pg_db, path=fixture(style), placeholders=PLACEHOLDERS, table=table, takeover=tool),
                     check_mode=True).run()
    assert check['taken_over'] == names[:2]
    assert [p['name'] for p in check['pending']][:len(names) - 2] == names[2:]
    assert not exists(pg_db, table)  # check mode records nothing

    result = migrate(pg_db, fixture(style), table=table, takeover=tool)
    assert result['taken_over'] == names[:2]
    expected = names[2:] + (['R__views.sql'] if tool == 'flyway' else [])
    assert result['applied'] == expected
    assert table_dump(pg_server, pg_db, history) == before  # the other tool's table is never altered
    rows = query(pg_db, 'SELECT name, kind, applied_by LIKE %s FROM ' + table + ' ORDER BY id',
                 ('%%takeover from ' + tool + '%%',))
    assert rows[:2] == [(n, 'baseline', True) for n in names[:2]]
    assert [r[1] for r in rows[2:]] == ['versioned'] * (len(names) - 2) + (['repeatable'] if tool == 'flyway'
                                                                            else [])

    apply_like(tool, fixture(style), pg_server, other_db, placeholders=PLACEHOLDERS)
    assert schema(pg_server, pg_db) == schema(pg_server, other_db)

    again = migrate(pg_db, fixture(style), table=table, takeover=tool)
    assert again['changed'] is False and again['taken_over'] == [] and again['applied'] == []


def test_takeover_of_a_flyway_history_with_a_baseline_marker_and_repeatables(pg_server, pg_db):
    apply_like('flyway', fixture('flyway'), pg_server, pg_db, placeholders=PLACEHOLDERS)
    record_history('flyway', pg_server, pg_db, ['V1__init.sql', 'V1_1__add_email.sql', 'V2__orders.sql',
                                                'V2.1__indexes.sql', 'R__views.sql'], fixture('flyway'))
    # Flyway baselined at 1.1 first ("<< Flyway Baseline >>"): everything up to 1.1 counts as applied.
    query(pg_db, "DELETE FROM flyway_schema_history WHERE version IN ('1', '1.1');"
                 "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, "
                 "installed_by, execution_time, success) VALUES (0, '1.1', '<< Flyway Baseline >>', 'BASELINE', "
                 "'<< Flyway Baseline >>', 'postgres', 0, true)")
    result = migrate(pg_db, fixture('flyway'), takeover='flyway')
    assert result['taken_over'] == ['V1__init.sql', 'V1_1__add_email.sql', 'V2__orders.sql', 'V2.1__indexes.sql']
    # Flyway's checksums are not compared; a repeatable runs once after the takeover.
    assert result['applied'] == ['R__views.sql']


def test_takeover_of_an_older_pg_migrate_table(pg_server, pg_db):
    apply_like('plain', fixture('plain'), pg_server, pg_db, count=2)
    query(pg_db, "CREATE TABLE old_migrations (version varchar(255) PRIMARY KEY, applied_at timestamp DEFAULT now());"
                 "INSERT INTO old_migrations (version) VALUES ('001'), ('002')")
    before = table_dump(pg_server, pg_db, 'old_migrations')
    result = migrate(pg_db, fixture('plain'), takeover='pg_migrate', takeover_table='old_migrations')
    assert result['taken_over'] == ['001_init.sql', '002-events.sql']
    assert result['applied'] == ['003.rule.sql', 'V4__index.sql', '005_more.sql', 'R__views.sql']
    assert table_dump(pg_server, pg_db, 'old_migrations') == before


def test_golang_migrate_dirty_refuses_and_changes_nothing(pg_server, pg_db):
    apply_like('golang-migrate', fixture('golang-migrate'), pg_server, pg_db, count=2)
    record_history('golang-migrate', pg_server, pg_db, ['1_init.up.sql', '2_posts.up.sql'], fixture('golang-migrate'))
    query(pg_db, 'UPDATE schema_migrations SET dirty = true')
    before = (schema(pg_server, pg_db, exclude=()), table_dump(pg_server, pg_db, 'schema_migrations'))
    with pytest.raises(MigrationError) as info:
        migrate(pg_db, fixture('golang-migrate'), table='pg_schema_migrations', takeover='golang-migrate')
    message = str(info.value)
    assert 'dirty' in message and 'migrate force 2' in message and 'nothing was changed' in message
    assert info.value.result['changed'] is False
    assert not exists(pg_db, 'pg_schema_migrations')
    assert (schema(pg_server, pg_db, exclude=()), table_dump(pg_server, pg_db, 'schema_migrations')) == before


@pytest.mark.parametrize('tool,breakage,words', [
    ('flyway', "UPDATE flyway_schema_history SET success = false WHERE version = '1.1'", 'flyway repair'),
    ('sqlx', 'UPDATE _sqlx_migrations SET success = false WHERE version = 20240102000000', 'dirty'),
    ('prisma', "UPDATE _prisma_migrations SET finished_at = NULL WHERE migration_name = '20240115093000_add_profile'",
     'prisma migrate resolve'),
])
def test_a_failed_migration_in_the_history_refuses_the_takeover(pg_server, pg_db, tool, breakage, words):
    style, history, table = TOOLS[tool]
    done = apply_like(tool, fixture(style), pg_server, pg_db, count=2, placeholders=PLACEHOLDERS)
    record_history(tool, pg_server, pg_db, done, fixture(style))
    query(pg_db, breakage)
    with pytest.raises(MigrationError, match=words) as info:
        migrate(pg_db, fixture(style), table=table, takeover=tool)
    assert info.value.result['changed'] is False
    assert not exists(pg_db, table)


def test_takeover_without_the_history_table_refuses(pg_db):
    with pytest.raises(MigrationError, match='flyway_schema_history, which does not exist.*takeover_table'):
        migrate(pg_db, fixture('flyway'), takeover='flyway')
    assert not exists(pg_db, 'schema_migrations') and not exists(pg_db, 'app_users')


def test_takeover_into_the_tools_own_table_refuses(pg_server, pg_db):
    record_history('dbmate', pg_server, pg_db, [], fixture('dbmate'))
    with pytest.raises(MigrationError) as info:
        migrate(pg_db, fixture('dbmate'), takeover='dbmate')
    assert 'table: pg_schema_migrations' in str(info.value) and 'takeover: dbmate' in str(info.value)
    assert query(pg_db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'schema_migrations'::regclass "
                        "AND attnum > 0") == [(1,)]


def test_refused_when_the_tool_ran_again_after_the_takeover(pg_server, pg_db):
    names = names_of('dbmate', 'dbmate')
    apply_like('dbmate', fixture('dbmate'), pg_server, pg_db, count=1)
    record_history('dbmate', pg_server, pg_db, names[:1], fixture('dbmate'))
    first = migrate(pg_db, fixture('dbmate'), table='pg_schema_migrations', takeover='dbmate',
                    target='20240102120000')
    assert first['taken_over'] == names[:1] and first['applied'] == names[1:2]
    # dbmate applies the third file itself.
    apply_like('dbmate', fixture('dbmate'), pg_server, pg_db, start=2, count=3)
    query(pg_db, "INSERT INTO schema_migrations (version) VALUES ('20240103120000')")
    with pytest.raises(MigrationError, match='20240103120000_users_created_at_idx.sql.*dbmate ran after the '
                                             'takeover'):
        migrate(pg_db, fixture('dbmate'), table='pg_schema_migrations', takeover='dbmate')


# -- an existing schema_migrations: pg_migrate's own older table, or another tool's ---------------------------
def test_golang_migrate_schema_migrations_is_not_adopted(pg_server, pg_db):
    record_history('golang-migrate', pg_server, pg_db, ['1_init.up.sql'], fixture('golang-migrate'))
    before = table_dump(pg_server, pg_db, 'schema_migrations')
    for check_mode in (True, False):
        with pytest.raises(MigrationError) as info:
            Migrator(dict(pg_db, path=fixture('golang-migrate')), check_mode=check_mode).run()
        message = str(info.value)
        assert 'belongs to golang-migrate' in message and 'dirty' in message
        assert 'table: pg_schema_migrations' in message and 'takeover: golang-migrate' in message
    assert table_dump(pg_server, pg_db, 'schema_migrations') == before
    with pytest.raises(MigrationError, match='belongs to golang-migrate'):
        status(pg_db, fixture('golang-migrate'))  # the health check says the same


def test_the_health_check_reads_the_deploys_table_after_a_golang_migrate_takeover(pg_server, pg_db):
    """The deploy took over with table: pg_schema_migrations (soulnear_migrations_table); the health check and the
    monitor read that table too (db_health migrations_table / migrations_format) and pass. Reading golang-migrate's
    schema_migrations instead fails with pg_migrate's own advice, not a guess about the directory."""
    apply_like('golang-migrate', fixture('golang-migrate'), pg_server, pg_db, count=1)
    record_history('golang-migrate', pg_server, pg_db, ['1_init.up.sql'], fixture('golang-migrate'))
    migrate(pg_db, fixture('golang-migrate'), table='pg_schema_migrations', takeover='golang-migrate')
    options = dict(pg_db, required_tables=['schema_migrations'], migrations_path=fixture('golang-migrate'))
    report = run_checks(dict(options, migrations_table='pg_schema_migrations', migrations_format='golang-migrate'))
    assert report['checks']['migrations']['ok'], report['checks']['migrations']
    report = run_checks(options)
    message = report['checks']['migrations']['message']
    assert not report['checks']['migrations']['ok'] and 'belongs to golang-migrate' in message, message
    assert 'table: pg_schema_migrations' in message and 'migrations_path' not in message


def test_dbmate_schema_migrations_is_not_adopted(pg_server, pg_db):
    record_history('dbmate', pg_server, pg_db, ['20240101120000_create_users.sql'], fixture('dbmate'))
    before = table_dump(pg_server, pg_db, 'schema_migrations')
    with pytest.raises(MigrationError) as info:
        migrate(pg_db, fixture('dbmate'))
    assert 'belongs to dbmate' in str(info.value) and 'takeover: dbmate' in str(info.value)
    assert table_dump(pg_server, pg_db, 'schema_migrations') == before


def test_the_bots_own_single_column_table_is_still_adopted(pg_server, pg_db, tmp_path):
    # The same shape as dbmate's, but the directory holds plain files: pg_migrate's own older table.
    path = tmp_path / 'plain'
    shutil.copytree(fixture('plain'), path)
    apply_like('plain', str(path), pg_server, pg_db, count=2)
    query(pg_db, "CREATE TABLE schema_migrations (version text PRIMARY KEY); "
                 "INSERT INTO schema_migrations VALUES ('1'), ('2')")
    # Its primary key cannot hold a repeatable (no version): refused before anything runs.
    with pytest.raises(MigrationError, match='R__views.sql cannot be recorded') as info:
        migrate(pg_db, str(path))
    assert info.value.result['changed'] is False and not exists(pg_db, 'audit')
    (path / 'R__views.sql').unlink()
    result = migrate(pg_db, str(path))
    assert result['applied'] == ['003.rule.sql', 'V4__index.sql', '005_more.sql']
    assert any('adopted' in note for note in result['notes'])
    assert query(pg_db, "SELECT version, name FROM schema_migrations WHERE version IN ('1', '2') ORDER BY 1") == \
        [('1', '001_init.sql'), ('2', '002-events.sql')]


def test_a_bots_own_schema_migrations_with_other_columns_is_refused_never_written(pg_server, pg_db, tmp_path):
    """A bot whose own migration script keeps schema_migrations(filename, applied) (examples/ptb-sql): adopting it
    added NOT NULL columns under the bot's inserts (issue 20). Refused before anything runs, in check mode too and in
    the health check, naming soulnear_migrations_table; with a table of its own pg_migrate works beside it."""
    query(pg_db, 'CREATE TABLE schema_migrations (filename text PRIMARY KEY, applied timestamptz NOT NULL DEFAULT '
                 "now()); INSERT INTO schema_migrations (filename) VALUES ('001_users.sql')")
    before = table_dump(pg_server, pg_db, 'schema_migrations')
    for check_mode in (True, False):
        with pytest.raises(MigrationError) as info:
            Migrator(dict(pg_db, path=fixture('plain')), check_mode=check_mode).run()
        message = str(info.value)
        assert 'is not pg_migrate\'s' in message and 'columns pg_migrate never writes (applied)' in message
        assert 'soulnear_migrations_table: pg_schema_migrations' in message and 'nothing was changed' in message
        assert info.value.result['changed'] is False
    with pytest.raises(MigrationError, match='is not pg_migrate'):
        status(pg_db, fixture('plain'))
    assert table_dump(pg_server, pg_db, 'schema_migrations') == before
    result = migrate(pg_db, fixture('plain'), table='pg_schema_migrations')
    assert result['applied'] and table_dump(pg_server, pg_db, 'schema_migrations') == before
    query(pg_db, "INSERT INTO schema_migrations (filename) VALUES ('002_messages.sql')")  # the bot's script still works
