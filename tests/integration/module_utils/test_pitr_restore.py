"""Point-in-time recovery (issue 13) against real PostgreSQL, pgBackRest and S3 (SeaweedFS) containers: the restore
code the pg_pitr module runs (module_utils/soulnear/pitr_restore.py) on a database laid out like the postgres role
lays it out (tests/support/pitrenv.py), with a writer committing rows the whole time.

- PITR to a time T after a DROP TABLE: every row committed before T is back, none sent after T.
- Host loss: the container AND its volume removed while the writer runs; restore latest: the rows lost are only
  those committed in the last archive_timeout (10 s here to keep the suite fast; make test-full also runs it with
  the deployment's 60 s: SOULNEAR_TEST_FULL=1).
- The same from the offsite repository only (S3, encrypted), the local repository wiped.
- WAL archiving broken (the repository unwritable): the health checks fail and the monitor alerts; fixing it
  recovers without any cleanup.
- After a restart (issue 26, the breach make chaos found): PostgreSQL 15 switches no WAL segment for
  checkpoint_timeout, so archive_timeout did not bound the recovery point. With the postgres role's healthcheck
  (its checkpointer wake-up) a host loss after a restart loses only the last archive_timeout; without it the
  wal_archiving check says STALLED within archive_timeout + slack, the monitor alerts at once and wakes the
  checkpointer, and a restore made while it was stalled says which commits are missing instead of "restored".
"""

import datetime
import json
import os
import time

import threading

import pytest
from ansible.module_utils.soulnear import guard as data_guard
from ansible.module_utils.soulnear import pitr
from ansible.module_utils.soulnear.checks import run_checks
from ansible.module_utils.soulnear.health_command import main as health
from ansible.module_utils.soulnear.pitr_restore import restore
from healthenv import alerts, host_config, log_lines
from pitrenv import DB, PitrLab, Writer

pytestmark = pytest.mark.slow


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def backed_up(lab):
    result = pitr.setup(lab.settings())
    assert result['changed'] and 'first full backup on repo1' in result['actions'], result
    return result


@pytest.fixture
def lab(tmp_path):
    lab = PitrLab(tmp_path / 'lab', archive_timeout='10s').start()
    yield lab
    lab.remove()


def test_setup_is_idempotent_and_describes_the_window(lab):
    first = backed_up(lab)
    assert 'stanza soulnear created on repo1' in first['actions'] and 'pgbackrest check passed' in first['actions']
    again = pitr.setup(lab.settings())
    assert not again['changed'] and again['actions'] == []
    # WAL archiving turned on again after a while off: a new full backup, past the gap in the archive.
    resumed = pitr.setup(lab.settings(), archiving_resumed=True)
    assert resumed['changed'] and resumed['actions'][0].startswith('new full backup on repo1'), resumed
    fulls = [b for b in pitr.repositories(pitr.info(lab.settings(), pitr.Runner(lab.name)))[1]['backups']
             if b['type'] == 'full']
    assert len(fulls) == 2
    described = pitr.describe(lab.settings())
    assert described['windows'][1]['start'] <= utc_now()
    assert any('Recovery window' in line for line in described['lines'])


def test_a_reinitialised_cluster_is_refused_until_a_new_history_is_asked_for(lab):
    """A clean redeploy re-initialises the volume on purpose: the repositories know the old cluster. Without
    new_history the setup refuses (the data-loss case); with it, stanza-upgrade keeps the old backups as prior
    history, the window is the new cluster's and WAL reaches the repository again."""
    backed_up(lab)
    old_backups = pitr.repositories(pitr.info(lab.settings(), pitr.Runner(lab.name)))[1]['backups']
    lab.lose_the_host()
    lab.create_container()
    lab.wait_ready()
    lab.init_database()
    with pytest.raises(pitr.PitrError, match='another database cluster.*pitr_new_history=true'):
        pitr.setup(lab.settings())
    moved = pitr.setup(lab.settings(), new_history=True)
    assert moved['changed'] and moved['actions'][0].startswith('stanza soulnear moved to the new database cluster')
    assert 'first full backup on repo1' in moved['actions'], moved
    raw = pitr.info(lab.settings(), pitr.Runner(lab.name))
    repo = pitr.repositories(raw)[1]
    assert repo['system_id'] == moved['system_identifier']
    assert [b['label'] for b in repo['backups']] != [b['label'] for b in old_backups]
    assert len(repo['backups']) == 1 and repo['backups'][0]['type'] == 'full'
    assert len(raw.get('backup') or []) == len(old_backups) + 1  # the old cluster's backups are kept
    pitr.check(lab.settings())
    assert not pitr.setup(lab.settings())['changed']


