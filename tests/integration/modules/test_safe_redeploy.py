"""safe_redeploy's decisions against the real Docker engine and a real PostgreSQL container
(tests/support/redeployenv.py).

One deployment for the whole file, taken through its life as an operator would: a first deploy, nothing to do,
a swap with a new migration, failed versions that must leave the previous bot running (a crash at start, a health
timeout, an error in the log, a failed migration), an explicit rollback, make migrate's action, and two deploys
at once through the deploy lock. The versions are examples/bot copied with small edits; their HEALTHCHECK
interval is 2 s instead of 10 s so the suite does not wait for Docker's first probe (the decisions are the same).

Most runs go through ansible-playbook (tests/support/ansiblerun.py), as the app role calls the module.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from ansiblerun import BIN, ROOT, run_module
from redeployenv import CRASH_AT_START, LOGS_AN_ERROR, NEVER_HEALTHY, RedeployEnv

pytestmark = pytest.mark.slow

PROFILES = {'004_profiles.sql': 'CREATE TABLE IF NOT EXISTS profiles (\n    user_id bigint PRIMARY KEY,\n'
                                '    bio text\n);\n'}
# The first statement would work; the second fails at run time, so the file's transaction must undo both.
BROKEN = dict(PROFILES, **{'005_broken.sql': 'CREATE TABLE half_done (id int);\n'
                                             'ALTER TABLE no_such_table ADD COLUMN x int;\n'})


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    deployment = RedeployEnv(tmp_path_factory.mktemp('redeploy'), health_interval='2s').start()
    try:
        deployment.version('v1')
        deployment.version('v2', migrations=PROFILES)
        yield deployment
    finally:
        deployment.close()


def deploy(tmp_path, env, version, *extra, **overrides):
    code, result, output = run_module(tmp_path, 'safe_redeploy', env.deploy_params(version, **overrides), *extra)
    assert result is not None, output[-3000:]
    return code, result


def ensure(tmp_path, env, version):
    """The bot runs version (deployed when it does not)."""
    code, result = deploy(tmp_path, env, version)
    assert code == 0, result.get('msg')
    assert env.container()['health'] == 'healthy'
    return result


def audit_lines(env):
    with open(env.audit_log) as handle:
        return [json.loads(line) for line in handle]


def test_first_deploy_applies_every_migration_and_starts_the_bot(env, tmp_path):
    code, result = deploy(tmp_path, env, 'v1')
    assert code == 0, result['msg']
    assert result['changed'] is True
    assert result['applied'] == ['001_init.sql', '002_events.sql', '003_indexes.sql']
    assert env.container() | {'id': None} == dict(status='running', health='healthy', version='v1', id=None)
    assert os.readlink(env.current) == 'releases/v1'
    assert [s['name'] for s in result['steps']] == ['preflight', 'backup', 'rehearse', 'create', 'stop', 'migrate',
                                                    'start', 'wait_healthy', 'settle', 'switch', 'prune']
    assert all(s['outcome'].startswith(('ok', 'skipped')) for s in result['steps'])
    assert result['downtime'] is None and 'no bot was running before' in result['msg']
    assert audit_lines(env)[-1]['to_version'] == 'v1' and audit_lines(env)[-1]['result'] == 'success'


def test_nothing_to_do_leaves_the_bot_untouched(env, tmp_path):
    ensure(tmp_path, env, 'v1')
    before = env.container()
    lines = len(audit_lines(env))
    code, result = deploy(tmp_path, env, 'v1')
    assert code == 0 and result['changed'] is False, result
    assert 'nothing to do' in result['msg']
    assert [s['name'] for s in result['steps']] == ['preflight']
    assert env.container() == before  # the same container, not restarted
    assert len(audit_lines(env)) == lines  # a no-op is not an event
    code, checked = deploy(tmp_path, env, 'v1', '--check')
    assert code == 0 and checked['changed'] is False


def test_check_mode_reports_the_swap_and_changes_nothing(env, tmp_path):
    ensure(tmp_path, env, 'v1')
    before = env.container()
    code, result = deploy(tmp_path, env, 'v2', '--check', '--diff')
    assert code == 0 and result['changed'] is True
    assert result['msg'].startswith('Would deploy v2') and '004_profiles.sql' in result['msg']
    assert result['pending'] == ['004_profiles.sql']
    assert env.container() == before
    assert '004_profiles.sql' not in env.applied()
    assert os.readlink(env.current) == 'releases/v1'


def test_swap_to_a_version_with_a_new_migration(env, tmp_path):
    ensure(tmp_path, env, 'v1')
    old = env.container()
    env.pg.query("INSERT INTO users (id, username) VALUES (4242, 'kept') ON CONFLICT DO NOTHING", db='soul_bot')
    code, result = deploy(tmp_path, env, 'v2')
    assert code == 0, result['msg']
    assert result['from_version'] == 'v1' and result['to_version'] == 'v2'
    assert result['applied'] == ['004_profiles.sql']
    # The pre-deploy backup: named after this deploy, verified (sidecar), taken before anything changed.
    backup = os.path.basename(result['backup'])
    assert backup.startswith('pre_deploy_v2_') and os.path.exists(result['backup'] + '.sha256')
    new = env.container()
    assert new['version'] == 'v2' and new['health'] == 'healthy' and new['id'] != old['id']
    assert env.running_bots() == [env.bot]  # exactly one bot; the previous container is gone
    assert env.container(env.bot + '-previous') is None
    assert env.pg.query('SELECT username FROM users WHERE id = 4242', db='soul_bot') == [('kept',)]
    assert os.readlink(env.current) == 'releases/v2'
    assert 0 < result['downtime'] < 30
    # Rehearsed first on a copy restored from that backup (issue 22): the predicted downtime is its migrations' time.
    rehearsed = [s for s in result['steps'] if s['name'] == 'rehearse'][0]
    assert rehearsed['outcome'].startswith('ok: the migrations took') and result['predicted_downtime'] is not None
    assert result['rehearsal']['database'].startswith('soul_bot__restore_rehearsal_')
    assert env.pg.query("SELECT count(*) FROM pg_database WHERE datname LIKE '%rehearsal%'") == [(0,)]
    line = audit_lines(env)[-1]
    assert line['predicted_downtime'] == result['predicted_downtime']
    assert (line['event'], line['from_version'], line['to_version'], line['result']) == ('deploy', 'v1', 'v2',
                                                                                         'success')
    assert line['who'] == 'pytest@controller' and line['backup'] == result['backup']


def assert_rolled_back(env, result, step, running):
    assert result['rolled_back'] is True and result['failed_step'] == step, result['msg']
    assert 'Rolled back: the previous bot (%s) runs again and is healthy' % running['version'] in result['msg']
    assert env.container() == running | {'health': 'healthy'}  # the previous container itself, healthy again
    assert env.running_bots() == [env.bot]
    assert os.readlink(env.current) == 'releases/' + running['version']  # the host still describes it
    assert audit_lines(env)[-1]['result'] == 'rolled back'
    assert audit_lines(env)[-1]['failed_step'] == step


def test_a_crash_at_start_rolls_back_within_seconds(env, tmp_path):
    ensure(tmp_path, env, 'v2')
    running = env.container()
    env.version('v3', edits=[CRASH_AT_START])
    code, result = deploy(tmp_path, env, 'v3')
    assert code != 0
    assert_rolled_back(env, result, 'wait_healthy', running)
    waited = [s for s in result['steps'] if s['name'] == 'wait_healthy'][0]
    assert waited['duration'] < 10  # failed fast: Docker's restart back-off is not waited out
    assert 'simulated crash at start' in result['msg'] and 'Last' in result['msg']
    assert any('RuntimeError' in line for line in result['log_tail'])
    assert env.container(env.bot + '-previous') is None


def test_a_bot_that_crashes_after_starting_is_seen_through_its_restart_count(env, tmp_path):
    """A bot that starts, then exits 2 s later, and Docker's restart policy starts it again (issue 23: a mutant that
    ignored the restart count survived - the container keeps looking "running"): the deploy fails on the restart
    and rolls back."""
    ensure(tmp_path, env, 'v2')
    running = env.container()
    crash_later = ('bot/__main__.py', lambda text: 'import os as _os, threading as _t\n'
                   '_t.Timer(2, lambda: _os._exit(3)).start()\n' + text)
    env.version('v8', edits=[crash_later])
    code, result = deploy(tmp_path, env, 'v8', settle_seconds=15)
    assert code != 0
    assert result['failed_step'] in ('wait_healthy', 'settle'), result['msg']
    assert 'Docker restarts it (restart count' in result['msg'] or 'exited' in result['msg'], result['msg']
    assert_rolled_back(env, result, result['failed_step'], running)


def test_a_health_timeout_rolls_back(env, tmp_path):
    ensure(tmp_path, env, 'v2')
    running = env.container()
    env.version('v5', edits=[NEVER_HEALTHY])
    code, result = deploy(tmp_path, env, 'v5', healthy_timeout=8)
    assert code != 0
    assert_rolled_back(env, result, 'wait_healthy', running)
    assert 'not ready within 8s' in result['msg']


def test_an_error_in_the_new_log_rolls_back(env, tmp_path):
    ensure(tmp_path, env, 'v2')
    running = env.container()
    env.version('v6', edits=[LOGS_AN_ERROR])
    code, result = deploy(tmp_path, env, 'v6', settle_seconds=4)
    assert code != 0
    assert result['failed_step'] in ('wait_healthy', 'settle')
    assert_rolled_back(env, result, result['failed_step'], running)
    assert "error pattern 'Traceback'" in result['msg']


def started_at(env):
    return subprocess.run(['docker', 'inspect', '--format', '{{.State.StartedAt}}', env.bot], capture_output=True,
                          text=True).stdout.strip()


def test_a_failed_migration_is_caught_on_a_copy_with_no_downtime(env, tmp_path):
    """The rehearsal (issue 22): the broken migration fails on a copy restored from the pre-deploy backup, so the
    old bot never stops; the message names the file and the error; the copy is dropped."""
    ensure(tmp_path, env, 'v2')
    running, since, applied = env.container(), started_at(env), env.applied()
    env.version('v4', migrations=BROKEN)
    code, result = deploy(tmp_path, env, 'v4')
    assert code != 0 and result['failed_step'] == 'rehearse' and result['rolled_back'] is False, result['msg']
    assert 'failed on a copy of the database' in result['msg'] and 'old bot was never stopped' in result['msg']
    assert '005_broken.sql' in result['msg'] and 'no_such_table' in result['msg']
    assert 'The running bot was not touched' in result['msg']
    assert env.container() == running and started_at(env) == since  # never stopped: 0 s of downtime
    assert env.applied() == applied
    assert env.pg.query("SELECT to_regclass('half_done')", db='soul_bot') == [(None,)]
    assert env.pg.query("SELECT count(*) FROM pg_database WHERE datname LIKE '%rehearsal%'") == [(0,)]
    assert audit_lines(env)[-1]['failed_step'] == 'rehearse'


def test_a_migration_longer_than_the_limit_is_refused_before_the_swap(env, tmp_path):
    ensure(tmp_path, env, 'v2')
    running, since = env.container(), started_at(env)
    env.version('v7', migrations=dict(PROFILES, **{'005_slow.sql': 'SELECT pg_sleep(3);\n'}))
    code, result = deploy(tmp_path, env, 'v7', max_migration_seconds=1)
    assert code != 0 and result['failed_step'] == 'rehearse', result['msg']
    assert 'more than max_migration_seconds 1' in result['msg'] and result['predicted_downtime'] >= 3
    assert env.container() == running and started_at(env) == since
    assert '005_slow.sql' not in env.applied()


def test_a_failed_migration_applies_nothing_and_keeps_the_old_bot(env, tmp_path):
    """Without the rehearsal (rehearsal: never), the failure comes at step migrate, after the old bot stopped: the
    file's transaction undoes it and the previous bot is put back."""
    ensure(tmp_path, env, 'v2')
    running = env.container()
    applied = env.applied()
    env.version('v4b', migrations=BROKEN)
    code, result = deploy(tmp_path, env, 'v4b', rehearsal='never')
    assert code != 0
    assert_rolled_back(env, result, 'migrate', running)
    assert env.applied() == applied  # 005 rolled back with its transaction
    assert env.pg.query("SELECT to_regclass('half_done')", db='soul_bot') == [(None,)]
    assert 'no_such_table' in result['msg']
    # The exact command that restores the pre-deploy backup is printed.
    assert 'make restore BACKUP=%s CONFIRM=soul_bot' % os.path.basename(result['backup']) in result['msg']
    assert env.container(env.bot + '-next') is None


