"""Every module refuses a bad option before it changes anything (issue 23, item 4; module_utils/soulnear/validate.py).

One table per module: each row is a bad value (or several) over arguments that work - against a real PostgreSQL, real
directories and real containers - run through ansible-playbook as a playbook runs the module
(tests/support/ansiblerun.py).
Each row must fail, name its option in the message, print no traceback and no secret; the state the module works on
is compared before and after the whole table: directories (names, types, sizes, modes, mtimes), databases (tables,
their columns and row counts; databases, roles, settings where the module creates them) and containers (id,
StartedAt, restart count). Where a valid run is cheap, a control row runs the arguments without the bad value and
must change that state, proving the comparison sees a change.

The rows of one table run a few at a time (they only fail; each has its own playbook directory). `pytest -s` prints
the table: module, input, outcome.
"""

import concurrent.futures
import glob
import json
import os
import shutil
import uuid
from datetime import datetime, timedelta

import psycopg2
import pytest
from ansible.module_utils.soulnear import lock, pitr
from ansible.module_utils.soulnear.backup import create_backup
from ansible.module_utils.soulnear.backup_files import write_sidecar
from ansible.module_utils.soulnear.backup_settings import make_settings
from ansible.module_utils.soulnear.files import sha256_file
from ansible.module_utils.soulnear.redeploy import Redeployer
from ansiblerun import ROOT, run_module
from pgcluster import Cluster
from pgcontainer import docker
from pitrenv import PitrLab
from psycopg2 import sql
from redeployenv import RedeployEnv

pytestmark = pytest.mark.slow

WORKERS = 4
TABLE = []  # (module, input, outcome) of every row, printed at the end


# -- running a table ----------------------------------------------------------------------------------------------

def tree(*roots):
    """{path: (type, size, mode, mtime_ns)} of everything below the roots (the roots included); links not followed."""
    found = {}
    for root in roots:
        root = str(root)
        if not os.path.lexists(root):
            found[root] = None
            continue
        for path in [root] + [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files]:
            st = os.lstat(path)
            kind = 'link:' + os.readlink(path) if os.path.islink(path) else 'dir' if os.path.isdir(path) else 'file'
            found[path] = (kind, st.st_size if kind == 'file' else None, st.st_mode, st.st_mtime_ns)
    return found


def tables(params):
    """{schema.table: (columns, rows)} of every user table of the database."""
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user=params['login_user'],
                            password=params['login_password'], dbname=params['login_db'], connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_schema, table_name, string_agg(column_name || ' ' || data_type, ', ' "
                        "ORDER BY ordinal_position) FROM information_schema.columns WHERE table_schema NOT IN "
                        "('pg_catalog', 'information_schema') GROUP BY 1, 2 ORDER BY 1, 2")
            found = {}
            for schema, table, columns in cur.fetchall():
                cur.execute(sql.SQL('SELECT count(*) FROM {}.{}').format(sql.Identifier(schema), sql.Identifier(table)))
                found['%s.%s' % (schema, table)] = (columns, cur.fetchone()[0])
            return found
    finally:
        conn.close()


