"""A database host that serves bot hosts (issue 23, "TLS enforced by the server"), at the role level against a real
soulnear/postgres:15 container: the postgres role's tls.yml run by ansible-playbook on this machine (into a temporary
configuration directory), the container started with the role's mounts, and pg_server converging the role's TLS
settings (ssl, the certificate, hba_file) - one restart for hba_file, as restart.yml does.

- tls.yml: the CA key and serial outside the directory the container mounts (0700), the project's pg_hba.conf in it;
  a second run and a dry run change nothing; an existing deployment's CA key and serial are moved there once and its
  CA is kept (a certificate for a new address is signed by the same CA); two different CA keys are refused.
- the rules, over the network: a non-TLS login refused ("no encryption"), the app role over verified TLS accepted,
  the superuser over TLS refused; from this host (the published 127.0.0.1 port: the host's modules, the exporter)
  and from the Docker network, as before; inside the container (socket, 127.0.0.1 with a password, the healthcheck).
- a pg_hba.conf that drifted is written again and applied with a reload, no restart.
- the metrics role's postgres_exporter connection: verify-ca against the deployment's CA (mounted into the unit) on
  a host that serves bot hosts, sslmode=disable (as before) on one server.

"From the network" is this machine's own address on its outside interface (not a Docker bridge), published like
soulnear_db_listen_address: Docker forwards it without changing the client's address, as it does for a bot host.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import psycopg2
import pytest
import yaml

from ansiblerun import BIN, ROOT, run_module
from pgcontainer import IMAGE, PASSWORD, docker

APP, APP_PASSWORD = 'soulnear', 'tls-test-app-secret'
with open(os.path.join(ROOT, 'roles', 'postgres', 'vars', 'main.yml')) as _handle:
    TLS_SETTINGS = yaml.safe_load(_handle)['__postgres_tls_settings']


def outside_address():
    """This machine's address towards the outside (the route to 1.1.1.1), when it is no Docker network's."""
    route = subprocess.run(['ip', '-4', 'route', 'get', '1.1.1.1'], capture_output=True, text=True)
    found = re.search(r'\bsrc (\d+\.\d+\.\d+\.\d+)', route.stdout)
    if not found:
        return None
    bridges = subprocess.run(['ip', '-4', '-o', 'addr', 'show'], capture_output=True, text=True).stdout
    for line in bridges.splitlines():
        if found.group(1) + '/' in line and re.search(r'\b(docker\d*|br-[0-9a-f]+)\b', line):
            return None
    return found.group(1)


def changed_count(output):
    found = re.search(r'localhost\s+: ok=\d+\s+changed=(\d+)', output)
    assert found, output[-3000:]
    return int(found.group(1))


def sha(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class Lab:
    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.name = 'soulnear-tlstest-' + uuid.uuid4().hex[:8]
        self.network, self.container = self.name + '_net', self.name + '_postgres'
        self.address = outside_address()
        # The postgres role without its dependency (the soulnear role installs the host commands): tasks, templates,
        # vars and defaults are the role's own files.
        role = os.path.join(self.tmp, 'roles', 'postgres')
        os.makedirs(os.path.join(role, 'meta'))
        for part in ('tasks', 'templates', 'vars', 'defaults'):
            os.symlink(os.path.join(ROOT, 'roles', 'postgres', part), os.path.join(role, part))
        with open(os.path.join(role, 'meta', 'main.yml'), 'w') as handle:
            handle.write('---\ndependencies: []\n')
        self.book = os.path.join(self.tmp, 'tls.yml')
        with open(self.book, 'w') as handle:
            yaml.safe_dump([{'name': 'The TLS files of a database host', 'hosts': 'localhost', 'gather_facts': False,
                             'vars_files': [os.path.join(ROOT, 'roles', 'soulnear', 'defaults', 'main.yml')],
                             'tasks': [{'name': 'TLS', 'ansible.builtin.import_role': {
                                 'name': 'postgres', 'tasks_from': 'tls'}}]}], handle)
        self.port = self.local_port = None

    def config(self, name='postgres'):
        return os.path.join(self.tmp, name)

    def tls(self, config=None):
        return os.path.join(config or self.config(), 'tls')

    def play(self, *args, config=None, address=None):
        """tls.yml on this machine; (returncode, output)."""
        values = dict(postgres_config_dir=config or self.config(), soulnear_db_listen_address=address or self.address,
                      soulnear_name=self.name, soulnear_network=self.network, soulnear_db_container=self.container)
        path = os.path.join(self.tmp, 'vars.yml')
        with open(path, 'w') as handle:
            yaml.safe_dump(values, handle)
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_ROLES_PATH=os.path.join(self.tmp, 'roles'))
        proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', self.book,
                               '-e', '@' + path] + list(args), cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        return proc.returncode, proc.stdout + proc.stderr

    def start(self):
        """The database container as the postgres role runs it for a host serving bot hosts: on its network,
        published on 127.0.0.1 and on the listen address, the TLS directory mounted read-only."""
        docker('network', 'create', self.network)
        docker('run', '-d', '--name', self.container, '--network', self.network,
               '-p', '127.0.0.1::5432', '-p', self.address + '::5432',
               '--mount', 'type=bind,source=%s,target=/etc/soulnear-tls,readonly' % self.tls(),
               '-e', 'POSTGRES_PASSWORD=' + PASSWORD, '-e', 'POSTGRES_INITDB_ARGS=--auth-host=scram-sha-256', IMAGE)
        self.published()

    def published(self):
        ports = docker('port', self.container, '5432/tcp').stdout.split()
        self.local_port = int(next(p for p in ports if p.startswith('127.0.0.1:')).rsplit(':', 1)[1])
        self.port = int(next(p for p in ports if p.startswith(self.address + ':')).rsplit(':', 1)[1])
        deadline = time.time() + 90
        while True:
            try:
                self.connect('127.0.0.1', 'postgres', PASSWORD, port=self.local_port).close()
                return
            except psycopg2.OperationalError:
                assert time.time() < deadline, docker('logs', '--tail', '30', self.container).stderr
                time.sleep(0.3)

    def connect(self, host, user, password, sslmode='disable', port=None, **extra):
        conn = psycopg2.connect(host=host, port=port or self.port, user=user, password=password, dbname='postgres',
                                sslmode=sslmode, connect_timeout=5, **extra)
        conn.autocommit = True
        return conn

    def converge(self, tmp_path, *args):
        """pg_server as settings.yml / restart.yml run it: the superuser over the published 127.0.0.1 port."""
        params = dict(login_host='127.0.0.1', login_port=self.local_port, login_user='postgres',
                      login_password=PASSWORD, settings=TLS_SETTINGS, app_role=APP, app_password=APP_PASSWORD,
                      container=self.container, retries=0)
        rc, result, out = run_module(tmp_path, 'pg_server', params, *args)
        assert rc == 0, out
        return result

    def refused(self, host, user, password, sslmode, port=None, **extra):
        """The server's refusal, or None when the login worked."""
        try:
            self.connect(host, user, password, sslmode=sslmode, port=port, **extra).close()
            return None
        except psycopg2.OperationalError as exc:
            return ' '.join(str(exc).split())

    def in_container(self, *argv, env=()):
        args = ['exec']
        for item in env:
            args += ['-e', item]
        return docker(*(args + [self.container] + list(argv)), check=False)

    def started_at(self):
        return self.in_container('psql', '-XAtU', 'postgres', '-c', 'SELECT pg_postmaster_start_time()').stdout

    def remove(self):
        docker('rm', '-f', '-v', self.container, check=False)
        docker('network', 'rm', self.network, check=False)


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp('tls'))
    if not lab.address:
        pytest.skip('this machine has no address outside Docker\'s networks to stand in for a bot host\'s network')
    yield lab
    lab.remove()


