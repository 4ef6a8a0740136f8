"""Verify `ansible-playbook deploy.yml` on a disposable VPS (issue: from a bare host to a healthy bot)."""

import json
import re
import subprocess
import time

from conftest import (BOT, DB, DB_HOST_IP, container_health, instance_name, psql, run_playbook, run_playbook_background,
                      wait_healthy)

MARKERS = ('Database connection successful!', 'Database tables created/verified',
           re.compile(r'Applied \d+ new migration\(s\)|All migrations up to date'),
           'Database health monitor started')


def test_both_containers_run_and_are_healthy(host):
    assert wait_healthy(host) == {DB: 'running healthy', BOT: 'running healthy'}
    assert host.service('docker').is_running and host.service('docker').is_enabled


def test_exactly_one_bot_container(host):
    names = host.check_output('docker ps --filter label=soulnear.component=bot --format "{{.Names}}"').split()
    assert names == [BOT]


def test_live_settings(host):
    assert psql(host, 'SHOW max_connections') == '200'
    assert psql(host, 'SHOW tcp_keepalives_idle') == '60'
    assert psql(host, 'SHOW tcp_keepalives_interval') == '10'
    assert psql(host, 'SHOW tcp_keepalives_count') == '6'
    assert psql(host, 'SHOW idle_in_transaction_session_timeout') == '5min'
    assert psql(host, 'SHOW logging_collector') == 'on'
    assert psql(host, 'SHOW password_encryption') == 'scram-sha-256'
    assert psql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == '0'


def test_healthcheck_names_user_host_and_database(host):
    health = json.loads(host.check_output('docker inspect -f "{{json .Config.Healthcheck}}" %s', DB))
    assert health['Test'][0] == 'CMD-SHELL'
    command = health['Test'][1]
    assert '-h 127.0.0.1' in command and '-U postgres' in command and '-d soul_bot' in command


def test_no_root_role_errors_after_a_minute_of_healthchecks(host):
    started = host.check_output('docker inspect -f "{{.State.StartedAt}}" %s', DB)
    up = float(host.check_output('echo $(( $(date +%%s) - $(date -d %s +%%s) ))', started))
    if up < 70:
        time.sleep(70 - up)
    checks = json.loads(host.check_output('docker inspect -f "{{json .State.Health.Log}}" %s', DB))
    assert checks and all(check['ExitCode'] == 0 for check in checks[-3:])
    logs = host.run('docker logs %s', DB)
    server_log = host.file('/var/log/soulnear/postgres/postgresql.log').content_string
    # test_backup's restore swaps the database while the second bot host's bot keeps running (a restore stops the bot
    # of its own host only: docs/topologies.md); that bot's reconnect can land in the swap's rename.
    expected = re.compile(r'the database system is (starting up|shutting down)|terminating connection due to '
                          r'administrator command|database "soul_bot" does not exist')
    for text in (logs.stdout, logs.stderr, server_log):
        assert 'role "root" does not exist' not in text
        unexpected = [line for line in text.splitlines() if 'FATAL' in line and not expected.search(line)]
        assert unexpected == []


def test_port_published_on_loopback_and_the_private_address_only(host):
    # This VPS is also the database host of the second VPS: it serves it on its private address (TLS).
    ports = host.check_output('docker port %s 5432/tcp', DB).split()
    assert sorted(ports) == sorted(['127.0.0.1:5432', DB_HOST_IP + ':5432'])
    listening = host.check_output('ss -Hltn')
    assert '127.0.0.1:5432' in listening and DB_HOST_IP + ':5432' in listening
    assert '0.0.0.0:5432' not in listening and '*:5432' not in listening and '[::]:5432' not in listening


def test_env_file_and_secrets_are_private(host):
    env = host.file('/etc/soulnear/app.env')
    assert env.mode == 0o600 and env.user == 'root' and env.group == 'root'
    assert 'POSTGRES_PASSWORD=' in env.content_string
    assert host.file('/etc/soulnear').mode == 0o700
    for name in ('superuser_password', 'app_password'):
        secret = host.file('/etc/soulnear/postgres/secrets/' + name)
        assert secret.mode == 0o600 and secret.uid == 999


def test_markers_in_the_bot_log(host):
    logs = host.run('docker logs %s', BOT)
    text = logs.stdout + logs.stderr
    for marker in MARKERS:
        assert (marker.search(text) if hasattr(marker, 'search') else marker in text), marker


def test_schema_migrations_lists_the_example_migrations(host):
    rows = psql(host, 'SELECT name, success FROM schema_migrations ORDER BY version::int').splitlines()
    assert rows == ['001_init.sql|t', '002_events.sql|t', '003_indexes.sql|t']
    assert psql(host, "SELECT to_regclass('aiogram_states') IS NOT NULL") == 't'
    assert psql(host, 'SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()') \
        == 'soulnear'