def test_pitr_to_a_time_before_drop_table_with_a_writer(lab):
    backed_up(lab)
    writer = Writer(lab)
    writer.start()
    time.sleep(4)
    target = utc_now()
    time.sleep(3)
    lab.sql('DROP TABLE pitr_writes')
    writer.stop()
    sent_after = [i for i, sent, _ in writer.acked if sent > target.timestamp()]
    acked_before = [i for i, _, acked in writer.acked if acked < target.timestamp()]
    assert len(acked_before) > 50 and sent_after, (len(acked_before), len(sent_after))

    refused = pytest.raises(pitr.PitrError, restore, lab.settings(), pitr.show(target), confirm='wrong')
    assert 'confirm=%s' % DB in str(refused.value)
    too_early = datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)
    outside = pytest.raises(pitr.PitrError, restore, lab.settings(), pitr.show(too_early), confirm=DB)
    assert 'outside the recovery window' in str(outside.value) and 'repo1: from ' in str(outside.value)
    assert lab.sql('SELECT 1') == [(1,)]  # refused before anything was touched

    steps = []
    result = restore(lab.settings(), pitr.show(target), confirm=DB, log=steps.append)
    assert result['timeline'] == 2, result
    recovered = datetime.datetime.strptime(result['recovered_to'][:19], '%Y-%m-%d %H:%M:%S')
    assert recovered.replace(tzinfo=datetime.timezone.utc) <= target
    present = Writer(lab).present()  # the table is back
    assert set(acked_before) <= present, 'rows acknowledged before T are missing'
    assert not present & set(sent_after), 'rows sent after T came back'
    assert lab.sql('SELECT count(*) FROM aiogram_states') == [(1,)]
    # The previous data is kept in a volume of its own; the bot runs again; the guard knows the restored database.
    assert result['kept_volume'] in lab.volumes() and result['drop_previous_command'].endswith(result['kept_volume'])
    assert result['bot']['stopped'] and result['bot']['started']
    guard = data_guard.entry(lab.guard_file, DB)
    assert guard['flag'] is None and guard['tables']['public.aiogram_states'] == 1
    assert lab.sql("SELECT count(*) FROM pg_file_settings WHERE name LIKE 'recovery_target%'") == [(0,)]
    # Restarted once more inside the restore: nothing waits for a restart (the next deploy would do one).
    assert 'restart' in result['steps'] and lab.sql('SELECT count(*) FROM pg_settings WHERE pending_restart') == [(0,)]
    # Archiving goes on, on the new timeline.
    pitr.check(lab.settings())


class Sampler(threading.Thread):
    """What the host monitor does for the data-loss guard every run (here every 2 s, archive_timeout being 10 s):
    observe the database and record it, with a sample of the server's progress (run_checks with
    data_guard_update, the monitor's own path). A restore to latest checks its recovery point against them."""

    def __init__(self, lab, every=2.0):
        threading.Thread.__init__(self, daemon=True)
        self.lab, self.every = lab, every
        self.stopping = threading.Event()
        self.runs = 0

    def run(self):
        while not self.stopping.is_set():
            run_checks(dict(self.lab.params(), retries=0, data_guard_file=self.lab.guard_file,
                            data_guard_update=True, data_guard_actor='test monitor'))
            self.runs += 1
            self.stopping.wait(self.every)

    def stop(self):
        self.stopping.set()
        self.join(60)


