"""migrate_checks.py without a server: versions equal once normalised, migration folders without their file, and
discover() naming every problem of a directory in one refusal (the server side is in
tests/integration/modules/test_pg_migrate_refusals.py)."""

import pytest

from ansible.module_utils.soulnear.migration_files import MigrationError, MigrationFile, discover
from ansible.module_utils.soulnear.migration_text import parse_version
from ansible.module_utils.soulnear.migrate_checks import missing_folder_files, normalised, same_versions


def mfile(name, version):
    return MigrationFile('/m/' + name, name, 'versioned', parse_version(version), 'SELECT 1;', 'flyway',
                         version_label=version)


@pytest.mark.parametrize('a,b,equal', [
    ('1', '1.0', True), ('1', '01', True), ('1.0.0', '1_0', True), ('2.10', '2.1', False), ('1.0.1', '1.1', False),
    ('0', '0.0', True), ('10', '1', False),
])
def test_normalised(a, b, equal):
    assert (normalised(parse_version(a)) == normalised(parse_version(b))) is equal


def test_same_versions_names_every_file_of_each_version():
    files = [mfile('V1__a.sql', '1'), mfile('V1.0__b.sql', '1.0'), mfile('V2__c.sql', '2'), mfile('V01__d.sql', '01'),
             mfile('V3__e.sql', '3'), mfile('V3_0__f.sql', '3_0')]
    assert same_versions(files) == [
        'migrations V1__a.sql, V1.0__b.sql and V01__d.sql have the same version 1 (written 01, 1, 1.0): each version '
        'must belong to one migration. Give all but one of them a version of their own (above the newest one '
        'applied)',
        'migrations V3__e.sql and V3_0__f.sql have the same version 3 (written 3, 3_0): each version must belong to '
        'one migration. Give all but one of them a version of their own (above the newest one applied)']
    assert same_versions(files[2:3]) == []


def test_missing_folder_files_only_in_folder_layouts():
    ignored = ['README.md', '20240101000000_init/', 'migration_lock.toml']
    assert missing_folder_files(ignored, 'prisma') == [
        'folder 20240101000000_init has no migration.sql, so pg_migrate would skip it and report success (Prisma '
        'itself stops there, P3015). Restore its migration.sql, or delete the folder']
    assert 'has no up.sql' in missing_folder_files(ignored, 'diesel')[0]
    assert missing_folder_files(ignored, 'plain') == []


def test_a_plain_directory_keeps_ignoring_a_folder_without_sql(tmp_path):
    (tmp_path / '001_a.sql').write_text('SELECT 1;')
    (tmp_path / 'docs').mkdir()
    assert discover(str(tmp_path)).ignored == ['docs/']


def test_mixed_styles_are_one_problem_among_the_others(tmp_path):
    for name in ('1_a.up.sql', '1_a.down.sql', '2_b.sql', 'notes_without_version.sql'):
        (tmp_path / name).write_text('SELECT 1;')
    with pytest.raises(MigrationError) as info:
        discover(str(tmp_path))
    message = str(info.value)
    assert message.startswith('migrations in %s that pg_migrate would skip, misread or cannot run as they are, each '
                              'with its fix; nothing was applied (2): (1) notes_without_version.sql has no version'
                              % tmp_path), message
    assert '(2) path mixes migration styles' in message


def test_two_up_files_of_one_version_are_both_named(tmp_path):
    # golang-migrate's up files were kept in a dict by version: the second one was dropped without a word.
    for name in ('1_a.up.sql', '1_b.up.sql', '1_a.down.sql'):
        (tmp_path / name).write_text('SELECT 1;')
    with pytest.raises(MigrationError, match='migrations 1_a.up.sql and 1_b.up.sql have the same version 1'):
        discover(str(tmp_path))
