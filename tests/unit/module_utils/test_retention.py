"""Retention over a simulated sequence of days, on real files named as the backup writes them.

Each simulated day writes a dump and its sidecar like a real run (any content: retention reads
names and sidecars, not dumps) and then runs the same apply_retention() the backup runs.
"""

import datetime
import os

from ansible.module_utils.soulnear.backup_files import (
    DEFAULT_NAME_PATTERN, SAFETY_NAME_PATTERN, list_backups, remove_stale_partials, write_sidecar)
from ansible.module_utils.soulnear.retention import apply_retention, plan_retention, prune_safety_backups

POLICY = dict(name_pattern=DEFAULT_NAME_PATTERN, keep_daily=7, keep_weekly=4, keep_monthly=6, keep_last=2)


def write_backup(directory, when, verified=True):
    name = when.strftime(DEFAULT_NAME_PATTERN)
    (directory / name).write_bytes(b'PGDMP fake archive for ' + name.encode())
    if verified:
        (directory / (name + '.sha256')).write_text('%s  %s\n' % ('0' * 64, name))
    return name


def dumps(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith('backup_') and n.endswith('.dump'))


def test_a_year_of_nightly_backups_keeps_7_daily_4_weekly_6_monthly(tmp_path):
    # Pre-existing files that retention must leave alone: a dump without sidecar (not verified by
    # us), a safety backup taken before a restore, and an unrelated file.
    write_backup(tmp_path, datetime.datetime(2024, 6, 1, 3, 0, 0), verified=False)
    (tmp_path / 'pre_restore_20240301_101500.dump').write_bytes(b'safety')
    (tmp_path / 'pre_restore_20240301_101500.dump.sha256').write_text('0' * 64 + '  pre_restore_20240301_101500.dump\n')
    (tmp_path / 'notes.txt').write_text('operator notes\n')

    day = datetime.datetime(2024, 1, 1, 2, 0, 0)
    all_pruned = []
    while day.year == 2024:
        if day.date() != datetime.date(2024, 12, 27):  # the backup failed that night: no file
            newest = write_backup(tmp_path, day)
            result = apply_retention(str(tmp_path), POLICY)
            all_pruned += result['pruned']
            assert newest in dumps(tmp_path), 'the newest backup must never be pruned'
        if day.day in (1, 15):  # a manual backup in the afternoon
            manual = write_backup(tmp_path, day.replace(hour=14, minute=30))
            result = apply_retention(str(tmp_path), POLICY)
            all_pruned += result['pruned']
            assert manual in dumps(tmp_path)
        # Never more than 7 + 4 + 6 + 2 verified backups, plus the unverified one.
        assert len(dumps(tmp_path)) <= 20
        day += datetime.timedelta(days=1)

    # 2024-12-31 is a Tuesday. Daily: the 7 most recent days that have a backup (27th missing).
    # Weekly: newest of ISO weeks 2025-W01 (31st), W52 (Sun 29th), W51 (Sun 22nd), W50 (Sun 15th,
    # whose newest is the manual 14:30 one). Monthly: Dec 31, Nov 30, Oct 31, Sep 30, Aug 31, Jul 31.
    # keep_last 2: the 31st and the 30th (already kept).
    expected = ['backup_20240601_030000.dump',  # unverified: never deleted
                'backup_20240731_020000.dump', 'backup_20240831_020000.dump', 'backup_20240930_020000.dump',
                'backup_20241031_020000.dump', 'backup_20241130_020000.dump',
                'backup_20241215_143000.dump', 'backup_20241222_020000.dump',
                'backup_20241224_020000.dump', 'backup_20241225_020000.dump', 'backup_20241226_020000.dump',
                'backup_20241228_020000.dump', 'backup_20241229_020000.dump', 'backup_20241230_020000.dump',
                'backup_20241231_020000.dump']
    assert dumps(tmp_path) == expected
    # Every kept verified dump still has its sidecar; pruned ones left no sidecar behind.
    sidecars = sorted(n[:-len('.sha256')] for n in os.listdir(tmp_path)
                      if n.startswith('backup_') and n.endswith('.sha256'))
    assert sidecars == expected[1:]
    # Untouched: the safety backup and the unrelated file.
    assert (tmp_path / 'pre_restore_20240301_101500.dump').exists()
    assert (tmp_path / 'notes.txt').exists()
    assert result['unverified'] == ['backup_20240601_030000.dump']
    kept = dict((k['name'], k['reasons']) for k in result['kept'])
    assert kept['backup_20241231_020000.dump'] == ['last', 'daily', 'weekly', 'monthly']
    assert kept['backup_20241215_143000.dump'] == ['weekly']
    assert kept['backup_20240731_020000.dump'] == ['monthly']
    assert 'backup_20241215_020000.dump' in all_pruned
    assert len(all_pruned) == len(set(all_pruned))  # each file pruned once


