"""The host monitor (monitor.py) through the soulnear-health command (health_command.py) as cron and systemd
run it, against a real PostgreSQL container: it really restarts stopped containers and really refuses to
touch a database whose tables are gone.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import psycopg2
from ansible.module_utils.soulnear import health_command
from healthenv import ROOT, alerts, container_db, docker, host_config, inspect, log_lines, migrate
from healthenv import app_db_fixture, own_pg_fixture, throwaway_fixture  # noqa: F401 - fixtures


def test_host_command_runs_without_ansible(app_db, tmp_path):
    """The installed command imports the library from a plain directory, with no Ansible on the path."""
    lib = tmp_path / 'lib'
    lib.mkdir()
    shutil.copytree(os.path.join(ROOT, 'module_utils', 'soulnear'), str(lib / 'soulnear'))
    args = host_config(tmp_path, app_db)
    # The same package the modules import as ansible.module_utils.soulnear, here under its plain name.
    code = ('import sys; sys.path.insert(0, %r); from soulnear import health_command; '
            'assert "ansible" not in sys.modules; sys.exit(health_command.main(sys.argv[1:]))' % str(lib))
    proc = subprocess.run([sys.executable, '-I', '-c', code] + args + ['report', '--json'], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report['ok'] is True and 'migrations' in report['checks'] and 'backup_age' in report['checks']
    text = subprocess.run([sys.executable, '-I', '-c', code] + args, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and 'healthy:' in text.stdout and 'database      ok' in text.stdout


def test_snapshot_appends_disk_and_memory(app_db, tmp_path):
    args = host_config(tmp_path, app_db)
    assert health_command.main(args + ['snapshot']) == 0
    assert health_command.main(args + ['snapshot']) == 0
    lines = log_lines(tmp_path, 'resources.log')
    assert len(lines) == 2
    assert 'mem_total=' in lines[0] and 'mem_available=' in lines[0] and 'disk[/]=' in lines[0]


def test_monitor_healthy_run_logs_one_line(own_pg, tmp_path):
    params = container_db(own_pg)
    migrate(params)
    args = host_config(tmp_path, params, db_container=own_pg.name)
    assert health_command.main(args + ['monitor']) == 0
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
        assert health_command.main(args + ['monitor']) == 0
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
    assert health_command.main(args + ['monitor']) == 0
    assert inspect(bot, '{{.State.Running}}') == 'false', 'one failure is not enough to act'
    assert 'bot failing (1/2 failures before recovery)' in log_lines(tmp_path)[-1]
    assert health_command.main(args + ['monitor']) == 0
    assert inspect(bot, '{{.State.Running}}') == 'true'
    assert 'recovered: restarted %s' % bot in log_lines(tmp_path)[-1]
    assert inspect(own_pg.name, '{{.State.StartedAt}}') == db_started
    assert '== %s recovered by restart' % bot in alerts(tmp_path)
    assert health_command.main(args + ['monitor']) == 0
    assert ' INFO healthy' in log_lines(tmp_path)[-1]
    assert '== health checks pass again' not in alerts(tmp_path)  # nothing else was alerted


def test_maintenance_window_checks_but_never_acts(own_pg, tmp_path, throwaway, capsys):
    params = container_db(own_pg)
    migrate(params)
    bot = throwaway(image='soulnear/python:3-bookworm')
    docker('stop', '-t', '0', bot)  # a deploy swapping the bot
    args = host_config(tmp_path, params, db_container=own_pg.name, bot_container=bot,
                       maintenance_file=str(tmp_path / 'state' / 'maintenance.json'))
    assert health_command.main(args + ['pause', '--minutes', '5', '--reason', 'redeploy by test']) == 0
    assert 'monitor paused until' in capsys.readouterr().out
    for _ in range(3):
        assert health_command.main(args + ['monitor']) == 0
    lines = log_lines(tmp_path)
    assert all(' WARNING MAINTENANCE (redeploy by test): unhealthy: bot_container' in line for line in lines), lines
    assert inspect(bot, '{{.State.Running}}') == 'false' and alerts(tmp_path) == ''
    assert health_command.main(args + ['resume']) == 0
    assert health_command.main(args + ['monitor']) == 0
    assert 'bot failing (1/2 failures before recovery)' in log_lines(tmp_path)[-1]


def test_monitor_restarts_a_stopped_database_on_the_second_failure(own_pg, tmp_path):
    params = container_db(own_pg)
    migrate(params)
    args = host_config(tmp_path, params, db_container=own_pg.name)
    docker('stop', own_pg.name)  # a stop: Docker's restart policy does not undo it, only the monitor can
    try:
        assert health_command.main(args + ['monitor']) == 0
        first = log_lines(tmp_path)[-1]
        assert ' ERROR unhealthy: database: could not connect' in first
        assert 'database down (1/2 failures before recovery)' in first
        assert inspect(own_pg.name, '{{.State.Running}}') == 'false'
        started = time.time()
        assert health_command.main(args + ['monitor']) == 0
        second = log_lines(tmp_path)[-1]
        assert inspect(own_pg.name, '{{.State.Running}}') == 'true'
        assert 'recovered: restarted %s, working again after' % own_pg.name in second, second
        assert time.time() - started < 60
        assert '== %s recovered by restart' % own_pg.name in alerts(tmp_path)
        assert health_command.main(args + ['monitor']) == 0
        assert ' healthy: ' in log_lines(tmp_path)[-1]  # INFO, or WARNING while its healthcheck starts
    finally:
        docker('start', own_pg.name, check=False)
        own_pg.wait_ready()
