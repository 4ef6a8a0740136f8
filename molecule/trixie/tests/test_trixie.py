"""Verify deploy.yml on a Debian 13 (trixie) VPS: the deployment is healthy, the docker command is there (trixie's
docker.io only recommends docker-cli), the engine got DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1 because this VPS is a
container with a read-only /proc/sys (docs/debian.md), and the docker_host role repairs a host whose docker command
is missing - a check mode run says so first and changes nothing, a second run changes nothing."""

import json
import os
import re
import subprocess
import time

PROJECT = os.environ.get('MOLECULE_PROJECT_DIRECTORY', os.path.abspath(os.path.join(os.path.dirname(__file__),
                                                                                   '..', '..', '..')))
DB = 'soulnear_postgres'
BOT = 'soulnear_bot'
DROPIN = '/etc/systemd/system/docker.service.d/soulnear-ipv6.conf'
ALLOW = 'DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1'


def instance_name():
    return os.environ.get('SOULNEAR_MOLECULE_INSTANCE', 'soulnear-molecule') + '-trixie'


def wait_healthy(host, timeout=240):
    deadline = time.time() + timeout
    states = {}
    while time.time() < deadline:
        for name in (DB, BOT):
            out = host.run('docker inspect -f "{{.State.Status}} {{.State.Health.Status}}" %s', name)
            states[name] = out.stdout.strip() if out.rc == 0 else 'missing'
        if all(state == 'running healthy' for state in states.values()):
            return states
        time.sleep(3)
    raise AssertionError('containers not healthy within %ss: %s' % (timeout, states))


def docker_host_playbook(*args):
    """molecule/trixie/docker_host.yml (the docker_host role alone) over SSH with the operator's inventory that
    converge wrote; returns (rc, output, changed count)."""
    writer = os.path.join(PROJECT, 'molecule', 'default', 'operator_inventory.py')
    python = os.path.join(PROJECT, '.venv', 'bin', 'python')
    inventory = subprocess.run([python, writer, instance_name()], check=True, capture_output=True,
                               text=True).stdout.strip()
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_FORCE_COLOR='0')
    proc = subprocess.run([os.path.join(PROJECT, '.venv', 'bin', 'ansible-playbook'), '-i', inventory,
                           '--vault-password-file', os.path.join(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'],
                                                                 'vault-password'),
                           os.path.join(PROJECT, 'molecule', 'trixie', 'docker_host.yml')] + list(args),
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    changed = re.findall(r'\schanged=(\d+)\s', proc.stdout)
    return proc.returncode, proc.stdout + proc.stderr, int(changed[-1]) if changed else -1


def test_the_vps_runs_debian_13(host):
    assert host.system_info.distribution == 'debian'
    assert host.system_info.codename == 'trixie'


def test_both_containers_run_and_are_healthy(host):
    assert wait_healthy(host) == {DB: 'running healthy', BOT: 'running healthy'}


def test_the_docker_command_comes_from_docker_cli(host):
    assert host.check_output('command -v docker') == '/usr/bin/docker'
    assert host.package('docker-cli').is_installed
    assert host.check_output("docker version --format '{{.Server.Version}}'").startswith('26.')


def test_the_engine_tolerates_the_read_only_proc_sys_of_a_container_vps(host):
    # The VPS is a container: /proc/sys is read-only, where Docker 26 disables IPv6 on every container interface.
    assert host.run('test -w /proc/sys/net/ipv6/conf/all/disable_ipv6').rc != 0
    assert ALLOW in host.file(DROPIN).content_string
    assert ALLOW in host.check_output('systemctl show docker --property Environment')


def test_the_health_report_is_green(host):
    result = host.run('/opt/soulnear/bin/soulnear-health report --json')
    assert result.rc == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report['ok'] is True and report['failed'] == [], report


def test_docker_host_repairs_a_host_without_the_docker_command(host):
    # As if docker.io had been installed without recommends: the engine runs, the command is gone.
    host.run_expect([0], 'DEBIAN_FRONTEND=noninteractive apt-get remove --yes --quiet docker-cli')
    assert host.run('command -v docker').rc != 0
    rc, out, changed = docker_host_playbook('--check', '--diff')
    assert rc == 0 and changed >= 1, out[-3000:]
    assert host.run('command -v docker').rc != 0, 'the check mode run installed something'
    rc, out, changed = docker_host_playbook()
    assert rc == 0 and changed >= 1, out[-3000:]
    assert host.check_output('command -v docker') == '/usr/bin/docker'

    # The package still installed but its command deleted: apt's state=present sees nothing, the role reinstalls.
    host.run_expect([0], 'rm /usr/bin/docker')
    rc, out, changed = docker_host_playbook('--check')
    assert rc == 0 and changed >= 1 and 'reinstalls docker-cli' in out, out[-3000:]
    rc, out, changed = docker_host_playbook()
    assert rc == 0 and 'reinstall docker-cli' in out, out[-3000:]
    assert host.check_output('command -v docker') == '/usr/bin/docker'

    rc, out, changed = docker_host_playbook()
    assert rc == 0 and changed == 0, out[-3000:]
    assert wait_healthy(host) == {DB: 'running healthy', BOT: 'running healthy'}
