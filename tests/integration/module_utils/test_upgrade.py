"""The major upgrade of PostgreSQL 15 to 17 (issue 24, part 3) against real containers: soulnear/postgres:15 and
soulnear/postgres:17 (trixie's postgresql-17 and pgBackRest 2.55, scripts/images.sh IMAGES_PG17=1), a deployment laid
out like the postgres role's (tests/support/upgradeenv.py: volume, secrets file, pgBackRest repository, healthcheck,
labels, the app role) with a bot-like schema and a few MB of rows, and the code the pg_upgrade module runs
(module_utils/soulnear/upgrade.py).

- The upgrade while a writer commits through the published port as the app role: every acknowledged row is on 17
  (writes are refused during the switch, and retried), the tables' counts and content checksums equal 15's, the
  roles and their passwords came along, the data-loss guard records the new cluster, a deploy's version check
  refuses the old version on the new data, point-in-time recovery works on the new cluster (a DROP TABLE taken back
  with a restore to a time), the health checks pass (what the monitor runs), a rollback is refused because 17 took
  writes, and the confirm drops the old volume and container.
- A second deployment: an upgrade interrupted before the switch and one interrupted inside it both resume; a rollback
  with no writes since the switch brings 15 back as it was; after a second upgrade and writes on 17, the rollback is
  refused (nothing changed) until confirm_loss, which dumps the writes first and brings 15 back with its data; WAL
  archiving and a physical backup work for 15 again.
- Refusals change nothing (no volume, container, state file or backup appears; the server keeps running): no
  confirmation, not enough disk, unknown versions (99, 15, 14), an image of the wrong version, a missing image, an
  extension the new image lacks, a setting PostgreSQL 17 removed; and through ansible-playbook, the module's option
  checks and check mode.
"""

import datetime
import json
import os
import subprocess
import sys
import time

import psycopg2
import pytest
from ansible.module_utils.soulnear import guard as data_guard
from ansible.module_utils.soulnear import pitr, upgrade
from ansible.module_utils.soulnear.checks import run_checks
from ansible.module_utils.soulnear.pitr_restore import restore
from ansiblerun import ROOT, run_module
from pgcontainer import docker
from pitrenv import DB, PASSWORD, Writer
from upgradeenv import NEW_IMAGE, OLD_IMAGE, UpgradeLab

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    docker('image', 'inspect', NEW_IMAGE, check=False).returncode != 0,
    reason='%s is missing: scripts/images.sh with IMAGES_PG17=1 (make images-pg17) builds it' % NEW_IMAGE)]


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


class AppWriter(Writer):
    """The writer of tests/support/pitrenv.py as the bot would write: connected as the app role (whose password the
    upgrade carries over with the roles) through the published port, one row per transaction, reconnecting after an
    error."""

    def __init__(self, lab, table='upgrade_writes', rate=40):
        lab.app_sql('CREATE TABLE IF NOT EXISTS %s (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT '
                    'clock_timestamp())' % table)
        Writer.__init__(self, lab, table=table, rate=rate)

    def run(self):
        conn, next_id = None, 1
        while not self.stopping.is_set():
            started = time.time()
            try:
                if conn is None:
                    conn = psycopg2.connect(**self.lab.app_kwargs())
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute('INSERT INTO %s (id) VALUES (%%s)' % self.table, (next_id,))
                self.acked.append((next_id, started, time.time()))
            except psycopg2.Error as exc:
                self.errors.append(str(exc).strip())
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
            next_id += 1  # a lost answer may still have committed: never reuse an id
            time.sleep(max(0.0, 1.0 / self.rate - (time.time() - started)))
        if conn is not None:
            conn.close()


def lab_with_data(tmp_path, name, **load):
    lab = UpgradeLab(tmp_path / name).start()
    try:
        lab.load(**load)
        pitr.setup(lab.settings())
    except BaseException:
        lab.remove()
        raise
    return lab


