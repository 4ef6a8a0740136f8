"""Point-in-time recovery without a server: TIME parsing, pgbackrest info as the module reads it, the choice of the
repository and the refusals with the window, the pg_waldump line, the role's pgBackRest configuration."""

import datetime

import pytest
from ansible.module_utils.soulnear import pitr, pitr_runner
from ansible.module_utils.soulnear.pitr_restore import _choose
from pitrenv import render_config

UTC = datetime.timezone.utc
INFO = {
    'name': 'soulnear',
    'repo': [{'key': 1, 'cipher': 'none', 'status': {'code': 0, 'message': 'ok'}},
             {'key': 2, 'cipher': 'aes-256-cbc', 'status': {'code': 0, 'message': 'ok'}}],
    'db': [{'id': 1, 'repo-key': 1, 'system-id': 7713573631087333403, 'version': '15'},
           {'id': 1, 'repo-key': 2, 'system-id': 7713573631087333403, 'version': '15'}],
    'archive': [{'database': {'id': 1, 'repo-key': 1}, 'id': '15-1', 'max': '00000001000000000000000C',
                 'min': '000000010000000000000001'},
                {'database': {'id': 1, 'repo-key': 2}, 'id': '15-1', 'max': '000000010000000000000009',
                 'min': '000000010000000000000003'}],
    'backup': [
        {'database': {'id': 1, 'repo-key': 1}, 'error': False, 'label': '20261129-124528F', 'type': 'full',
         'timestamp': {'start': 1795956328, 'stop': 1795956331}, 'info': {'size': 23213716,
                                                                          'repository': {'size': 2825843}}},
        {'database': {'id': 1, 'repo-key': 1}, 'error': False, 'label': '20261129-124528F_20261129-130000D',
         'type': 'diff', 'timestamp': {'start': 1795957200, 'stop': 1795957203},
         'info': {'size': 23213716, 'repository': {'size': 20000}}},
        {'database': {'id': 1, 'repo-key': 1}, 'error': True, 'label': 'broken', 'type': 'incr',
         'timestamp': {'start': 1795957300, 'stop': 1795957303}, 'info': {'size': 1, 'repository': {'size': 1}}},
        {'database': {'id': 1, 'repo-key': 2}, 'error': False, 'label': '20261129-124532F', 'type': 'full',
         'timestamp': {'start': 1795956332, 'stop': 1795956335}, 'info': {'size': 23213716,
                                                                          'repository': {'size': 2847808}}}],
}


@pytest.mark.parametrize('text, expected', [
    ('2026-11-29 14:05:00+00', datetime.datetime(2026, 11, 29, 14, 5, tzinfo=UTC)),
    ('2026-11-29T14:05:00Z', datetime.datetime(2026, 11, 29, 14, 5, tzinfo=UTC)),
    ('2026-11-29 15:05 +01:00', datetime.datetime(2026, 11, 29, 14, 5, tzinfo=UTC)),
    ('2026-11-29 09:05:00.25-0500', datetime.datetime(2026, 11, 29, 14, 5, 0, 250000, tzinfo=UTC)),
    ('2026-11-29 14:05:00 UTC', datetime.datetime(2026, 11, 29, 14, 5, tzinfo=UTC)),
    ('latest', None), ('', None),
])
def test_target_times_with_their_zone(text, expected):
    assert pitr.parse_target(text) == expected


def test_a_time_without_zone_or_not_a_time_is_refused():
    with pytest.raises(pitr.PitrError, match='no time zone'):
        pitr.parse_target('2026-11-29 14:05:00')
    with pytest.raises(pitr.PitrError, match='is not a time'):
        pitr.parse_target('yesterday +00')


