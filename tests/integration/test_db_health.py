"""db_health and the soulnear-health host command against a real PostgreSQL and real containers.

Nothing is mocked: the checks run against throwaway clusters (tests/pgcluster.py) and containers on
the local Docker engine; the monitor really restarts stopped containers and really refuses to touch a
database whose tables are gone.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
import yaml

from ansible.module_utils.soulnear import health as soulnear_health
from ansible.module_utils.soulnear.migrate import MigrationError, Migrator
from pgcluster import Cluster, free_port
from pgcontainer import PgContainer, docker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIGRATIONS = os.path.join(ROOT, 'examples', 'bot', 'database', 'migrations')
BIN = os.path.dirname(sys.executable)


# -- helpers ---------------------------------------------------------------------------------------

def app_database(server, params):
    """An app role with a password that owns the database of `params` (as the postgres role sets it up)."""
    user = 'app_' + uuid.uuid4().hex[:8]
    password = 'app-secret-' + uuid.uuid4().hex[:6]
    server.query("CREATE ROLE %s LOGIN PASSWORD '%s'" % (user, password))
    server.query('ALTER DATABASE %s OWNER TO %s' % (params['login_db'], user))
    return dict(params, login_user=user, login_password=password)


def migrate(params, path=MIGRATIONS):
    return Migrator(dict(params, path=str(path))).run()


def execute(params, sql):
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user=params['login_user'],
                            password=params['login_password'], dbname=params['login_db'])
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def checks(params, **options):
    return soulnear_health.run_checks(dict(params, **options))


def inspect(name, fmt):
    return docker('inspect', '--format', fmt, name).stdout.strip()


def wait_healthy(name, timeout=30):
    deadline = time.time() + timeout
    while inspect(name, '{{.State.Health.Status}}') != 'healthy':
        assert time.time() < deadline, 'container %s did not become healthy' % name
        time.sleep(0.3)


@pytest.fixture
def app_db(pg_server, pg_db):
    params = app_database(pg_server, pg_db)
    migrate(params)
    return params


@pytest.fixture(scope='module')
def own_pg():
    """A PostgreSQL container on a fixed host port (a restart keeps the port), for this module only: the monitor
    stops and restarts it, and the diagnostics read its log."""
    port = free_port()
    container = PgContainer(extra_args=['-p', '127.0.0.1:%d:5432' % port, '--restart', 'unless-stopped'])
    container.start()
    container.port = port
    wait_healthy(container.name)
    yield container
    container.remove()


@pytest.fixture
def throwaway():
    """Creates containers from the local images; removes them afterwards."""
    names = []

    def create(*args, image='soulnear/debian:bookworm', command=('sleep', 'infinity')):
        name = 'soulnear-test-' + uuid.uuid4().hex[:8]
        docker('run', '-d', '--name', name, *args, image, *command)
        names.append(name)
        return name
    yield create
    for name in names:
        docker('rm', '-f', name, check=False)


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
    report = checks(app_db, migrations_path=MIGRATIONS)
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
    assert 'migrations_path' in report['checks']['migrations']['message']


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
    assert elapsed < 1.5, 'an authentication failure must not be retried (took %.1fs)' % elapsed
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
    result = soulnear_health.check_container(stopped, role='bot')
    assert result['ok'] is False and 'is exited' in result['message'] and 'make logs-bot' in result['message']


def test_restart_count_growth_is_a_warning(throwaway):
    name = throwaway('--restart', 'on-failure', command=('sh', '-c', 'sleep 0.3; exit 3'))
    deadline = time.time() + 20
    while int(inspect(name, '{{.RestartCount}}')) < 1 and time.time() < deadline:
        time.sleep(0.2)
    first = soulnear_health.check_container(name, role='bot')
    seen = first['value']['restart_count']
    assert seen >= 1
    assert 'since it was last started by hand' in first.get('warning', '')
    while int(inspect(name, '{{.RestartCount}}')) <= seen and time.time() < deadline:
        time.sleep(0.2)
    grown = soulnear_health.check_container(name, previous_restart_count=seen, role='bot')
    assert 'since the last check (it crashed)' in grown['warning']
    current = grown['value']['restart_count']
    same = soulnear_health.check_container(name, previous_restart_count=current + 100, role='bot')
    assert 'since the last check' not in (same.get('warning') or '')


def write_backup(directory, hours_old, verified=True):
    """A backup file named as the backup command names it (local time) hours_old ago, with its sidecar."""
    name = (datetime.now() - timedelta(hours=hours_old)).strftime('backup_%Y%m%d_%H%M%S.dump')
    path = directory / name
    path.write_bytes(b'PGDMP fake dump')
    if verified:
        (directory / (name + '.sha256')).write_text('0' * 64 + '  ' + name + '\n')
    return name


def test_backup_age(tmp_path):
    backups = tmp_path / 'backups'
    none_yet = soulnear_health.check_backup_age(str(backups), 26)
    assert none_yet['ok'] and 'no backups yet' in none_yet['message']
    assert not soulnear_health.check_backup_age(str(backups), 26, require=True)['ok']
    backups.mkdir()
    assert soulnear_health.check_backup_age(str(backups), 26)['message'].startswith('no backups yet')
    required = soulnear_health.check_backup_age(str(backups), 26, require=True)
    assert not required['ok'] and 'make backup' in required['message']

    old_name = write_backup(backups, hours_old=50)
    old = soulnear_health.check_backup_age(str(backups), 26)
    assert old['ok'] is False and old['value']['newest'] == old_name
    assert old['value']['age_hours'] == pytest.approx(50, abs=0.1)
    assert '50.0 h old (limit 26 h)' in old['message'] and 'make backup' in old['message']

    fresh_name = write_backup(backups, hours_old=2)
    unverified_name = write_backup(backups, hours_old=1, verified=False)  # failed verification / in progress
    (backups / 'notes.txt').write_text('not a backup')
    fresh = soulnear_health.check_backup_age(str(backups), 26)
    assert fresh['ok'] is True and fresh['value']['newest'] == fresh_name
    assert fresh['value']['count'] == 3 and fresh['value']['verified'] == 2
    assert '%s has no .sha256 sidecar' % unverified_name in fresh['warning']

    unverified = tmp_path / 'unverified'
    unverified.mkdir()
    write_backup(unverified, hours_old=1, verified=False)
    result = soulnear_health.check_backup_age(str(unverified), 26)
    assert result['ok'] is False and 'none of the 1 backup(s)' in result['message']

    custom = tmp_path / 'custom'
    custom.mkdir()
    (custom / (datetime.now() - timedelta(hours=3)).strftime('soul_%Y-%m-%d_%H%M%S.dump')).write_bytes(b'x')
    for path in custom.iterdir():
        (custom / (path.name + '.sha256')).write_text('0' * 64 + '\n')
    named = soulnear_health.check_backup_age(str(custom), 26, pattern='soul_%Y-%m-%d_%H%M%S.dump')
    assert named['ok'] and named['value']['age_hours'] == pytest.approx(3, abs=0.1)


def test_disk_free_on_real_paths(tmp_path):
    actual = soulnear_health.disk_usage(str(tmp_path))['used_percent']
    fine = soulnear_health.check_disk([str(tmp_path), str(tmp_path / 'not-yet-created')], 100)
    assert fine['ok'] is True and len(fine['value']) == 2
    assert fine['value'][0]['free_mb'] > 0 and fine['value'][0]['used_percent'] == pytest.approx(actual, abs=1)
    full = soulnear_health.check_disk([str(tmp_path)], max(0, int(actual) - 1))
    assert full['ok'] is False and 'full' in full['message'] and 'docker image prune' in full['message']
    missing = soulnear_health.check_disk([str(tmp_path)], 100, db_volume='soulnear-test-no-such-volume')
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
                disk_paths=[str(tmp_path)], disk_max_used_percent=100, state_file=str(state))
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


# -- the host command ------------------------------------------------------------------------------------

def host_config(tmp_path, db_params, db_container=None, bot_container=None, **monitoring):
    """soulnear.json and monitoring.json as the soulnear and monitoring roles write them."""
    alerts = tmp_path / 'alerts.txt'
    base = dict(name='soulnear', log_dir=str(tmp_path / 'log'), backup_dir=str(tmp_path / 'backups'),
                db=dict(container=db_container, volume=None, host=db_params['login_host'],
                        port=db_params['login_port'], name=db_params['login_db'], superuser='postgres',
                        superuser_password='', app_user=db_params['login_user'],
                        app_password=db_params['login_password']),
                bot=dict(container=bot_container),
                alert=dict(command='{ echo "== $SOULNEAR_ALERT_SUBJECT"; cat; echo; } >> %s' % alerts,
                           webhook_url='', telegram_token='', telegram_chat_id=''))
    mon = dict(migrations_dir=MIGRATIONS, state_file=str(tmp_path / 'state' / 'health-state.json'), retries=0,
               connect_timeout=3, recovery_wait_seconds=90, check_bot=bool(bot_container))
    mon.update(monitoring)
    (tmp_path / 'soulnear.json').write_text(json.dumps(base))
    (tmp_path / 'monitoring.json').write_text(json.dumps(mon))
    return ['--config', str(tmp_path / 'soulnear.json'), '--monitoring-config', str(tmp_path / 'monitoring.json')]


def log_lines(tmp_path, name='health.log'):
    path = tmp_path / 'log' / name
    return path.read_text().splitlines() if path.exists() else []


def alerts(tmp_path):
    path = tmp_path / 'alerts.txt'
    return path.read_text() if path.exists() else ''


def container_db(own_pg):
    """A fresh database in the module's container with an app role that owns it."""
    name = 'db_' + uuid.uuid4().hex[:8]
    own_pg.query('CREATE DATABASE %s' % name)
    params = own_pg.params(db=name)
    user, password = 'app_' + uuid.uuid4().hex[:8], 'app-' + uuid.uuid4().hex[:8]
    own_pg.query("CREATE ROLE %s LOGIN PASSWORD '%s'" % (user, password))
    own_pg.query('ALTER DATABASE %s OWNER TO %s' % (name, user))
    return dict(params, login_user=user, login_password=password)


