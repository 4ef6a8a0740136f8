"""The health checks (checks.py) and the db_health module against a real PostgreSQL and real containers.

Nothing is mocked: the checks run against throwaway clusters (tests/support/pgcluster.py) and containers on
the local Docker engine.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest
import yaml
from ansible.module_utils.soulnear import checks as soulnear_checks
from ansible.module_utils.soulnear import guard
from ansible.module_utils.soulnear.backup_files import write_sidecar
from ansible.module_utils.soulnear.files import disk_usage, sha256_file
from ansible.module_utils.soulnear.migration_files import MigrationError
from ansible.module_utils.soulnear.pg import connect
from healthenv import MIGRATIONS, ROOT, app_database, execute, inspect, migrate, wait_healthy
from healthenv import app_db_fixture, throwaway_fixture  # noqa: F401 - the app_db and throwaway fixtures
from pgcluster import Cluster, free_port
from pgcontainer import docker

BIN = os.path.dirname(sys.executable)


def checks(params, **options):
    return soulnear_checks.run_checks(dict(params, **options))


# -- the checks ------------------------------------------------------------------------------------

def test_healthy(app_db):
    report = checks(app_db, migrations_path=MIGRATIONS)
    assert report['ok'] is True, report['msg']
    assert report['failed'] == [] and report['skipped'] == {}
    assert list(report['checks']) == ['database', 'tables', 'migrations', 'connections']
    db = report['checks']['database']
    assert db['ok'] and db['value']['user'] == app_db['login_user'] and db['value']['server_version'] >= 150000
    assert 'SELECT 1 as %s' % app_db['login_user'] in db['message']
    assert report['checks']['tables']['value']['missing'] == []
    assert report['checks']['migrations']['value']['current_version'] == '3'
    assert report['checks']['migrations']['value']['pending'] == []
    assert report['msg'].startswith('healthy: 4 check(s) passed')


def test_table_missing(app_db):
    execute(app_db, 'DROP TABLE aiogram_states')
    report = checks(app_db, migrations_path=MIGRATIONS, required_tables=['aiogram_states', 'schema_migrations'])
    assert report['ok'] is False and report['failed'] == ['tables']
    tables = report['checks']['tables']
    assert tables['value']['missing'] == ['aiogram_states']
    assert 'DATA LOSS SUSPECTED' in tables['message'] and 'make restore' in tables['message']
    assert 'tables: required table(s) missing: aiogram_states' in report['msg']


def test_pending_migration(app_db, tmp_path):
    path = tmp_path / 'migrations'
    shutil.copytree(MIGRATIONS, path)
    (path / '004_settings.sql').write_text('CREATE TABLE settings (key text PRIMARY KEY);\n')
    report = checks(app_db, migrations_path=str(path))
    assert report['failed'] == ['migrations']
    result = report['checks']['migrations']
    assert result['value']['pending'] == ['004_settings.sql']
    assert '1 pending migration(s): 004_settings.sql' in result['message'] and 'make migrate' in result['message']


def test_failed_migration(app_db, tmp_path):
    path = tmp_path / 'migrations'
    shutil.copytree(MIGRATIONS, path)
    (path / '004_concurrent.sql').write_text('-- pg_migrate: no-transaction\n'
                                             'CREATE INDEX CONCURRENTLY users_username_idx ON users (username);\n'
                                             'CREATE INDEX CONCURRENTLY broken_idx ON no_such_table (x);\n')
    with pytest.raises(MigrationError):
        migrate(app_db, path)
    report = checks(app_db, migrations_path=str(path))
    assert report['failed'] == ['migrations']
    result = report['checks']['migrations']
    assert result['value']['failed'] == ['004_concurrent.sql']
    assert 'failed migration(s) 004_concurrent.sql' in result['message'] and 'repair: true' in result['message']


def test_migrations_directory_missing(app_db, tmp_path):
    report = checks(app_db, migrations_path=str(tmp_path / 'nowhere'))
    assert report['failed'] == ['migrations']
    assert 'does not exist' in report['checks']['migrations']['message']
    assert str(tmp_path / 'nowhere') in report['checks']['migrations']['message']


def test_a_failing_query_fails_its_check_not_the_report(pg_server, pg_db):
    app = app_database(pg_server, pg_db)
    # A tracking table the app role may not read (created by another role): permission denied, SQLSTATE 42501.
    pg_server.query('CREATE TABLE schema_migrations (version text, name text)', db=pg_db['login_db'])
    report = checks(app, migrations_path=MIGRATIONS, required_tables=[])
    assert report['failed'] == ['migrations']
    message = report['checks']['migrations']['message']
    assert 'permission denied for table schema_migrations' in message and 'grant the app role' in message


def test_wrong_password_is_not_retried(app_db):
    started = time.time()
    report = checks(dict(app_db, login_password='wrong-password'), migrations_path=MIGRATIONS)
    elapsed = time.time() - started
    # Retrying would add 0.5 + 1 + 2 s of backoff: well below that, with room for a loaded machine.
    assert elapsed < 3.0, 'an authentication failure must not be retried (took %.1fs)' % elapsed
    assert report['ok'] is False and report['failed'] == ['database']
    db = report['checks']['database']
    assert '(1 attempt(s))' in db['message'] and 'password authentication failed' in db['message']
    assert 'check the password' in db['message'] and 'vault_app_db_password' in db['message']
    assert db['value']['server_unreachable'] is False and db['value']['sqlstate'] == '28P01'
    assert set(report['skipped']) == {'tables', 'connections', 'migrations'}
    assert 'wrong-password' not in json.dumps(report)


def test_server_down_is_retried_then_fails_clearly():
    params = dict(login_host='127.0.0.1', login_port=free_port(), login_user='soulnear', login_password='x',
                  login_db='soul_bot', connect_timeout=2)
    started = time.time()
    report = checks(params, db_container='soulnear_postgres')
    elapsed = time.time() - started
    assert elapsed >= 3.4, 'expected 0.5 + 1 + 2 s of backoff, took %.1fs' % elapsed
    db = report['checks']['database']
    assert db['ok'] is False and db['value']['server_unreachable'] is True
    assert '(4 attempt(s))' in db['message'] and 'Connection refused' in db['message']
    assert 'make restart' in db['message'] and 'make logs-db' in db['message']


def test_connections_near_the_maximum():
    cluster = Cluster(settings={'max_connections': '20'}).init().start()
    held = []
    try:
        cluster.wait_ready()
        params = cluster.params()
        quiet = checks(params)['checks']['connections']
        assert quiet['ok'] and 'warning' not in quiet
        assert quiet['value']['max_connections'] == 20 and quiet['value']['usable'] == 17
        held = [cluster.connect() for _ in range(14)]
        busy = checks(params, connections_warn_percent=80, required_tables=[])
        result = busy['checks']['connections']
        assert busy['ok'] is True, 'a warning must not fail the report'
        assert result['value']['used'] == 15 and result['value']['percent'] == pytest.approx(88.2, abs=0.1)
        assert 'above 80%' in result['warning'] and 'pg_stat_activity' in result['warning']
        assert any(w.startswith('connections: 15 of 17') for w in busy['warnings'])
    finally:
        for conn in held:
            conn.close()
        cluster.destroy()


def test_container_checks(pg_container, throwaway):
    wait_healthy(pg_container.name)
    report = checks(pg_container.params(), db_container=pg_container.name, bot_container='soulnear-test-missing')
    db = report['checks']['db_container']
    assert db['ok'] and db['value']['running'] and db['value']['health'] == 'healthy'
    assert db['value']['restart_count'] == 0 and 'warning' not in db
    assert report['restart_counts'] == {pg_container.name: 0}
    bot = report['checks']['bot_container']
    assert bot['ok'] is False and 'does not exist' in bot['message'] and 'deploy.yml' in bot['message']

    stopped = throwaway()
    docker('stop', '-t', '0', stopped)
    result = soulnear_checks.check_container(stopped, role='bot')
    assert result['ok'] is False and 'is exited' in result['message'] and 'make logs-bot' in result['message']


def wait_for(predicate, timeout, what):
    """Poll predicate every 0.2 s; its value, or fail at the deadline naming what did not happen."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, '%s did not happen within %s s' % (what, timeout)
        time.sleep(0.2)