def server(superuser):
    """The databases (name, oid), roles (name and attributes) and ALTER SYSTEM settings of a server."""
    conn = psycopg2.connect(host=superuser['login_host'], port=superuser['login_port'], user=superuser['login_user'],
                            password=superuser['login_password'], dbname='postgres', connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT datname, oid FROM pg_database ORDER BY 1')
            databases = cur.fetchall()
            cur.execute('SELECT rolname, rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, md5(coalesce(rolpassword, '
                        "'')) FROM pg_authid ORDER BY 1")
            roles = cur.fetchall()
            cur.execute("SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf' "
                        'ORDER BY seqno')
            return dict(databases=databases, roles=roles, auto_conf=cur.fetchall())
    finally:
        conn.close()


def containers(*names):
    """{name: (id, StartedAt, status, restart count)}, None for a container that does not exist."""
    found = {}
    for name in names:
        proc = docker('inspect', '--format', '{{.Id}} {{.State.StartedAt}} {{.State.Status}} {{.RestartCount}}', name,
                      check=False)
        found[name] = proc.stdout.split() if proc.returncode == 0 else None
    return found


def differences(before, after):
    keys = sorted(set(before) | set(after), key=str)
    return ['%s: %r -> %r' % (k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def run_case(tmp_path, module, index, base, case, secrets):
    """One row: (input, option or options, overrides) over base, through ansible-playbook: it fails naming each
    option, with no traceback, no change and no secret in the output. Returns its outcome for the table."""
    label, options, overrides = case
    options = [options] if isinstance(options, str) else list(options)
    args = dict(base)
    args.update(overrides)
    playbooks = tmp_path / ('%s-%02d' % (module, index))
    playbooks.mkdir()
    code, result, output = run_module(playbooks, module, args)
    assert result is not None, '%s %s: no task result\n%s' % (module, label, output[-3000:])
    msg = str(result.get('msg', ''))
    assert code != 0 and result.get('failed'), '%s %s was accepted: %s' % (module, label, msg or output[-2000:])
    assert msg.startswith('Invalid option(s), nothing was changed: '), '%s %s: %s' % (module, label, msg)
    named = result.get('invalid_options') or []
    for option in options:
        assert option in msg and any(option in name for name in named), \
            '%s %s: the message does not name %s: %s' % (module, label, option, msg)
    # ansible-core 2.19 sets exception to '(traceback unavailable)' on every failure; a crash has a real one (and
    # safe_redeploy's default error_patterns hold the word Traceback, echoed in the task's arguments).
    assert 'Traceback (most recent call last)' not in output + str(result.get('exception', '')), \
        '%s %s: a traceback\n%s' % (module, label, output[-3000:])
    assert not result.get('changed'), '%s %s reported a change: %s' % (module, label, msg)
    for secret in secrets:
        assert secret not in output, '%s %s: a secret in the output' % (module, label)
    problems = msg.split(': ', 1)[-1].split(' | ')
    if len(options) > 1:
        return 'naming all %d: %s' % (len(problems), ', '.join(named))
    return next((p for p in problems if options[0] in p.split(' is invalid')[0]), problems[0])


def run_table(tmp_path, module, base, cases, state, secrets=(), control=None):
    """Every row of the table (each failing, naming its options), the state unchanged across them; then the control
    (the base arguments, or those with control's overrides) must succeed and change the state."""
    assert sum(1 if isinstance(c[1], str) else len(c[1]) for c in cases) >= 8, 'a table needs 8 bad inputs or more'
    before = state()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(run_case, tmp_path, module, i, base, case, secrets) for i, case in enumerate(cases)]
        outcomes = [f.result() for f in futures]
    changed = differences(before, state())
    for (label, _options, _overrides), outcome in zip(cases, outcomes):
        TABLE.append((module, label, 'failed, state %s - %s' % ('CHANGED' if changed else 'unchanged', outcome)))
    assert changed == [], '%s: the bad inputs changed the state:\n%s' % (module, '\n'.join(changed[:20]))
    if control is not None:
        after = state()
        code, result, output = run_module(tmp_path, module, dict(base, **control))
        assert code == 0, '%s control run failed: %s' % (module, (result or {}).get('msg') or output[-2000:])
        assert differences(after, state()), '%s: the control run changed nothing the table compares' % module
        TABLE.append((module, '(control: the valid arguments alone)', 'ok, state changed'))


@pytest.fixture(scope='module', autouse=True)
def print_table():
    """The table of every row run, printed at the end (pytest -s), as Markdown."""
    yield
    print('\n\n| module | input | outcome |\n| --- | --- | --- |')
    for module, label, outcome in TABLE:
        outcome = outcome if len(outcome) < 220 else outcome[:217] + '...'
        print('| %s | %s | %s |' % (module, label.replace('|', '\\|'), outcome.replace('|', '\\|')))


# -- a database with data and its backups (pg_backup, pg_restore, db_health, data_guard) ---------------------------

@pytest.fixture(scope='module')
def shop(pg_container, tmp_path_factory):
    """An app role and a database with rows on the session's PostgreSQL container, a verified backup of it and two
    old verified backups (that retention would prune), a data-guard record of it."""
    uid = uuid.uuid4().hex[:8]
    db, owner, password = 'bi_' + uid, 'bi_app_' + uid, 'bi-app-secret-' + uid
    pg_container.query(sql.SQL('CREATE ROLE {} LOGIN PASSWORD {}').format(sql.Identifier(owner), sql.Literal(password)))
    pg_container.query(sql.SQL('CREATE DATABASE {} OWNER {}').format(sql.Identifier(db), sql.Identifier(owner)))
    app = pg_container.params(db, user=owner, password=password)
    conn = psycopg2.connect(host=app['login_host'], port=app['login_port'], user=owner, password=password, dbname=db)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute('CREATE TABLE orders (id bigint PRIMARY KEY, total numeric); '
                    'INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 500) g; '
                    'CREATE TABLE schema_migrations (version text PRIMARY KEY); '
                    "INSERT INTO schema_migrations VALUES ('1')")
    conn.close()
    work = tmp_path_factory.mktemp('shop')
    backups = work / 'backups'
    for days in (400, 800):
        backups.mkdir(exist_ok=True)
        name = (datetime.now() - timedelta(days=days)).strftime('backup_%Y%m%d_%H%M%S.dump')
        (backups / name).write_bytes(b'PGDMP an old archive of ' + db.encode())
        write_sidecar(str(backups / name), sha256_file(str(backups / name)), db)
    create_backup(make_settings(pg_container.params(db), container=pg_container.name, backup_dir=str(backups),
                                prune=False))
    (work / 'a-directory').mkdir()
    (work / 'a-file').write_text('not a directory\n')
    guard_file = work / 'guard' / 'data-guard.json'
    code, result, output = run_module(tmp_path_factory.mktemp('shop-plays'), 'data_guard', dict(
        app, state_file=str(guard_file), backup_dir=str(backups), db_container=pg_container.name))
    assert code == 0, (result or {}).get('msg') or output[-2000:]
    yield dict(db=db, app=app, superuser=pg_container.params(db), container=pg_container.name, work=work,
               backups=backups, guard_file=guard_file, password=password)
    pg_container.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname LIKE %s', (db + '%',))
    for (name,) in pg_container.query('SELECT datname FROM pg_database WHERE datname LIKE %s', (db + '%',)):
        pg_container.query(sql.SQL('DROP DATABASE {}').format(sql.Identifier(name)))
    pg_container.query(sql.SQL('DROP ROLE {}').format(sql.Identifier(owner)))


def shop_state(shop, pg_container):
    """The shop's directories (backups, guard record, health state), the database's tables, the server's databases,
    the container."""
    def state():
        return dict(tree(shop['work']), tables=tables(shop['superuser']),
                    server=server(shop['superuser'])['databases'], containers=containers(pg_container.name))
    return state


def test_pg_backup(shop, pg_container, tmp_path):
    base = dict(shop['superuser'], backup_dir=str(shop['backups']), container=pg_container.name)
    work = shop['work']
    cases = [
        ('backup_dir=""', 'backup_dir', dict(backup_dir='')),
        ('backup_dir=relative', 'backup_dir', dict(backup_dir='backups')),
        ('backup_dir=<a file>', 'backup_dir', dict(backup_dir=str(work / 'a-file'))),
        ('keep_last=-1', 'keep_last', dict(keep_last=-1)),
        ('keep_last=0', 'keep_last', dict(keep_last=0)),
        ('space_margin=1e308', 'space_margin', dict(space_margin=1e308)),
        ('compression=gzip compression_level=30', 'compression_level', dict(compression='gzip', compression_level=30)),
        ('name_pattern=../x_%Y%m%d.dump', 'name_pattern', dict(name_pattern='../x_%Y%m%d.dump')),
        ('at once: keep_daily=-1 keep_safety_backups=0 container="no such/container" exec_user="postgres; id" '
         'offsite=relative login_port=70000 connect_timeout=0 retries=-1 login_db=""',
         ('keep_daily', 'keep_safety_backups', 'container', 'exec_user', 'offsite', 'login_port', 'connect_timeout',
          'retries', 'login_db'),
         dict(keep_daily=-1, keep_safety_backups=0, container='no such/container', exec_user='postgres; id',
              offsite='relative/copy', login_port=70000, connect_timeout=0, retries=-1, login_db='')),
    ]
    run_table(tmp_path, 'pg_backup', base, cases, shop_state(shop, pg_container),
              secrets=[pg_container.password], control={})


def test_pg_restore(shop, pg_container, tmp_path):
    base = dict(shop['superuser'], backup_dir=str(shop['backups']), container=pg_container.name, confirm=shop['db'],
                data_guard_file=str(shop['work'] / 'restore-guard.json'))
    work = shop['work']
    cases = [
        ('backup_dir=""', 'backup_dir', dict(backup_dir='')),
        ('backup=<a directory>', 'backup', dict(backup=str(work / 'a-directory'))),
        ('bot_stop_timeout=-1', 'bot_stop_timeout', dict(bot_stop_timeout=-1)),
        ('maintenance_work_mem="256MB -c fsync=off"', 'maintenance_work_mem',
         dict(maintenance_work_mem='256MB -c fsync=off')),
        ('owner=<64 bytes>', 'owner', dict(owner='o' * 64)),
        ('data_guard_file=<a directory>', 'data_guard_file', dict(data_guard_file=str(work / 'a-directory'))),
        ('keep_safety_backups=0', 'keep_safety_backups', dict(keep_safety_backups=0)),
        ('container=""', 'container', dict(container='')),
        ('at once: bot_container="bad name" largest_tables=-1 maintenance_db="" space_margin=-1 '
         'client_image="Not An Image" name_pattern=""',
         ('bot_container', 'largest_tables', 'maintenance_db', 'space_margin', 'client_image', 'name_pattern'),
         dict(bot_container='bad name', largest_tables=-1, maintenance_db='', space_margin=-1,
              client_image='Not An Image', name_pattern='')),
    ]
    run_table(tmp_path, 'pg_restore', base, cases, shop_state(shop, pg_container),
              secrets=[pg_container.password])


def test_db_health(shop, pg_container, tmp_path):
    work = shop['work']
    health = work / 'health'
    health.mkdir(exist_ok=True)
    base = dict(shop['app'], db_container=pg_container.name, state_file=str(health / 'restart-counts.json'),
                backup_dir=str(shop['backups']), disk_paths=[str(work)], data_guard_file='', retries=0)
    cases = [
        ('disk_max_used_percent=500', 'disk_max_used_percent', dict(disk_max_used_percent=500)),
        ('state_file=<a directory>', 'state_file', dict(state_file=str(work / 'a-directory'))),
        ('patroni_url=file:///etc/passwd', 'patroni_url', dict(patroni_url='file:///etc/passwd')),
        ('patroni_url=http://', 'patroni_url', dict(patroni_url='http://')),
        ('connections_warn_percent=101', 'connections_warn_percent', dict(connections_warn_percent=101)),
        ('backup_max_age_hours=1e308', 'backup_max_age_hours', dict(backup_max_age_hours=1e308)),
        ('pitr_stanza=../other', 'pitr_stanza', dict(pitr_stanza='../other')),
        ('required_tables=[""]', 'required_tables[0]', dict(required_tables=[''])),
        ('at once: state_file="" db_volume="bad volume" bot_container="x y" migrations_path=<a file> '
         'disk_paths=[relative] pitr_archive_ready_max=-1 migrations_probe={commnd: ...} '
         'backup_name_pattern=a/%Y%m%d pitr_backup_max_age_hours=0',
         ('state_file', 'db_volume', 'bot_container', 'migrations_path', 'disk_paths[0]', 'pitr_archive_ready_max',
          'migrations_probe', 'backup_name_pattern', 'pitr_backup_max_age_hours'),
         dict(state_file='', db_volume='bad volume', bot_container='x y', migrations_path=str(work / 'a-file'),
              disk_paths=['relative'], pitr_archive_ready_max=-1, migrations_mode='command',
              migrations_probe={'commnd': 'check'}, backup_name_pattern='a/%Y%m%d', pitr_backup_max_age_hours=0)),
    ]
    run_table(tmp_path, 'db_health', base, cases, shop_state(shop, pg_container),
              secrets=[shop['password']], control={})


def test_data_guard(shop, pg_container, tmp_path):
    work = shop['work']
    base = dict(shop['app'], state_file=str(shop['guard_file']), backup_dir=str(shop['backups']),
                db_container=pg_container.name)
    cases = [
        ('state_file=""', 'state_file', dict(state_file='')),
        ('state_file=<a directory>', 'state_file', dict(state_file=str(work / 'a-directory'))),
        ('state_file=relative.json', 'state_file', dict(state_file='data-guard.json')),
        ('login_db=""', 'login_db', dict(login_db='')),
        ('migrations_table=""', 'migrations_table', dict(migrations_table='')),
        ('required_tables=["public."]', 'required_tables[0]', dict(required_tables=['public.'])),
        ('backup_dir=<a file>', 'backup_dir', dict(backup_dir=str(work / 'a-file'))),
        ('db_container="bad name"', 'db_container', dict(db_container='bad name')),
        ('at once: backup_dir="" backup_name_pattern="" client_image=UPPER/img connect_timeout=0 login_port=0',
         ('backup_dir', 'backup_name_pattern', 'client_image', 'connect_timeout', 'login_port'),
         dict(backup_dir='', backup_name_pattern='', client_image='UPPER/img', connect_timeout=0, login_port=0)),
    ]
    # The control: a first record of another database name on this host changes the record.
    run_table(tmp_path, 'data_guard', base, cases, shop_state(shop, pg_container),
              secrets=[shop['password']], control=dict(state_file=str(work / 'guard' / 'control.json')))


# -- a server of its own (pg_server) ----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def own_server():
    """A cluster of its own: the control run sets a setting and creates roles, which no other test should see."""
    cluster = Cluster().init().start()
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.destroy()


def test_pg_server(own_server, tmp_path):
    superuser = own_server.params()
    base = dict(superuser, settings={'work_mem': '8MB'}, app_role='bi_app', app_password='bi-app-secret',
                monitor_role='bi_metrics', monitor_password='bi-metrics-secret')
    cases = [
        ('app_role=<login_user>', 'app_role', dict(app_role='postgres')),
        ('app_role=pg_bot', 'app_role', dict(app_role='pg_bot')),
        ('app_role=<64 bytes>', 'app_role', dict(app_role='a' * 64)),
        ('app_password=""', 'app_password', dict(app_password='')),
        ('monitor_role=<app_role>', 'app_role', dict(monitor_role='bi_app')),
        ('settings={"work_mem = 1; x": 1}', 'settings', dict(settings={'work_mem = 1; x': 1})),
        ('settings={work_mem: {a: 1}}', 'settings.work_mem', dict(settings={'work_mem': {'a': 1}})),
        ('reset_settings=[work_mem] (also in settings)', 'reset_settings', dict(reset_settings=['work_mem'])),
        ('reset_settings=["ssl; DROP TABLE x"]', 'reset_settings', dict(reset_settings=['ssl; DROP TABLE x'])),
        ('at once: monitor_role=public container="bad name" login_port=0 retries=-1 login_unix_socket=relative',
         ('monitor_role', 'container', 'login_port', 'retries', 'login_unix_socket'),
         dict(monitor_role='public', container='bad name', login_port=0, retries=-1, login_unix_socket='sock')),
    ]
    run_table(tmp_path, 'pg_server', base, cases, lambda: server(superuser),
              secrets=['bi-app-secret', 'bi-metrics-secret', superuser['login_password']], control={})


# -- point-in-time recovery (pg_pitr) -----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def pitr_lab(tmp_path_factory):
    lab = PitrLab(tmp_path_factory.mktemp('pitr') / 'lab').start()
    try:
        pitr.setup(lab.settings())
        yield lab
    finally:
        lab.remove()


def test_pg_pitr(pitr_lab, tmp_path):
    lab = pitr_lab
    base = dict(lab.params(), operation='backup', container=lab.name, stanza='soulnear', repo_dir=lab.repo_dir,
                bot_container=lab.bot, data_guard_file=lab.guard_file, backup_type='full')
    restore = dict(operation='restore', confirm='soul_bot', target='latest')
    cases = [
        ('repo=99', 'repo', dict(repo=99)),
        ('repo=0', 'repo', dict(repo=0)),
        ('repo=2 (only repo1 is configured)', 'repo', dict(repo=2)),
        ('operation=verify repo=1', 'repo', dict(operation='verify', repo=1)),
        ('stanza=../other', 'stanza', dict(stanza='../other')),
        ('retention_full=0', 'retention_full', dict(retention_full=0)),
        ('restore: target=yesterday', 'target', dict(restore, target='yesterday')),
        ('restore: recovery_timeout=0', 'recovery_timeout', dict(restore, recovery_timeout=0)),
        ('at once (restore): container="" retention_diff=-1 repo_dir=relative data_guard_file=<a directory> '
         'bot_container="bad name" db_stop_timeout=-5 bot_healthy_timeout=0 space_margin=-1',
         ('container', 'retention_diff', 'repo_dir', 'data_guard_file', 'bot_container', 'db_stop_timeout',
          'bot_healthy_timeout', 'space_margin'),
         dict(restore, container='', retention_diff=-1, repo_dir='repo', data_guard_file=lab.repo_dir,
              bot_container='bad name', db_stop_timeout=-5, bot_healthy_timeout=0, space_margin=-1)),
    ]

    def state():
        return dict(tree(os.path.join(lab.repo_dir, 'backup'), lab.config_dir), tables=tables(lab.params()),
                    containers=containers(lab.name, lab.bot), volumes=lab.volumes(), guard=tree(lab.guard_file))
    run_table(tmp_path, 'pg_pitr', base, cases, state, secrets=[lab.params()['login_password']])



def test_pg_upgrade(pitr_lab, tmp_path):
    """A major upgrade's options: every bad one refused before the old server is touched (no control row: a valid
    upgrade is tests/integration/module_utils/test_upgrade.py's, minutes long)."""
    lab = pitr_lab
    base = dict(lab.params(), operation='upgrade', to_version=17, image='soulnear/postgres:17', confirm='soul_bot',
                container=lab.name, volume=lab.volume, stanza='soulnear', repo_dir=lab.repo_dir, bot_container=lab.bot,
                data_guard_file=lab.guard_file, state_file=str(tmp_path / 'upgrade.json'),
                backup_dir=str(tmp_path / 'backups'))
    cases = [
        ('to_version=99 (not a version this upgrade knows)', 'to_version', dict(to_version=99)),
        ('to_version missing', 'to_version', dict(to_version=None)),
        ('image=""', 'image', dict(image='')),
        ('container="bad name"', 'container', dict(container='bad name')),
        ('volume=../data', 'volume', dict(volume='../data')),
        ('stanza=../other', 'stanza', dict(stanza='../other')),
        ('expect_version=3', 'expect_version', dict(expect_version=3)),
        ('settings: a name that is no setting', 'settings', dict(settings={'work mem; DROP': '1'})),
        ('at once: state_file="" backup_dir=relative retention_full=0 bot_stop_timeout=-1 space_margin=-1 '
         'required_tables=[<64 bytes>]',
         ('state_file', 'backup_dir', 'retention_full', 'bot_stop_timeout', 'space_margin', 'required_tables'),
         dict(state_file='', backup_dir='backups', retention_full=0, bot_stop_timeout=-1, space_margin=-1,
              required_tables=['t' * 64])),
    ]

    def state():
        return dict(tree(os.path.join(lab.repo_dir, 'backup'), lab.config_dir, tmp_path / 'backups'),
                    tables=tables(lab.params()), containers=containers(lab.name, lab.bot), volumes=lab.volumes(),
                    guard=tree(lab.guard_file), upgrade_state=tree(tmp_path / 'upgrade.json'))
    run_table(tmp_path, 'pg_upgrade', base, cases, state, secrets=[lab.params()['login_password']])

# -- a running bot and its next version (safe_redeploy) -------------------------------------------------------------

@pytest.fixture(scope='module')
def deployment(tmp_path_factory):
    """v1 running (deployed by safe_redeploy), v2 waiting with a new migration: a release of its own, v1's image."""
    env = RedeployEnv(tmp_path_factory.mktemp('redeploy'), health_interval='2s').start()
    try:
        env.version('v1')
        Redeployer(env.deploy_params('v1')).run()
        release = os.path.join(env.releases, 'v2')
        shutil.copytree(os.path.join(env.releases, 'v1'), release)
        with open(os.path.join(release, 'database', 'migrations', '004_profiles.sql'), 'w') as handle:
            handle.write('CREATE TABLE profiles (user_id bigint PRIMARY KEY, bio text);\n')
        with open(os.path.join(release, '.soulnear-source-hash'), 'w') as handle:
            handle.write('v2\n')
        os.makedirs(env.backups, exist_ok=True)
        yield env
    finally:
        env.close()


def test_safe_redeploy(deployment, tmp_path):
    env = deployment
    base = env.params(image='%s:v1' % env.image_name, version='v2', healthy_timeout=60)
    work = os.path.dirname(env.releases)
    cases = [
        ('markers=["(unclosed"]', 'markers', dict(markers=['(unclosed'])),
        ('healthy_timeout=-5', 'healthy_timeout', dict(healthy_timeout=-5)),
        ('error_patterns=[""]', 'error_patterns', dict(error_patterns=[''])),
        ('migration_options={ddl_lock_retries: -3}', 'ddl_lock_retries',
         dict(migration_options={'ddl_lock_retries': -3})),
        ('migration_options={ddl_lock_timeout: 1e308}', 'ddl_lock_timeout',
         dict(migration_options={'ddl_lock_timeout': 1e308})),
        ('version=../v2', 'version', dict(version='../v2')),
        ('current_link=<a directory>', 'current_link', dict(current_link=work)),
        ('releases_dir=""', 'releases_dir', dict(releases_dir='')),
        ('at once: rollback_timeout=0 settle_seconds=-1 stop_timeout=-1 migration_options={out_of_order: "false", '
         'statement_timeout: -1} name="bad name" env_file=<a directory> backup_dir=relative backup_keep=0 '
         'keep_images=-1 image=Bad/Image:v1 restart_policy=sometimes db_container="x y" migrations_subdir=../../etc '
         'labels={"a=b": c} healthcheck={interval: soon}',
         ('rollback_timeout', 'settle_seconds', 'stop_timeout', 'out_of_order', 'statement_timeout', 'name',
          'env_file', 'backup_dir', 'backup_keep', 'keep_images', 'image', 'restart_policy', 'db_container',
          'migrations_subdir', 'labels', 'healthcheck.interval'),
         dict(rollback_timeout=0, settle_seconds=-1, stop_timeout=-1,
              migration_options={'out_of_order': 'false', 'statement_timeout': -1}, name='bad name', env_file=work,
              backup_dir='backups', backup_keep=0, keep_images=-1, image='Bad/Image:v1', restart_policy='sometimes',
              db_container='x y', migrations_subdir='../../etc', labels={'a=b': 'c'},
              healthcheck={'interval': 'soon'})),
        ('migrations=command without migration_command', 'migration_command', dict(migrations='command')),
    ]

    def state():
        images = docker('images', '--format', '{{.Repository}}:{{.Tag}} {{.ID}}', env.image_name).stdout.split('\n')
        bots = docker('ps', '-a', '--filter', 'label=soulnear.deployment=' + env.prefix, '--format',
                      '{{.Names}}').stdout.split()
        # The running bot writes rows of its own: the schema and the migrations applied are what a deploy changes.
        schema = dict((table, columns) for table, (columns, _rows) in tables(env.params()).items())
        return dict(tree(env.releases, env.current, env.backups, env.audit_log), schema=schema,
                    migrations=env.pg.query('SELECT name, checksum, success FROM schema_migrations ORDER BY 1',
                                            db='soul_bot'),
                    containers=containers(env.bot, env.pg.name), bots=sorted(bots), images=sorted(images))
    run_table(tmp_path, 'safe_redeploy', base, cases, state, secrets=['test-app-secret', env.pg.password])


# -- a lock held by another run (deploy_lock) ---------------------------------------------------------------------

def test_deploy_lock(tmp_path_factory, tmp_path):
    work = tmp_path_factory.mktemp('locks')
    held = work / 'deploy.lock'
    lock.acquire(str(held), 'other-run', 'alice@laptop', 'deploy', ttl_minutes=60)
    (work / 'not-a-lock').mkdir()
    (work / 'not-a-lock' / 'precious.txt').write_text('data\n')
    (work / 'a-file').write_text('not a directory\n')
    base = dict(path=str(held), holder='pytest@controller', operation='deploy', state='present')
    cases = [
        ('path=""', 'path', dict(path='')),
        ('path=relative.lock', 'path', dict(path='deploy.lock')),
        ('path=<a file>', 'path', dict(path=str(work / 'a-file'))),
        ('path=<a directory with other files> state=absent force=true', 'path',
         dict(path=str(work / 'not-a-lock'), state='absent', force=True)),
        ('path=/ state=query', 'path', dict(path='/', state='query')),
        ('ttl_minutes=0 (would take over the live lock)', 'ttl_minutes', dict(ttl_minutes=0)),
        ('ttl_minutes=-1', 'ttl_minutes', dict(ttl_minutes=-1)),
        ('run_id="" state=absent', 'run_id', dict(run_id='', state='absent')),
        ('at once: holder="" operation="  "', ('holder', 'operation'), dict(holder='', operation='  ')),
    ]
    run_table(tmp_path, 'deploy_lock', base, cases, lambda: tree(work),
              control=dict(path=str(work / 'free.lock')))


# -- files on the host (host_files) -------------------------------------------------------------------------------

def test_host_files(tmp_path_factory, tmp_path):
    work = tmp_path_factory.mktemp('hostfiles')
    target = work / 'etc'
    target.mkdir()
    (target / 'kept.conf').write_text('kept\n')
    first = dict(path=str(target / 'new.conf'), content='written first\n', mode='0644')

    def entries(*bad):
        return dict(entries=[first] + list(bad))
    base = entries()
    cases = [
        ('entries[1].path=relative', 'entries[1].path', entries(dict(path='etc/x.conf', content='x'))),
        ('entries[1].path=""', 'entries[1].path', entries(dict(path='', content='x'))),
        ('entries[1].path=<dir>/../escape', 'entries[1].path', entries(dict(path=str(target) + '/../escape.conf',
                                                                            content='x'))),
        ('entries[1].mode=abc', 'entries[1].mode', entries(dict(path=str(target / 'm.conf'), content='x', mode='abc'))),
        ('entries[1].mode=0999', 'entries[1].mode', entries(dict(path=str(target / 'm.conf'), mode='0999'))),
        ('entries[1].owner=<no such user>', 'entries[1].owner',
         entries(dict(path=str(target / 'o.conf'), content='x', owner='no_such_user_bi'))),
        ('entries[1] state=link without src', 'entries[1].src', entries(dict(path=str(target / 'l'), state='link'))),
        ('entries[1].validate=<no such program>', 'entries[1].validate',
         entries(dict(path=str(target / 'v.conf'), content='x', validate='no-such-program-bi %s'))),
        ('at once: entries[1].mode=99999 entries[1].group=<no such group> entries[2] state=directory with content '
         'trees[0].dest=relative trees[0].files={"../escape.py": ...} trees[0].mode=rwx',
         ('entries[1].mode', 'entries[1].group', 'entries[2].content', 'trees[0].dest', 'trees[0].files',
          'trees[0].mode'),
         dict(entries(dict(path=str(target / 'm.conf'), mode=99999, group='no_such_group_bi'),
                      dict(path=str(target / 'd'), state='directory', content='x')),
              trees=[dict(dest='lib', files={'../escape.py': 'x'}, mode='rwx')])),
    ]
    run_table(tmp_path, 'host_files', base, cases, lambda: tree(work), control={})


# -- a host's readiness (preflight) -------------------------------------------------------------------------------

def test_preflight(tmp_path_factory, tmp_path):
    work = tmp_path_factory.mktemp('preflight')
    base = dict(free_space=[dict(path=str(work), min_mb=1, why='the test')], images=[])

    def space(**item):
        return dict(free_space=[dict(dict(path=str(work), min_mb=1), **item)])
    cases = [
        ('free_space[0].path=""', 'free_space[0].path', space(path='')),
        ('free_space[0].path=relative', 'free_space[0].path', space(path='var/lib/docker')),
        ('free_space[0].min_mb=-1', 'free_space[0].min_mb', space(min_mb=-1)),
        ('images[0].name=""', 'images[0].name', dict(images=[dict(name='')])),
        ('images[0].name="has space:1"', 'images[0].name', dict(images=[dict(name='has space:1')])),
        ('images[0].name=UPPER/bot:1', 'images[0].name', dict(images=[dict(name='UPPER/bot:1')])),
        ('images[0].name=bot::1', 'images[0].name', dict(images=[dict(name='bot::1')])),
        ('registry_timeout=0', 'registry_timeout', dict(registry_timeout=0)),
        ('at once: free_space[0] path="" min_mb=-2, images[0].name=Bad, registry_timeout=-5',
         ('free_space[0].path', 'free_space[0].min_mb', 'images[0].name', 'registry_timeout'),
         dict(space(path='', min_mb=-2), images=[dict(name='Bad')], registry_timeout=-5)),
    ]
    run_table(tmp_path, 'preflight', base, cases, lambda: tree(work))


def test_every_module_has_a_table():
    """Every module in library/ but pg_migrate (its owner validates it) has its table above."""
    modules = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'library', '*.py')))
    with open(__file__) as handle:
        text = handle.read()
    missing = [m for m in modules if m != 'pg_migrate' and 'def test_%s(' % m not in text]
    assert missing == []


