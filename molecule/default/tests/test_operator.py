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


def test_a_sudo_password_from_become_password_file_without_a_terminal(host, tmp_path):
    """A user whose sudo asks for a password (a provider's default): with BECOME_PASSWORD_FILE both an on-host
    target (make ps, sudo -S) and a playbook target (make lock-status, --become-password-file) work with no
    terminal; without it they fail saying sudo needs the password, and the password is never printed."""
    password = 'molecule-sudo-%d' % os.getpid()
    host.run('id opsudo >/dev/null 2>&1 || useradd -m -s /bin/bash opsudo')
    host.run("printf 'opsudo:%s\\n' | chpasswd", password)
    host.run("printf 'opsudo ALL=(ALL) ALL\\n' > /etc/sudoers.d/opsudo && chmod 0440 /etc/sudoers.d/opsudo")
    host.run('install -d -o opsudo -m 0700 ~opsudo/.ssh && cp ~deploy/.ssh/authorized_keys ~opsudo/.ssh/ '
             '&& chown opsudo ~opsudo/.ssh/authorized_keys')
    try:
        inventory, _password = operator_inventory()
        other = tmp_path / 'inventory'
        shutil.copytree(os.path.dirname(inventory), str(other))
        with open(inventory) as handle:
            hosts = yaml.safe_load(handle)
        (_name, server), = hosts['soulnear']['hosts'].items()
        server['ansible_user'] = 'opsudo'
        (other / 'hosts.yml').write_text(yaml.safe_dump(hosts))
        secret = tmp_path / 'become'
        secret.write_text(password + '\n')
        target = 'INVENTORY=%s' % (other / 'hosts.yml')
        for make_target in ('ps', 'lock-status'):
            without = run_make(make_target, target, vault=False, timeout=300)
            assert without.returncode != 0, without.stdout + without.stderr
            assert 'password' in (without.stdout + without.stderr).lower(), without.stdout + without.stderr
        ps = run_make('ps', target, 'BECOME_PASSWORD_FILE=%s' % secret, vault=False, timeout=300)
        assert ps.returncode == 0 and 'soulnear_bot' in ps.stdout, ps.stdout + ps.stderr
        lock = run_make('lock-status', target, 'BECOME_PASSWORD_FILE=%s' % secret, vault=False)
        assert lock.returncode == 0, lock.stdout[-2000:] + lock.stderr
        assert 'not held' in ' '.join(lock.stdout.split())
        for output in (ps.stdout + ps.stderr, lock.stdout + lock.stderr):
            assert password not in output
    finally:
        host.run('rm -f /etc/sudoers.d/opsudo; userdel -r opsudo 2>/dev/null')