def test_a_version_that_is_not_there_is_refused_before_anything_stops(env, tmp_path):
    ensure(tmp_path, env, 'v2')
    before = env.container()
    code, result = deploy(tmp_path, env, 'v9')
    assert code != 0 and result['failed_step'] == 'preflight'
    assert 'image %s:v9' % env.image_name in result['msg'] and 'not touched' in result['msg']
    assert env.container() == before


def test_explicit_rollback_to_the_previous_version_keeps_the_newest_images(env, tmp_path):
    ensure(tmp_path, env, 'v2')
    code, _, output = run_module(tmp_path, 'safe_redeploy', env.params(action='rollback', keep_images=1))
    assert code == 0, output[-3000:]
    assert env.container()['version'] == 'v1' and env.container()['health'] == 'healthy'
    assert os.readlink(env.current) == 'releases/v1'
    assert audit_lines(env)[-1]['event'] == 'rollback'
    # keep_images=1: the running version and one before it; the failed versions are pruned.
    tags = subprocess.run(['docker', 'images', '--format', '{{.Tag}}', env.image_name], capture_output=True,
                          text=True).stdout.split()
    assert sorted(tags) == ['v1', 'v2']
    assert sorted(os.listdir(env.releases)) == ['.history.json', 'v1', 'v2']
    # The old bot runs on the database the newer one migrated (004 stays applied).
    assert '004_profiles.sql' in env.applied()
    # Back to v2 by name.
    code, _, output = run_module(tmp_path, 'safe_redeploy', env.params(action='rollback', version='v2'))
    assert code == 0, output[-3000:]
    assert env.container()['version'] == 'v2'


