"""Helpers for the Molecule verify tests: the deployed VPS is testinfra's `host`."""

import os
import subprocess
import time

import pytest

PROJECT = os.environ.get('MOLECULE_PROJECT_DIRECTORY', os.path.abspath(os.path.join(os.path.dirname(__file__),
                                                                                   '..', '..', '..')))
DB = 'soulnear_postgres'
BOT = 'soulnear_bot'
# The VPSes' private network (molecule.yml): the first VPS, the database host, serves the second on .10.
SUBNET = os.environ.get('SOULNEAR_MOLECULE_SUBNET', '10.213.77')
DB_HOST_IP = SUBNET + '.10'


def psql(host, sql, db='soul_bot'):
    """Run SQL as postgres inside the database container on the VPS; returns stripped output.

    Over TCP (tcp_keepalives_* read 0 on a Unix-socket session), with the password from the
    container's mounted secret file: initdb ran with --auth-host=scram-sha-256.
    """
    script = ('PGPASSWORD="$(cat /run/secrets/soulnear/superuser_password)" '
              'psql -X -h 127.0.0.1 -U postgres -d "$0" -Atc "$1"')
    return host.check_output('docker exec %s sh -c %s %s %s', DB, script, db, sql).strip()


def container_health(host, name):
    out = host.run('docker inspect -f "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}" %s',
                   name)
    return out.stdout.strip() if out.rc == 0 else 'missing'


def wait_healthy(host, names=(DB, BOT), timeout=240):
    deadline = time.time() + timeout
    states = {}
    while time.time() < deadline:
        states = dict((name, container_health(host, name)) for name in names)
        if all(state == 'running healthy' for state in states.values()):
            return states
        time.sleep(3)
    raise AssertionError('containers not healthy within %ss: %s' % (timeout, states))


def instance_name():
    """The Molecule platform's container (the VPS) on the controller's Docker engine."""
    return os.environ.get('SOULNEAR_MOLECULE_INSTANCE', 'soulnear-molecule')


def operator_inventory(both=False):
    """(hosts file, vault password file) of the operator's inventory converge wrote (SSH, inline vault), pointed
    at the VPSes' current addresses: the first VPS only (the tests are about it; same variables and groups as the
    full inventory), or both VPSes."""
    ephemeral = os.environ['MOLECULE_EPHEMERAL_DIRECTORY']
    writer = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'operator_inventory.py')
    hosts = subprocess.run([os.path.join(PROJECT, '.venv', 'bin', 'python'), writer, instance_name()]
                           + ([] if both else ['--first']), check=True, capture_output=True, text=True).stdout.strip()
    return hosts, os.path.join(ephemeral, 'vault-password')


def _playbook_command(playbook, args):
    """Playbooks run the way the operator runs them: over SSH with the operator's inventory."""
    inventory, password_file = operator_inventory()
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_FORCE_COLOR='0')
    binary = os.path.join(PROJECT, '.venv', 'bin', 'ansible-playbook')
    return [binary, '-i', inventory, '--vault-password-file', password_file,
            os.path.join(PROJECT, playbook)] + list(args), env


def run_make(target, *variables, timeout=900, vault=True):
    """`make TARGET` from the project against the operator's inventory; returns CompletedProcess (text)."""
    inventory, password_file = operator_inventory()
    args = ['make', '-s', target, 'INVENTORY=' + inventory] + list(variables)
    if vault:
        args.append('VAULT_PASSWORD_FILE=' + password_file)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_FORCE_COLOR='0')
    return subprocess.run(args, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def run_playbook(playbook, *args, timeout=900):
    """ansible-playbook from the project against Molecule's inventory; returns CompletedProcess (text)."""
    cmd, env = _playbook_command(playbook, args)
    return subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout)


def run_playbook_background(playbook, *args):
    """The same, started in the background; communicate() returns (stdout+stderr, None)."""
    cmd, env = _playbook_command(playbook, args)
    return subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def healthy(host):
    """The deployment is healthy before (and is expected to be after) the test."""
    return wait_healthy(host)


def bot_instance_name():
    """The second VPS: a bot host only (molecule.yml), serving the topology tests."""
    return instance_name() + '-bot'


def pytest_collection_modifyitems(config, items):
    """testinfra runs every `host` test on every VPS. The tests are about the first VPS (the database host and a bot
    host, the single-host deployment in full); the bot host has its own module, test_deploy_topologies.py, which
    reaches it by name. Runs of the first VPS's tests on the second are deselected, not skipped."""
    marker = '//%s]' % bot_instance_name()
    dropped = [item for item in items if item.nodeid.endswith(marker)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.nodeid.endswith(marker)]