def test_tls_files_the_ca_key_outside_the_mount_a_second_run_and_a_dry_run_change_nothing(lab):
    rc, out = lab.play()
    assert rc == 0 and changed_count(out) >= 2, out[-3000:]
    ca_dir = os.path.join(lab.config(), 'tls-ca')
    assert oct(os.stat(ca_dir).st_mode & 0o777) == '0o700' and sorted(os.listdir(ca_dir)) == ['ca.key', 'ca.srl']
    assert sorted(os.listdir(lab.tls())) == sorted(['ca.crt', 'pg_hba.conf', 'server-%s.crt' % lab.address,
                                                    'server.crt', 'server.key'])
    hba = open(os.path.join(lab.tls(), 'pg_hba.conf')).read()
    assert 'hostssl   all  "postgres"  0.0.0.0/0  reject' in hba and 'hostnossl all  all           ::/0' in hba
    for args in ((), ('--check', '--diff')):
        rc, out = lab.play(*args)
        assert rc == 0 and changed_count(out) == 0, out[-3000:]


def test_the_switch_to_the_projects_pg_hba_takes_one_restart(lab, tmp_path):
    lab.start()
    # The control: the image's own pg_hba.conf accepts a non-TLS login from the network.
    assert lab.refused(lab.address, 'postgres', PASSWORD, 'disable') is None
    first = lab.converge(tmp_path)
    assert set(first['changed_settings']) == set(TLS_SETTINGS) and first['restart_required'] == ['hba_file'], first
    docker('restart', '-t', '60', lab.container)
    lab.published()
    again = lab.converge(tmp_path)
    assert again['changed'] is False and again['restart_required'] == [], again


