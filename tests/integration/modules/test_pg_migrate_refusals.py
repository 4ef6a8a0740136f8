"""pg_migrate's refusals before anything runs (issue 23, item 6 and pg_migrate's part of item 4), against a real
PostgreSQL and real directories of the other tools (tests/fixtures/migrations, tests/support/migration_tools.py):

- a database another tool migrated, run without takeover: refused naming takeover and the tool's table;
- a Prisma (or Diesel) folder without its migration file; versions that are equal once normalised (1 / 1.0 / 01);
- one refusal listing every problem of a directory, each with its fix;
- bad option values (AnsibleModule in this process, and ansible-playbook): each named, no traceback, nothing
  changed.

Every refusal is checked in check mode and in a real run, with the whole schema (the other tool's table included)
and that table's rows compared before and after.
"""

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil

import pytest

from ansible.module_utils.soulnear.migrate import Migrator, status
from ansible.module_utils.soulnear.migration_files import MigrationError
from ansible.module_utils.testing import patch_module_args
from ansiblerun import ROOT, run_module
from migration_tools import apply_like, fixture, record_history, schema, table_dump
from pgclient import query

PLACEHOLDERS = {'prefix': 'app_'}
# tool -> (its history table, pg_migrate's table in a deployment: its own name where the tool's is schema_migrations)
TOOLS = {
    'flyway': ('flyway_schema_history', 'schema_migrations'),
    'golang-migrate': ('schema_migrations', 'pg_schema_migrations'),
    'dbmate': ('schema_migrations', 'pg_schema_migrations'),
    'goose': ('goose_db_version', 'schema_migrations'),
    'sql-migrate': ('gorp_migrations', 'schema_migrations'),
    'sqlx': ('_sqlx_migrations', 'schema_migrations'),
    'prisma': ('_prisma_migrations', 'schema_migrations'),
    'diesel': ('__diesel_schema_migrations', 'schema_migrations'),
}


def write(directory, files):
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return directory


def unreadable(path):
    """A file the module cannot read: mode 000, or, for root (who reads any mode), a link to /proc/self/mem, which
    the kernel refuses to read at offset 0 (EIO)."""
    if os.geteuid() == 0:
        os.symlink('/proc/self/mem', str(path))
    else:
        path.write_text('SELECT 1;')
        path.chmod(0)


def state(server, params, *tables):
    """The whole schema (every table, the tools' own included) and the rows of the tables named."""
    return schema(server, params, exclude=()), [table_dump(server, params, t) for t in tables]


def refused(params, path, **options):
    """The refusal of a check-mode run and of a real run (the same words); both change nothing."""
    messages = []
    for check_mode in (True, False):
        with pytest.raises(MigrationError) as info:
            Migrator(dict(params, path=str(path), **options), check_mode=check_mode).run()
        assert info.value.result['changed'] is False and info.value.result['applied'] == []
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    return messages[0]


def exists(params, name):
    return query(params, 'SELECT to_regclass(%s) IS NOT NULL', (name,))[0][0]


# -- another tool's history, no takeover ---------------------------------------------------------------------------
@pytest.mark.parametrize('tool', sorted(TOOLS))
def test_a_database_another_tool_migrated_is_refused_without_takeover(pg_server, pg_db, tool):
    history, table = TOOLS[tool]
    done = apply_like(tool, fixture(tool), pg_server, pg_db, count=2, placeholders=PLACEHOLDERS)
    record_history(tool, pg_server, pg_db, done, fixture(tool))
    before = state(pg_server, pg_db, history)

    message = refused(pg_db, fixture(tool), table=table, placeholders=PLACEHOLDERS)
    assert 'public.%s is ' % history in message and 'set takeover: %s (' % tool in message, message
    assert 'pg_migrate has recorded nothing in public.%s yet' % table in message and 'nothing was changed' in message
    assert 'Fix the file' not in message
    assert state(pg_server, pg_db, history) == before and not exists(pg_db, table)
    # The health check (db_health, the monitor) says the same instead of listing the history as pending.
    with pytest.raises(MigrationError, match='set takeover: %s' % tool):
        status(pg_db, fixture(tool), table)

    # With takeover it runs; afterwards pg_migrate's table records the takeover, and a run without takeover is
    # no first run: not refused.
    taken = Migrator(dict(pg_db, path=fixture(tool), table=table, placeholders=PLACEHOLDERS, takeover=tool)).run()
    assert taken['taken_over'] == done
    again = Migrator(dict(pg_db, path=fixture(tool), table=table, placeholders=PLACEHOLDERS)).run()
    assert again['changed'] is False and again['applied'] == []


