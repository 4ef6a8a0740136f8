"""safe_redeploy for any team's bot (issue 20), against the real Docker engine and a real PostgreSQL container
(tests/support/redeployenv.py):

- the container options a bot needs - volumes (named and a host directory), published ports (127.0.0.1 unless an
  address is given), extra hosts, its own command, its own healthcheck - reach the container, and a second run
  with the same options changes nothing; a malformed one is refused before anything changes;
- migrations: command - the bot's own migration command runs in a one-off container of the NEW image after a
  verified backup, its probe decides whether anything is pending, a failing command puts the previous bot back,
  and a rollback never runs the older image's command;
- migrations: none - a release without a migrations directory deploys.

The bot is examples/bot (its HEALTHCHECK at 2 s); its "own migration tool" is a small Python script in the image.
"""

import os
import subprocess
import urllib.request

import pytest
from ansiblerun import run_module
from pgcontainer import docker
from redeployenv import RedeployEnv

pytestmark = pytest.mark.slow

# The bot's own migration tool: a script shipped in its image that creates its tables and records its version in a
# table of its own (bot_schema); --check exits 1 while the image's version is not recorded (the probe contract).
TOOL = '''import os, sys
import psycopg2
WANT = int(os.environ.get("TOOL_VERSION", "%d"))
conn = psycopg2.connect(host=os.environ["PGHOST"], port=os.environ["PGPORT"], user=os.environ["PGUSER"],
                        password=os.environ["PGPASSWORD"], dbname=os.environ["PGDATABASE"])
conn.autocommit = True
cur = conn.cursor()
cur.execute("CREATE TABLE IF NOT EXISTS bot_schema (version int PRIMARY KEY, at timestamptz DEFAULT now())")
cur.execute("SELECT coalesce(max(version), 0) FROM bot_schema")
have = cur.fetchone()[0]
if "--check" in sys.argv:
    print("schema version %%d, image wants %%d" %% (have, WANT))
    sys.exit(0 if have >= WANT else 1)
if "--fail" in sys.argv or os.environ.get("TOOL_FAIL"):
    print("migration 2 failed: relation missing_table does not exist")
    sys.exit(3)
for version in range(have + 1, WANT + 1):
    cur.execute("CREATE TABLE IF NOT EXISTS bot_table_%%d (id int)" %% version)
    cur.execute("INSERT INTO bot_schema (version) VALUES (%%s)", (version,))
    print("applied version %%d" %% version)
'''


def tool_version(version, fail=False):
    text = TOOL % version
    if fail:
        text = text.replace('if "--fail" in sys.argv or', 'if True or')
    return ('migrate_tool.py', text), ('Dockerfile', lambda old: old.replace(
        'COPY database/ ./database/', 'COPY database/ ./database/\nCOPY migrate_tool.py ./'))


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    deployment = RedeployEnv(tmp_path_factory.mktemp('contract'), health_interval='2s').start()
    deployment.write_env(PGHOST=deployment.pg.name, PGPORT='5432', PGUSER='soulnear', PGPASSWORD='test-app-secret',
                         PGDATABASE='soul_bot')
    try:
        yield deployment
    finally:
        for volume in docker('volume', 'ls', '-q', '--filter', 'name=' + deployment.prefix).stdout.split():
            docker('volume', 'rm', '-f', volume, check=False)
        deployment.close()


def ship(tmp_path, env, version, **overrides):
    code, result, output = run_module(tmp_path, 'safe_redeploy', env.deploy_params(version, **overrides))
    assert result is not None, output[-3000:]
    return code, result


def inspect(env, fmt, name=None):
    return docker('inspect', '--format', fmt, name or env.bot).stdout.strip()