def test_over_the_network_tls_only_and_never_the_superuser(lab):
    ca = os.path.join(lab.tls(), 'ca.crt')
    no_tls = lab.refused(lab.address, APP, APP_PASSWORD, 'disable')
    assert no_tls and 'pg_hba.conf rejects connection for host "%s"' % lab.address in no_tls, no_tls
    assert 'no encryption' in no_tls
    conn = lab.connect(lab.address, APP, APP_PASSWORD, sslmode='verify-full', sslrootcert=ca)
    with conn.cursor() as cur:
        cur.execute('SELECT ssl, host(inet_client_addr()) FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
        assert cur.fetchone() == (True, lab.address)  # the client's own address: the hostssl lines apply
    conn.close()
    superuser = lab.refused(lab.address, 'postgres', PASSWORD, 'verify-full', sslrootcert=ca)
    assert superuser and 'rejects connection' in superuser and 'user "postgres"' in superuser, superuser
    assert 'no encryption' in lab.refused(lab.address, 'postgres', PASSWORD, 'disable')
    # A certificate from another CA: refused by the client before a password is sent.
    other = os.path.join(lab.tmp, 'other-ca.crt')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=other',
                    '-keyout', os.path.join(lab.tmp, 'other-ca.key'), '-out', other], check=True, capture_output=True)
    assert 'certificate verify failed' in lab.refused(lab.address, APP, APP_PASSWORD, 'verify-full', sslrootcert=other)