def test_an_idempotent_flyway_history_is_refused_not_run_twice(pg_server, pg_db, tmp_path):
    """The report: CREATE TABLE IF NOT EXISTS + a seed 'succeeded' and the seed's rows were there twice."""
    path = write(tmp_path / 'db', {
        'V1__plans.sql': 'CREATE TABLE IF NOT EXISTS plans (name text, price int);\n'
                         "INSERT INTO plans VALUES ('free', 0), ('pro', 5);\n",
        'V2__plan_index.sql': 'CREATE INDEX IF NOT EXISTS plans_name ON plans (name);\n'})
    done = apply_like('flyway', str(path), pg_server, pg_db)
    record_history('flyway', pg_server, pg_db, done, str(path))
    before = state(pg_server, pg_db, 'flyway_schema_history', 'plans')
    message = refused(pg_db, path)
    assert message.startswith('Flyway migrated this database, and pg_migrate has recorded nothing in '
                              'public.schema_migrations yet'), message
    assert "public.flyway_schema_history is Flyway's history (its installed_rank and script columns are Flyway's; " \
           '2 row(s)): set takeover: flyway' in message, message
    assert state(pg_server, pg_db, 'flyway_schema_history', 'plans') == before
    assert query(pg_db, 'SELECT count(*) FROM plans') == [(2,)]


def test_a_history_outside_the_search_path_names_takeover_table(pg_server, pg_db):
    done = apply_like('goose', fixture('goose'), pg_server, pg_db, count=1)
    record_history('goose', pg_server, pg_db, done, fixture('goose'))
    query(pg_db, 'CREATE SCHEMA ops; ALTER TABLE goose_db_version SET SCHEMA ops')
    before = state(pg_server, pg_db, 'ops.goose_db_version')
    message = refused(pg_db, fixture('goose'))
    assert 'set takeover: goose, takeover_table: ops.goose_db_version' in message, message
    assert state(pg_server, pg_db, 'ops.goose_db_version') == before
    result = Migrator(dict(pg_db, path=fixture('goose'), takeover='goose',
                           takeover_table='ops.goose_db_version')).run()
    assert result['taken_over'] == done and result['applied']


def test_two_histories_are_named_in_one_refusal(pg_server, pg_db):
    record_history('flyway', pg_server, pg_db, [], fixture('flyway'))
    record_history('goose', pg_server, pg_db, [], fixture('goose'))
    message = refused(pg_db, fixture('goose'))
    assert message.startswith('Flyway and goose migrated this database'), message
    assert 'set takeover: flyway' in message and 'set takeover: goose' in message


def test_pg_migrates_own_tables_of_the_same_names_are_no_other_tools_history(pg_server, pg_db, tmp_path):
    """schema_migrations is pg_migrate's default name too: pg_migrate's own older table under it (next to plain
    files), or a bot's own script's table, is not another tool's history; the same single column next to the dbmate
    files whose versions it holds is dbmate's."""
    query(pg_db, "CREATE TABLE schema_migrations (version text PRIMARY KEY); INSERT INTO schema_migrations VALUES "
                 "('1'), ('2')")
    plain = Migrator(dict(pg_db, path=fixture('plain'), table='pg_schema_migrations')).run()
    assert plain['applied'][0] == '001_init.sql'
    query(pg_db, 'DROP TABLE schema_migrations')
    record_history('dbmate', pg_server, pg_db, ['20240101120000_create_users.sql'], fixture('dbmate'))
    message = refused(pg_db, fixture('dbmate'), table='dbmate_runs')
    assert "public.schema_migrations is dbmate's history" in message and 'set takeover: dbmate' in message


