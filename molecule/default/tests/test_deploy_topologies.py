"""The topologies beyond one server (README, "When one server is not enough"), on the converged VPSes:

- database host + bot host: the first VPS runs the database (and a bot), the second VPS only a bot, which reaches
  the database over the private network with TLS verified against the database host's own CA;
- an external database (a managed PostgreSQL): the second VPS is then moved to a PostgreSQL the project did not
  deploy (a TLS-only container on the private network, its own CA), the way an operator moves to a managed
  service: the data-loss guard refuses the empty endpoint, the operator accepts it, the deploy creates the app role
  and database with the admin credentials, applies the migrations from the bot host, reports the settings the
  provider controls, and backups run in a client container on the bot host - a backup and restore round trip.

The tests reach the second VPS by name (not through testinfra's `host`, which is the first VPS's tests' fixture).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import testinfra
import yaml

from conftest import (DB_HOST_IP, PROJECT, SUBNET, bot_instance_name, instance_name, operator_inventory, psql,
                      wait_healthy)

BOT_HOST_IP = SUBNET + '.11'
MANAGED_IP = SUBNET + '.20'
CA = '/etc/soulnear/db-ca.crt'


def vps(name):
    return testinfra.get_host('docker://' + name)


@pytest.fixture(scope='module')
def db_host():
    return vps(instance_name())


@pytest.fixture(scope='module')
def bot_host():
    return vps(bot_instance_name())


def bot_connect(bot_host, host, sslrootcert, sql='SELECT 1'):
    """Run sql from the bot's container on the bot host, as the app role, with sslmode=verify-full."""
    code = ('import os, psycopg2; c = psycopg2.connect(host=%r, port=5432, user=os.environ["POSTGRES_USER"], '
            'password=os.environ["POSTGRES_PASSWORD"], dbname=os.environ["POSTGRES_DB"], sslmode="verify-full", '
            'sslrootcert=%r, connect_timeout=5); cur = c.cursor(); cur.execute(%r); print(cur.fetchone()[0])'
            % (host, sslrootcert, sql))
    return bot_host.run('docker exec soulnear_bot python3 -c %s', code)


def test_the_bot_host_runs_only_the_bot(bot_host):
    assert wait_healthy(bot_host, names=('soulnear_bot',)) == {'soulnear_bot': 'running healthy'}
    assert bot_host.run('docker inspect soulnear_postgres').rc != 0  # no database container here
    assert bot_host.file(CA).exists and bot_host.file(CA).mode == 0o644
    env = bot_host.check_output('grep -E "^POSTGRES_(HOST|SSLMODE|SSLROOTCERT)=" /etc/soulnear/app.env')
    assert sorted(env.split()) == sorted(['POSTGRES_HOST=' + DB_HOST_IP, 'POSTGRES_SSLMODE=verify-full',
                                          'POSTGRES_SSLROOTCERT=' + CA])
    # The database host takes the backups, the physical ones too.
    assert not bot_host.file('/etc/cron.d/soulnear-backup').exists
    assert not bot_host.file('/etc/cron.d/soulnear-pitr').exists