def lose_and_restore(lab, seconds, table='pitr_writes', unarchived=False, sample_every=2.0):
    """The monitor's sampling, a writer for seconds, then the container and its volume removed; restore latest.
    unarchived: the repository unwritable from the writer's start until the loss, so none of its WAL is archived.
    sample_every: the sampler's period; the guard keeps its last PROGRESS_KEPT samples, which must reach back past
    archive_timeout + slack (the monitor: 30 samples a minute apart).
    Returns (restore result, [(id, seconds acknowledged before the loss)] of the rows lost, rows acked)."""
    sampler = Sampler(lab, every=sample_every)
    sampler.start()
    deadline = time.time() + 60
    while sampler.runs < 1 and time.time() < deadline:
        time.sleep(0.2)
    if unarchived:
        lab.sql('SELECT pg_switch_wal()')  # what came before is archived; from here on nothing is
        deadline = time.time() + 60
        while lab.sql('SELECT last_archived_wal < pg_walfile_name(pg_current_wal_lsn()) FROM pg_stat_archiver')[0][0] \
                and waiting(lab) and time.time() < deadline:
            time.sleep(0.5)
        os.chmod(lab.repo_dir, 0o000)
    writer = Writer(lab, table=table)
    writer.start()
    time.sleep(seconds)
    sampler.stop()
    lost_at = time.time()
    lab.lose_the_host()
    writer.stop()
    if unarchived:
        os.chmod(lab.repo_dir, 0o700)
    assert sampler.runs >= 3
    lab.create_container(start=False)  # what playbooks/restore.yml does when the container is gone
    result = restore(lab.settings(), 'latest', confirm=DB)
    assert result['kept_volume'] is None  # the new volume was empty: nothing to keep
    present = Writer(lab).present()
    acked = [(i, acked) for i, _, acked in writer.acked if acked <= lost_at]
    return result, [(i, lost_at - at) for i, at in acked if i not in present], acked


def waiting(lab):
    """Finished WAL segments not archived yet (pg_wal/archive_status/*.ready)."""
    return pitr.waiting_segments(lab.volume) or 0


def host_loss(lab, seconds, archive_timeout, restart=False):
    """A writer for seconds, then the container and its volume removed; restore latest; returns the rows lost.
    restart: the database restarts after its backup and before the writer (no checkpoint wakes it since)."""
    backed_up(lab)
    if restart:
        lab.restart()
    started = time.time()
    # The kept samples (30) span 10 archive_timeouts: 2 s apart for 10 s, 6 s apart for the deployment's 60 s (2 s
    # apart, the 60 s variant kept only the last minute and the restore had no sample old enough to check against).
    result, lost, acked = lose_and_restore(lab, seconds, sample_every=max(2.0, archive_timeout / 10.0))
    took = result['duration']
    assert len(acked) > 10 * seconds
    # Only commits of the segment that was still open can be lost: at most archive_timeout plus the archiver's
    # own delay.
    assert all(age <= archive_timeout + 3 for _, age in lost), 'rows older than archive_timeout lost: %s' % lost[:5]
    # The restore proves it: the last archived commit is back, and every transaction begun archive_timeout + 15 s
    # before the database was last seen.
    point = result['recovery_point']
    assert point['ok'] and point['recovered_to'] == point['archive_last_commit'], point
    if seconds > archive_timeout + 15 + 5:  # samples older than the promise exist: it was checked against them
        assert point['expected_next_xid'] is not None, point
    assert 'the last commit in the archive' in result['msg']
    print('host loss (archive_timeout %d s%s): %d rows acknowledged, %d lost (the oldest %.1f s before the loss); '
          'restore latest took %.1f s; the writer ran %.0f s' % (
              archive_timeout, ', after a restart' if restart else '', len(acked), len(lost),
              max([age for _, age in lost] or [0]), took, time.time() - started))
    return lost


def test_host_loss_restore_latest_loses_only_the_last_archive_timeout(lab):
    host_loss(lab, 25, 10)


def test_host_loss_after_a_restart_loses_only_the_last_archive_timeout(lab):
    """make chaos fault 6 after faults 4 and 5 (issue 26): the database restarted, then the volume lost."""
    # 40 s: the restore's proof covers the writer's first 15 s (the samples older than archive_timeout + 15 s).
    host_loss(lab, 40, 10, restart=True)


def monitor_config(lab, tmp_path):
    """soulnear-health's arguments for this lab, as the roles write its configuration (PITR on)."""
    args = host_config(tmp_path, lab.params(), db_container=lab.name, migrations_dir=None)
    config_path = tmp_path / 'soulnear.json'
    config = json.loads(config_path.read_text())
    config['db']['volume'] = lab.volume
    config['pitr'] = dict(enabled=True, stanza='soulnear', repo_dir=lab.repo_dir)
    config_path.write_text(json.dumps(config))
    return args