@pytest.fixture
def lab(tmp_path):
    lab = lab_with_data(tmp_path, 'lab')
    yield lab
    lab.remove()


def footprint(lab):
    """What a refusal must leave as it was: containers (with their images and ids), volumes, the state file, the
    backups directory, and whether the server answers as 15."""
    ids = docker('ps', '-aq', '--no-trunc', '--filter', 'name=' + lab.name).stdout.split()
    return dict(containers=lab.containers(), ids=sorted(ids), volumes=lab.volumes(),
                state=os.path.exists(lab.state_file),
                backups=sorted(os.listdir(lab.backup_dir)) if os.path.isdir(lab.backup_dir) else [],
                version=lab.snapshot(tables=())['version'])


@pytest.mark.timeout(1500)
def test_upgrade_while_a_writer_commits_then_pitr_health_rollback_refusal_and_confirm(lab):
    before = lab.snapshot()
    roles_before = lab.sql('SELECT rolname, rolpassword FROM pg_authid WHERE rolname !~ \'^pg_\' ORDER BY 1',
                           db='postgres')
    assert before['version'] == 15 and before['messages'][0] == 60000
    writer = AppWriter(lab, rate=40)
    writer.start()
    time.sleep(3)
    steps = []
    result = upgrade.upgrade(lab.upgrade_settings(), confirm=DB, log=steps.append)
    time.sleep(3)  # the writer commits on 17 too
    writer.stop()

    acked = set(i for i, _, _ in writer.acked)
    present = writer.present()
    assert len(acked) > 100 and acked <= present, 'acknowledged rows lost: %s' % sorted(acked - present)[:20]
    after = lab.snapshot()
    assert after['version'] == 17
    assert dict(after, version=15) == before, 'the data on 17 differs from 15: %s %s' % (before, after)
    assert lab.sql('SELECT rolname, rolpassword FROM pg_authid WHERE rolname !~ \'^pg_\' ORDER BY 1',
                   db='postgres') == roles_before
    assert lab.app_sql("SELECT count(*) FROM active_users") == lab.app_sql(
        "SELECT count(*) FROM users WHERE last_seen > now() - interval '30 days'")
    assert lab.app_sql("SELECT extversion IS NOT NULL FROM pg_extension WHERE extname = 'pgcrypto'") == [(True,)]
    # What the result says and what is on the host.
    assert result['phase'] == upgrade.UPGRADED and result['from_version'] == 15 and result['to_version'] == 17
    assert result['new_system_identifier'] != result['system_identifier']
    assert result['write_downtime'] > 0 and result['downtime'] >= result['write_downtime'], result
    assert os.path.exists(result['logical_backup']['path'])
    assert result['counts'][DB]['public.messages'] == 60000
    assert set(result['steps']) == {'staging', 'backups', 'stop', 'source', 'copy', 'verify', 'baseline', 'close',
                                    'swap', 'stanza', 'container', 'guard', 'bot', 'analyze', 'pitr'}
    assert result['kept_volume'] in lab.volumes()
    assert '%s %s' % (result['old_container'], OLD_IMAGE) in lab.containers()
    assert '%s %s' % (lab.name, NEW_IMAGE) in lab.containers()
    inspect = json.loads(docker('inspect', lab.name).stdout)[0]
    assert inspect['HostConfig']['RestartPolicy']['Name'] == 'unless-stopped'
    assert {'soulnear.component': 'database', 'soulnear.deployment': lab.name}.items() <= \
        inspect['Config']['Labels'].items()
    assert not any('PATH=/usr/lib/postgresql/15' in e for e in inspect['Config']['Env'])
    old = json.loads(docker('inspect', result['old_container']).stdout)[0]
    assert old['HostConfig']['RestartPolicy']['Name'] == 'no' and not old['State']['Running']
    assert docker('inspect', '--format', '{{.State.Running}}', lab.bot).stdout.strip() == 'true'
    # Statistics for the planner exist (vacuumdb --analyze-in-stages).
    assert lab.sql("SELECT count(*) FROM pg_stats WHERE tablename = 'messages'")[0][0] > 0
    # The data-loss guard knows the new cluster (accepted through the upgrade only), flag down.
    entry = data_guard.entry(lab.guard_file, DB)
    assert entry['system_identifier'] == result['new_system_identifier'] and entry['flag'] is None
    assert any('major upgrade from PostgreSQL 15' in e['what'] for e in data_guard.load(lab.guard_file)['events'])

    # A deploy whose inventory still says 15 is refused, naming the fix; one that says 17 passes.
    refused = upgrade.status(lab.upgrade_settings(), expect_version=15)
    assert not refused['ok'] and 'postgres_major_version: 17' in refused['msg'], refused
    assert upgrade.status(lab.upgrade_settings(), expect_version=17)['ok']
    # Running the upgrade again changes nothing.
    again = upgrade.upgrade(lab.upgrade_settings(), confirm=DB)
    assert not again['changed'] and 'nothing to do' in again['msg']

    # The writer's rows were written on 17: a rollback would lose them, so it is refused, changing nothing.
    time.sleep(1.5)  # the writer's last statistics reach the shared counters
    kept = footprint(lab)
    with pytest.raises(upgrade.UpgradeError, match=r'Rollback refused.*soul_bot: \d+ row\(s\) inserted.*CONFIRM_LOSS'):
        upgrade.rollback(lab.upgrade_settings(), confirm=DB)
    assert footprint(lab) == kept

    # Point-in-time recovery works on the new cluster: archiving, its first full backup, a DROP TABLE taken back.
    repo = pitr.repositories(pitr.info(lab.settings(), pitr.Runner(lab.name)))[1]
    assert repo['system_id'] == result['new_system_identifier'] and repo['backups'][0]['type'] == 'full'
    pitr.check(lab.settings())
    time.sleep(1.5)
    target = utc_now()
    time.sleep(1.5)
    lab.app_sql('DROP TABLE payments')
    restored = restore(lab.settings(), pitr.show(target), confirm=DB)
    assert lab.snapshot(tables=('payments',))['payments'] == before['payments'], restored['msg']
    assert lab.snapshot(tables=())['version'] == 17

    # The health checks the monitor runs every minute pass on 17 (WAL archiving, physical backups, the guard).
    report = run_checks(dict(lab.params(), db_container=lab.name, db_volume=lab.volume, pitr_stanza='soulnear',
                             pitr_repo_dir=lab.repo_dir, data_guard_file=lab.guard_file, bot_container=lab.bot,
                             read_only=True))
    for name in ('database', 'tables', 'db_container', 'wal_archiving', 'physical_backup'):
        assert report['checks'][name]['ok'], (name, report['checks'][name])

    # After the restore the server's write statistics start afresh: a rollback cannot rule writes out any more.
    with pytest.raises(upgrade.UpgradeError, match='Rollback refused.*cannot be ruled out.*CONFIRM_LOSS'):
        upgrade.rollback(lab.upgrade_settings(), confirm=DB)

    # Confirm: the old volume and container go, the image stays; nothing to roll back after it.
    with pytest.raises(upgrade.UpgradeError, match='confirm=soul_bot'):
        upgrade.confirm_upgrade(lab.upgrade_settings(), confirm='')
    done = upgrade.confirm_upgrade(lab.upgrade_settings(), confirm=DB)
    assert done['changed'] and result['kept_volume'] not in lab.volumes()
    assert result['old_container'] not in ' '.join(lab.containers())
    assert docker('image', 'inspect', OLD_IMAGE, check=False).returncode == 0
    with pytest.raises(upgrade.UpgradeError, match='confirmed'):
        upgrade.rollback(lab.upgrade_settings(), confirm=DB, confirm_loss=DB)
    assert upgrade.load_state(lab.state_file)['phase'] == upgrade.CONFIRMED