def test_the_bot_reaches_the_database_host_over_verified_tls(db_host, bot_host):
    wait_healthy(db_host)
    sessions = psql(db_host, "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                             "WHERE a.client_addr = '%s' AND a.usename = 'soulnear' AND s.ssl" % BOT_HOST_IP)
    assert int(sessions) >= 1, 'no TLS session from the bot host'
    assert bot_connect(bot_host, DB_HOST_IP, CA).stdout.strip() == '1'

    # A CA that did not sign the server's certificate: refused before anything is sent.
    bot_host.check_output('openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=wrong -keyout /tmp/wrong.key '
                          '-out /tmp/wrong-ca.crt 2>/dev/null')
    bot_host.check_output('docker cp /tmp/wrong-ca.crt soulnear_bot:/tmp/wrong-ca.crt')
    wrong = bot_connect(bot_host, DB_HOST_IP, '/tmp/wrong-ca.crt')
    assert wrong.rc != 0 and 'certificate verify failed' in wrong.stderr, wrong.stderr


def test_the_bot_hosts_health_report_checks_the_database_over_the_network(bot_host):
    report = bot_host.run('soulnear health')
    assert report.rc == 0, report.stdout + report.stderr
    assert 'db_container  skip not checked: the database at %s:5432 is external' % DB_HOST_IP in report.stdout
    assert 'bot_container ok' in report.stdout and 'database      ok' in report.stdout


# -- TLS enforced by the server (issue 23): what the database host accepts from the bot host ---------------------
def login_from_the_bot_host(bot_host, user, password, sslmode):
    """psql from the bot host's own address (a throwaway client container on the host's network, the database
    client image the deploy put there) to the database host; the password on standard input, never a command
    line. Returns (rc, output): on success 'ssl=t|...' of the session itself."""
    image = json.loads(bot_host.file('/etc/soulnear/soulnear.json').content_string)['db']['client_image']
    script = ('read -r PGPASSWORD; export PGPASSWORD; exec psql -X -w -At "$0" -c '
              '"SELECT \'ssl=\' || ssl || \'|\' || host(inet_client_addr()) FROM pg_stat_ssl '
              'WHERE pid = pg_backend_pid()"')
    conninfo = ('host=%s port=5432 dbname=soul_bot user=%s sslmode=%s sslrootcert=/tmp/db-ca.crt '
                'connect_timeout=10' % (DB_HOST_IP, user, sslmode))
    out = bot_host.run("printf '%%s\\n' %s | docker run --rm -i --network host -v %s:/tmp/db-ca.crt:ro %s sh -c %s %s",
                       password, CA, image, script, conninfo)
    return out.rc, ' '.join((out.stdout + out.stderr).split())


def app_password(bot_host):
    env = bot_host.file('/etc/soulnear/app.env').content_string
    return next(line.split('=', 1)[1] for line in env.splitlines() if line.startswith('POSTGRES_PASSWORD='))


def test_the_database_host_refuses_a_login_without_tls_from_the_bot_host(db_host, bot_host):
    wait_healthy(db_host)
    rc, out = login_from_the_bot_host(bot_host, 'soulnear', app_password(bot_host), 'disable')
    assert rc != 0, out
    assert ('pg_hba.conf rejects connection for host "%s", user "soulnear"' % BOT_HOST_IP) in out, out
    assert 'no encryption' in out, out
    # The same login over verified TLS works: it is the encryption that was refused, not the role or its password.
    rc, out = login_from_the_bot_host(bot_host, 'soulnear', app_password(bot_host), 'verify-full')
    assert rc == 0 and out == 'ssl=true|%s' % BOT_HOST_IP, out


def test_the_database_host_refuses_the_superuser_from_the_bot_host_even_over_tls(db_host, bot_host):
    password = db_host.check_output('cat /etc/soulnear/postgres/secrets/superuser_password')
    assert password
    rc, out = login_from_the_bot_host(bot_host, 'postgres', password, 'verify-full')
    assert rc != 0, out
    assert ('pg_hba.conf rejects connection for host "%s", user "postgres"' % BOT_HOST_IP) in out, out
    assert 'SSL encryption' in out, out  # the TLS handshake succeeded; the rule refused the superuser
    rc, out = login_from_the_bot_host(bot_host, 'postgres', password, 'disable')
    assert rc != 0 and 'no encryption' in out, out
    # The superuser still logs in on the database host itself (its modules, backups, make shell-db).
    assert psql(db_host, 'SELECT 1') == '1'
    # The host commands of the bot host use the app role: the server refuses them nothing.
    config = json.loads(bot_host.file('/etc/soulnear/soulnear.json').content_string)['db']
    assert config['superuser'] == 'soulnear' and config['superuser_password'] != password


def test_the_ca_key_is_outside_everything_the_database_container_mounts(db_host, bot_host):
    mounts = json.loads(db_host.check_output("docker inspect -f '{{json .Mounts}}' soulnear_postgres"))
    binds = [m['Source'] for m in mounts if m.get('Type') == 'bind']
    assert '/etc/soulnear/postgres/tls' in binds, mounts
    for source in binds:
        found = db_host.run("find %s '(' -name ca.key -o -name ca.srl ')' -print", source)
        assert found.stdout.strip() == '', (source, found.stdout)
    assert 'ca.key' not in db_host.check_output('docker exec soulnear_postgres ls -a /etc/soulnear-tls')
    ca_dir = db_host.file('/etc/soulnear/postgres/tls-ca')
    assert ca_dir.is_directory and ca_dir.mode == 0o700 and ca_dir.user == 'root'
    key = db_host.file('/etc/soulnear/postgres/tls-ca/ca.key')
    assert key.exists and key.mode & 0o077 == 0
    # It is the key of the CA the bot host trusts (moved, never made again).
    key_public = db_host.check_output('openssl pkey -pubout -in /etc/soulnear/postgres/tls-ca/ca.key')
    ca_public = db_host.check_output('openssl x509 -noout -pubkey -in /etc/soulnear/postgres/tls/ca.crt')
    assert key_public == ca_public
    assert bot_host.file(CA).content_string == db_host.file('/etc/soulnear/postgres/tls/ca.crt').content_string


# -- moving the bot host to a managed PostgreSQL ------------------------------------------------------------------
def ansible(inventory, playbook, *args, timeout=900):
    _inventory, password_file = operator_inventory()
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_FORCE_COLOR='0')
    return subprocess.run([os.path.join(PROJECT, '.venv', 'bin', 'ansible-playbook'), '-i', inventory,
                           '--vault-password-file', password_file, os.path.join(PROJECT, playbook)] + list(args),
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def managed(tmp_path_factory):
    """A TLS-only PostgreSQL the project did not deploy, on the VPSes' private network (tests/support/externaldb.py)."""
    sys.path.insert(0, os.path.join(PROJECT, 'tests', 'support'))
    from externaldb import ExternalPg  # noqa: PLC0415 - the project's test helpers, not a package
    server = ExternalPg(tmp_path_factory.mktemp('managed'), network=instance_name() + '-net', address=MANAGED_IP)
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope='module')
def managed_inventory(managed, tmp_path_factory):
    """The operator's inventory for the bot host alone, pointed at the managed server."""
    full, _password = operator_inventory(both=True)
    directory = tmp_path_factory.mktemp('managed-inventory') / 'inventory'
    shutil.copytree(os.path.dirname(full), str(directory))
    with open(full) as handle:
        hosts = yaml.safe_load(handle)
    server = hosts['soulnear']['hosts'][bot_instance_name()]
    server.update(soulnear_db_mode='external', soulnear_db_host=MANAGED_IP, soulnear_db_ca_file=managed.ca_file,
                  vault_postgres_password=managed.password)  # the provider's admin login (a test value)
    inventory = dict(soulnear=dict(hosts={bot_instance_name(): server}))
    path = directory / 'hosts.yml'
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return str(path)


