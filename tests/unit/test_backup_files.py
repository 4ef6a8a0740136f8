"""Backup file names (backup_files.py): the pattern, parsing the time back, refusing patterns retention cannot use."""

import datetime

import pytest
from ansible.module_utils.soulnear.backup_files import DEFAULT_NAME_PATTERN, BackupError, parse_name, pattern_regex


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
