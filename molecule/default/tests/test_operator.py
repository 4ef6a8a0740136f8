"""The operator's path over SSH (README, "Against a real server"): make targets against the operator's
inventory - a non-root sudo user, inline-vaulted secrets, a vault password file, a jump host."""

import os
import re
import shutil

import yaml

from conftest import operator_inventory, run_make, wait_healthy


def test_ps_needs_no_vault_password(host):
    wait_healthy(host)
    proc = run_make('ps', vault=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith('soulnear_postgres') and '(healthy)' in line for line in lines), proc.stdout
    assert any(line.startswith('soulnear_bot') and '(healthy)' in line for line in lines), proc.stdout


def test_lock_status_needs_no_vault_password(host):
    proc = run_make('lock-status', vault=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'deploy lock /var/lib/soulnear/deploy.lock: not held' in ' '.join(proc.stdout.split())


def test_health_and_backup_with_the_vault_password_file(host):
    health = run_make('health')
    assert health.returncode == 0, health.stdout[-3000:] + health.stderr
    assert 'healthy:' in health.stdout and 'database      ok' in health.stdout
    # A report changes nothing on the host (issue 23), also when the host's copy of the library differs.
    host.run('echo "# older copy" >> /opt/soulnear/lib/soulnear/results.py')
    again = run_make('health')
    assert again.returncode == 0 and re.search(r'changed=0 ', again.stdout), again.stdout[-2000:]
    assert host.run('tail -n 1 /opt/soulnear/lib/soulnear/results.py').stdout.strip() == '# older copy'
    host.run("sed -i '$ d' /opt/soulnear/lib/soulnear/results.py")
    backup = run_make('backup')
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr
    assert '.dump' in backup.stdout and 'sha256:' in backup.stdout
    missing = run_make('health', vault=False)
    assert missing.returncode != 0 and 'vault' in (missing.stdout + missing.stderr).lower()


def test_make_reaches_a_host_behind_a_jump_host(host, tmp_path):
    """ProxyJump from the inventory's ansible_ssh_common_args is honoured by make ps as by Ansible (the VPS is
    its own jump host here: the connection goes through its sshd twice)."""
    inventory, _password = operator_inventory()
    jumped = tmp_path / 'inventory'
    shutil.copytree(os.path.dirname(inventory), str(jumped))
    with open(inventory) as handle:
        hosts = yaml.safe_load(handle)
    (_name, server), = hosts['soulnear']['hosts'].items()
    key, common = server['ansible_ssh_private_key_file'], server['ansible_ssh_common_args']
    server['ansible_ssh_common_args'] = '%s -o ProxyCommand="ssh %s -i %s -W %%h:%%p deploy@%s"' % (
        common, common, key, server['ansible_host'])
    (jumped / 'hosts.yml').write_text(yaml.safe_dump(hosts))
    proc = run_make('ps', 'INVENTORY=%s' % (jumped / 'hosts.yml'), vault=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'soulnear_bot' in proc.stdout
    # The same command without the jump fails when the proxy is broken: the option is really used.
    server['ansible_ssh_common_args'] = '%s -o ProxyCommand="false"' % common
    (jumped / 'hosts.yml').write_text(yaml.safe_dump(hosts))
    broken = run_make('ps', 'INVENTORY=%s' % (jumped / 'hosts.yml'), vault=False)
    assert broken.returncode != 0
