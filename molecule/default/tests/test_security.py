"""Security checks of issue 10 on the converged VPS (the same checks `make chaos` runs, scripts/chaos.py): no
secret in -vvv output, in files on the host other than the 0600 secret files, or in PostgreSQL's log after a
password rotation; PostgreSQL reachable only from 127.0.0.1 and the private Docker network, scram-sha-256, no
trust over TCP; the bot a non-superuser without the superuser password; no FATAL line while the healthchecks
run. Every vault value of the operator's inventory is looked for.
"""

import os
import shlex
import sys
import time

import pytest
from conftest import PROJECT, run_playbook, run_playbook_background, wait_healthy

sys.path.insert(0, os.path.join(PROJECT, 'scripts'))
import chaos  # noqa: E402

SECRETS = ('postgres_password', 'app_db_password', 'bot_token', 'alert_telegram_token')
QUIET_SECONDS = 70  # one monitor run and several container healthchecks; `make chaos` watches 10 minutes


def vault_values():
    directory = os.path.join(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'], 'secrets')
    values = []
    for name in SECRETS:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path) as handle:
                values.append(handle.read().split()[0])
    assert len(values) >= 2, 'the run\'s secrets are missing from %s' % directory
    return values


@pytest.fixture(scope='module')
def lab(host):
    def sh(cmd, timeout=300):
        result = host.run('timeout %d bash -c %s' % (int(timeout), shlex.quote(cmd)))
        return result.rc, result.stdout, result.stderr
    wait_healthy(host)
    lab = chaos.Lab(sh, run_playbook, playbook_background=run_playbook_background)
    lab.log_start = (chaos.log_size(lab), time.time())
    return lab


def test_no_secret_in_vvv_output(lab):
    secrets = vault_values()
    for book in ('playbooks/health.yml', 'playbooks/lock.yml'):
        proc = run_playbook(book, '-vvv')
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text[-3000:]
        assert [s[:4] for s in secrets if s in text] == [], '%s -vvv prints a secret' % book


def test_secrets_only_in_the_0600_secret_files(lab):
    assert chaos.check_secret_files(lab, vault_values()) == []


def test_postgres_only_on_localhost_and_the_private_network_scram_and_the_bot_no_superuser(lab):
    assert chaos.check_network(lab) == []


def test_no_fatal_line_while_the_healthchecks_run(lab):
    """Before the rotation below (whose moment of a new password the bot's pool may notice)."""
    start, since = lab.log_start
    time.sleep(max(0, QUIET_SECONDS - (time.time() - since)))
    assert chaos.postgres_log_fatals(lab, start) == []


def test_no_password_in_the_postgres_log_after_a_rotation(host, lab):
    start = chaos.log_size(lab)
    new = 'Rotated-%d-secret' % time.time()
    try:
        rotated = run_playbook('deploy.yml', '--tags', 'postgres', '-e', 'vault_app_db_password=%s' % new)
        assert rotated.returncode == 0, rotated.stdout[-3000:]
    finally:
        back = run_playbook('deploy.yml', '--tags', 'postgres')
    assert back.returncode == 0, back.stdout[-3000:]
    rc, log, _ = lab.sh('tail -c +%d /var/log/soulnear/postgres/postgresql.log' % (start + 1))
    old = vault_values()[1]
    assert new not in log and old not in log, 'a password reached the PostgreSQL log'
    wait_healthy(host)

