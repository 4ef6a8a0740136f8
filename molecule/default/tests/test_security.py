"""Security checks of issue 10 on the converged VPS (the same checks `make chaos` runs, scripts/chaos.py): no
secret in -vvv output, in files on the host other than the 0600 secret files, or in PostgreSQL's log after a
password rotation; PostgreSQL reachable only from 127.0.0.1 and the private Docker network, scram-sha-256, no
trust over TCP; the bot a non-superuser without the superuser password; no FATAL line while the healthchecks
run. Every vault value of the operator's inventory is looked for.
"""

import json
import os
import re
import shlex
import sys
import time

import pytest
from conftest import PROJECT, psql, run_playbook, run_playbook_background, wait_healthy

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


def test_the_exporter_connects_with_tls_when_the_server_serves_bot_hosts(host):
    """Issue 23: postgres_exporter (on after test_metrics; skipped when the metrics role is off) verifies the
    database host's certificate against the deployment's CA (sslmode verify-ca) and its session is encrypted."""
    if not host.service('prometheus-postgres-exporter').is_running:
        pytest.skip('the metrics role is off: no postgres_exporter on this host')
    if not json.loads(host.file('/etc/soulnear/soulnear.json').content_string)['db'].get('listen_address'):
        pytest.skip('this database host serves no bot host: its server has no TLS')
    env = host.file('/etc/soulnear/metrics/postgres-exporter.env').content_string
    assert '?sslmode=verify-ca&sslrootcert=/run/soulnear-postgres-exporter/db-ca.crt"' in env, env
    scrape = ('import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9187/metrics", timeout=20)'
              '.read().decode())')
    sessions = "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_activity a " \
               "JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'soulnear_metrics'"
    deadline = time.time() + 60
    while True:
        metrics = host.check_output('python3 -c %s', scrape)
        assert re.search(r'^pg_up 1$', metrics, re.M), [line for line in metrics.splitlines() if 'pg_up' in line]
        encrypted, plain = (int(n) for n in psql(host, sessions).split('|'))
        assert plain == 0, 'a session of the exporter without TLS'
        if encrypted or time.time() > deadline:
            break
        time.sleep(2)
    assert encrypted >= 1, 'no TLS session of the exporter after a scrape'