def test_container_options_reach_the_bot_and_a_second_run_changes_nothing(env, tmp_path):
    env.version('opts')
    host_dir = tmp_path / 'shared'
    host_dir.mkdir()
    (host_dir / 'hello.txt').write_text('from the host\n')
    port = 20000 + os.getpid() % 20000
    options = dict(
        volumes=['%s-data:/var/lib/bot' % env.prefix, '%s:/srv/shared:ro' % host_dir],
        published_ports=['%d:8080' % port], extra_hosts=['api.telegram.org:10.9.8.7'],
        command=['python3', '-m', 'bot'],
        healthcheck=dict(test="python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health',"
                              " timeout=4)\"", interval='3s', timeout='4s', retries=3, start_period='60s'),
        markers=['Database connection successful!'])
    code, result = ship(tmp_path, env, 'opts', **options)
    assert code == 0, result.get('msg')
    binding = '{"8080/tcp":[{"HostIp":"127.0.0.1","HostPort":"%d"}]}' % port
    assert inspect(env, '{{json .HostConfig.PortBindings}}') == binding
    assert inspect(env, '{{json .HostConfig.ExtraHosts}}') == '["api.telegram.org:10.9.8.7"]'
    assert inspect(env, '{{json .Config.Cmd}}') == '["python3","-m","bot"]'
    assert inspect(env, '{{.Config.Healthcheck.Interval}}') == '3s'
    assert '/health' in inspect(env, '{{json .Config.Healthcheck.Test}}')
    mounts = inspect(env, '{{range .Mounts}}{{.Destination}}={{.RW}} {{end}}').split()
    assert sorted(mounts) == ['/srv/shared=false', '/var/lib/bot=true']
    in_bot = docker('exec', '-u', '0', env.bot, 'sh', '-c', 'getent hosts api.telegram.org; cat /srv/shared/hello.txt; '
                    'touch /var/lib/bot/written && echo writable').stdout
    assert '10.9.8.7' in in_bot and 'from the host' in in_bot and 'writable' in in_bot
    with urllib.request.urlopen('http://127.0.0.1:%d/health' % port, timeout=10) as answer:
        assert answer.status == 200
    again_code, again = ship(tmp_path, env, 'opts', **options)
    assert again_code == 0 and again['changed'] is False, again.get('msg')
    # A changed option is a changed configuration: the bot is swapped to it.
    code, changed = ship(tmp_path, env, 'opts', **dict(options, extra_hosts=['api.telegram.org:10.9.8.8']))
    assert code == 0 and changed['changed'] is True
    assert inspect(env, '{{json .HostConfig.ExtraHosts}}') == '["api.telegram.org:10.9.8.8"]'


@pytest.mark.parametrize('option, value, words', [
    ('published_ports', ['8080'], 'is not "[address:]host_port:container_port"'),
    ('volumes', ['relative/path:/data'], 'is not "source:/path/in/container'),
    ('volumes', ['data:relative'], 'is not "source:/path/in/container'),
    ('extra_hosts', ['no-address'], 'is not "name:address"'),
    ('healthcheck', {'command': 'true'}, 'healthcheck takes test, interval'),
])
def test_a_malformed_option_is_refused_before_anything_changes(env, tmp_path, option, value, words):
    before = env.container()
    code, result = ship(tmp_path, env, 'opts', **{option: value})
    assert code != 0 and words in result['msg'] and 'Nothing was changed' in result['msg'], result['msg']
    assert env.container() == before


def test_command_migrations_run_in_the_new_image_after_a_backup_and_never_on_rollback(env, tmp_path):
    mode = dict(migrations='command', migration_command='python3 migrate_tool.py',
                migration_check_command=['python3', 'migrate_tool.py', '--check'])
    env.version('c1', edits=tool_version(1))
    env.version('c2', edits=tool_version(2))
    env.version('c3bad', edits=tool_version(3, fail=True))
    code, first = ship(tmp_path, env, 'c1', **mode)
    assert code == 0, first.get('msg')
    assert first['applied'] == ['command: python3 migrate_tool.py'] and first['backup'], first
    assert env.pg.query('SELECT max(version) FROM bot_schema', db='soul_bot') == [(1,)]
    assert any('applied version 1' in line for line in first['migration_output'])
    # Nothing pending (the probe exits 0): nothing to do, no backup.
    code, same = ship(tmp_path, env, 'c1', **mode)
    assert code == 0 and same['changed'] is False and same['backup'] is None, same
    # A new version whose probe says pending: backed up, migrated in a container of c2, swapped.
    code, second = ship(tmp_path, env, 'c2', **mode)
    assert code == 0 and second['backup'] and 'pre_deploy_c2_' in second['backup'], second
    assert env.pg.query('SELECT max(version) FROM bot_schema', db='soul_bot') == [(2,)]
    assert env.container()['version'] == 'c2'
    # A migration command that fails: caught by the rehearsal on a copy (the environment file retargeted at the
    # copy), so the running bot never stopped; the message has the command's last lines.
    code, failed = ship(tmp_path, env, 'c3bad', **mode)
    assert code != 0 and failed['failed_step'] == 'rehearse' and not failed['rolled_back'], failed
    assert 'migration 2 failed' in failed['msg'] and 'exited 3' in failed['msg'] and 'on the copy' in failed['msg']
    assert env.container()['version'] == 'c2' and env.container()['health'] == 'healthy'
    # Without the rehearsal it fails at step migrate, after the stop: the previous bot is put back.
    code, failed = ship(tmp_path, env, 'c3bad', rehearsal='never', **mode)
    assert code != 0 and failed['failed_step'] == 'migrate' and failed['rolled_back'], failed
    assert 'migration 2 failed' in failed['msg'] and 'exited 3' in failed['msg']
    assert env.container()['version'] == 'c2' and env.container()['health'] == 'healthy'
    # A rollback to c1 never runs c1's command (it would not know version 2): no migration, no backup.
    code, back = run_module(tmp_path, 'safe_redeploy', env.params(action='rollback', version='c1', **mode))[:2]
    assert code == 0, back.get('msg')
    assert back['applied'] == [] and back['backup'] is None and env.container()['version'] == 'c1'
    assert env.pg.query('SELECT max(version) FROM bot_schema', db='soul_bot') == [(2,)]
    # make migrate with the running image: its probe says up to date (version 2 >= 1).
    code, migrate = run_module(tmp_path, 'safe_redeploy', env.params(action='migrate', **mode))[:2]
    assert code == 0 and migrate['changed'] is False, migrate