def restart_count(name):
    return int(inspect(name, '{{.RestartCount}}'))


def test_a_crash_docker_recovered_from_is_a_warning(throwaway):
    # Exits 3 whenever /tmp/crash appears; Docker's restart policy brings it back (its file system stays).
    name = throwaway('--restart', 'on-failure', command=(
        'sh', '-c', 'while [ ! -e /tmp/crash ]; do sleep 0.1; done; rm /tmp/crash; exit 3'))

    def crash():
        before = restart_count(name)
        docker('exec', name, 'touch', '/tmp/crash')
        wait_for(lambda: restart_count(name) > before and inspect(name, '{{.State.Status}}') == 'running', 30,
                 'the restart of %s' % name)

    crash()
    first = soulnear_checks.check_container(name, role='bot')
    assert first['ok'] and first['value']['restart_count'] == 1
    assert 'since it was last started by hand' in first.get('warning', '')
    crash()
    grown = soulnear_checks.check_container(name, previous_restart_count=1, role='bot')
    assert grown['ok'] and 'Docker restarted %s 1 time(s) since the last check (it crashed)' % name in grown['warning']
    same = soulnear_checks.check_container(name, previous_restart_count=2, role='bot')
    assert same['ok'] and 'warning' not in same


def test_a_crash_loop_never_passes(throwaway):
    """Restarting (Docker's back-off), restarted and not healthy yet, or "starting" past the start period: each
    fails, so neither db_health nor the monitor reports a crash-looping bot as healthy."""
    looping = throwaway('--restart', 'always', command=('sh', '-c', 'exit 3'))
    result = wait_for(lambda: (lambda r: r if not r['ok'] and 'is restarting' in r['message'] else None)(
        soulnear_checks.check_container(looping, role='bot')), 30, 'the restart back-off')
    assert 'exited (code 3)' in result['message'] and 'make logs-bot' in result['message']
    assert result['value']['restarting'] is True

    # Healthcheck that never passes, with a start period: "starting" is fine within it, a failure after it.
    starting = throwaway('--health-cmd', 'false', '--health-interval', '1s', '--health-timeout', '1s',
                         '--health-start-period', '30s', '--health-retries', '1000')
    now = soulnear_checks.check_container(starting, role='bot')
    assert now['ok'] and 'still starting' in now['warning']
    later = soulnear_checks.check_container(starting, role='bot', now=time.time() + 40)
    assert not later['ok'] and 'past its start period (30 s)' in later['message']

    # Restarted by Docker since the last check and not healthy yet: a crash loop caught between two crashes.
    flapping = throwaway('--restart', 'on-failure', '--health-cmd', 'false', '--health-interval', '1s',
                         '--health-start-period', '60s', command=(
                             'sh', '-c', 'while [ ! -e /tmp/crash ]; do sleep 0.1; done; rm /tmp/crash; exit 3'))
    docker('exec', flapping, 'touch', '/tmp/crash')
    wait_for(lambda: restart_count(flapping) == 1 and inspect(flapping, '{{.State.Status}}') == 'running', 30,
             'the restart of %s' % flapping)
    caught = soulnear_checks.check_container(flapping, previous_restart_count=0, role='bot')
    assert not caught['ok'] and 'restarted by Docker 1 time(s) since the last check and is not healthy yet' \
        in caught['message']
    assert not soulnear_checks.check_container(flapping, role='bot')['ok']  # db_health: no previous count
    # Not healthy since Docker restarted it: it fails whatever the last check saw.
    assert not soulnear_checks.check_container(flapping, previous_restart_count=1, role='bot')['ok']


