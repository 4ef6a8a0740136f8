#!/usr/bin/env python3
"""Write the inventory an operator would write for the Molecule VPSes, by following the README literally:
copy inventory/production/, put the servers in hosts.yml (address, a non-root sudo user, its SSH key, the host
key known beforehand), ship the images as archives (no registry here), and put every secret in vault.yml as
an inline-vaulted value with a vault password file.

Two servers, as README's "When one server is not enough" describes: INSTANCE is the database host (group
soulnear_db, serving on its private address soulnear_db_listen_address) and a bot host; INSTANCE-bot, when it
exists, is a second bot host (group soulnear_bot) that reaches the database over the private network with TLS.

    operator_inventory.py INSTANCE          -> prints the inventory path; "written" on stderr when it (re)wrote it
    operator_inventory.py INSTANCE --first  -> the same inventory with the first VPS only (hosts-first.yml), for
                                               the tests about it: its variables and groups are the same, so a
                                               playbook run through it changes nothing the full one would not

The secrets are the Molecule run's own (MOLECULE_EPHEMERAL_DIRECTORY/secrets/, the files molecule.yml's
password lookups use), so every playbook run agrees on them. Idempotent: a second call rewrites nothing.
"""

import os
import secrets
import shutil
import subprocess
import sys
import time

import yaml

PROJECT = os.environ['MOLECULE_PROJECT_DIRECTORY']
EPHEMERAL = os.environ['MOLECULE_EPHEMERAL_DIRECTORY']
VAULT = os.path.join(PROJECT, '.venv', 'bin', 'ansible-vault')
INVENTORY = os.path.join(EPHEMERAL, 'operator-inventory')
SECRETS = ('postgres_password', 'app_db_password', 'bot_token', 'alert_telegram_token')


def secret(name):
    """The run's secret (created like Ansible's password lookup does: the value alone in the file)."""
    path = os.path.join(EPHEMERAL, 'secrets', name)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as handle:
            handle.write(secrets.token_urlsafe(24))
    with open(path) as handle:
        return handle.read().split()[0]


def address(instance):
    out = subprocess.run(['docker', 'inspect', '-f', '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}',
                          instance], check=True, capture_output=True, text=True).stdout.split()
    return out[0]


def known_host(ip, alias, path):
    """ssh-keyscan, as the README tells an operator to do before the first deploy; the keys are recorded under
    the VPS's name (HostKeyAlias), so a restart that gives it another address keeps them valid."""
    deadline = time.time() + 120
    while True:
        proc = subprocess.run(['ssh-keyscan', '-T', '5', ip], capture_output=True, text=True)
        if proc.stdout.strip():
            with open(path, 'a') as handle:
                for line in proc.stdout.splitlines():
                    if line and not line.startswith('#'):
                        handle.write(alias + ' ' + line.split(None, 1)[1] + '\n')
            return
        if time.time() > deadline:
            sys.exit('sshd on %s did not answer within 120 s: %s' % (ip, proc.stderr))
        time.sleep(2)


def instances(instance):
    """The VPSes of this run: the database host, and the second bot host when Molecule created it."""
    found = [instance]
    if subprocess.run(['docker', 'inspect', instance + '-bot'], capture_output=True).returncode == 0:
        found.append(instance + '-bot')
    return found


def write_first_only(hosts, instance, hosts_file):
    """hosts-first.yml: the inventory with the first VPS only, same variables and groups."""
    first = dict(hosts, soulnear=dict(hosts['soulnear'], hosts={instance: hosts['soulnear']['hosts'][instance]}))
    for group in ('soulnear_db', 'soulnear_bot'):
        if group in first:
            first[group] = dict(hosts={instance: None})
    path = os.path.join(os.path.dirname(hosts_file), 'hosts-first.yml')
    with open(path, 'w') as handle:
        yaml.safe_dump(first, handle, sort_keys=False)
    return path