def test_this_host_and_the_container_itself_log_in_as_before(lab):
    # The host's modules and postgres_exporter: the published 127.0.0.1 port, forwarded from the network's gateway.
    conn = lab.connect('127.0.0.1', 'postgres', PASSWORD, port=lab.local_port)
    with conn.cursor() as cur:
        cur.execute('SELECT host(inet_client_addr())')
        gateway = cur.fetchone()[0]
    conn.close()
    subnet = docker('network', 'inspect', '-f', '{{(index .IPAM.Config 0).Subnet}}', lab.network).stdout.strip()
    assert gateway.rsplit('.', 1)[0] == subnet.split('/')[0].rsplit('.', 1)[0], (gateway, subnet)
    assert lab.refused('127.0.0.1', 'postgres', 'wrong', 'disable', port=lab.local_port)  # a password, not trust
    # A container on the deployment's network (a bot on this host): without TLS too.
    probe = docker('run', '--rm', '--network', lab.network, '-e', 'PGPASSWORD=' + APP_PASSWORD, IMAGE, 'psql', '-XAt',
                   'host=%s user=%s dbname=postgres sslmode=disable' % (lab.container, APP), '-c', 'SELECT 1',
                   check=False)
    assert probe.returncode == 0 and probe.stdout.strip() == '1', probe.stderr
    # Inside the container: the socket (make shell-db, pgBackRest), 127.0.0.1 with the password (pg_dump, restores),
    # the healthcheck.
    assert lab.in_container('psql', '-XAtU', 'postgres', '-c', 'SELECT 1').stdout.strip() == '1'
    local = lab.in_container('psql', '-XAt', '-h', '127.0.0.1', '-U', 'postgres', '-c', 'SELECT 1',
                             env=['PGPASSWORD=' + PASSWORD])
    assert local.returncode == 0 and local.stdout.strip() == '1', local.stderr
    assert lab.in_container('pg_isready', '-h', '127.0.0.1', '-U', 'postgres', '-d', 'postgres').returncode == 0
    rules = lab.in_container('psql', '-XAtU', 'postgres', '-c', "SELECT type, auth_method FROM pg_hba_file_rules "
                             "WHERE type LIKE 'host%' AND auth_method = 'trust'")
    assert rules.returncode == 0 and rules.stdout.strip() == ''
    # The CA key is nowhere the container sees.
    assert 'ca.key' not in lab.in_container('ls', '-a', '/etc/soulnear-tls').stdout


def test_a_drifted_pg_hba_is_written_again_and_reloaded_without_a_restart(lab):
    hba = os.path.join(lab.tls(), 'pg_hba.conf')
    with open(hba, 'w') as handle:
        handle.write('local all all trust\nhost all all all scram-sha-256\n')
    lab.in_container('psql', '-XAtU', 'postgres', '-c', 'SELECT pg_reload_conf()')
    time.sleep(1)
    assert lab.refused(lab.address, APP, APP_PASSWORD, 'disable') is None  # the drift took effect
    started = lab.started_at()
    rc, out = lab.play()
    assert rc == 0 and changed_count(out) == 2, out[-3000:]  # the file, and the reload
    assert re.search(r'TASK \[postgres : Reload PostgreSQL for the changed pg_hba.conf\][^\n]*\nchanged', out), out
    time.sleep(1)
    assert 'no encryption' in lab.refused(lab.address, APP, APP_PASSWORD, 'disable')
    assert lab.started_at() == started
    rc, out = lab.play()
    assert rc == 0 and changed_count(out) == 0, out[-3000:]