def write_backup(directory, hours_old, verified=True, database=None):
    """A backup file named as the backup command names it (local time) hours_old ago, with its sidecar."""
    name = (datetime.now() - timedelta(hours=hours_old)).strftime('backup_%Y%m%d_%H%M%S.dump')
    path = directory / name
    path.write_bytes(b'PGDMP fake dump ' + name.encode())
    if verified:
        write_sidecar(str(path), sha256_file(str(path)), database)
    return name


def test_backup_age(tmp_path):
    backups = tmp_path / 'backups'
    none_yet = soulnear_checks.check_backup_age(str(backups), 26)
    assert none_yet['ok'] and 'no backups yet' in none_yet['message']
    assert not soulnear_checks.check_backup_age(str(backups), 26, require=True)['ok']
    backups.mkdir()
    assert soulnear_checks.check_backup_age(str(backups), 26)['message'].startswith('no backups yet')
    required = soulnear_checks.check_backup_age(str(backups), 26, require=True)
    assert not required['ok'] and 'make backup' in required['message']

    old_name = write_backup(backups, hours_old=50)
    old = soulnear_checks.check_backup_age(str(backups), 26)
    assert old['ok'] is False and old['value']['newest'] == old_name
    assert old['value']['age_hours'] == pytest.approx(50, abs=0.1)
    assert '50.0 h old (limit 26 h)' in old['message'] and 'make backup' in old['message']

    fresh_name = write_backup(backups, hours_old=2)
    unverified_name = write_backup(backups, hours_old=1, verified=False)  # failed verification / in progress
    (backups / 'notes.txt').write_text('not a backup')
    fresh = soulnear_checks.check_backup_age(str(backups), 26)
    assert fresh['ok'] is True and fresh['value']['newest'] == fresh_name
    assert fresh['value']['count'] == 3 and fresh['value']['verified'] == 2
    assert '%s has no .sha256 sidecar' % unverified_name in fresh['warning']
    assert 'checksum verified' in fresh['message']

    unverified = tmp_path / 'unverified'
    unverified.mkdir()
    write_backup(unverified, hours_old=1, verified=False)
    result = soulnear_checks.check_backup_age(str(unverified), 26)
    assert result['ok'] is False and 'none of the 1 backup(s)' in result['message']

    custom = tmp_path / 'custom'
    custom.mkdir()
    path = custom / (datetime.now() - timedelta(hours=3)).strftime('soul_%Y-%m-%d_%H%M%S.dump')
    path.write_bytes(b'x')
    write_sidecar(str(path), sha256_file(str(path)))
    named = soulnear_checks.check_backup_age(str(custom), 26, pattern='soul_%Y-%m-%d_%H%M%S.dump')
    assert named['ok'] and named['value']['age_hours'] == pytest.approx(3, abs=0.1)


