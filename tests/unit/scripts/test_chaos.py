"""make chaos without a sandbox: its table (fault, recovered, time to recover, rows acknowledged, rows lost), its
exit status, and the extra variables it passes to every playbook."""

import argparse
import io
import os
import sys

import pytest

from ansiblerun import ROOT

sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import chaos  # noqa: E402


def test_the_table_has_every_column_and_marks_what_did_not_recover():
    results = [(1, chaos.Result(fault='database container killed (docker kill)', recovered=True, seconds=73.7,
                                acked=748, lost=0, notes=['restarted by the monitor at its first check'])),
               (5, chaos.Result(fault='database stopped and kept down', recovered=False, seconds=None, acked=10,
                                lost=2, notes=[])),
               (6, chaos.Result(fault='database volume lost', recovered=True, seconds=300.0, acked=900, lost=120,
                                notes=[], expected_loss=True, lost_before_backup=0))]
    out = io.StringIO()
    chaos.print_table(results, [('no secret in -vvv output of the playbooks', True, 'clean')], out)
    lines = out.getvalue().splitlines()
    assert [c.strip() for c in lines[0].strip('|').split('|')] == [
        '#', 'fault', 'recovered', 'time to recover', 'rows acknowledged', 'rows lost']
    assert [c.strip() for c in lines[2].strip('|').split('|')] == [
        '1', 'database container killed (docker kill)', 'yes', '74 s', '748', '0']
    assert [c.strip() for c in lines[3].strip('|').split('|')][2:] == ['NO', '-', '10', '2']
    assert '120 (after the last backup; 0 before)' in lines[4]
    assert '  1. restarted by the monitor at its first check' in lines
    assert '| no secret in -vvv output of the playbooks | yes | clean |' in lines


def test_a_point_in_time_restore_names_its_own_window():
    result = chaos.Result(fault='database volume lost', recovered=True, seconds=105.5, acked=4772, lost=925, notes=[],
                          expected_loss='in the last 75 s before the loss', lost_before_backup=0)
    out = io.StringIO()
    chaos.print_table([(6, result)], [], out)
    assert '925 (in the last 75 s before the loss; 0 before)' in out.getvalue()


def test_a_data_loss_breach_is_not_recovered():
    """make chaos fault 6 lost acknowledged rows older than the window (issue 26): the row says NO, whatever the
    scenario set, and the rows-lost column says how many were promised."""
    result = chaos.Result(fault='database volume lost', recovered=True, seconds=87.5, acked=4884, lost=3213, notes=[],
                          expected_loss='in the last 75 s before the loss', lost_before_backup=238)
    out = io.StringIO()
    chaos.print_table([(6, result)], [], out)
    row = [c.strip() for c in out.getvalue().splitlines()[2].strip('|').split('|')]
    assert row[2] == 'NO' and row[5] == '3213 (238 before that!)'


def test_extra_vars_are_json_when_they_parse():
    parser = argparse.ArgumentParser()
    assert chaos.extra_vars(['soulnear_pitr_enabled=false', 'n=3', 'name=soul bot', 'quoted="x"'], parser) == dict(
        soulnear_pitr_enabled=False, n=3, name='soul bot', quoted='x')
    with pytest.raises(SystemExit):
        chaos.extra_vars(['no-equals-sign'], parser)
