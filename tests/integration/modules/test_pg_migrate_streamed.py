"""The scenarios of test_pg_migrate and test_pg_migrate_safety again, with every first pending file applied while
it is being read and checked (the path a large file takes: Migrator.STREAM_BYTES is lowered to 0)."""

import pytest

from ansible.module_utils.soulnear.migrate import Migrator
from ansible.module_utils.soulnear.migration_files import MigrationError
from pgclient import query
from .test_pg_migrate import *  # noqa: F401,F403 - collected again here, streamed
from .test_pg_migrate_safety import *  # noqa: F401,F403
from .test_pg_migrate_safety import exists, write


@pytest.fixture(autouse=True)
def stream_every_first_file(monkeypatch):
    monkeypatch.setattr(Migrator, 'STREAM_BYTES', 0)


def streamed_run(params, path, **options):
    logged = []
    result = Migrator(dict(params, path=str(path), **options), log=logged.append).run()
    return result, logged


def test_the_first_file_is_streamed_and_a_late_problem_rolls_everything_back(pg_db, tmp_path):
    lines = ['CREATE TABLE early (id int);'] + ['INSERT INTO early VALUES (%d);' % i for i in range(200)]
    path = write(tmp_path / 'm', {'001_big.sql': '\n'.join(lines + ['\\i later.sql']) + '\n',
                                  '002_next.sql': 'CREATE TABLE next (id int);'})
    logged = []
    with pytest.raises(MigrationError) as info:
        Migrator(dict(pg_db, path=str(path)), log=logged.append).run()
    assert any('checked while it runs' in line for line in logged)
    assert '001_big.sql line 202: psql meta-command \\i' in str(info.value) and 'nothing was applied' in str(info.value)
    assert info.value.result['changed'] is False
    assert not exists(pg_db, 'early') and not exists(pg_db, 'schema_migrations')  # the bookkeeping went too
    write(path, {'001_big.sql': '\n'.join(lines) + '\n'})
    result, logged = streamed_run(pg_db, path)
    assert result['applied'] == ['001_big.sql', '002_next.sql']
    assert query(pg_db, 'SELECT count(*) FROM early') == [(200,)]
    assert query(pg_db, "SELECT name, kind FROM schema_migrations ORDER BY id") == [
        ('001_big.sql', 'versioned'), ('002_next.sql', 'versioned')]


def test_a_streamed_file_failing_on_the_server_names_its_line(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_big.sql': 'CREATE TABLE t (id int PRIMARY KEY);\nINSERT INTO t VALUES (1);\n'
                                                 'INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\n'})
    with pytest.raises(MigrationError) as info:
        Migrator(dict(pg_db, path=str(path))).run()
    assert '001_big.sql failed at line 3' in str(info.value) and '23505' in str(info.value)
    assert not exists(pg_db, 't') and not exists(pg_db, 'schema_migrations')


def test_a_streamed_file_that_refuses_a_transaction_runs_outside_one(pg_db, tmp_path):
    path = write(tmp_path / 'm', {'001_tables.sql': 'CREATE TABLE t (id int);',
                                  '002_index.sql': 'CREATE INDEX CONCURRENTLY t_id ON t (id);'})
    streamed_run(pg_db, write(tmp_path / 'first', {'001_tables.sql': 'CREATE TABLE t (id int);'}))
    result, logged = streamed_run(pg_db, path)
    assert result['applied'] == ['002_index.sql'] and any('checked while it runs' in line for line in logged)
    assert query(pg_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_id'::regclass") == [(True,)]


def test_large_files_are_streamed_by_default(pg_db, tmp_path, monkeypatch):
    monkeypatch.setattr(Migrator, 'STREAM_BYTES', 4 * 1024 * 1024)
    rows = ',\n'.join("(%d, 'row %d; (x)')" % (i, i) for i in range(20000))
    big = 'CREATE TABLE big (id int, note text);\n' + ('INSERT INTO big VALUES\n%s;\n' % rows) * 12
    assert len(big) > 4 * 1024 * 1024
    result, logged = streamed_run(pg_db, write(tmp_path / 'm', {'001_big.sql': big, '002_small.sql': 'SELECT 1;'}))
    assert result['applied'] == ['001_big.sql', '002_small.sql']
    assert [line for line in logged if line.startswith('applying')] == [
        'applying 001_big.sql (read and checked while it runs; committed only when all of it is checked)',
        'applying 002_small.sql']
    assert query(pg_db, 'SELECT count(*) FROM big') == [(240000,)]
