"""The log reading behind diagnose(): timestamps, the look-back window and tails of big files."""

from datetime import datetime, timezone

from ansible.module_utils.soulnear.diagnose import _line_time, diagnosis_summary, recent_lines, tail_lines

UTC = timezone.utc


def test_timestamps_of_postgres_journal_and_dmesg_lines():
    assert _line_time('2025-03-01 12:00:05.123 UTC [42] FATAL:  x') == datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)
    assert _line_time('2025-03-01T14:00:05+0200 vps kernel: y') == datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)
    assert _line_time('2025-03-01T07:00:05,123456-05:00 Out of memory') == datetime(2025, 3, 1, 12, 0, 5,
                                                                                   tzinfo=UTC)
    local = datetime(2025, 3, 1, 12, 0, 5).astimezone(UTC)
    assert _line_time('2025-03-01 12:00:05 no zone') == local
    assert _line_time('DETAIL:  continuation line') is None
    assert _line_time('2025-13-45 99:00:00 UTC broken') is None


def test_window_keeps_continuation_lines_with_their_entry():
    since = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    lines = ['2025-03-01 11:59:59.000 UTC [1] FATAL:  old',
             'DETAIL:  belongs to old',
             '2025-03-01 12:00:00.000 UTC [2] FATAL:  new',
             'DETAIL:  belongs to new',
             'no timestamp at all']
    assert recent_lines(lines, since) == lines[2:]
    assert recent_lines(['untimed first line'], since) == ['untimed first line']


def test_tail_of_a_file_bigger_than_one_block(tmp_path):
    path = tmp_path / 'big.log'
    path.write_text(''.join('line %06d %s\n' % (i, 'x' * 100) for i in range(5000)))
    tail = tail_lines(str(path), 3)
    assert [t.split()[1] for t in tail] == ['004997', '004998', '004999']
    assert len(tail_lines(str(path), 10000)) == 5000


def test_summary_lists_only_anomalies():
    assert diagnosis_summary([]) == ['No anomalies found']
    summary = diagnosis_summary([dict(check='disk', message='/ is 95% full', fix='free space')])
    assert summary == ['1 anomaly found:', '[disk] / is 95% full -> free space']
    assert diagnosis_summary([dict(check='a', message='m', fix='f')] * 2)[0] == '2 anomalies found:'