@pytest.mark.full
@pytest.mark.timeout(2400)
def test_interrupted_upgrades_resume_and_rollbacks_bring_15_back(tmp_path):
    lab = lab_with_data(tmp_path, 'lab2', users=5000, messages=20000)
    try:
        before = lab.snapshot()
        ident = lab.sql('SELECT system_identifier::text FROM pg_control_system()')[0][0]
        settings = lab.upgrade_settings()

        # Killed before the switch (after the copy: the old server stopped, the helpers running): the next run
        # cleans the attempt away and starts over.
        stopped = upgrade.upgrade(settings, confirm=DB, stop_after='copy')
        assert stopped['phase'] == upgrade.COPYING
        assert upgrade.status(settings, expect_version=15)['ok'] is False  # a deploy would be refused meanwhile
        # Killed inside the switch, right after the volumes changed places: the next run finishes it.
        stopped = upgrade.upgrade(settings, confirm=DB, stop_after='swap')
        assert stopped['phase'] == upgrade.SWITCHING
        assert any('cleaned away' in h['what'] for h in upgrade.load_state(lab.state_file)['history'])
        result = upgrade.upgrade(settings, confirm=DB)
        assert result['phase'] == upgrade.UPGRADED and 'swap' in result['steps'] and 'pitr' in result['steps']
        assert dict(lab.snapshot(), version=15) == before
        assert len([v for v in lab.volumes() if '__upgrade_pg17_' in v]) == 0  # the abandoned copy was removed

        # No write since the switch: the rollback needs no confirm_loss, and 15 comes back as it was.
        back = upgrade.rollback(settings, confirm=DB)
        assert back['writes']['count'] == 0 and back['phase'] == upgrade.ROLLED_BACK, back
        assert lab.snapshot() == before
        assert lab.sql('SELECT system_identifier::text FROM pg_control_system()')[0][0] == ident
        assert '%s %s' % (lab.name, OLD_IMAGE) in lab.containers()
        assert back['rolled_back_volume'] in lab.volumes() and not any('__pre_upgrade_' in v for v in lab.volumes())
        assert data_guard.entry(lab.guard_file, DB)['system_identifier'] == ident
        assert upgrade.status(settings, expect_version=15)['ok']
        # WAL archiving and backups work for 15 again (pgBackRest 2.45 on the stanza 2.55 moved to 17 and back).
        pitr.check(lab.settings())
        assert pitr.backup(lab.settings(), 'diff')['backups']

        # Again, and this time 17 takes writes: the rollback is refused until confirm_loss, which dumps them first.
        result = upgrade.upgrade(settings, confirm=DB)
        assert result['phase'] == upgrade.UPGRADED
        lab.app_sql("INSERT INTO users (telegram_id, username) VALUES (1, 'written on 17')")
        time.sleep(1.5)  # the statistics reach the shared counters
        kept = footprint(lab)
        with pytest.raises(upgrade.UpgradeError, match='Rollback refused.*1 row') as refusal:
            upgrade.rollback(settings, confirm=DB)
        assert footprint(lab) == kept and refusal.value.result['writes']['count'] == 1
        check = upgrade.rollback(settings, confirm=DB, confirm_loss=DB, check_mode=True)
        assert check['changed'] and footprint(lab) == kept
        back = upgrade.rollback(settings, confirm=DB, confirm_loss=DB)
        assert back['rollback_dumps'] and os.path.exists(back['rollback_dumps'][0]), back
        assert 'NOT in it' in back['msg']
        assert lab.snapshot() == before  # 15's data as it was at the switch: the row written on 17 is not in it
        listed = docker('run', '--rm', '-v', '%s:/b:ro' % lab.backup_dir, NEW_IMAGE, 'pg_restore', '--data-only',
                        '--table=users', '-f', '-', '/b/' + os.path.basename(back['rollback_dumps'][0])).stdout
        assert 'written on 17' in listed  # ... it is in the dump the rollback took
        lab.app_sql("INSERT INTO users (telegram_id, username) VALUES (2, 'written on 15 after the rollback')")
        pitr.check(lab.settings())
    finally:
        lab.remove()