# -- a directory's problems ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('tool,folder,left', [
    ('prisma', '20240201000000_add_orders', {'README.md': 'orders'}),
    ('diesel', '2024-02-01-000000_add_orders', {'down.sql': 'DROP TABLE orders;'}),
])
def test_a_migration_folder_without_its_file_is_refused(pg_server, pg_db, tmp_path, tool, folder, left):
    path = tmp_path / tool
    shutil.copytree(fixture(tool), path)
    write(path / folder, left)
    main = 'migration.sql' if tool == 'prisma' else 'up.sql'
    before = state(pg_server, pg_db)
    message = refused(pg_db, path)
    assert 'folder %s has no %s, so pg_migrate would skip it' % (folder, main) in message, message
    assert ('P3015' in message) == (tool == 'prisma') and 'Restore its %s, or delete the folder' % main in message
    assert state(pg_server, pg_db) == before and not exists(pg_db, 'schema_migrations')
    # Not only on a first run: a folder that loses its file after the others ran is refused as well.
    shutil.rmtree(str(path / folder))
    assert Migrator(dict(pg_db, path=str(path))).run()['applied']
    write(path / folder, left)
    before = state(pg_server, pg_db, 'schema_migrations')
    assert 'folder %s has no %s' % (folder, main) in refused(pg_db, path)
    assert state(pg_server, pg_db, 'schema_migrations') == before


def test_a_prisma_directory_whose_only_folder_lost_its_file(pg_db, tmp_path):
    path = write(tmp_path / 'prisma', {'migration_lock.toml': 'provider = "postgresql"\n',
                                       '20240101000000_init/.gitkeep': ''})
    assert 'folder 20240101000000_init has no migration.sql' in refused(pg_db, path)


@pytest.mark.parametrize('files,named', [
    ({'V1__a.sql': 'CREATE TABLE a (id int);', 'V1.0__b.sql': 'CREATE TABLE b (id int);'},
     'migrations V1.0__b.sql and V1__a.sql have the same version 1 (written 1, 1.0)'),
    ({'001_a.sql': 'CREATE TABLE a (id int);', 'V1.0__b.sql': 'CREATE TABLE b (id int);',
      'V1_0__c.sql': 'CREATE TABLE c (id int);', '2_d.sql': 'CREATE TABLE d (id int);'},
     'migrations 001_a.sql, V1.0__b.sql and V1_0__c.sql have the same version 1 (written 001, 1.0, 1_0)'),
    ({'1_a.up.sql': 'CREATE TABLE a (id int);', '1_b.up.sql': 'CREATE TABLE b (id int);',
      '1_a.down.sql': 'DROP TABLE a;'},
     'migrations 1_a.up.sql and 1_b.up.sql have the same version 1'),
])
def test_versions_equal_once_normalised_are_refused_naming_every_file(pg_server, pg_db, tmp_path, files, named):
    path = write(tmp_path / 'm', files)
    before = state(pg_server, pg_db)
    message = refused(pg_db, path)
    assert named in message and 'Give all but one of them a version of their own' in message, message
    assert state(pg_server, pg_db) == before and not exists(pg_db, 'a')


FIX_WORDS = re.compile(r'rename|restore|make it readable|save it|give all but one|move |delete|remove|set format|'
                       r'point path', re.I)


def items(message):
    """The numbered problems of a refusal: 'head (N): (1) ... (2) ...' -> ['...', '...']."""
    return re.split(r' \(\d+\) ', message.split('): (1) ', 1)[1])