def test_the_newest_verified_backups_survive_any_policy(tmp_path):
    first = write_backup(tmp_path, datetime.datetime(2025, 3, 1, 2, 0))
    second = write_backup(tmp_path, datetime.datetime(2025, 3, 2, 2, 0))
    newer_unverified = write_backup(tmp_path, datetime.datetime(2025, 3, 3, 2, 0), verified=False)
    nothing = dict(POLICY, keep_daily=0, keep_weekly=0, keep_monthly=0, keep_last=0)
    result = apply_retention(str(tmp_path), nothing)
    # keep_last is at least 1, and an unverified newer file does not count as "the newest".
    assert result['pruned'] == [first]
    assert dumps(tmp_path) == [second, newer_unverified]
    result = apply_retention(str(tmp_path), dict(nothing, keep_last=5))
    assert result['pruned'] == []


def test_check_mode_reports_without_deleting(tmp_path):
    for day in range(1, 11):
        write_backup(tmp_path, datetime.datetime(2025, 3, day, 2, 0))
    before = sorted(os.listdir(tmp_path))
    lines = []
    result = apply_retention(str(tmp_path), dict(POLICY, keep_weekly=0, keep_monthly=0, keep_daily=3, keep_last=1),
                             check_mode=True, log=lines.append)
    assert result['pruned'] == ['backup_202503%02d_020000.dump' % d for d in range(7, 0, -1)]
    assert sorted(os.listdir(tmp_path)) == before
    assert lines[0] == 'would prune backup_20250307_020000.dump'


def test_plan_is_by_calendar_period_not_by_age():
    # Two backups on one day: only the newer one is that day's; the older is kept by keep_last only.
    backups = [dict(name='b1', time=datetime.datetime(2025, 1, 6, 2), verified=True),
               dict(name='b2', time=datetime.datetime(2025, 1, 6, 14), verified=True),
               dict(name='b0', time=datetime.datetime(2025, 1, 5, 2), verified=True)]
    keep, prune, unverified = plan_retention(backups, keep_daily=2, keep_weekly=0, keep_monthly=0, keep_last=1)
    assert keep == {'b2': ['last', 'daily'], 'b0': ['daily']}
    assert prune == ['b1'] and unverified == []
    # Sunday 5 Jan and Monday 6 Jan are different ISO weeks.
    keep, prune, _ = plan_retention(backups, keep_daily=0, keep_weekly=2, keep_monthly=0, keep_last=1)
    assert sorted(keep) == ['b0', 'b2'] and prune == ['b1']


def test_orphan_sidecars_and_stale_partials_are_cleaned(tmp_path):
    name = write_backup(tmp_path, datetime.datetime(2025, 2, 1, 2, 0))
    (tmp_path / 'backup_20250101_020000.dump.sha256').write_text('0' * 64 + '  backup_20250101_020000.dump\n')
    (tmp_path / ('.backup_20250202_020000.dump.partial-4242')).write_bytes(b'half a dump')
    assert [b['name'] for b in list_backups(str(tmp_path))] == [name]
    apply_retention(str(tmp_path), POLICY)
    assert not (tmp_path / 'backup_20250101_020000.dump.sha256').exists()
    assert remove_stale_partials(str(tmp_path)) == ['.backup_20250202_020000.dump.partial-4242']
    assert sorted(os.listdir(tmp_path)) == [name, name + '.sha256']