def test_show_is_utc_and_reads_back():
    when = datetime.datetime(2026, 11, 29, 15, 5, 1, 500000, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert pitr.show(when) == '2026-11-29 14:05:01.5+00'
    assert pitr.parse_target(pitr.show(when)) == when
    assert pitr.show(1795956331) == '2026-11-29 12:45:31+00'


def test_repositories_from_info():
    repos = pitr.repositories(INFO)
    assert sorted(repos) == [1, 2]
    assert [b['label'] for b in repos[1]['backups']] == ['20261129-124528F', '20261129-124528F_20261129-130000D']
    assert repos[1]['archive_max'] == '00000001000000000000000C' and repos[1]['archive_id'] == '15-1'
    assert repos[2]['cipher'] == 'aes-256-cbc' and repos[2]['system_id'] == '7713573631087333403'


def window(key, start, end, archive_max):
    return dict(repo=key, start=start, end=end, archive_max=archive_max, newest_backup={'label': 'x'})


def test_the_repository_is_chosen_by_the_window_and_outside_targets_are_refused_with_the_range():
    t = datetime.datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    hour = datetime.timedelta(hours=1)
    windows = {1: window(1, t, t + 2 * hour, '0C'), 2: window(2, t - hour, t + hour, '09')}
    assert _choose(windows, None, None, None)[0] == 1  # latest: the archive that reaches furthest
    assert _choose(windows, t + hour / 2, None, None)[0] == 1
    assert _choose(windows, t - hour / 2, None, None)[0] == 2  # only repo2 reaches back that far
    assert _choose(windows, t + hour / 2, 2, None)[0] == 2
    with pytest.raises(pitr.PitrError) as refused:
        _choose(windows, t + 3 * hour, None, None)
    text = str(refused.value)
    assert 'outside the recovery window' in text and 'repo1: from 2026-11-29 12:00:00+00 to 2026-11-29 14:00:00+00' \
        in text and 'Nothing was changed' in text
    # A running server of this cluster archives up to now when it stops: a recent target is fine.
    assert _choose(windows, t + 3 * hour, None, t + 4 * hour)[0] == 1
    with pytest.raises(pitr.PitrError, match='no repository holds a physical backup'):
        _choose({1: None}, None, None, None)
    with pytest.raises(pitr.PitrError, match='repo3 is not configured'):
        _choose(windows, None, 3, None)


def test_pg_waldump_commit_lines():
    line = ('000000010000000000000008 rmgr: Transaction len (rec/tot):     34/    34, tx:        727, lsn: '
            '0/080000A0, prev 0/08000028, desc: COMMIT 2026-11-29 12:46:17.725706 UTC')
    stamp, zone = pitr_runner._COMMIT.search(line).groups()
    assert (stamp, zone) == ('2026-11-29 12:46:17.725706', 'UTC')
    line = 'x desc: COMMIT 2026-11-29 12:46:03.064929 UTC; inval msgs: catcache 55'
    assert pitr_runner._COMMIT.search(line).groups() == ('2026-11-29 12:46:03.064929', 'UTC')


def test_the_role_configuration_with_and_without_the_offsite_repository():
    local = render_config()
    assert 'repo1-path=/var/lib/pgbackrest' in local and 'repo2' not in local
    assert '[soulnear]\npg1-path=/var/lib/postgresql/data' in local
    offsite = render_config(pitr_s3_bucket='b', pitr_s3_endpoint='s3.example.net',
                            pitr_s3_key='k', pitr_s3_key_secret='s', pitr_s3_ca='PEM',
                            pitr_s3_cipher_pass='p' * 30, pitr_s3_verify_tls=False)
    for line in ('repo2-type=s3', 'repo2-s3-bucket=b', 'repo2-cipher-type=aes-256-cbc', 'repo2-cipher-pass=' + 'p' * 30,
                 'repo2-storage-verify-tls=n', 'repo2-storage-ca-file=/etc/pgbackrest/s3-ca.pem',
                 'repo2-s3-uri-style=path'):
        assert line + '\n' in offsite, line
    plain = render_config(pitr_s3_bucket='b', pitr_s3_cipher_type='none')
    assert 'repo2-cipher-type=none' in plain and 'repo2-cipher-pass' not in plain


# -- the recovery point a restore to latest proves (issue 26) ----------------------------------------------------

SYSTEM = '7713573631087333403'


def _record(seen, samples):
    return dict(system_identifier=SYSTEM, recorded_at=seen, progress=[[at, SYSTEM, 1, xid] for at, xid in samples])


def test_the_recovery_point_is_proven_against_the_archive_and_the_monitors_samples():
    from ansible.module_utils.soulnear.pitr_restore import recovery_point
    end = datetime.datetime(2026, 12, 6, 18, 20, 0, tzinfo=UTC)
    seen = end.timestamp() + 30
    samples = [(end.timestamp() - 120, 900), (end.timestamp() - 60, 1000), (end.timestamp() + 20, 1400)]
    # Everything the archive holds is back, and every transaction begun 75 s before the last sight of the server.
    good = recovery_point(end, end, 1200, _record(seen, samples), SYSTEM, 1, 60)
    assert good['ok'] and good['expected_next_xid'] == 1000 and good['problems'] == []
    # The chaos breach: the recovery reached the archive's end, but that end was minutes old (archiving stalled).
    stalled = recovery_point(end, end, 950, _record(seen, samples), SYSTEM, 1, 60)
    assert not stalled['ok'] and 'transactions the database had begun by' in stalled['problems'][0]
    assert 'at transaction 950 where it had reached 1000' in stalled['problems'][0]
    # The recovery stopped before the last archived commit: a gap in the archive.
    gap = recovery_point(end - datetime.timedelta(minutes=3), end, 1200, None, SYSTEM, 1, 60)
    assert not gap['ok'] and 'before the last commit in the archive' in gap['problems'][0]
    # Samples of another cluster or another timeline, or none old enough, prove nothing either way.
    other = recovery_point(end, end, 10, _record(seen, samples), '42', 1, 60)
    assert other['ok'] and other['expected_next_xid'] is None
    assert recovery_point(end, end, 10, _record(seen, samples), SYSTEM, 2, 60)['ok']
    young = recovery_point(end, end, 10, _record(seen, [(seen - 10, 5000)]), SYSTEM, 1, 60)
    assert young['ok'] and young['expected_next_xid'] is None


def test_the_guard_keeps_a_sample_when_the_server_moved():
    from ansible.module_utils.soulnear.guard import PROGRESS_KEPT, _progress
    seen = dict(system_identifier=SYSTEM, timeline=1, next_xid=10)
    samples = _progress([], seen, 100.0)
    assert samples == [[100.0, SYSTEM, 1, 10]]
    assert _progress(samples, seen, 160.0) == samples  # idle: the sample before still says it
    moved = _progress(samples, dict(seen, next_xid=25), 220.0)
    assert moved[-1] == [220.0, SYSTEM, 1, 25]
    for i in range(PROGRESS_KEPT + 5):
        moved = _progress(moved, dict(seen, next_xid=30 + i), 300.0 + i)
    assert len(moved) == PROGRESS_KEPT and moved[-1][3] == 30 + PROGRESS_KEPT + 4