def test_changing_max_connections_converges_the_existing_volume_and_hides_passwords(host):
    """One full deploy at -vvv with a changed setting: the live value follows on the existing
    volume (restart reported), data stays, and no password appears anywhere in the output."""
    secrets = [host.file('/etc/soulnear/postgres/secrets/' + n).content_string.strip()
               for n in ('superuser_password', 'app_password')]
    assert all(len(s) >= 16 for s in secrets)
    psql(host, "INSERT INTO users (id, username) VALUES (4242, 'before-restart') ON CONFLICT DO NOTHING")
    rows_before = int(psql(host, 'SELECT count(*) FROM events'))
    try:
        changed = run_playbook('deploy.yml', '-vvv', '-e', 'postgres_max_connections=150')
        output = changed.stdout + changed.stderr
        assert changed.returncode == 0, changed.stdout[-3000:]
        assert 'Restarting PostgreSQL: max_connections changed' in output
        assert 'Swap the bot safely' in output  # the run went through every secret-handling task
        for secret in secrets:
            assert secret not in output
        assert psql(host, 'SHOW max_connections') == '150'
        mounts = host.check_output('docker inspect -f "{{range .Mounts}}{{.Name}} {{end}}" %s', DB).split()
        assert 'soulnear_postgres_data' in mounts  # the same volume, not a fresh one
        assert psql(host, 'SELECT username FROM users WHERE id = 4242') == 'before-restart'
        assert int(psql(host, 'SELECT count(*) FROM events')) >= rows_before
    finally:
        back = run_playbook('deploy.yml', '--tags', 'postgres')
        assert back.returncode == 0, back.stdout[-3000:]
    assert psql(host, 'SHOW max_connections') == '200'
    wait_healthy(host)


LOCK = '/var/lib/soulnear/deploy.lock'


def plant_lock(host, holder, age_seconds):
    since = int(host.check_output('date +%s')) - age_seconds
    host.run('mkdir -p %s', LOCK)
    record = json.dumps({'holder': holder, 'since': since, 'heartbeat': since, 'run_id': 'planted'})
    host.run('sh -c %s', "printf '%%s' '%s' > %s/holder" % (record, LOCK))


def test_a_held_deploy_lock_refuses_a_second_deploy(host):
    plant_lock(host, 'alice@laptop (Deploy SoulNear, run abc)', 60)
    try:
        refused = run_playbook('deploy.yml')
        output = ' '.join(refused.stdout.split())  # the YAML callback wraps long messages
        assert refused.returncode != 0
        assert 'holds the lock' in output and 'alice@laptop' in output
        assert 'Ensure the database container is running' not in refused.stdout  # refused before touching anything
        assert host.file(LOCK + '/holder').contains('alice@laptop')  # the holder's lock is left alone
    finally:
        host.run('rm -rf %s', LOCK)
    wait_healthy(host)


def test_stale_lock_is_taken_over_and_a_concurrent_deploy_is_refused(host):
    plant_lock(host, 'bob@old-laptop (killed run)', 3 * 3600)
    first = run_playbook_background('deploy.yml')  # takes over the stale lock
    deadline = time.time() + 120
    while time.time() < deadline and not host.file(LOCK + '/holder').contains('"operation": "deploy"'):
        time.sleep(1)
    second = run_playbook('deploy.yml')
    out, _ = first.communicate(timeout=900)
    assert first.returncode == 0, out[-3000:]
    assert 'took over a stale deploy lock' in ' '.join(out.split()) and 'bob@old-laptop' in out
    assert second.returncode != 0 and 'holds the lock' in ' '.join(second.stdout.split())
    assert not host.file(LOCK).exists  # released by the run that held it
    wait_healthy(host)


def test_host_restart_brings_everything_back_with_data(host):
    wait_healthy(host)
    psql(host, "INSERT INTO users (id, username) VALUES (424242, 'survives-reboot') ON CONFLICT DO NOTHING")
    events = int(psql(host, 'SELECT count(*) FROM events'))
    subprocess.run(['docker', 'restart', '-t', '60', instance_name()], check=True, timeout=180)
    deadline = time.time() + 120
    while time.time() < deadline:
        if subprocess.run(['docker', 'exec', instance_name(), 'docker', 'info'], capture_output=True).returncode == 0:
            break
        time.sleep(2)
    assert wait_healthy(host, timeout=300) == {DB: 'running healthy', BOT: 'running healthy'}
    assert psql(host, "SELECT username FROM users WHERE id = 424242") == 'survives-reboot'
    assert int(psql(host, 'SELECT count(*) FROM events')) >= events
    assert container_health(host, BOT) == 'running healthy'