def current_segment(lab):
    return lab.sql('SELECT pg_walfile_name(pg_current_wal_lsn())')[0][0]


def restart_until_stalled(lab, archive_timeout=10, attempts=5):
    """Restart the database (healthcheck without the wake-up) until its checkpointer ignores archive_timeout: a
    commit, then no segment switch within archive_timeout + 5 s. Whether it does is a race between PostgreSQL's
    checkpointer and its startup process (seen here: 5 restarts of 5 stalled on the bare binaries, 2 crash restarts of
    3), so a restart where the race went the other way is simply retried."""
    for attempt in range(1, attempts + 1):
        lab.restart()
        first = current_segment(lab)
        lab.sql('CREATE TABLE IF NOT EXISTS stall_probe (x int); INSERT INTO stall_probe VALUES (%s)', (attempt,))
        deadline = time.time() + archive_timeout + 5
        while current_segment(lab) == first and time.time() < deadline:
            time.sleep(0.5)
        if current_segment(lab) == first:
            return attempt
    pytest.fail('PostgreSQL honoured archive_timeout after each of %d restarts without the wake-up: the race this '
                'test shows did not happen (a PostgreSQL that fixed it?)' % attempts)


def test_without_the_wake_up_archiving_stalls_is_alarmed_woken_and_a_restore_names_the_loss(tmp_path):
    """The database container with pg_isready alone as its healthcheck (before the fix): after a restart no WAL
    segment is switched. The wal_archiving and physical_backup checks fail within archive_timeout + 15 s (+ the
    check's own period); the monitor alerts at its first run and wakes the checkpointer, which switches the segment.
    Then stalled once more, the host lost: the restore to latest brings back what the archive holds and says which
    transactions are missing."""
    lab = PitrLab(tmp_path / 'lab', archive_timeout='10s', wake=False).start()
    try:
        backed_up(lab)
        args = monitor_config(lab, tmp_path)
        options = dict(lab.params(), db_container=lab.name, db_volume=lab.volume, pitr_stanza='soulnear',
                       pitr_repo_dir=lab.repo_dir)
        tries = restart_until_stalled(lab)
        first = time.time() - 15  # the probe's commit, archive_timeout + 5 s ago
        writer = Writer(lab)
        writer.start()
        deadline = first + 10 + 15 + 60
        report = run_checks(options)
        while report['checks']['wal_archiving']['ok'] and time.time() < deadline:
            time.sleep(2)
            report = run_checks(options)
        detected = time.time() - first
        archiving = report['checks']['wal_archiving']
        assert not archiving['ok'] and 'WAL archiving is STALLED' in archiving['message'], archiving
        assert archiving['value']['stalled'] and archiving['value']['unarchived_commit_age_seconds'] >= 25
        assert not report['checks']['physical_backup']['ok']
        assert 'recovery point is stalled' in report['checks']['physical_backup']['message']
        segment = lab.sql('SELECT pg_walfile_name(pg_current_wal_lsn())')[0][0]

        assert health(args + ['monitor']) == 0  # the first failing run: alert and wake-up at once
        assert 'health check wal_archiving failing' in alerts(tmp_path)
        assert 'woke the checkpointer' in log_lines(tmp_path)[-1]
        deadline = time.time() + 30
        while lab.sql('SELECT pg_walfile_name(pg_current_wal_lsn())')[0][0] == segment and time.time() < deadline:
            time.sleep(0.5)
        assert lab.sql('SELECT pg_walfile_name(pg_current_wal_lsn())')[0][0] != segment, 'no switch after the wake'
        deadline = time.time() + 60
        report = run_checks(options)
        while not report['ok'] and time.time() < deadline:
            time.sleep(2)
            report = run_checks(options)
        assert report['checks']['wal_archiving']['ok'] and report['checks']['physical_backup']['ok'], report['msg']
        writer.stop()
        print('stalled after a restart: detected %.0f s after the first commit (archive_timeout 10 s + 15 s); '
              'archived again after the monitor woke the checkpointer' % detected)

        # The disk lost while 40 s of commits never reached the repository (it was unwritable: whatever keeps WAL
        # from the archive, the restore must say what is missing rather than "restored").
        result, lost, acked = lose_and_restore(lab, 40, table='pitr_writes_2', unarchived=True)
        old = [i for i, age in lost if age > 10 + 15]
        assert old, 'nothing older than archive_timeout was lost (%d lost)' % len(lost)
        point = result['recovery_point']
        assert not point['ok'] and any('transactions the database had begun' in p for p in point['problems']), point
        assert result['msg'].startswith('RESTORED, BUT COMMITS THAT POINT-IN-TIME RECOVERY PROMISES ARE MISSING')
        print('restored while stalled: %d of %d rows lost, %d older than 25 s; the restore said: %s (%d restart(s) '
              'for two stalls)' % (len(lost), len(acked), len(old), result['msg'][:300], tries))
    finally:
        lab.remove()