def test_keep_last_keeps_that_many_newest_beyond_the_calendar_rules():
    # Four backups on one day: daily keeps only the newest of the day; keep_last 3 keeps the three newest.
    backups = [dict(name='b%d' % hour, time=datetime.datetime(2025, 1, 6, hour), verified=True)
               for hour in (2, 8, 14, 20)]
    backups.append(dict(name='unverified', time=datetime.datetime(2025, 1, 6, 23), verified=False))
    keep, prune, unverified = plan_retention(backups, keep_daily=1, keep_weekly=0, keep_monthly=0, keep_last=3)
    assert keep == {'b20': ['last', 'daily'], 'b14': ['last'], 'b8': ['last']}
    assert prune == ['b2'] and unverified == ['unverified']
    keep, prune, _ = plan_retention(backups, keep_daily=0, keep_weekly=0, keep_monthly=0, keep_last=10)
    assert sorted(keep) == ['b14', 'b2', 'b20', 'b8'] and prune == []


def test_keep_last_on_real_files(tmp_path):
    names = [write_backup(tmp_path, datetime.datetime(2025, 3, 1, hour, 0)) for hour in range(1, 7)]
    result = apply_retention(str(tmp_path), dict(POLICY, keep_daily=1, keep_weekly=1, keep_monthly=1, keep_last=4))
    assert sorted(result['pruned']) == sorted(names[:2])
    assert dumps(tmp_path) == sorted(names[2:])


def write_db_backup(directory, when, database, pattern=DEFAULT_NAME_PATTERN):
    name = when.strftime(pattern)
    (directory / name).write_bytes(b'PGDMP fake archive for ' + name.encode())
    write_sidecar(str(directory / name), '0' * 64, database)
    return name


def test_databases_sharing_a_directory_never_prune_each_other(tmp_path):
    ours = [write_db_backup(tmp_path, datetime.datetime(2025, 3, day, 2, 0), 'soul_bot') for day in range(1, 11)]
    theirs = [write_db_backup(tmp_path, datetime.datetime(2025, 3, day, 3, 0), 'other_db') for day in range(1, 4)]
    policy = dict(POLICY, keep_daily=2, keep_weekly=0, keep_monthly=0, keep_last=1)
    result = apply_retention(str(tmp_path), dict(policy, database='soul_bot'))
    assert sorted(result['pruned']) == sorted(ours[:8])
    assert dumps(tmp_path) == sorted(ours[8:] + theirs), 'the other database keeps all of its backups'
    # The login database is the default: settings as make_settings builds them.
    result = apply_retention(str(tmp_path), dict(policy, conn=dict(login_db='other_db')))
    assert sorted(result['pruned']) == sorted(theirs[:1])
    assert dumps(tmp_path) == sorted(ours[8:] + theirs[1:])


def test_safety_backups_keep_the_newest_few_of_their_database(tmp_path):
    safety = [write_db_backup(tmp_path, datetime.datetime(2025, 3, day, 10, 0), 'soul_bot', SAFETY_NAME_PATTERN)
              for day in range(1, 6)]
    other = write_db_backup(tmp_path, datetime.datetime(2025, 3, 1, 9, 0), 'other_db', SAFETY_NAME_PATTERN)
    unverified = datetime.datetime(2025, 2, 1, 9, 0).strftime(SAFETY_NAME_PATTERN)
    (tmp_path / unverified).write_bytes(b'no sidecar')
    lines = []
    assert prune_safety_backups(str(tmp_path), dict(database='soul_bot', keep_safety_backups=2), check_mode=True,
                                log=lines.append) == list(reversed(safety[:3]))
    assert len(os.listdir(tmp_path)) == 13 and lines[0].startswith('would prune safety backup')
    assert prune_safety_backups(str(tmp_path), dict(database='soul_bot', keep_safety_backups=2)) == \
        list(reversed(safety[:3]))
    left = sorted(n for n in os.listdir(tmp_path) if not n.endswith('.sha256'))
    assert left == sorted(safety[3:] + [other, unverified])
    assert prune_safety_backups(str(tmp_path), dict(database='soul_bot', keep_safety_backups=0)) == [safety[3]]