def test_migrate_applies_the_pending_migrations_of_the_running_version_without_touching_the_bot(env, tmp_path):
    ensure(tmp_path, env, 'v2')
    env.pg.query("DELETE FROM schema_migrations WHERE name = '004_profiles.sql'", db='soul_bot')
    env.pg.query('DROP TABLE profiles', db='soul_bot')
    before = env.container()
    code, result, output = run_module(tmp_path, 'safe_redeploy', env.params(action='migrate'))
    assert code == 0, output[-3000:]
    assert result['applied'] == ['004_profiles.sql'] and result['changed'] is True
    assert os.path.basename(result['backup']).startswith('pre_migrate_v2_')
    assert env.container() == before
    code, result, _ = run_module(tmp_path, 'safe_redeploy', env.params(action='migrate'))
    assert code == 0 and result['changed'] is False and result['msg'] == 'All migrations up to date'


def test_two_deploys_at_once_one_is_refused(env, tmp_path):
    """Two runs of the lock + safe_redeploy path (as playbooks/redeploy.yml takes them): one deploys, the
    other is refused by the deploy lock before it touches the bot."""
    ensure(tmp_path, env, 'v2')
    lock_dir = str(tmp_path / 'deploy.lock')
    args = env.deploy_params('v1', lock_path='{{ soulnear_lock_dir }}', lock_run_id='{{ soulnear_lock.run_id }}')
    play = [{'name': 'Redeploy', 'hosts': 'localhost', 'gather_facts': False,
             'vars': {'soulnear_lock_dir': lock_dir, 'soulnear_lock_operation': 'redeploy'},
             'tasks': [{'name': 'Take the deploy lock',
                        'ansible.builtin.import_role': {'name': 'soulnear', 'tasks_from': 'lock'}},
                       {'name': 'Ship under the lock', 'block': [{'name': 'Swap', 'safe_redeploy': args}],
                        'always': [{'name': 'Release the deploy lock',
                                    'ansible.builtin.import_role': {'name': 'soulnear', 'tasks_from': 'unlock'}}]}]}]
    book = tmp_path / 'redeploy.yml'
    book.write_text(yaml.safe_dump(play))
    cmd = [os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', str(book)]
    environ = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_ROLES_PATH=os.path.join(ROOT, 'roles'))
    first = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(lock_dir, 'holder')):
        assert time.time() < deadline and first.poll() is None, 'the first run never took the lock'
        time.sleep(0.2)
    second = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    assert second.returncode != 0
    assert 'holds the lock' in ' '.join(second.stdout.split()), second.stdout[-3000:]
    assert 'TASK [Swap]' not in second.stdout  # refused before the bot step
    assert env.container()['version'] == 'v1' and env.running_bots() == [env.bot]
    assert not os.path.exists(lock_dir)  # released by the run that held it