@pytest.mark.skipif(not os.environ.get('SOULNEAR_TEST_FULL'), reason='make test-full (SOULNEAR_TEST_FULL=1): 3 min')
def test_host_loss_with_the_deployments_60_s_archive_timeout(tmp_path):
    lab = PitrLab(tmp_path / 'lab', archive_timeout='60s').start()
    try:
        host_loss(lab, 150, 60)
    finally:
        lab.remove()


def test_offsite_repository_alone_restores_after_host_loss(tmp_path):
    lab = PitrLab(tmp_path / 'lab', archive_timeout='10s', s3=True).start()
    try:
        result = pitr.setup(lab.settings())
        assert 'first full backup on repo2' in result['actions'], result
        repos = pitr.repositories(pitr.info(lab.settings(), pitr.Runner(lab.name)))
        assert repos[2]['cipher'] == 'aes-256-cbc' and repos[2]['backups']
        writer = Writer(lab)
        writer.start()
        time.sleep(6)
        lab.sql('SELECT pg_switch_wal()')
        time.sleep(3)
        writer.stop()
        acked = set(i for i, _, _ in writer.acked)
        lab.sql('SELECT txid_current(); SELECT pg_switch_wal()')
        deadline = time.time() + 60
        while lab.sql('SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn()) OR '
                      'last_archived_wal IS NULL FROM pg_stat_archiver')[0][0] is False and time.time() < deadline:
            time.sleep(0.5)
        lab.lose_the_host()
        for name in os.listdir(lab.repo_dir):  # and the local repository with it
            os.system('rm -rf %s' % os.path.join(lab.repo_dir, name))
        lab.create_container(start=False)
        result = restore(lab.settings(), 'latest', confirm=DB)
        assert result['repo'] == 2, result
        present = Writer(lab).present()
        assert acked <= present, 'rows lost with the archive complete: %s' % sorted(acked - present)[:5]
        # What the restore playbook does next: the lost local repository is set up again, and WAL reaches both.
        again = pitr.setup(lab.settings())
        assert again['actions'][:3] == ['stanza soulnear created on repo1', 'pgbackrest check passed',
                                        'first full backup on repo1'], again
        pitr.check(lab.settings())
    finally:
        lab.remove()


def test_broken_archiving_fails_health_alerts_and_recovers_by_itself(lab, tmp_path):
    backed_up(lab)
    args = monitor_config(lab, tmp_path)

    def options():
        return dict(lab.params(), db_container=lab.name, db_volume=lab.volume, pitr_stanza='soulnear',
                    pitr_repo_dir=lab.repo_dir)

    healthy = run_checks(options())
    assert healthy['checks']['wal_archiving']['ok'] and healthy['checks']['physical_backup']['ok'], healthy['msg']

    os.chmod(lab.repo_dir, 0o000)  # the repository unwritable
    try:
        lab.sql('CREATE TABLE IF NOT EXISTS filler (x int); INSERT INTO filler SELECT generate_series(1, 1000); '
                'SELECT pg_switch_wal()')
        deadline = time.time() + 30
        report = run_checks(options())
        while report['checks']['wal_archiving']['ok'] and time.time() < deadline:
            time.sleep(1)
            report = run_checks(options())
        assert not report['ok'] and 'WAL archiving is FAILING' in report['checks']['wal_archiving']['message']
        assert not report['checks']['physical_backup']['ok']
        for _ in range(2):  # two failed runs, then the alert
            assert health(args + ['monitor']) == 0
        assert 'health check wal_archiving failing' in alerts(tmp_path)
    finally:
        os.chmod(lab.repo_dir, 0o700)
    lab.sql('SELECT txid_current(); SELECT pg_switch_wal()')
    deadline = time.time() + 90  # the archiver retries by itself (after a failure it waits up to a minute)
    report = run_checks(options())
    while not report['checks']['wal_archiving']['ok'] and time.time() < deadline:
        time.sleep(2)
        report = run_checks(options())
    assert report['checks']['wal_archiving']['ok'], report['checks']['wal_archiving']
    assert health(args + ['monitor']) == 0
    assert 'health checks pass again' in alerts(tmp_path)