def test_backup_age_verifies_the_newest_backup_and_counts_only_its_database(tmp_path):
    backups = tmp_path / 'backups'
    backups.mkdir()
    older = write_backup(backups, hours_old=30, database='soul_bot')
    newest = write_backup(backups, hours_old=2, database='soul_bot')
    write_backup(backups, hours_old=1, database='other_db')  # newer, of another database
    result = soulnear_checks.check_backup_age(str(backups), 26, database='soul_bot')
    assert result['ok'] and result['value']['newest'] == newest and result['value']['count'] == 2
    assert 'of soul_bot' in result['message']

    with open(backups / newest, 'r+b') as handle:  # damaged after it was verified (the mtime moves on)
        handle.seek(3)
        handle.write(b'XX')
    damaged = soulnear_checks.check_backup_age(str(backups), 26, database='soul_bot')
    assert damaged['ok'] is False and damaged['value']['corrupt'] == [newest]
    assert 'does not match its .sha256 sidecar' in damaged['message']
    assert 'the newest intact one is %s' % older in damaged['message'] and 'make backup' in damaged['message']
    assert damaged['value']['newest'] == older


def test_disk_free_on_real_paths(tmp_path):
    actual = disk_usage(str(tmp_path))['used_percent']
    fine = soulnear_checks.check_disk([str(tmp_path), str(tmp_path / 'not-yet-created')], 100)
    assert fine['ok'] is True and len(fine['value']) == 2
    assert fine['value'][0]['free_mb'] > 0 and fine['value'][0]['used_percent'] == pytest.approx(actual, abs=1)
    full = soulnear_checks.check_disk([str(tmp_path)], max(0, int(actual) - 1))
    assert full['ok'] is False and 'full' in full['message'] and 'docker image prune' in full['message']
    missing = soulnear_checks.check_disk([str(tmp_path)], 100, db_volume='soulnear-test-no-such-volume')
    assert missing['ok'] is True and 'does not exist' in missing['warning']


# -- the module through Ansible ------------------------------------------------------------------------

