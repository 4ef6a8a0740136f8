"""Metrics (issue 14) on the converged VPS: the metrics role turned on with deploy.yml --tags metrics, a real
Prometheus on the VPS scraping both exporters, the project's textfile metrics present and moving with the state
(a backup, a restore test), the database-down alert firing within its `for:` window plus a scrape and an
evaluation after the database stops, nothing listening beyond loopback, the exporter's role a pg_monitor member
only with a password never logged, and a converged run cheap and unchanged. Prometheus is turned off again at the
end (the exporters keep running); the deployment is healthy afterwards.
"""

import json
import re
import secrets
import time

import pytest
import yaml
from conftest import DB, DB_HOST_IP, psql, run_playbook, wait_healthy

SCRAPE = 5  # seconds: short test intervals (the defaults are 30 s)
EVALUATION = 5
DB_DOWN_FOR = 15
TEXTFILE_DIR = '/var/lib/prometheus/node-exporter'
HEALTH = '/opt/soulnear/bin/soulnear-health'
ENV_FILE = '/etc/soulnear/metrics/postgres-exporter.env'
METRICS_PROCESSES = ('prometheus', 'prometheus-node', 'prometheus-post')  # ss shows 15 characters


def settings(password, prometheus=True):
    return dict(metrics_enabled=True, vault_metrics_postgres_password=password,
                metrics_prometheus_enabled=prometheus,
                metrics_prometheus_scrape_interval='%ds' % SCRAPE,
                metrics_prometheus_evaluation_interval='%ds' % EVALUATION,
                metrics_prometheus_alert_for=dict(SoulNearDatabaseDown='%ds' % DB_DOWN_FOR))