def refresh(instance, hosts_file):
    """Point the inventory at the VPSes' current addresses (fixed in molecule.yml; checked all the same)."""
    with open(hosts_file) as handle:
        hosts = yaml.safe_load(handle)
    changed = False
    for name in instances(instance):
        server = hosts['soulnear']['hosts'][name]
        ip = address(name)
        if server['ansible_host'] != ip:
            server['ansible_host'] = ip
            if 'soulnear_db_listen_address' in server:
                server['soulnear_db_listen_address'] = ip
            changed = True
    if changed:
        with open(hosts_file, 'w') as handle:
            yaml.safe_dump(hosts, handle, sort_keys=False)
        write_first_only(hosts, instance, hosts_file)


def main():
    instance = sys.argv[1]
    hosts_file = os.path.join(INVENTORY, 'hosts.yml')
    first_only = os.path.join(INVENTORY, 'hosts-first.yml')
    if os.path.exists(hosts_file):
        refresh(instance, hosts_file)
        print(first_only if '--first' in sys.argv else hosts_file)
        return
    key = os.path.join(EPHEMERAL, 'id_ed25519')
    known_hosts = os.path.join(EPHEMERAL, 'known_hosts')
    if os.path.exists(known_hosts):
        os.remove(known_hosts)
    shutil.copytree(os.path.join(PROJECT, 'inventory', 'production'), INVENTORY)

    with open(hosts_file) as handle:
        hosts = yaml.safe_load(handle)
    example = hosts['soulnear']['hosts'].pop('bot-server')
    names = instances(instance)
    for name in names:
        ip = address(name)
        known_host(ip, name, known_hosts)
        server = dict(example, ansible_host=ip, ansible_user='deploy', ansible_ssh_private_key_file=key,
                      ansible_ssh_common_args='-o UserKnownHostsFile=%s -o HostKeyAlias=%s' % (known_hosts, name))
        if name == instance and len(names) > 1:
            server['soulnear_db_listen_address'] = ip  # serves the other bot host on the private network
        hosts['soulnear']['hosts'][name] = server
    if len(names) > 1:
        hosts['soulnear_db'] = dict(hosts={instance: None})
        hosts['soulnear_bot'] = dict(hosts=dict((name, None) for name in names))
    with open(hosts_file, 'w') as handle:
        yaml.safe_dump(hosts, handle, sort_keys=False)
    write_first_only(hosts, instance, hosts_file)

    main_vars = os.path.join(INVENTORY, 'group_vars', 'soulnear', 'main.yml')
    with open(main_vars, 'a') as handle:
        cache = os.path.join(PROJECT, '.cache', 'images')
        handle.write('\n# No registry here: the images as archives (README, "Against a real server").\n')
        yaml.safe_dump(dict(postgres_image='soulnear/postgres:15',
                            postgres_image_archive=os.path.join(cache, 'soulnear-postgres-15.tar'),
                            app_base_image='soulnear/python:3-bookworm',
                            app_base_image_archive=os.path.join(cache, 'soulnear-python-3-bookworm.tar')),
                       handle, sort_keys=False)
        if len(names) > 1:
            # Both VPSes run the bot (the tests check each bot host's own bot); the default, app_instances: one,
            # would run it on one of them only (docs/topologies.md).
            handle.write('\n# Every bot host runs its bot (docs/topologies.md, "Several bot hosts, one bot").\n')
            yaml.safe_dump(dict(app_instances='all'), handle, sort_keys=False)

    password_file = os.path.join(EPHEMERAL, 'vault-password')
    if not os.path.exists(password_file):
        with open(password_file, 'w') as handle:
            handle.write(secrets.token_urlsafe(24))
        os.chmod(password_file, 0o600)
    parts = ['---\n# Written by molecule/default/operator_inventory.py with ansible-vault encrypt_string.\n']
    for name in SECRETS:
        # The value on stdin: as an argument, a random secret starting with '-' is taken for an option (and
        # it would show in the process list).
        proc = subprocess.run([VAULT, 'encrypt_string', '--vault-password-file', password_file,
                               '--stdin-name', 'vault_' + name], input=secret(name), check=True,
                              capture_output=True, text=True)
        parts.append(proc.stdout)
    with open(os.path.join(INVENTORY, 'group_vars', 'soulnear', 'vault.yml'), 'w') as handle:
        handle.write(''.join(parts))
    print('written', file=sys.stderr)
    print(first_only if '--first' in sys.argv else hosts_file)


if __name__ == '__main__':
    main()