def run_module(tmp_path, args, *extra):
    play = [{'name': 'Health', 'hosts': 'localhost', 'gather_facts': False,
             'tasks': [{'name': 'Check health', 'db_health': args, 'register': 'health'}]}]
    book = tmp_path / 'health.yml'
    book.write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK='ansible.posix.json', ANSIBLE_NOCOLOR='1',
               ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', str(book)]
                          + list(extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    data = json.loads(proc.stdout[proc.stdout.index('{'):])
    return proc, data['plays'][0]['tasks'][0]['hosts']['localhost']


def test_module_through_ansible(app_db, tmp_path):
    state = tmp_path / 'state' / 'health.json'
    args = dict(app_db, migrations_path=MIGRATIONS, backup_dir=str(tmp_path / 'backups'),
                disk_paths=[str(tmp_path)], disk_max_used_percent=100, state_file=str(state),
                data_guard_file=str(tmp_path / 'state' / 'data-guard.json'),
                required_tables=['aiogram_states', 'schema_migrations'])
    proc, result = run_module(tmp_path, args, '--check')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result['ok'] is True and result['changed'] is False and result['failed_checks'] == []
    assert set(result['checks']) == {'database', 'tables', 'migrations', 'connections', 'backup_age', 'disk'}
    assert result['checks']['backup_age']['message'].startswith('no backups yet')
    assert not state.exists(), 'check mode must not write the state file'

    execute(app_db, 'DROP TABLE aiogram_states')
    proc, result = run_module(tmp_path, dict(args, fail_on_unhealthy=True), '-vvv')
    assert proc.returncode != 0
    assert result['failed'] is True and result['ok'] is False and result['failed_checks'] == ['tables']
    assert 'aiogram_states' in result['msg'] and 'make restore' in result['msg']
    assert 'Traceback' not in proc.stdout
    assert app_db['login_password'] not in proc.stdout + proc.stderr

    proc, result = run_module(tmp_path, dict(args, fail_on_unhealthy=False))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result.get('failed', False) is False and result['ok'] is False and result['failed_checks'] == ['tables']
    assert state.exists()


def test_the_data_loss_guard_fails_the_tables_check(app_db, tmp_path):
    guard_file = tmp_path / 'data-guard.json'
    options = dict(migrations_path=MIGRATIONS, data_guard_file=str(guard_file), backup_dir=str(tmp_path / 'b'))
    execute(app_db, "INSERT INTO users (id) VALUES (1); INSERT INTO aiogram_states (key) VALUES ('fsm:1:1')")
    assert checks(app_db, **options)['ok'] and not guard_file.exists(), 'db_health only reads the record'
    monitor = checks(app_db, data_guard_update=True, **options)  # the monitor records
    assert monitor['ok'] and monitor['checks']['tables']['value']['data_guard']['status'] == 'recorded'
    assert guard.entry(str(guard_file), app_db['login_db'])['had_data'] is True

    # Emptied: the tables are still there, without rows (TRUNCATE by mistake, a volume re-initialised and migrated).
    execute(app_db, 'TRUNCATE users, aiogram_states CASCADE; DELETE FROM schema_migrations')
    report = checks(app_db, **options)
    tables = report['checks']['tables']
    assert report['failed'] == ['tables', 'migrations'] and tables['value']['data_guard']['problem'] == 'empty'
    assert tables['message'].startswith('DATA LOSS SUSPECTED: the database %s is empty' % app_db['login_db'])
    assert 'There is no verified backup of %s' % app_db['login_db'] in tables['message']
    assert guard.entry(str(guard_file), app_db['login_db'])['flag'] is None, 'db_health does not raise the flag'

    checks(app_db, data_guard_update=True, **options)  # the monitor raises it
    migrate(app_db)  # the schema_migrations rows are back: the flag stays raised
    flagged = checks(app_db, **options)
    assert flagged['failed'] == ['tables'] and 'the data-loss flag was raised' in flagged['msg']
    conn = connect(app_db)
    guard.accept(str(guard_file), guard.observe(conn, state_file=str(guard_file)))
    conn.close()
    assert checks(app_db, **options)['ok']


def test_module_fails_while_the_data_loss_flag_is_raised(app_db, tmp_path):
    guard_file = tmp_path / 'state' / 'data-guard.json'
    guard_file.parent.mkdir()
    guard_file.write_text(json.dumps(dict(system_identifier='1', had_data=True, tables={}, flag=dict(
        raised_at=time.time(), by='ansible deploy', reason='the database soul_bot is empty', problem='empty'))))
    args = dict(app_db, data_guard_file=str(guard_file), backup_dir=str(tmp_path / 'backups'))
    proc, result = run_module(tmp_path, args, '--check')
    assert proc.returncode != 0 and result['failed_checks'] == ['tables']
    assert 'the data-loss flag was raised' in result['msg'] and 'by ansible deploy' in result['msg']
    assert 'make guard-clear CONFIRM=%s' % app_db['login_db'] in result['msg']


# -- the health report's grace for a flapping container healthcheck (roles/monitoring/tasks/health.yml) ----------

GRACE_TASK = 'Give a flapping container healthcheck its grace'


def bot_line(output, group=1):
    """The bot_container line of the report the play printed (after the grace, when there was one): its verdict."""
    line = re.search(r'bot_container +(\S+) .*', output.split('Show the health report')[-1])
    return line and line.group(group)


def health_report(tmp_path, app_db, bot, grace, on_grace=None):
    """The monitoring role's health report (make health; a deploy's last step) as playbooks/health.yml includes it,
    read-only, for a database reached over the network and the bot container `bot`; on_grace() runs once the grace
    task starts. Returns (return code, output, seconds between the grace task's start and the next task's)."""
    play = [{'name': 'Health', 'hosts': 'localhost', 'gather_facts': False,
             'vars': {'soulnear_read_only': True, 'soulnear_root': str(tmp_path / 'opt'),
                      'soulnear_config_dir': str(tmp_path / 'etc'), 'soulnear_log_dir': str(tmp_path / 'log'),
                      'soulnear_backup_dir': str(tmp_path / 'backups'), 'soulnear_db_mode': 'external',
                      'soulnear_db_host': app_db['login_host'], 'soulnear_db_port': app_db['login_port'],
                      'soulnear_db_name': app_db['login_db'], 'soulnear_db_app_user': app_db['login_user'],
                      'vault_app_db_password': app_db['login_password'], 'soulnear_db_sslmode': 'prefer',
                      'soulnear_migrations_dir': MIGRATIONS, 'soulnear_bot_container': bot,
                      'monitoring_health_grace_seconds': grace},
             'tasks': [{'name': 'Check the deployment and print the report',
                        'ansible.builtin.include_role': {'name': 'monitoring', 'tasks_from': 'health'}}]}]
    book = tmp_path / 'health-report.yml'
    book.write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_NOCOLOR='1', PYTHONUNBUFFERED='1', ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_ROLES_PATH=os.path.join(ROOT, 'roles'))
    proc = subprocess.Popen([os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', str(book)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, grace_started, grace_took = [], None, None
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('TASK [') and grace_started is not None and grace_took is None:
                grace_took = time.monotonic() - grace_started
            if line.startswith('TASK [') and GRACE_TASK in line:
                grace_started = time.monotonic()
                if on_grace:
                    on_grace()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, ''.join(lines), grace_took


def test_health_report_gives_a_flapping_container_healthcheck_its_grace(app_db, throwaway, tmp_path):
    """Issue 22 item 6 (monitoring_health_grace_seconds): a bot container whose healthcheck is unhealthy when the
    report is taken but healthy again within the grace passes the report (taken again after the grace); one that stays
    unhealthy fails it once the grace is over. Without the grace the first report failed."""
    bot = throwaway('--health-cmd', 'test ! -e /tmp/sick', '--health-interval', '1s', '--health-retries', '1',
                    '--health-timeout', '5s')
    wait_healthy(bot, timeout=120)

    def sick(on):
        docker('exec', bot, 'sh', '-c', 'touch /tmp/sick' if on else 'rm -f /tmp/sick')
        wanted = 'unhealthy' if on else 'healthy'
        wait_for(lambda: inspect(bot, '{{.State.Health.Status}}') == wanted, 120, 'health %s' % wanted)

    sick(True)
    code, output, took = health_report(tmp_path, app_db, bot, 300, on_grace=lambda: sick(False))
    assert code == 0, output[-4000:]
    assert output.count('health_check.yml for localhost') == 2, output[-4000:]  # taken again after the grace
    assert took is not None and took < 200, took  # over when it was healthy again, not at the end of the grace
    assert bot_line(output) == 'ok', output[-4000:]
    started = inspect(bot, '{{.State.StartedAt}} {{.RestartCount}}')

    sick(True)
    code, output, took = health_report(tmp_path, app_db, bot, 8)
    assert code != 0, output[-4000:]
    assert output.count('health_check.yml for localhost') == 2, output[-4000:]
    assert took is not None and took >= 7, took  # it waited out the grace
    assert bot_line(output) != 'ok' and 'unhealthy' in bot_line(output, 0), output[-4000:]
    assert inspect(bot, '{{.State.StartedAt}} {{.RestartCount}}') == started  # reported, not restarted