def deploy_metrics(path, values):
    """deploy.yml --tags metrics with extra variables from a file (the password stays off the command line)."""
    path.write_text(yaml.safe_dump(values))
    path.chmod(0o600)
    started = time.time()
    proc = run_playbook('deploy.yml', '--tags', 'metrics', '-e', '@%s' % path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc, time.time() - started


@pytest.fixture(scope='module')
def metrics(host, tmp_path_factory):
    wait_healthy(host)
    # Off (the default), the role runs nothing at all.
    off = run_playbook('deploy.yml', '--tags', 'metrics')
    assert off.returncode == 0 and re.search(r'\schanged=0\s', off.stdout), off.stdout[-3000:]
    assert metrics_tasks(off.stdout) == (0, 0), off.stdout[-3000:]
    directory = tmp_path_factory.mktemp('metrics')
    password = 'Metrics-%s' % secrets.token_urlsafe(18)
    proc, seconds = deploy_metrics(directory / 'on.yml', settings(password))
    state = dict(password=password, first=proc, first_seconds=seconds, directory=directory, enabled_at=time.time())
    yield state
    # Prometheus off again (the role stops it); the exporters and the textfile metrics stay.
    off, _ = deploy_metrics(directory / 'off.yml', settings(password, prometheus=False))
    assert not host.service('prometheus').is_running, off.stdout[-2000:]
    wait_healthy(host)


def api(host, path, **params):
    """GET Prometheus' HTTP API on the VPS (its loopback address), returns the JSON data."""
    code = ('import json, sys, urllib.parse, urllib.request\n'
            'query = urllib.parse.urlencode(json.loads(sys.argv[2]))\n'
            'url = "http://127.0.0.1:9090" + sys.argv[1] + ("?" + query if query else "")\n'
            'print(urllib.request.urlopen(url, timeout=10).read().decode())')
    reply = json.loads(host.check_output('python3 -c %s %s %s', code, path, json.dumps(params)))
    assert reply['status'] == 'success', reply
    return reply['data']


def query(host, expr):
    """{frozenset(labels without __name__): value} of an instant query."""
    return dict((frozenset((k, v) for k, v in r['metric'].items() if k != '__name__'), float(r['value'][1]))
                for r in api(host, '/api/v1/query', query=expr)['result'])


def wait_for(predicate, timeout, interval=1.0):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() >= deadline:
            return value
        time.sleep(interval)


def firing(host, alertname):
    return [a for a in api(host, '/api/v1/alerts')['alerts']
            if a['labels'].get('alertname') == alertname and a['state'] == 'firing']


def metrics_tasks(stdout):
    """(executed, changed) tasks of the metrics role in a playbook's output."""
    executed = changed = 0
    for block in re.split(r'\n(?=TASK \[)', stdout):
        if not block.startswith('TASK [metrics : '):
            continue
        results = re.findall(r'^(ok|changed|skipping|failed|fatal): ', block, re.M)
        if any(r in ('ok', 'changed') for r in results):
            executed += 1
        changed += 'changed' in results
    return executed, changed


def test_exporters_and_prometheus_listen_on_loopback_only(host, metrics):
    for service in ('prometheus-node-exporter', 'prometheus-postgres-exporter', 'prometheus'):
        assert host.service(service).is_running and host.service(service).is_enabled, service
    listening = host.check_output('ss -Hltnp')
    ports = dict((port, False) for port in ('9100', '9187', '9090'))
    for line in listening.splitlines():
        fields = line.split()
        local, process = fields[3], ' '.join(fields[5:])
        address, port = local.rsplit(':', 1)
        if port in ports:
            ports[port] = True
        if '"sshd"' in process or local == DB_HOST_IP + ':5432':
            continue  # how Ansible and the operator reach the VPS; the database served to the other bot host
        assert address in ('127.0.0.1', '[::1]') or address.startswith('127.'), line
    assert ports == {'9100': True, '9187': True, '9090': True}, listening
    # The packages' own defaults (every address) are not in effect.
    for process in METRICS_PROCESSES:
        assert not re.search(r'(0\.0\.0\.0|\*|\[::\]):\d+ .*"%s' % re.escape(process), listening)


def test_exporter_role_is_pg_monitor_only_and_its_password_stays_private(host, metrics):
    row = psql(host, "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles "
                     "WHERE rolname = 'soulnear_metrics'")
    assert row == 'f|f|f|t'
    groups = psql(host, "SELECT string_agg(g.rolname, ',') FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                        "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = 'soulnear_metrics'")
    assert groups == 'pg_monitor'
    env = host.file(ENV_FILE)
    assert env.mode == 0o600 and env.user == 'root' and metrics['password'] in env.content_string
    assert host.file('/etc/soulnear/metrics').mode == 0o700
    assert metrics['password'] not in metrics['first'].stdout + metrics['first'].stderr
    assert host.run('grep -rlF %s /var/log/soulnear', metrics['password']).stdout.strip() == ''


def test_a_second_run_changes_nothing_and_stays_cheap(host, metrics):
    proc, seconds = deploy_metrics(metrics['directory'] / 'again.yml', settings(metrics['password']))
    assert re.search(r'\schanged=0\s', proc.stdout), proc.stdout[-3000:]
    executed, changed = metrics_tasks(proc.stdout)
    assert changed == 0 and executed <= 3, (executed, proc.stdout[-3000:])
    print('metrics role: first run %.0f s, converged run %.0f s with %d executed task(s) of the role'
          % (metrics['first_seconds'], seconds, executed))


def test_prometheus_scrapes_both_exporters(host, metrics):
    def both_up():
        up = dict((dict(labels)['job'], value) for labels, value in query(host, 'up').items())
        return up if up.get('soulnear-node') == 1 and up.get('soulnear-postgres') == 1 else None
    assert wait_for(both_up, 60), query(host, 'up')
    assert query(host, 'pg_up') and set(query(host, 'pg_up').values()) == {1.0}
    assert list(query(host, 'pg_settings_max_connections').values()) == [200.0]
    assert query(host, 'node_filesystem_avail_bytes')
    rules = [r['name'] for g in api(host, '/api/v1/rules')['groups'] for r in g['rules']]
    assert 'SoulNearDatabaseDown' in rules and 'SoulNearBackupTooOld' in rules


def test_the_exporter_connects_with_tls_when_the_server_serves_bot_hosts(host, metrics):
    """Issue 23: postgres_exporter verifies the database host's certificate against the deployment's CA (sslmode
    verify-ca) and its session is encrypted. Here, while metrics are on (later tests deploy without them)."""
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
        scraped = host.check_output('python3 -c %s', scrape)
        assert re.search(r'^pg_up 1$', scraped, re.M), [line for line in scraped.splitlines() if 'pg_up' in line]
        encrypted, plain = (int(n) for n in psql(host, sessions).split('|'))
        assert plain == 0, 'a session of the exporter without TLS'
        if encrypted or time.time() > deadline:
            break
        time.sleep(2)
    assert encrypted >= 1, 'no TLS session of the exporter after a scrape'


def test_project_metrics_are_scraped(host, metrics):
    """The monitor writes them at its next run (every 60 s)."""
    def monitored():
        found = query(host, 'soulnear_health_check_ok')
        return found if len(found) >= 6 else None
    checks = wait_for(monitored, 100, interval=3)
    assert checks, host.run('ls -l %s; cat %s/soulnear_health.prom', TEXTFILE_DIR, TEXTFILE_DIR).stdout
    assert set(dict(labels)['check'] for labels in checks) >= {'database', 'tables', 'connections', 'db_container',
                                                              'bot_container', 'disk'}
    assert query(host, 'soulnear_health_check_ok{check="database"}') and set(
        query(host, 'soulnear_health_check_ok{check="database"}').values()) == {1.0}
    assert list(query(host, 'soulnear_db_max_connections').values()) == [200.0]
    assert list(query(host, 'soulnear_migrations_pending').values()) == [0.0]
    assert set(query(host, 'soulnear_container_up').values()) == {1.0}
    # 1 when the monitor's last run fell into one of this test's deploys (they hold the lock).
    assert list(query(host, 'soulnear_deploy_lock_held').values()) in ([0.0], [1.0])
    assert list(query(host, 'time() - soulnear_health_last_run_timestamp_seconds').values())[0] < 120
    for path in host.check_output('ls %s', TEXTFILE_DIR).split():
        if path.startswith('soulnear_'):
            assert host.file('%s/%s' % (TEXTFILE_DIR, path)).mode == 0o644


def test_a_backup_moves_the_backup_timestamp(host, metrics):
    def newest():
        found = query(host, 'soulnear_backup_last_success_timestamp_seconds{database="soul_bot"}')
        return max(found.values()) if found else 0.0
    before = newest()
    started = time.time()
    proc = run_playbook('playbooks/backup.yml')
    assert proc.returncode == 0, proc.stdout[-3000:]
    moved = wait_for(lambda: newest() > max(before, started - 5), 30)
    assert moved, (before, newest(), host.run('cat %s/soulnear_backup.prom', TEXTFILE_DIR).stdout)
    size = query(host, 'soulnear_backup_last_size_bytes{database="soul_bot"}')
    assert size and list(size.values())[0] > 0
    assert list(query(host, 'soulnear_backup_last_verified{database="soul_bot"}').values()) == [1.0]
    assert list(query(host, 'soulnear_backup_last_run_success{database="soul_bot"}').values()) == [1.0]
    assert not firing(host, 'SoulNearBackupTooOld') and not firing(host, 'SoulNearBackupFailed')


def test_a_restore_test_is_recorded(host, metrics):
    started = time.time()
    host.run_expect([0], '/opt/soulnear/bin/soulnear-backup restore-test')

    def recorded():
        found = query(host, 'soulnear_restore_test_last_run_timestamp_seconds{database="soul_bot"}')
        return found and max(found.values()) >= started - 5
    assert wait_for(recorded, 30), host.run('cat %s/soulnear_restore.prom', TEXTFILE_DIR).stdout
    assert list(query(host, 'soulnear_restore_test_last_success{database="soul_bot"}').values()) == [1.0]


def test_stopping_the_database_fires_the_alert_within_its_window(host, metrics):
    assert wait_for(lambda: query(host, 'pg_up') and set(query(host, 'pg_up').values()) == {1.0}, 30)
    assert not firing(host, 'SoulNearDatabaseDown')
    # An announced stop: the monitor checks but does not restart the database meanwhile.
    host.run_expect([0], '%s pause --minutes 5 --reason metrics-test', HEALTH)
    try:
        host.run_expect([0], 'docker stop %s', DB)
        stopped = time.time()
        alerts = wait_for(lambda: firing(host, 'SoulNearDatabaseDown'), DB_DOWN_FOR + SCRAPE + EVALUATION + 30)
        elapsed = time.time() - stopped
        assert alerts, 'SoulNearDatabaseDown did not fire within %.0f s' % elapsed
        # Worst case: the next scrape sees pg_up 0, the next evaluation makes the alert pending, it fires after
        # its for: window; the API is polled every second.
        assert elapsed <= DB_DOWN_FOR + SCRAPE + EVALUATION + 3, elapsed
        print('SoulNearDatabaseDown fired %.1f s after the database stopped (for: %ds, scrape %ds, evaluation %ds)'
              % (elapsed, DB_DOWN_FOR, SCRAPE, EVALUATION))
        assert 'make health' in alerts[0]['annotations']['summary']
    finally:
        host.run('docker start %s', DB)
        host.run('%s resume', HEALTH)
    wait_healthy(host)
    assert wait_for(lambda: not firing(host, 'SoulNearDatabaseDown'), 60)