@pytest.mark.timeout(1200)
def test_refusals_change_nothing(lab, tmp_path):
    kept = footprint(lab)

    def refused(match, confirm=DB, **options):
        with pytest.raises(upgrade.UpgradeError, match=match) as raised:
            upgrade.upgrade(lab.upgrade_settings(**options), confirm=confirm)
        assert footprint(lab) == kept, (match, raised.value)
        return str(raised.value)

    refused('confirm=soul_bot', confirm=None)
    refused('confirm=soul_bot', confirm='soul_bot_typo')
    text = refused('not enough free space for the new cluster.*space_margin', space_margin=1000000)
    assert 'nothing was changed' in text
    refused('PostgreSQL 99 is not a version this upgrade knows', to_version=99)
    refused('already PostgreSQL 15: VERSION=15 is not newer', to_version=15, image=OLD_IMAGE)
    refused('already PostgreSQL 15: VERSION=14 is not newer', to_version=14, image=OLD_IMAGE)
    refused('runs postgres \\(PostgreSQL\\) 15.* not PostgreSQL 17', image=OLD_IMAGE)
    refused('is not on this host', image='soulnear/postgres:17-missing-image')
    # An extension the new image lacks, and a setting PostgreSQL 17 removed (the operator's ALTER SYSTEM).
    lab.sql("ALTER SYSTEM SET old_snapshot_threshold = '-1'")
    refused('old_snapshot_threshold \\(removed in 17\\)')
    lab.sql('ALTER SYSTEM RESET old_snapshot_threshold')
    extension_dir = docker('run', '--rm', '--entrypoint', 'pg_config', OLD_IMAGE, '--sharedir').stdout.strip()
    docker('exec', lab.name, 'bash', '-c', "cd %s/extension && printf \"default_version = '1.0'\\nrelocatable = "
           "true\\n\" > soulnear_probe.control && echo 'SELECT 1;' > soulnear_probe--1.0.sql" % extension_dir)
    lab.sql('CREATE EXTENSION soulnear_probe')
    refused('extensions not available in soulnear/postgres:17: soulnear_probe \\(database soul_bot\\)')
    lab.sql('DROP EXTENSION soulnear_probe')
    # A raised data-loss flag: find out what happened first.
    path = lab.guard_file
    record = data_guard.load(path) or dict(databases={}, events=[])
    record['databases'][DB] = dict(database=DB, flag=dict(raised_at=time.time(), by='test', reason='test flag'))
    data_guard.save(path, record)
    refused('data-loss guard\'s flag is raised \\(test flag\\)')
    os.unlink(path)
    # Check mode: the plan, nothing changed.
    plan = upgrade.upgrade(lab.upgrade_settings(), confirm=DB, check_mode=True)
    assert plan['changed'] and plan['plan']['to_version'] == 17 and 'Would upgrade PostgreSQL 15 to 17' in plan['msg']
    assert footprint(lab) == kept
    # No rollback or confirm without an upgrade.
    assert not upgrade.rollback(lab.upgrade_settings(), confirm=DB)['changed']
    with pytest.raises(upgrade.UpgradeError, match='no finished upgrade to confirm'):
        upgrade.confirm_upgrade(lab.upgrade_settings(), confirm=DB)
    assert footprint(lab) == kept

    # Through ansible-playbook: the module checks its options before anything runs, and check mode is a dry run.
    args = dict(operation='upgrade', to_version=99, image='Not An Image', confirm=DB, container=lab.name,
                login_host='127.0.0.1', login_port=lab.port, login_password=PASSWORD, login_db=DB,
                state_file=lab.state_file, backup_dir=lab.backup_dir, space_margin=-1, start_timeout=0,
                settings={'bad name': 1})
    rc, result, output = run_module(tmp_path, 'pg_upgrade', args)
    assert rc != 0 and result['changed'] is False, output
    for option in ('to_version', 'image', 'space_margin', 'start_timeout', 'settings'):
        assert option in result['invalid_options'], (option, result['msg'])
    assert PASSWORD not in output
    good = dict(args, to_version=17, image=NEW_IMAGE, space_margin=1.2, start_timeout=120, settings={},
                bot_container=lab.bot, repo_dir=lab.repo_dir, data_guard_file=lab.guard_file)
    rc, result, output = run_module(tmp_path, 'pg_upgrade', good, '--check')
    assert rc == 0 and result['changed'] and 'Would upgrade' in result['msg'], output
    rc, result, output = run_module(tmp_path, 'pg_upgrade', dict(good, confirm='nope'))
    assert rc != 0 and 'confirm=soul_bot' in result['msg'], output
    rc, result, output = run_module(tmp_path, 'pg_upgrade', dict(
        operation='status', expect_version=17, container=lab.name, state_file=lab.state_file))
    assert rc != 0 and 'holds PostgreSQL 15 data' in result['msg'] and 'make upgrade-postgres VERSION=17' in \
        result['msg'], output
    assert footprint(lab) == kept


