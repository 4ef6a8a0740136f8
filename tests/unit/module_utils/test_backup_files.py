"""Backup file names, sidecars and checksums (backup_files.py): the pattern, parsing the time back, refusing patterns
retention cannot use, the database a backup belongs to, and the sha256 computed once per file."""

import datetime
import os
import subprocess

import pytest
from ansible.module_utils.soulnear.backup_files import (
    CHECKSUM_CACHE, DEFAULT_NAME_PATTERN, BackupError, archive_database, check_intact, list_backups, newest_intact,
    parse_name, pattern_regex, read_sidecar, write_sidecar)
from ansible.module_utils.soulnear.files import sha256_file


def test_names_follow_the_pattern_and_bad_patterns_are_refused():
    assert parse_name('backup_20250105_020001.dump', DEFAULT_NAME_PATTERN) == datetime.datetime(2025, 1, 5, 2, 0, 1)
    assert parse_name('backup_20250105_020001.dump.sha256', DEFAULT_NAME_PATTERN) is None
    assert parse_name('.backup_20250105_020001.dump.partial-12', DEFAULT_NAME_PATTERN) is None
    assert parse_name('backup_20251399_020001.dump', DEFAULT_NAME_PATTERN) is None  # no 99th of month 13
    assert parse_name('soul_bot-2025-01-05.dump', 'soul_bot-%Y-%m-%d.dump') == datetime.datetime(2025, 1, 5)
    for bad in ('backups/%Y%m%d.dump', '.hidden_%Y%m%d', 'backup_%H%M%S.dump', 'backup_%Y%m%d_%s.dump',
                'backup_%Y%m%d.dump.sha256', 'b_%Y%Y%m%d'):
        with pytest.raises(BackupError):
            pattern_regex(bad)


def header(database, version=(1, 14, 0), int_size=4):
    """The start of a pg_dump custom-format archive as pg_dump writes it (WriteHead in pg_backup_archiver.c)."""
    def write_int(value):
        return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(int_size, 'little')
    data = b'PGDMP' + bytes(version) + bytes([int_size, 8, 1])  # intSize, offSize, format custom
    data += bytes([1]) if version >= (1, 15, 0) else write_int(-1)  # compression: gzip / default level
    for value in (5, 4, 3, 2, 0, 125, 0):  # creation time
        data += write_int(value)
    encoded = database.encode('utf-8')
    return data + write_int(len(encoded)) + encoded + write_int(4) + b'15.8' + b'\x00' * 64


def test_the_database_comes_from_the_archive_header(tmp_path):
    for version in ((1, 14, 0), (1, 15, 0), (1, 16, 0)):
        path = tmp_path / 'a.dump'
        path.write_bytes(header('soul_bot', version))
        assert archive_database(str(path)) == 'soul_bot', version
    (tmp_path / 'b.dump').write_bytes(header('бот', int_size=8))
    assert archive_database(str(tmp_path / 'b.dump')) == 'бот'
    for junk in (b'', b'PGDMP', b'not an archive at all', b'PGDMP\x01\x0e\x00\x04\x08'):
        (tmp_path / 'c.dump').write_bytes(junk)
        assert archive_database(str(tmp_path / 'c.dump')) is None


def test_the_sidecar_names_the_database_and_sha256sum_still_reads_it(tmp_path):
    dump = tmp_path / 'backup_20250105_020001.dump'
    dump.write_bytes(header('soul_bot') + b'data')
    digest = sha256_file(str(dump))
    write_sidecar(str(dump), digest, 'soul_bot')
    assert (tmp_path / (dump.name + '.sha256')).read_text() == '%s  %s\n# database: soul_bot\n' % (digest, dump.name)
    assert read_sidecar(str(dump)) == digest
    check = subprocess.run(['sha256sum', '--strict', '-c', dump.name + '.sha256'], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == dump.name + ': OK', check.stdout + check.stderr
    assert os.stat(str(dump) + '.sha256').st_mode & 0o777 == 0o600


def write(directory, when, database, sidecar_database=True, archive=None):
    name = when.strftime(DEFAULT_NAME_PATTERN)
    path = directory / name
    path.write_bytes(header(archive or database) + name.encode())
    write_sidecar(str(path), sha256_file(str(path)), database if sidecar_database else None)
    return name


def test_backups_of_several_databases_share_a_directory(tmp_path):
    day = datetime.datetime(2025, 3, 1, 2, 0)
    ours = write(tmp_path, day, 'soul_bot')
    theirs = write(tmp_path, day.replace(hour=3), 'other_db')
    legacy = write(tmp_path, day.replace(hour=4), 'other_db', sidecar_database=False)  # an older sidecar
    (tmp_path / day.replace(hour=5).strftime(DEFAULT_NAME_PATTERN)).write_bytes(b'unknown')  # no sidecar, no header
    everything = list_backups(str(tmp_path))
    assert [b['database'] for b in everything] == [None, 'other_db', 'other_db', 'soul_bot']
    assert [b['name'] for b in list_backups(str(tmp_path), database='soul_bot')] == \
        [day.replace(hour=5).strftime(DEFAULT_NAME_PATTERN), ours]
    assert [b['name'] for b in list_backups(str(tmp_path), database='other_db')][1:] == [legacy, theirs]


def test_checksums_are_computed_once_and_a_changed_file_is_caught(tmp_path):
    old = write(tmp_path, datetime.datetime(2025, 3, 1, 2, 0), 'soul_bot')
    new = write(tmp_path, datetime.datetime(2025, 3, 2, 2, 0), 'soul_bot')
    good, corrupt = newest_intact(str(tmp_path), database='soul_bot')
    assert good['name'] == new and corrupt == []
    cache = (tmp_path / CHECKSUM_CACHE)
    assert cache.exists() and os.stat(str(cache)).st_mode & 0o777 == 0o600
    assert new in cache.read_text() and old not in cache.read_text()  # only as far as the first intact one

    # The cache is trusted while size and mtime are unchanged: a rewrite that keeps both would go unseen,
    # which is the price of a check that costs a stat; any write that changes the mtime is caught.
    path = tmp_path / new
    stat = os.stat(str(path))
    data = bytearray(path.read_bytes())
    data[40] ^= 0xff
    path.write_bytes(bytes(data))
    os.utime(str(path), ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert newest_intact(str(tmp_path), database='soul_bot')[0]['name'] == new
    os.utime(str(path), ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    good, corrupt = newest_intact(str(tmp_path), database='soul_bot')
    assert good['name'] == old and [b['name'] for b in corrupt] == [new]
    assert corrupt[0]['expected'] == read_sidecar(str(path)) != corrupt[0]['actual']

    # Check mode (save=False) leaves the cache file alone.
    os.unlink(str(tmp_path / old))
    os.unlink(str(tmp_path / (old + '.sha256')))
    before = cache.read_text()
    assert check_intact(str(tmp_path), list_backups(str(tmp_path)), save=False) == (None, corrupt)
    assert cache.read_text() == before