def test_an_existing_deployments_ca_is_moved_once_and_kept(lab):
    legacy = lab.config('legacy')
    shutil.copytree(lab.config(), legacy)
    for name in ('ca.key', 'ca.srl'):  # where the role kept them before
        os.rename(os.path.join(legacy, 'tls-ca', name), os.path.join(legacy, 'tls', name))
    os.rmdir(os.path.join(legacy, 'tls-ca'))
    kept = dict((name, sha(os.path.join(legacy, 'tls', name))) for name in ('ca.crt', 'ca.key', 'server.crt'))
    rc, out = lab.play('--check', config=legacy)
    assert rc == 0 and os.path.exists(os.path.join(legacy, 'tls', 'ca.key')), out[-3000:]  # a dry run moves nothing
    rc, out = lab.play(config=legacy)
    assert rc == 0 and re.search(r'Move the CA key[^\n]*\nchanged', out), out[-3000:]
    assert sorted(os.listdir(os.path.join(legacy, 'tls-ca'))) == ['ca.key', 'ca.srl']
    assert not {'ca.key', 'ca.srl'} & set(os.listdir(os.path.join(legacy, 'tls')))
    assert sha(os.path.join(legacy, 'tls-ca', 'ca.key')) == kept['ca.key']
    assert sha(os.path.join(legacy, 'tls', 'ca.crt')) == kept['ca.crt']
    assert sha(os.path.join(legacy, 'tls', 'server.crt')) == kept['server.crt']
    rc, out = lab.play(config=legacy)
    assert rc == 0 and changed_count(out) == 0, out[-3000:]
    # A new address: a new certificate, signed by the same CA (the bot hosts keep trusting it).
    rc, out = lab.play(config=legacy, address='127.0.0.2')
    assert rc == 0 and sha(os.path.join(legacy, 'tls', 'ca.crt')) == kept['ca.crt'], out[-3000:]
    verified = subprocess.run(['openssl', 'verify', '-CAfile', os.path.join(legacy, 'tls', 'ca.crt'),
                               os.path.join(legacy, 'tls', 'server-127.0.0.2.crt')], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # A copy of the same key left behind is dropped; a different one is refused, nothing removed.
    shutil.copy(os.path.join(legacy, 'tls-ca', 'ca.key'), os.path.join(legacy, 'tls', 'ca.key'))
    rc, out = lab.play(config=legacy)
    assert rc == 0 and not os.path.exists(os.path.join(legacy, 'tls', 'ca.key')), out[-3000:]
    subprocess.run(['openssl', 'genrsa', '-out', os.path.join(legacy, 'tls', 'ca.key'), '2048'], check=True,
                   capture_output=True)
    rc, out = lab.play(config=legacy)
    assert rc != 0 and 'two different CA keys' in out, out[-3000:]
    assert os.path.exists(os.path.join(legacy, 'tls', 'ca.key'))
    assert sha(os.path.join(legacy, 'tls-ca', 'ca.key')) == kept['ca.key']


def test_the_exporter_verifies_the_server_against_the_deployments_ca(lab):
    """The metrics role's exporter files for both kinds of database host (the exporter itself runs in the Molecule
    scenario's test_metrics, on the database host that serves the bot host: pg_up 1)."""
    role = os.path.join(lab.tmp, 'roles', 'metrics')
    os.makedirs(os.path.join(role, 'tasks'))
    for part in ('templates', 'vars', 'defaults'):
        os.symlink(os.path.join(ROOT, 'roles', 'metrics', part), os.path.join(role, part))
    out_dir = os.path.join(lab.tmp, 'exporter')
    with open(os.path.join(role, 'tasks', 'render.yml'), 'w') as handle:
        yaml.safe_dump([{'name': 'Render %s' % name, 'ansible.builtin.copy': {
            'content': "{{ lookup('ansible.builtin.template', '%s') }}" % name,
            'dest': os.path.join(out_dir, '{{ soulnear_serves_remote }}-' + name), 'mode': '0600'}}
            for name in ('postgres-exporter.env.j2', 'postgres-exporter.conf.j2')], handle)
    book = os.path.join(lab.tmp, 'render.yml')
    with open(book, 'w') as handle:
        yaml.safe_dump([{'name': 'Render', 'hosts': 'localhost', 'gather_facts': False,
                         'vars_files': [os.path.join(ROOT, 'roles', 'soulnear', 'defaults', 'main.yml')],
                         'tasks': [{'name': 'Render', 'ansible.builtin.import_role': {
                             'name': 'metrics', 'tasks_from': 'render'}}]}], handle)
    os.makedirs(out_dir)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_ROLES_PATH=os.path.join(lab.tmp, 'roles'))
    for serves in (True, False):
        proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', book,
                               '-e', json.dumps(dict(soulnear_serves_remote=serves, soulnear_db_host='127.0.0.1',
                                                         postgres_config_dir=lab.config(),
                                                         metrics_postgres_password='Exporter-Secret-12'))],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    read = dict((name, open(os.path.join(out_dir, name)).read()) for name in os.listdir(out_dir))
    ca_in_unit = '/run/soulnear-postgres-exporter/db-ca.crt'
    assert ('DATA_SOURCE_URI="127.0.0.1:5432/soul_bot?sslmode=verify-ca&sslrootcert=%s"' % ca_in_unit
            in read['True-postgres-exporter.env.j2'])
    assert 'BindReadOnlyPaths=%s/tls/ca.crt:%s' % (lab.config(), ca_in_unit) in read['True-postgres-exporter.conf.j2']
    assert 'DATA_SOURCE_URI="127.0.0.1:5432/soul_bot?sslmode=disable"' in read['False-postgres-exporter.env.j2']
    assert 'BindReadOnlyPaths' not in read['False-postgres-exporter.conf.j2']