def test_one_refusal_lists_every_problem_of_a_directory_each_with_its_fix(pg_server, pg_db, tmp_path):
    """A real set needed three rounds (names, then the layout, then duplicates): one refusal now names all."""
    path = write(tmp_path / 'db', {
        'V1__users.sql': 'CREATE TABLE users (id int);',
        'V1.0__users_again.sql': 'CREATE TABLE users2 (id int);',
        'V2__orders.sql': 'CREATE TABLE orders (id int);',
        'fix_users.sql': 'UPDATE users SET id = id;',
        'V3__latin1.sql': b'INSERT INTO users VALUES (1); -- caf\xe9\n',
        '00004_seed.go': 'package migrations',
        'archive/V0__old.sql': 'SELECT 1;',
        'V7__grants.sql.conf': 'executeInTransaction=false\n',
        'V8__typo.sql.conf': 'executeInTransation=false\n',
        'V8__typo.sql': 'SELECT 1;',
        'U9__undo_nothing.sql': 'SELECT 1;',
    })
    unreadable(path / 'V5__secret.sql')
    os.symlink(str(tmp_path / 'elsewhere' / 'V6__gone.sql'), str(path / 'V6__gone.sql'))
    before = state(pg_server, pg_db)
    message = refused(pg_db, path)
    assert message.startswith('migrations in %s (format: flyway) that pg_migrate would skip, misread or cannot run '
                              'as they are, each with its fix; nothing was applied (9): (1) ' % path), message
    problems = items(message)
    expected = ['00004_seed.go looks like a migration', 'V3__latin1.sql is not valid UTF-8',
                'V5__secret.sql cannot be read',
                'V6__gone.sql is a symbolic link to %s/elsewhere/V6__gone.sql, which does not exist' % tmp_path,
                'subfolder archive holds SQL files pg_migrate would never run (archive/V0__old.sql)',
                'fix_users.sql has no version',
                'V7__grants.sql.conf configures V7__grants.sql, which is not in path',
                "V8__typo.sql.conf line 1: 'executeInTransation=false' is not a script setting",
                'migrations V1.0__users_again.sql and V1__users.sql have the same version 1']
    assert len(problems) == 9, problems
    for words, problem in zip(expected, problems):
        assert problem.startswith(words), (words, problem)
        assert FIX_WORDS.search(problem), 'no fix in: %s' % problem
    assert state(pg_server, pg_db) == before and not exists(pg_db, 'users')


def test_one_refusal_of_a_prisma_directory(pg_server, pg_db, tmp_path):
    path = tmp_path / 'prisma'
    shutil.copytree(fixture('prisma'), path)
    write(path, {'20240201000000_orders/README.md': 'lost its migration.sql',
                 '20240115093000_profile_again/migration.sql': 'ALTER TABLE "User" ADD COLUMN bio text;',
                 'draft/migration.sql': 'CREATE TABLE draft (id int);',
                 '20240301000000_extra/migration.sql': 'SELECT 1;',
                 '20240301000000_extra/seed.sql': 'INSERT INTO draft VALUES (1);',
                 'hotfix.sql': 'SELECT 1;'})
    (path / '20240401000000_locked').mkdir()
    unreadable(path / '20240401000000_locked' / 'migration.sql')
    before = state(pg_server, pg_db)
    message = refused(pg_db, path)
    problems = items(message)
    for words in ('hotfix.sql has no version', 'folder draft has no version in its name',
                  'folder 20240301000000_extra holds SQL files Prisma would never run (seed.sql)',
                  '20240401000000_locked/migration.sql cannot be read',
                  'folder 20240201000000_orders has no migration.sql',
                  'migrations 20240115093000_add_profile/migration.sql and 20240115093000_profile_again/migration.sql '
                  'have the same version 20240115093000'):
        assert any(p.startswith(words) for p in problems), (words, problems)
    assert len(problems) == 6 and all(FIX_WORDS.search(p) for p in problems), problems
    assert state(pg_server, pg_db) == before and not exists(pg_db, '"User"')


# -- option values, through ansible-playbook ---------------------------------------------------------------------
BAD_OPTIONS = [
    ('ddl_lock_timeout', dict(ddl_lock_timeout=1e308)),
    ('ddl_lock_timeout', dict(ddl_lock_timeout=-1)),
    ('ddl_lock_retries', dict(ddl_lock_retries=-3)),
    ('ddl_lock_retries', dict(ddl_lock_retries=1000000)),
    ('statement_timeout', dict(statement_timeout=1e308)),
    ('statement_timeout', dict(statement_timeout=-0.5)),
    ('lock_timeout', dict(lock_timeout=-1)),
    ('lock_timeout', dict(lock_timeout=1e308)),
    ('lint_min_rows', dict(lint_min_rows=-1)),
    ('lint_min_rows', dict(lint_min_rows=10 ** 20)),
    ('lint_min_mb', dict(lint_min_mb=1e308)),
    ('lint_min_mb', dict(lint_min_mb=-2)),
    ('connect_timeout', dict(connect_timeout=0)),
    ('retries', dict(retries=-1)),
    ('table', dict(table='')),
    ('table', dict(table='t' * 64)),
    ('takeover_table', dict(takeover_table='flyway_schema_history')),
    ('takeover_table', dict(takeover='pg_migrate')),
    ('path', dict(path='db/migrations')),
    ('path', dict(path='/nonexistent/migrations')),
    ('path', dict(path='FILE')),
    ('target', dict(target='latest')),
    ('baseline', dict(baseline='v1.x')),
    ('applied_by', dict(applied_by=' ')),
    ('placeholders.prefix', dict(placeholders={'prefix': None})),
]