def managed_query(managed, sql):
    return managed.query(sql, db='soul_bot')


def test_moving_to_a_managed_database_is_refused_until_the_operator_accepts_it(managed, managed_inventory,
                                                                               bot_host):
    refused = ansible(managed_inventory, 'deploy.yml')
    assert refused.returncode != 0
    assert 'DATA LOSS SUSPECTED' in refused.stdout, refused.stdout[-3000:]
    # The role and the database were created with the admin login (before the guard), nothing inside them.
    assert managed_query(managed, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    assert wait_healthy(bot_host, names=('soulnear_bot',))  # the old bot still runs against the database host

    accepted = ansible(managed_inventory, 'playbooks/guard.yml', '-e', 'restore_guard_clear=true',
                       '-e', 'restore_confirm=soul_bot')
    assert accepted.returncode == 0, accepted.stdout[-3000:]


def test_deploy_to_the_managed_database(managed, managed_inventory, bot_host):
    started = time.time()
    deploy = ansible(managed_inventory, 'deploy.yml')
    assert deploy.returncode == 0, deploy.stdout[-5000:]
    print('deploy to the managed database: %.0f s' % (time.time() - started))
    assert 'Settings controlled by the server' in deploy.stdout
    assert 'max_connections is 100 (wanted 200)' in deploy.stdout
    assert 'db_container  skip not checked: the database at %s:5432 is external' % MANAGED_IP in deploy.stdout
    owner = managed_query(managed, "SELECT tableowner FROM pg_tables WHERE tablename = 'users'")
    assert owner == [('soulnear',)]
    applied_by = managed_query(managed, 'SELECT DISTINCT applied_by FROM schema_migrations')
    assert [row[0] for row in applied_by] == ['ansible@%s' % bot_instance_name()]  # migrated from the bot host
    assert managed_query(managed, 'SELECT setting FROM pg_settings WHERE name = %s' % "'max_connections'") == [('100',)]
    assert wait_healthy(bot_host, names=('soulnear_bot',))
    sessions = managed.query("SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                             "WHERE a.client_addr = '%s' AND a.application_name = 'soulnear_bot' AND s.ssl"
                             % BOT_HOST_IP)
    assert sessions[0][0] >= 1

    again = ansible(managed_inventory, 'deploy.yml')
    assert again.returncode == 0 and ' changed=0 ' in again.stdout, again.stdout[-3000:]


def test_backup_and_restore_round_trip_on_the_bot_host(managed, managed_inventory, bot_host):
    managed.query("INSERT INTO users (id, username) SELECT g, 'before-' || g FROM generate_series(1, 300) g",
                  db='soul_bot')
    backup = ansible(managed_inventory, 'playbooks/backup.yml')
    assert backup.returncode == 0, backup.stdout[-3000:]
    assert 'Backed up soul_bot' in backup.stdout
    assert bot_host.run('docker ps -a --filter ancestor=soulnear/postgres:15 -q').stdout.strip() == ''  # --rm
    managed.query("INSERT INTO users (id, username) VALUES (100001, 'after')", db='soul_bot')
    managed.query("DELETE FROM users WHERE id <= 100", db='soul_bot')

    restore = ansible(managed_inventory, 'playbooks/restore.yml', '-e', 'restore_confirm=soul_bot')
    assert restore.returncode == 0, restore.stdout[-3000:]
    assert managed_query(managed, "SELECT count(*), min(id), max(id) FROM users WHERE username LIKE 'before-%'") \
        == [(300, 1, 300)]
    assert managed_query(managed, 'SELECT count(*) FROM users WHERE id = 100001') == [(0,)]
    assert wait_healthy(bot_host, names=('soulnear_bot',))