def data_volume(container):
    mounts = json.loads(docker('inspect', '-f', '{{json .Mounts}}', container).stdout)
    return next(m['Name'] for m in mounts if m['Destination'] == '/var/lib/postgresql/data')


def wait_exited(container, timeout=90):
    deadline = time.time() + timeout
    while docker('inspect', '-f', '{{.State.Running}}', container).stdout.strip() == 'true':
        assert time.time() < deadline, 'container %s still runs after %s s' % (container, timeout)
        time.sleep(0.5)


def test_back_to_one_server_the_tls_settings_are_reset_before_the_tls_directory_goes(lab, tmp_path):
    """The bot hosts gone (two hosts made one): the container loses its TLS directory and the listen address; the
    settings that named them are reset first (reset_settings, as settings.yml runs it), so the same data starts
    without them. The control: before the reset, the data does not start without the directory. Last in this file:
    it stops the lab's server."""
    volume = data_volume(lab.container)
    plain = lab.container + '-one'
    docker('stop', '-t', '60', lab.container)
    try:
        docker('run', '-d', '--name', plain, '-v', volume + ':/var/lib/postgresql/data', '-p', '127.0.0.1::5432', IMAGE)
        wait_exited(plain)
        assert 'pg_hba.conf' in docker('logs', plain).stderr or 'server.crt' in docker('logs', plain).stderr
        docker('rm', '-f', plain)
        docker('start', lab.container)
        lab.published()
        params = dict(login_host='127.0.0.1', login_port=lab.local_port, login_user='postgres', login_password=PASSWORD,
                      settings={'tcp_keepalives_idle': 60}, reset_settings=sorted(TLS_SETTINGS),
                      container=lab.container, retries=0)
        rc, dry, out = run_module(tmp_path, 'pg_server', params, '--check')
        assert rc == 0 and sorted(dry['changed_settings']) == sorted(set(TLS_SETTINGS) | {'tcp_keepalives_idle'}), out
        rc, done, out = run_module(tmp_path, 'pg_server', params)
        # PostgreSQL does not flag a postmaster setting that returned to its default as pending a restart; the role's
        # restart comes with the container's recreation (the TLS mount and the listen address go).
        assert rc == 0 and sorted(done['changed_settings']) == sorted(dry['changed_settings']), out
        docker('stop', '-t', '60', lab.container)
        docker('run', '-d', '--name', plain, '-v', volume + ':/var/lib/postgresql/data', '-p', '127.0.0.1::5432', IMAGE)
        port = int(docker('port', plain, '5432/tcp').stdout.split()[0].rsplit(':', 1)[1])
        deadline = time.time() + 90
        while True:
            try:
                conn = lab.connect('127.0.0.1', 'postgres', PASSWORD, port=port)
                break
            except psycopg2.OperationalError:
                assert time.time() < deadline, docker('logs', '--tail', '30', plain).stderr
                time.sleep(0.3)
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('ssl'), current_setting('hba_file')")
            assert cur.fetchone() == ('off', '/var/lib/postgresql/data/pg_hba.conf')
        conn.close()
        rc, again, out = run_module(tmp_path, 'pg_server', dict(params, login_port=port, container=plain))
        assert rc == 0 and again['changed'] is False, out
    finally:
        docker('rm', '-f', plain, check=False)