def archived(lab):
    """Every archived WAL file of repo1, by path."""
    found = set()
    for top, _dirs, files in os.walk(os.path.join(lab.repo_dir, 'archive')):
        found.update(os.path.join(top, name) for name in files if name[:1] == '0' and '.history' not in name)
    return found


def test_a_recovery_that_fails_puts_the_previous_data_back(lab):
    """WAL the recovery needs is missing from the repository: PostgreSQL stops before the target, and the restore
    puts the previous data directory back, starts it and the bot, and keeps the failed attempt's volume."""
    backed_up(lab)
    lab.sql('SELECT txid_current(); SELECT pg_switch_wal()')
    time.sleep(3)
    kept = archived(lab)
    lab.sql('CREATE TABLE precious (id int); INSERT INTO precious SELECT generate_series(1, 500); '
            'SELECT pg_switch_wal()')
    time.sleep(2)
    target = utc_now()
    lab.sql('INSERT INTO precious VALUES (501); SELECT pg_switch_wal()')
    deadline = time.time() + 30
    while not (archived(lab) - kept) and time.time() < deadline:
        time.sleep(0.5)
    for path in archived(lab) - kept:  # the WAL after the backup is lost from the repository
        os.unlink(path)
    failed = pytest.raises(pitr.PitrError, restore, lab.settings(), pitr.show(target), confirm=DB)
    text = str(failed.value)
    assert 'the recovery to' in text and 'failed' in text and 'previous data is back' in text, text
    assert lab.sql('SELECT count(*) FROM precious') == [(501,)]  # the live data, untouched
    assert failed.value.result['restored_volume'] in lab.volumes()  # the failed attempt, kept for inspection
    assert failed.value.result['bot']['started']


def test_a_deleted_repository_is_repaired_by_the_scheduled_backup(lab):
    """The repository's files deleted (issue 22): WAL archiving fails; the next scheduled backup (soulnear-backup
    pitr-backup) re-creates the stanza, checks that WAL arrives and takes a first full backup, and says what was
    lost; archiving works again without a deploy, and a restore to latest brings back rows written after."""
    backed_up(lab)
    for name in os.listdir(lab.repo_dir):
        os.system('rm -rf %s' % os.path.join(lab.repo_dir, name))
    lab.sql('CREATE TABLE after_repair (id int); SELECT pg_switch_wal()')
    options = dict(lab.params(), db_container=lab.name, db_volume=lab.volume, pitr_stanza='soulnear',
                   pitr_repo_dir=lab.repo_dir)
    deadline = time.time() + 60
    report = run_checks(options)
    while report['checks']['physical_backup']['ok'] and time.time() < deadline:
        time.sleep(1)
        report = run_checks(options)
    assert not report['checks']['physical_backup']['ok'], report['checks']['physical_backup']
    result = pitr.backup(lab.settings(), 'diff')
    repaired = result['repaired']
    assert repaired and repaired['repos'] == [1], result
    assert repaired['msg'].startswith('REPAIRED point-in-time recovery: repo1 had lost its stanza')
    assert 'first full backup on repo1' in repaired['actions'] and 'is gone' in repaired['msg']
    pitr.check(lab.settings())
    lab.sql('INSERT INTO after_repair VALUES (1), (2); SELECT pg_switch_wal()')
    deadline = time.time() + 60
    report = run_checks(options)
    while not (report['checks']['wal_archiving']['ok'] and report['checks']['physical_backup']['ok']) \
            and time.time() < deadline:
        time.sleep(1)
        report = run_checks(options)
    assert report['checks']['wal_archiving']['ok'] and report['checks']['physical_backup']['ok'], report['msg']
    again = pitr.backup(lab.settings(), 'diff')
    assert again['repaired'] is None and again['backups'][0]['backup']['type'] == 'diff'
