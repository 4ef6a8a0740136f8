"""The host monitor (monitor.py) through the soulnear-health command (health_command.py) as cron and systemd
run it, against a real PostgreSQL container: it really restarts stopped containers and really refuses to
touch a database whose tables are gone.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime

import psycopg2
from ansible.module_utils.soulnear import guard, health_command
from ansible.module_utils.soulnear import lock as deploy_lock
from ansible.module_utils.soulnear.backup_files import write_sidecar
from ansible.module_utils.soulnear.checks import check_database, docker_time
from ansible.module_utils.soulnear.files import sha256_file
from ansible.module_utils.soulnear.pg import RetryPolicy
from healthenv import ROOT, alerts, container_db, docker, execute, host_config, inspect, log_lines, migrate
from healthenv import app_db_fixture, own_pg_fixture, throwaway_fixture  # noqa: F401 - fixtures
from pgcluster import Cluster


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
    args = host_config(tmp_path, params, db_container=own_pg.name, bot_container=bot,
                       required_tables=['aiogram_states', 'schema_migrations'])
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


# A bot stand-in that stops cleanly (exit 0) on docker stop, as a bot stopped on purpose does.
CLEAN_STOP = ('sh', '-c', 'trap "exit 0" TERM; sleep infinity & wait')


def test_monitor_restarts_only_the_failing_bot(own_pg, tmp_path, throwaway):
    params = container_db(own_pg)
    migrate(params)
    bot = throwaway(image='soulnear/python:3-bookworm', command=CLEAN_STOP)
    docker('stop', bot)
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
    bot = throwaway(image='soulnear/python:3-bookworm', command=CLEAN_STOP)
    docker('stop', bot)  # a deploy swapping the bot
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


def state_of(tmp_path):
    return json.loads((tmp_path / 'state' / 'health-state.json').read_text())


def test_a_killed_database_is_recovered_at_the_first_check(own_pg, tmp_path):
    """docker kill is a manual stop to Docker (its restart policy does not fire): the monitor restarts the
    database at once instead of waiting for a second failed check."""
    params = container_db(own_pg)
    migrate(params)
    args = host_config(tmp_path, params, db_container=own_pg.name)
    docker('kill', own_pg.name)
    try:
        assert health_command.main(args + ['monitor']) == 0
        line = log_lines(tmp_path)[-1]
        assert inspect(own_pg.name, '{{.State.Running}}') == 'true', line
        assert '%s exited with code 137 without a stop by a deploy or an operator: restarting it at once' \
            % own_pg.name in line
        assert 'recovered: restarted %s' % own_pg.name in line
        sent = alerts(tmp_path)
        assert sent.count('== %s recovered by restart' % own_pg.name) == 1 and 'at once: it had exited' in sent
        assert '== health checks pass again' not in sent
        own_pg.wait_ready()
        assert health_command.main(args + ['monitor']) == 0
        assert alerts(tmp_path) == sent, 'one alert for the whole incident'
    finally:
        docker('start', own_pg.name, check=False)
        own_pg.wait_ready()


def test_a_stopped_database_alerts_at_the_first_failure_then_recovers(own_pg, tmp_path):
    params = container_db(own_pg)
    migrate(params)
    args = host_config(tmp_path, params, db_container=own_pg.name)
    docker('stop', own_pg.name)  # exit code 0: an operator's stop gets the second check's grace
    try:
        assert health_command.main(args + ['monitor']) == 0
        assert 'database down (1/2 failures before recovery)' in log_lines(tmp_path)[-1]
        assert '== %s is down: the monitor restarts it at the next failed check' % own_pg.name in alerts(tmp_path)
        assert health_command.main(args + ['monitor']) == 0
        assert 'recovered: restarted %s' % own_pg.name in log_lines(tmp_path)[-1]
        own_pg.wait_ready()
        assert health_command.main(args + ['monitor']) == 0
        sent = alerts(tmp_path)
        assert sent.count('== ') == 2 and '== health checks pass again' not in sent, sent
    finally:
        docker('start', own_pg.name, check=False)
        own_pg.wait_ready()


def test_a_wrong_password_never_restarts_the_database(own_pg, tmp_path):
    params = dict(container_db(own_pg), login_password='wrong-password')
    started_at = inspect(own_pg.name, '{{.State.StartedAt}}')
    args = host_config(tmp_path, params, db_container=own_pg.name, realert_minutes=60)
    for _ in range(3):
        assert health_command.main(args + ['monitor']) == 0
    assert inspect(own_pg.name, '{{.State.StartedAt}}') == started_at, 'a refused login is not fixed by a restart'
    lines = log_lines(tmp_path)
    assert all('password authentication failed' in line and 'restart' not in line.split('||', 1)[-1]
               for line in lines), lines
    sent = alerts(tmp_path)
    assert sent.count('== the database refuses the health check') == 1 and 'wrong-password' not in sent


def test_crash_recovery_is_waited_for_not_restarted(tmp_path):
    """57P03 (starting up, in recovery): the monitor waits and counts nothing down; it alerts once after
    startup_wait_minutes, and never restarts."""
    standby = Cluster(standby=True).init().start(wait=False)  # refuses every connection with 57P03
    try:
        params = standby.params(db='postgres')
        deadline = time.time() + 60
        while check_database(dict(params, retries=0), RetryPolicy(retries=0))[0]['value'].get('sqlstate') != '57P03':
            assert time.time() < deadline, 'the standby did not answer 57P03 within 60 s'
            time.sleep(0.2)
        args = host_config(tmp_path, params, startup_wait_minutes=0, failures_before_recovery=1)
        for _ in range(3):
            assert health_command.main(args + ['monitor']) == 0
        lines = log_lines(tmp_path)
        assert all('(SQLSTATE 57P03) for' in line and 'waiting, not restarting it' in line for line in lines), lines
        assert not [line for line in lines if 'recovered:' in line or 'recovery failed' in line]
        state = state_of(tmp_path)
        assert state['failures']['database'] == 0 and state['restarts'] == {}
        assert alerts(tmp_path).count('== the database is still starting') == 1
    finally:
        standby.destroy()


def test_the_deploy_lock_is_a_maintenance_window(own_pg, tmp_path, throwaway):
    params = container_db(own_pg)
    migrate(params)
    bot = throwaway(image='soulnear/python:3-bookworm')
    docker('stop', '-t', '0', bot)  # the deploy swaps the bot
    args = host_config(tmp_path, params, db_container=own_pg.name, bot_container=bot, failures_before_recovery=1)
    lock_dir = str(tmp_path / 'state' / 'deploy.lock')
    deploy_lock.acquire(lock_dir, 'run-1', 'alice@laptop', operation='deploy', pid=os.getpid())
    for _ in range(2):
        assert health_command.main(args + ['monitor']) == 0
    line = log_lines(tmp_path)[-1]
    assert ' MAINTENANCE (deploy by alice@laptop since ' in line and 'unhealthy: bot_container' in line, line
    assert 'while the deploy lock %s is held' % lock_dir in line
    assert inspect(bot, '{{.State.Running}}') == 'false' and alerts(tmp_path) == ''

    # A lock whose holder is gone (a killed deploy on this host) holds nothing: the monitor acts again.
    dead = subprocess.Popen(['true'])
    dead.wait()
    deploy_lock.release(lock_dir, force=True)
    deploy_lock.acquire(lock_dir, 'run-2', 'bob@laptop', operation='redeploy', pid=dead.pid)
    assert deploy_lock.status(lock_dir)['stale']
    assert health_command.main(args + ['monitor']) == 0
    assert 'recovered: restarted %s' % bot in log_lines(tmp_path)[-1]


def test_a_crash_looping_bot_is_restarted_three_times_an_hour_then_alerted_once(own_pg, tmp_path, throwaway):
    params = container_db(own_pg)
    migrate(params)
    bot = throwaway('--restart', 'always', '--health-cmd', 'false', '--health-interval', '1s',
                    '--health-start-period', '60s', image='soulnear/python:3-bookworm',
                    command=('sh', '-c', 'sleep 1; exit 3'))
    args = host_config(tmp_path, params, db_container=own_pg.name, bot_container=bot, failures_before_recovery=1,
                       recovery_wait_seconds=2, max_restarts_per_hour=3)
    for _ in range(5):
        # As a minute between two runs would: the bot has crashed again since the last one.
        deadline = time.time() + 60
        while int(inspect(bot, '{{.RestartCount}}')) < 1:
            assert time.time() < deadline, 'the bot did not crash within 60 s'
            time.sleep(0.2)
        assert health_command.main(args + ['monitor']) == 0
    lines = log_lines(tmp_path)
    assert len([line for line in lines if 'recovery failed: restarted %s' % bot in line]) == 3, lines
    assert 'recovery skipped for %s: restarted 3 time(s) in the last hour already' % bot in lines[3]
    assert all(' ERROR unhealthy: bot_container' in line for line in lines), 'a crash loop never passes'
    sent = alerts(tmp_path)
    assert sent.count('== %s is down and recovery failed' % bot) == 3
    assert sent.count('== %s keeps failing after 3 restarts' % bot) == 1
    assert '== health checks pass again' not in sent


def test_a_reboot_is_reported_once(own_pg, tmp_path):
    params = container_db(own_pg)
    migrate(params)
    args = host_config(tmp_path, params, db_container=own_pg.name)
    assert health_command.main(args + ['monitor']) == 0
    state = state_of(tmp_path)
    assert state['boot']
    state['boot'] = 'another-boot/1'  # as the state reads after a reboot
    (tmp_path / 'state' / 'health-state.json').write_text(json.dumps(state))
    for _ in range(2):
        assert health_command.main(args + ['monitor']) == 0
    sent = alerts(tmp_path)
    assert sent.count('== the host restarted; all checks pass') == 1, sent
    assert 'the host restarted (up since' in log_lines(tmp_path)[-2]


def test_another_cluster_with_the_same_tables_is_data_loss_until_cleared(tmp_path, capsys):
    """The volume re-initialised and migrated again: same tables, another system_identifier. The monitor raises
    the data-loss guard's flag, alerts at its interval, restarts nothing, and passes again only after an operator
    clears the flag (or a restore records the restored database)."""
    first, second = Cluster().init().start(), Cluster().init().start()
    try:
        for cluster in (first, second):
            cluster.wait_ready()
            cluster.query('CREATE DATABASE soul_bot')
            cluster.query("CREATE ROLE soulnear LOGIN PASSWORD 'app-secret'")
            cluster.query('ALTER DATABASE soul_bot OWNER TO soulnear')
            migrate(cluster.params(db='soul_bot', user='soulnear', password='app-secret'))
        params = first.params(db='soul_bot', user='soulnear', password='app-secret')
        first.query("INSERT INTO users (id, username) VALUES (1, 'ann')", db='soul_bot')  # the data that existed
        args = host_config(tmp_path, params, realert_minutes=0)
        assert health_command.main(args + ['monitor']) == 0
        assert ' INFO healthy' in log_lines(tmp_path)[-1]
        guard_file = tmp_path / 'state' / 'data-guard.json'
        assert guard.entry(str(guard_file), 'soul_bot')['had_data'] is True

        args = host_config(tmp_path, dict(params, login_port=second.port), realert_minutes=0)
        for _ in range(2):
            assert health_command.main(args + ['monitor']) == 0
        raised, still = log_lines(tmp_path)[-2:]
        assert ' ERROR DATA LOSS SUSPECTED: the database server is another cluster than the one recorded' in raised
        assert 'no container was restarted and nothing was created' in raised
        assert ' ERROR DATA LOSS SUSPECTED: the data-loss flag was raised' in still and 'another cluster' in still
        assert guard.entry(str(guard_file), 'soul_bot')['flag']['by'] == 'soulnear-health monitor'
        assert alerts(tmp_path).count('== DATA LOSS SUSPECTED on the database') == 2, 'repeats at its interval'

        assert health_command.main(args + ['guard']) == 1
        assert capsys.readouterr().out.startswith('FLAG RAISED')
        assert health_command.main(args + ['guard', 'clear']) == 2
        assert health_command.main(args + ['guard', 'clear', '--confirm', 'soul_bot']) == 0
        assert 'is lowered' in capsys.readouterr().out
        assert health_command.main(args + ['monitor']) == 0
        assert ' INFO healthy' in log_lines(tmp_path)[-1]
        assert '== health checks pass again' in alerts(tmp_path)
    finally:
        first.destroy()
        second.destroy()


def test_a_damaged_newest_backup_alerts_at_once(app_db, tmp_path):
    args = host_config(tmp_path, app_db)
    backups = tmp_path / 'backups'
    backups.mkdir()
    name = datetime.now().strftime('backup_%Y%m%d_%H%M%S.dump')
    (backups / name).write_bytes(b'PGDMP a verified archive')
    write_sidecar(str(backups / name), sha256_file(str(backups / name)), app_db['login_db'])
    assert health_command.main(args + ['monitor']) == 0
    assert ' INFO healthy' in log_lines(tmp_path)[-1]
    (backups / name).write_bytes(b'PGDMP a damaged archive!')
    assert health_command.main(args + ['monitor']) == 0
    assert 'does not match its .sha256 sidecar' in log_lines(tmp_path)[-1]
    assert '== health check backup_age failing' in alerts(tmp_path)


def test_after_a_reboot_docker_gets_time_but_a_database_killed_since_is_recovered_at_once(own_pg, tmp_path):
    """Boot grace: right after a reboot a database container Docker has not started yet is waited for; one that
    came back after the boot and was killed since is an incident, restarted at once."""
    params = container_db(own_pg)
    migrate(params)
    args = host_config(tmp_path, params, db_container=own_pg.name, boot_grace_minutes=60)
    assert health_command.main(args + ['monitor']) == 0  # records this boot
    started = docker_time(inspect(own_pg.name, '{{.State.StartedAt}}'))
    state_file = tmp_path / 'state' / 'health-state.json'
    docker('kill', own_pg.name)
    try:
        # The host booted after the container last started: Docker has not brought it back yet.
        state = state_of(tmp_path)
        state['reboot'] = dict(booted=started + 5, seen=time.time())
        state_file.write_text(json.dumps(state))
        assert health_command.main(args + ['monitor']) == 0
        assert 'waiting for Docker to start the containers' in log_lines(tmp_path)[-1]
        assert inspect(own_pg.name, '{{.State.Running}}') == 'false'
        # The container started after the boot and was killed since: no grace.
        state = state_of(tmp_path)
        state['reboot'] = dict(booted=started - 5, seen=time.time())
        state_file.write_text(json.dumps(state))
        assert health_command.main(args + ['monitor']) == 0
        assert 'restarting it at once' in log_lines(tmp_path)[-1]
        assert inspect(own_pg.name, '{{.State.Running}}') == 'true'
    finally:
        docker('start', own_pg.name, check=False)
        own_pg.wait_ready()


def test_a_bot_killed_from_outside_is_restarted_at_once_with_an_alert_at_both_ends(own_pg, tmp_path, throwaway):
    """docker kill of the bot (exit 137; no deploy, no operator): restarted at the first check, not the second,
    with one alert when the outage is seen and one when it ends (issue 22). The watcher (soulnear-health watch)
    starts that check when the container dies: from the kill to a running bot in seconds."""
    from ansible.module_utils.soulnear import watch
    params = container_db(own_pg)
    migrate(params)
    bot = throwaway('--health-cmd', 'true', '--health-interval', '1s', image='soulnear/python:3-bookworm',
                    command=CLEAN_STOP)
    args = host_config(tmp_path, params, db_container=own_pg.name, bot_container=bot)
    runs = []

    def on_death(name, code):
        runs.append((name, code, health_command.main(args + ['monitor'])))
    streams = []

    def popen(*a, **k):
        streams.append(subprocess.Popen(*a, **k))
        return streams[-1]
    since = time.time() - 1  # replayed from here: a kill before docker events attached is still seen
    follower = threading.Thread(target=lambda: watch.follow([own_pg.name, bot], on_death, log=lambda _m: None,
                                                            popen=popen, since=since), daemon=True)
    follower.start()
    killed = time.time()
    try:
        docker('kill', bot)
        deadline = killed + 60
        while not runs and time.time() < deadline:
            time.sleep(0.2)
        took = time.time() - killed
    finally:
        for stream in streams:
            stream.terminate()
        follower.join(30)
    assert runs and runs[0][:2] == (bot, 137), runs
    assert inspect(bot, '{{.State.Running}}') == 'true'
    line = log_lines(tmp_path)[-1]
    assert '%s exited with code 137 without a stop by a deploy or an operator: restarting it at once' % bot in line
    assert 'recovered: restarted %s' % bot in line
    sent = alerts(tmp_path)
    assert '== %s exited (code 137): restarting it' % bot in sent and '== %s recovered by restart' % bot in sent
    assert took <= 15, 'the killed bot took %.1f s to run again' % took
    # A deploy's clean stop (exit 0) is not recovered at once: it is a stop somebody asked for.
    docker('stop', bot)
    assert health_command.main(args + ['monitor']) == 0
    assert 'bot failing (1/2 failures before recovery)' in log_lines(tmp_path)[-1]
    print('killed bot: running again %.1f s after docker kill' % took)


def test_a_hung_database_is_told_apart_alerted_and_killed_after_a_short_grace(own_pg, tmp_path):
    """The postmaster stopped with SIGSTOP (running to Docker, silent to clients): the first check says HUNG, the
    second kills it after hung_grace_seconds instead of the clean-stop timeout it cannot honour, and crash recovery
    brings it back with every committed row (issue 22)."""
    params = container_db(own_pg)
    migrate(params)
    execute(params, 'CREATE TABLE hung_rows (id int PRIMARY KEY)')
    execute(params, 'INSERT INTO hung_rows SELECT generate_series(1, 500)')
    args = host_config(tmp_path, params, db_container=own_pg.name, connect_timeout=3, retries=1,
                       hung_grace_seconds=5)
    docker('kill', '--signal', 'STOP', own_pg.name)
    try:
        assert health_command.main(args + ['monitor']) == 0
        assert 'database HUNG' in log_lines(tmp_path)[-1], log_lines(tmp_path)[-1]
        assert '== %s is HUNG: running but not answering' % own_pg.name in alerts(tmp_path)
        second = time.time()
        assert health_command.main(args + ['monitor']) == 0
        took = time.time() - second
        line = log_lines(tmp_path)[-1]
        assert 'recovered: restarted %s' % own_pg.name in line and 'stopping it with 5 s of grace' in line, line
        assert took <= 30, 'back %.1f s after the second check' % took
    finally:
        docker('kill', '--signal', 'CONT', own_pg.name, check=False)
        docker('start', own_pg.name, check=False)
        own_pg.wait_ready()
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user=params['login_user'],
                            password=params['login_password'], dbname=params['login_db'])
    with conn, conn.cursor() as cur:
        cur.execute('SELECT count(*) FROM hung_rows')
        assert cur.fetchone()[0] == 500
    conn.close()
    print('hung database: back %.1f s after the second failed check' % took)