def test_make_passes_the_upgrade_values_as_data(tmp_path):
    """make upgrade-postgres-rollback CONFIRM_LOSS='$(shell ...)' reaches Ansible as the string typed."""
    work = tmp_path / 'work'
    work.mkdir()
    for name in ('Makefile', 'make', 'scripts'):
        subprocess.run(['cp', '-r', os.path.join(ROOT, name), str(work)], check=True)
    record = tmp_path / 'record.json'
    stub = tmp_path / 'ansible-playbook'
    stub.write_text('#!%s\nimport json, os, sys\nargv = sys.argv[1:]\n'
                    'extra = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]\n'
                    'data = [json.load(open(e[1:])) for e in extra if e.startswith("@")]\n'
                    'json.dump(dict(argv=argv, vars=data), open(os.environ["RECORD"], "w"))\n' % sys.executable)
    stub.chmod(0o755)
    text = "$(shell touch PWNED) x'; touch PWNED2; echo '"
    for target, expected in (
            ('upgrade-postgres', dict(upgrade_operation='upgrade', upgrade_version=text, upgrade_confirm=text)),
            ('upgrade-postgres-rollback', dict(upgrade_operation='rollback', upgrade_confirm=text,
                                                        upgrade_confirm_loss=text)),
            ('upgrade-postgres-confirm', dict(upgrade_operation='confirm', upgrade_confirm=text)),
            ('upgrade-postgres-status', dict(upgrade_operation='status'))):
        proc = subprocess.run(['make', '-s', target, 'ANSIBLE_PLAYBOOK=%s' % stub, 'VENV_PYTHON=%s' % sys.executable,
                               'VERSION=%s' % text, 'CONFIRM=%s' % text, 'CONFIRM_LOSS=%s' % text],
                              cwd=str(work), env=dict(os.environ, RECORD=str(record)), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(record.read_text())
        assert data['vars'] == [expected] and 'playbooks/upgrade-postgres.yml' in data['argv']
        assert not [p for p in os.listdir(str(work)) if p.startswith('PWNED')]


def test_the_deploys_version_check_on_a_bare_host(tmp_path, monkeypatch):
    """A dry run of a first deploy on a bare host has no docker command yet (the docker_host role would install it):
    the version check has no data to compare and passes, as it does for a volume that holds none."""
    def no_docker():
        raise upgrade.containers.DockerError('the docker CLI is not installed on this host')

    monkeypatch.setattr(upgrade.containers, 'docker_binary', no_docker)
    settings = upgrade.make_settings({}, volume='soulnear_postgres_data', state_file=str(tmp_path / 'state.json'))
    found = upgrade.status(settings, expect_version=17)
    assert found['ok'] and found['data_version'] is None, found
