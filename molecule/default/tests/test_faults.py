"""A fast subset of the fault scenarios of `make chaos` (scripts/chaos.py, the same code) on the converged VPS:
each with the writer committing ~40 rows/s through the fault and a count of acknowledged rows missing after it.
Every test leaves the deployment healthy with the standard bot. The whole table (reboot, Docker restart, lost
volume, migration cut, wrong password, ...) is `make chaos`.
"""

import os
import shlex
import sys

import pytest
from conftest import PROJECT, run_playbook, run_playbook_background, wait_healthy

sys.path.insert(0, os.path.join(PROJECT, 'scripts'))
import chaos  # noqa: E402


def host_sh(host):
    def sh(cmd, timeout=300):
        result = host.run('timeout %d bash -c %s' % (int(timeout), shlex.quote(cmd)))
        return result.rc, result.stdout, result.stderr
    return sh


@pytest.fixture(scope='module')
def lab(host):
    return chaos.Lab(host_sh(host), run_playbook, playbook_background=run_playbook_background)


@pytest.fixture
def serving(host, lab):
    """Healthy before, and healthy again after the fault, which is then acknowledged as an operator would after an
    incident: the diagnostics of the tests after it (make diagnose) report what happens from then on."""
    wait_healthy(host)
    yield lab
    wait_healthy(host)
    lab.acknowledge()


def assert_clean(result):
    assert result['recovered'], result
    assert result['acked'] > 0 and result['lost'] == 0, result


def test_killed_database_is_restarted_at_the_first_check(serving):
    """docker kill: a manual stop to Docker, so only the monitor brings it back - at its next run, not its second."""
    result = chaos.fault_kill_database(serving, limit=150)
    assert_clean(result)
    assert result['seconds'] <= 150
    assert [n for n in result['notes'] if 'recovered by restart' in n], result['notes']


def test_killed_postmaster_recovers_through_docker_and_crash_recovery(serving):
    result = chaos.fault_kill_postmaster(serving, limit=120)
    assert_clean(result)


def test_backup_disk_nearly_full_is_refused_cleanly(serving):
    result = chaos.fault_backup_disk_full(serving)
    assert_clean(result)


def test_corrupt_newest_backup_is_caught_refused_and_alerted(serving):
    result = chaos.fault_corrupt_backup(serving, alert_timeout=150)
    assert_clean(result)