def run_in_process(args):
    """(rc, result) of library/pg_migrate.py's main() with args, as AnsibleModule reads them (types converted,
    choices checked), in this process: 25 ansible-playbook runs would take minutes."""
    spec = importlib.util.spec_from_file_location('soulnear_library_pg_migrate', os.path.join(ROOT, 'library',
                                                                                              'pg_migrate.py'))
    library = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(library)
    out = io.StringIO()
    with patch_module_args(args), contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        library.main()
    return info.value.code, json.loads(out.getvalue())


def test_bad_option_values_fail_named_before_anything_changes(pg_server, pg_db, tmp_path):
    path = write(tmp_path / 'migrations', {'001_users.sql': 'CREATE TABLE users (id int);'})
    base = dict(pg_db, path=str(path))
    before = state(pg_server, pg_db), sorted(os.listdir(str(path)))
    for option, overrides in BAD_OPTIONS:
        args = dict(base, **overrides)
        if args['path'] == 'FILE':
            args['path'] = str(path / '001_users.sql')
        code, result = run_in_process(args)
        msg = result.get('msg', '')
        assert code != 0 and result.get('failed'), (overrides, msg)
        assert msg.startswith('Invalid option(s), nothing was changed: ') and '%s=' % option in msg, (overrides, msg)
        assert result['invalid_options'] == [option] and result['changed'] is False, (overrides, msg)
        assert 'Traceback' not in json.dumps(result) and pg_db['login_password'] not in json.dumps(result)
    assert (state(pg_server, pg_db), sorted(os.listdir(str(path)))) == before

    # Through ansible-playbook, several at once: one message naming each, no traceback.
    code, result, output = run_module(tmp_path, 'pg_migrate', dict(base, ddl_lock_timeout=1e308, ddl_lock_retries=-3,
                                                                   lint_min_mb=1e308, table='', target='latest'))
    assert code != 0 and result['changed'] is False, output[-2000:]
    # ansible-core 2.19 sets exception to '(traceback unavailable)' on every failure; a crash has a real one.
    assert 'Traceback' not in output + str(result.get('exception', '')), output[-2000:]
    assert sorted(result['invalid_options']) == ['ddl_lock_retries', 'ddl_lock_timeout', 'lint_min_mb', 'table',
                                                 'target']
    assert (state(pg_server, pg_db), sorted(os.listdir(str(path)))) == before

    # The largest values allowed are accepted by the server (PostgreSQL keeps its timeouts as 32-bit milliseconds).
    code, result, output = run_module(tmp_path, 'pg_migrate', dict(
        base, ddl_lock_timeout=2147483, statement_timeout=2147483, ddl_lock_retries=100, lock_timeout=315360000,
        lint_min_rows=10 ** 12, lint_min_mb=32 * 1024 * 1024))
    assert code == 0 and result['applied'] == ['001_users.sql'], output[-2000:]
    assert exists(pg_db, 'users')


def test_a_library_caller_gets_the_same_option_checks(pg_db):
    """The rehearsal and the benches make a Migrator without the module: a huge timeout or negative retries is
    refused naming the option, not a traceback or a silent clamp to 0."""
    for option, value in (('ddl_lock_timeout', 1e308), ('ddl_lock_retries', -3), ('lint_min_mb', 10 ** 9)):
        with pytest.raises(MigrationError) as info:
            Migrator(dict(pg_db, path=fixture('plain'), **{option: value}))
        assert str(info.value).startswith('%s=' % option) and 'Fix:' in str(info.value), str(info.value)