# The example bot answering /health 503 for its first SLOW_START seconds after every start: healthy, but slow (Docker
# says "starting" meanwhile, its start period is 60 s).
SLOW_START = 25
SLOW_TO_BE_HEALTHY = ('bot/health.py', lambda text: text.replace(
    'log = logging.getLogger(__name__)\n', 'log = logging.getLogger(__name__)\n_BORN = time.monotonic()\n', 1).replace(
    "            return (200 if body['status'] == 'ok' else 503), body",
    "            if time.monotonic() - _BORN < %d:\n"
    "                return 503, dict(body, status='warming up')\n"
    "            return (200 if body['status'] == 'ok' else 503), body" % SLOW_START))


def test_a_slow_but_healthy_old_bot_gets_the_rollbacks_own_wait(env, tmp_path):
    """Issue 22 item 6: after a failed deploy the previous bot is waited for with rollback_timeout, not the failed
    deploy's healthy_timeout. Here the previous bot becomes healthy 25 s after it starts again and the failed deploy's
    healthy_timeout is 8 s: it is "rolled back", not "ROLLBACK FAILED" (with rollback_timeout 8, the old behaviour,
    it was)."""
    env.version('s1', edits=[SLOW_TO_BE_HEALTHY])
    env.version('s2', edits=[CRASH_AT_START])
    code, result = deploy(tmp_path, env, 's1', healthy_timeout=240)
    assert code == 0, result['msg']
    assert env.container()['health'] == 'healthy'
    running = env.container()
    code, result = deploy(tmp_path, env, 's2', healthy_timeout=8, rollback_timeout=240)
    assert code != 0
    assert 'ROLLBACK FAILED' not in result['msg'], result['msg']
    assert_rolled_back(env, result, 'wait_healthy', running)
    rollback = [s for s in result['steps'] if s['name'] == 'rollback'][0]
    assert rollback['duration'] > 8, rollback  # it waited longer than the failed deploy's healthy_timeout