def test_host_command_runs_without_ansible(app_db, tmp_path):
    """The installed command imports the library from a plain directory, with no Ansible on the path."""
    lib = tmp_path / 'lib'
    lib.mkdir()
    shutil.copytree(os.path.join(ROOT, 'module_utils', 'soulnear'), str(lib / 'soulnear'))
    args = host_config(tmp_path, app_db)
    # The same package the modules import as ansible.module_utils.soulnear, here under its plain name.
    code = ('import sys; sys.path.insert(0, %r); from soulnear import health; '
            'assert "ansible" not in sys.modules; sys.exit(health.main(sys.argv[1:]))' % str(lib))
    proc = subprocess.run([sys.executable, '-I', '-c', code] + args + ['report', '--json'], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report['ok'] is True and 'migrations' in report['checks'] and 'backup_age' in report['checks']
    text = subprocess.run([sys.executable, '-I', '-c', code] + args, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and 'healthy:' in text.stdout and 'database      ok' in text.stdout


def test_snapshot_appends_disk_and_memory(app_db, tmp_path):
    args = host_config(tmp_path, app_db)
    assert soulnear_health.main(args + ['snapshot']) == 0
    assert soulnear_health.main(args + ['snapshot']) == 0
    lines = log_lines(tmp_path, 'resources.log')
    assert len(lines) == 2
    assert 'mem_total=' in lines[0] and 'mem_available=' in lines[0] and 'disk[/]=' in lines[0]


def test_monitor_healthy_run_logs_one_line(own_pg, tmp_path):
    params = container_db(own_pg)
    migrate(params)
    args = host_config(tmp_path, params, db_container=own_pg.name)
    assert soulnear_health.main(args + ['monitor']) == 0
    lines = log_lines(tmp_path)
    assert len(lines) == 1 and ' INFO healthy: ' in lines[0]
    state = json.loads((tmp_path / 'state' / 'health-state.json').read_text())
    assert state['failures']['database'] == 0 and state['restart_counts'] == {own_pg.name: 0}
    assert alerts(tmp_path) == ''


def test_monitor_never_restarts_or_creates_when_tables_are_gone(own_pg, tmp_path, throwaway):
    params = container_db(own_pg)  # answers, but empty: the volume came back re-initialised
    bot = throwaway(image='soulnear/python:3-bookworm')
    docker('stop', '-t', '0', bot)  # a bot that exited because its tables are gone
    started_at = inspect(own_pg.name, '{{.State.StartedAt}}')
    args = host_config(tmp_path, params, db_container=own_pg.name, bot_container=bot)
    for _ in range(3):
        assert soulnear_health.main(args + ['monitor']) == 0
    lines = log_lines(tmp_path)
    assert len(lines) == 3
    for line in lines:
        assert ' ERROR DATA LOSS SUSPECTED: required table(s) aiogram_states, schema_migrations are missing' in line
        assert 'make restore' in line and 'no container was restarted and nothing was created' in line
    assert inspect(bot, '{{.State.Running}}') == 'false', 'the bot must not be restarted onto an empty database'
    assert inspect(own_pg.name, '{{.State.StartedAt}}') == started_at, 'the database must not be restarted'
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user=params['login_user'],
                            password=params['login_password'], dbname=params['login_db'])
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert cur.fetchone()[0] == 0, 'nothing may be created over lost data'
    conn.close()
    sent = alerts(tmp_path)
    assert sent.count('== DATA LOSS SUSPECTED on the database') == 1, 'alert once, not every minute: ' + sent
    assert 'restore the latest verified backup with make restore' in sent


def test_monitor_restarts_only_the_failing_bot(own_pg, tmp_path, throwaway):
    params = container_db(own_pg)
    migrate(params)
    bot = throwaway(image='soulnear/python:3-bookworm')
    docker('stop', '-t', '0', bot)
    db_started = inspect(own_pg.name, '{{.State.StartedAt}}')
    args = host_config(tmp_path, params, db_container=own_pg.name, bot_container=bot)
    assert soulnear_health.main(args + ['monitor']) == 0
    assert inspect(bot, '{{.State.Running}}') == 'false', 'one failure is not enough to act'
    assert 'bot failing (1/2 failures before recovery)' in log_lines(tmp_path)[-1]
    assert soulnear_health.main(args + ['monitor']) == 0
    assert inspect(bot, '{{.State.Running}}') == 'true'
    assert 'recovered: restarted %s' % bot in log_lines(tmp_path)[-1]
    assert inspect(own_pg.name, '{{.State.StartedAt}}') == db_started
    assert '== %s recovered by restart' % bot in alerts(tmp_path)
    assert soulnear_health.main(args + ['monitor']) == 0
    assert ' INFO healthy' in log_lines(tmp_path)[-1]
    assert '== health checks pass again' not in alerts(tmp_path)  # nothing else was alerted


def test_maintenance_window_checks_but_never_acts(own_pg, tmp_path, throwaway, capsys):
    params = container_db(own_pg)
    migrate(params)
    bot = throwaway(image='soulnear/python:3-bookworm')
    docker('stop', '-t', '0', bot)  # a deploy swapping the bot
    args = host_config(tmp_path, params, db_container=own_pg.name, bot_container=bot,
                       maintenance_file=str(tmp_path / 'state' / 'maintenance.json'))
    assert soulnear_health.main(args + ['pause', '--minutes', '5', '--reason', 'redeploy by test']) == 0
    assert 'monitor paused until' in capsys.readouterr().out
    for _ in range(3):
        assert soulnear_health.main(args + ['monitor']) == 0
    lines = log_lines(tmp_path)
    assert all(' WARNING MAINTENANCE (redeploy by test): unhealthy: bot_container' in line for line in lines), lines
    assert inspect(bot, '{{.State.Running}}') == 'false' and alerts(tmp_path) == ''
    assert soulnear_health.main(args + ['resume']) == 0
    assert soulnear_health.main(args + ['monitor']) == 0
    assert 'bot failing (1/2 failures before recovery)' in log_lines(tmp_path)[-1]


def test_monitor_restarts_a_stopped_database_on_the_second_failure(own_pg, tmp_path):
    params = container_db(own_pg)
    migrate(params)
    args = host_config(tmp_path, params, db_container=own_pg.name)
    docker('stop', own_pg.name)  # a stop: Docker's restart policy does not undo it, only the monitor can
    try:
        assert soulnear_health.main(args + ['monitor']) == 0
        first = log_lines(tmp_path)[-1]
        assert ' ERROR unhealthy: database: could not connect' in first
        assert 'database down (1/2 failures before recovery)' in first
        assert inspect(own_pg.name, '{{.State.Running}}') == 'false'
        started = time.time()
        assert soulnear_health.main(args + ['monitor']) == 0
        second = log_lines(tmp_path)[-1]
        assert inspect(own_pg.name, '{{.State.Running}}') == 'true'
        assert 'recovered: restarted %s, working again after' % own_pg.name in second, second
        assert time.time() - started < 60
        assert '== %s recovered by restart' % own_pg.name in alerts(tmp_path)
        assert soulnear_health.main(args + ['monitor']) == 0
        assert ' healthy: ' in log_lines(tmp_path)[-1]  # INFO, or WARNING while its healthcheck starts
    finally:
        docker('start', own_pg.name, check=False)
        own_pg.wait_ready()


# -- diagnostics --------------------------------------------------------------------------------------------

def inspect_root():
    return docker('info', '--format', '{{.DockerRootDir}}').stdout.strip()


def diagnose_config(own_pg, tmp_path, **overrides):
    volume = json.loads(docker('inspect', own_pg.name).stdout)[0]['Mounts'][0]['Name']
    log_dir = tmp_path / 'log'
    (log_dir / 'postgres').mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.000 UTC')
    with open(log_dir / 'postgres' / 'postgresql.log', 'a') as handle:
        handle.write('%s [42] LOG:  database system is ready to accept connections\n' % now)
        handle.write('%s [77] soulnear@soul_bot FATAL:  the database system is starting up\n' % now)
        handle.write('2020-01-01 00:00:00.000 UTC [13] FATAL:  role "ancient" does not exist\n')  # out of window
    (tmp_path / 'kern.log').write_text('')
    # The threshold sits above what this machine's disks really use, so "healthy" does not depend on them.
    disk = max(soulnear_health.disk_usage(path)['used_percent']
               for path in ('/', str(tmp_path), inspect_root()))
    config = dict(db_container=own_pg.name, db_volume=volume, log_dir=str(log_dir), backup_dir=str(tmp_path),
                  kernel_log=str(tmp_path / 'kern.log'), journal=False, dmesg=False,
                  disk_threshold_percent=min(100, max(90, disk + 1)), disk_paths=[str(tmp_path)],
                  memory_min_available_percent=1)
    config.update(overrides)
    return config


def test_diagnose_reports_nothing_on_a_healthy_setup(own_pg, tmp_path):
    result = soulnear_health.diagnose(diagnose_config(own_pg, tmp_path))
    assert result['anomalies'] == [], result['anomalies']
    assert result['summary'] == ['No anomalies found']
    titles = [s['title'] for s in result['sections']]
    for expected in ('PostgreSQL logs', 'Containers', 'Data volume', 'Disk', 'OOM killer', 'Memory',
                     'Docker daemon'):
        assert any(t.startswith(expected) for t in titles), titles
    text = soulnear_health.render_diagnosis(result)
    assert 'volume %s: present' % diagnose_config(own_pg, tmp_path)['db_volume'] in text
    assert 'FATAL line(s) of normal starts/shutdowns' in text


def test_diagnose_finds_planted_anomalies(own_pg, tmp_path):
    config = diagnose_config(own_pg, tmp_path, disk_threshold_percent=0.001, db_volume='soulnear-test-lost-volume')
    now = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.000 UTC')
    with open(tmp_path / 'log' / 'postgres' / 'postgresql.log', 'a') as handle:
        for pid in (100, 101, 102):
            handle.write('%s [%d] root@soul_bot FATAL:  role "root" does not exist\n' % (now, pid))
        handle.write('%s [9] PANIC:  could not write to file "pg_wal/xlogtemp.9": No space left on device\n' % now)
        handle.write('%s [9] LOG:  database system was interrupted; last known up at %s\n' % (now, now))
        handle.write('%s [9] LOG:  redo starts at 0/1A2B3C4\n' % now)
        handle.write('%s [9] LOG:  database system was interrupted; last known up at %s\n' % (now, now))
        handle.write('%s [9] LOG:  redo starts at 0/1A2B3D0\n' % now)
    stamp = datetime.now().astimezone().strftime('%Y-%m-%dT%H:%M:%S.000000%z')
    (tmp_path / 'kern.log').write_text(
        '%s host kernel: Out of memory: Killed process 4242 (postgres) total-vm:1234kB\n' % stamp)
    result = soulnear_health.diagnose(config)
    messages = [a['message'] for a in result['anomalies']]
    text = '\n'.join(messages)
    assert '3 x FATAL: role "root" does not exist' in text
    assert 'PANIC: could not write to file' in text
    assert '"No space left on device"' in text
    assert 'crash recovery ran 2 time(s)' in text and 'recovery loop' in text
    assert any(a['check'] == 'disk' and 'threshold 0.001%' in a['message']
                                          for a in result['anomalies'])
    assert 'data volume soulnear-test-lost-volume does not exist' in text
    assert 'does not mount volume soulnear-test-lost-volume' in text
    assert 'OOM killer fired 1 time(s)' in text
    assert 'ancient' not in text, 'lines older than the window are not anomalies'
    root = [a for a in result['anomalies'] if 'role "root"' in a['message']][0]
    assert '-U' in root['fix']
    assert result['summary'][0] == '%d anomalies found:' % len(result['anomalies'])


def test_diagnose_command_writes_a_report(own_pg, tmp_path, capsys):
    params = own_pg.params()
    (tmp_path / 'kern.log').write_text('')
    args = host_config(tmp_path, params, db_container=own_pg.name,
                       diagnose=dict(journal=False, dmesg=False, kernel_log=str(tmp_path / 'kern.log')))
    (tmp_path / 'log' / 'postgres').mkdir(parents=True)
    (tmp_path / 'log' / 'postgres' / 'postgresql.log').write_text(
        '%s [5] FATAL:  password authentication failed for user "soulnear"\n'
        % datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.000 UTC'))
    output = tmp_path / 'log' / 'diagnose-test.txt'
    assert soulnear_health.main(args + ['diagnose', '--json', '--output', str(output), '--disk-threshold', '100',
                                        '--memory-min-available', '1']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['report_file'] == str(output)
    assert [a['message'] for a in result['anomalies'] if a['check'] == 'postgres_log'] == [
        '1 x FATAL: password authentication failed for user "soulnear"']
    report = output.read_text()
    assert report.startswith('SoulNear diagnostics for ') and '== Summary' in report and '== Disk' in report
    assert oct(os.stat(output).st_mode & 0o777) == '0o600'