def test_a_message_names_option_value_allowed_and_fix_never_a_secret(tmp_path):
    """The message itself: the option, the value as given, what is allowed and the fix; a secret's value hidden."""
    code, result, output = run_module(tmp_path, 'pg_server', dict(
        login_host='127.0.0.1', login_port=1, login_password='never-shown-secret', app_role='bi_x', app_password='',
        settings={}, connect_timeout=0))
    msg = result['msg']
    assert code != 0 and msg.startswith('Invalid option(s), nothing was changed: ')
    assert 'connect_timeout=0 is invalid: it must be a whole number of at least 1 and at most 86400 seconds. ' \
           'Fix: set connect_timeout to a whole number of at least 1 and at most 86400 seconds (or leave it out: ' \
           'default 10)' in msg, msg
    assert 'app_password=(hidden) is invalid: it is empty' in msg, msg
    assert result['invalid_options'] == ['connect_timeout', 'app_password']
    assert 'never-shown-secret' not in output
    assert json.dumps(result)  # the result is plain data


def test_the_empty_values_the_roles_pass_are_accepted():
    """The roles pass '' for what is not used (no CA file, no socket directory, no password, no host): the checks
    take those - a refusal here refuses every deploy (ca_cert='' did, before Molecule's converge caught it)."""
    from ansible.module_utils.soulnear import validate
    from ansible.module_utils.soulnear.pg import connection_argument_spec

    params = dict(login_user='bot', login_password='', login_host='', login_unix_socket='', login_port=5432,
                  login_db='bot', connect_timeout=10, ssl_mode='prefer', ca_cert='', retries=3)
    options = validate.Options(params, connection_argument_spec())
    validate.connection(options, database=True)
    assert options.problems == []
    relative = dict(params, ca_cert='relative.crt', login_unix_socket='run')
    options = validate.Options(relative, connection_argument_spec())
    validate.connection(options)
    assert [problem['option'] for problem in options.problems] == ['login_unix_socket', 'ca_cert']