def test_a_probe_that_cannot_tell_means_back_up_and_run(env, tmp_path):
    env.version('c4', edits=tool_version(4))
    code, result = ship(tmp_path, env, 'c4', migrations='command', migration_command='python3 migrate_tool.py',
                        migration_check_command='sh -c "exit 7"')
    assert code == 0, result.get('msg')
    assert result['backup'] and result['applied'] == ['command: python3 migrate_tool.py']
    assert any('exited 7' in w for w in result.get('warnings', [])), result.get('warnings')


def test_a_release_without_migrations_deploys_with_migrations_none(env, tmp_path):
    release = env.version('nomig')
    subprocess.run(['rm', '-rf', os.path.join(env.releases, 'nomig', 'database', 'migrations')], check=True)
    code, refused = ship(tmp_path, env, 'nomig')
    assert code != 0 and 'app_migrations: none' in refused['msg'], refused['msg']
    code, result = ship(tmp_path, env, 'nomig', migrations='none')
    assert code == 0 and result['applied'] == [] and result['backup'] is None, result.get('msg')
    assert env.container()['version'] == 'nomig' and release


def test_the_health_check_knows_each_migrations_mode(env, tmp_path):
    """db_health (make health, the deploy's report): command - the bot's probe in a container of its running
    image answers, pending is a failure naming the fix; none - skipped with the reason; the monitor's minutely run
    (a probe without a container) says why it does not run it."""
    from ansible.module_utils.soulnear.checks import run_checks
    if not env.pg.query("SELECT to_regclass('users') IS NOT NULL", db='soul_bot')[0][0]:
        env.version('s5')  # the example bot's own tables, when this test runs alone
        assert ship(tmp_path, env, 's5')[0] == 0
    env.version('c5', edits=tool_version(5))
    mode = dict(migrations='command', migration_command='python3 migrate_tool.py',
                migration_check_command='python3 migrate_tool.py --check')
    code, result = ship(tmp_path, env, 'c5', **mode)
    assert code == 0, result.get('msg')
    base = dict(env.params(), db_container=env.pg.name)
    probe = dict(command='python3 migrate_tool.py --check', container=env.bot, env_file=env.env_file,
                 network=env.network)
    report = run_checks(dict(base, migrations_mode='command', migrations_probe=probe))
    check = report['checks']['migrations']
    assert check['ok'] and 'says up to date' in check['message'] and 'schema version 5' in check['message'], check
    env.pg.query('DELETE FROM bot_schema WHERE version = 5', db='soul_bot')
    check = run_checks(dict(base, migrations_mode='command', migrations_probe=probe))['checks']['migrations']
    assert not check['ok'] and 'says a migration is pending' in check['message'] and 'make migrate' in check['message']
    report = run_checks(dict(base, migrations_mode='command', migrations_probe=dict(command=probe['command'])))
    assert 'migrations' not in report['checks'] and 'not every minute' in report['skipped']['migrations']
    report = run_checks(dict(base, migrations_mode='none'))
    assert report['skipped']['migrations'] == 'not checked: the bot has no migrations (app_migrations: none)'


def test_without_markers_the_downtime_lasts_until_the_bot_is_healthy(env, tmp_path):
    """No log markers (the default): the downtime ends when Docker calls the new bot healthy - its first probe comes
    after the healthcheck's interval (15 s here) - not at the first look after its start (it was ~1 s)."""
    slow = dict(markers=[], healthcheck=dict(
        test="python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)\"",
        interval='15s', timeout='5s', retries=3, start_period='60s'))
    for version in ('dt1', 'dt2'):
        env.version(version)
        code, result = ship(tmp_path, env, version, **slow)
        assert code == 0, result.get('msg')
    assert result['downtime'] >= 15, result['downtime']
    assert inspect(env, '{{.State.Health.Status}}') == 'healthy'
