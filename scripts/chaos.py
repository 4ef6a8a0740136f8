#!/usr/bin/env python3
"""make chaos: faults injected on purpose into a deployed SoulNear host, with a writer committing rows the whole
time, and a table of what came back and what was lost.

    scripts/chaos.py [--name soulnear-chaos] [--only 1,4,9] [--no-deploy] [--keep] [--quiet-minutes 10]
                     [-e NAME=VALUE ...]

The host is a local sandbox of its own (scripts/sandbox.sh with SANDBOX_NAME=--name; the sandbox inventory with
ansible_host pointing at it), deployed with deploy.yml, then:

 1 the PostgreSQL container killed (docker kill)      6 the database volume lost -> deploy refuses, restore
 2 the postmaster killed                              7 the connection cut during a migration
 3 the Docker daemon restarted                        8 the backup path nearly full
 4 a host reboot (the sandbox restarted)              9 the newest backup corrupted
 5 the database stopped and kept down                10 a wrong database password in the vault
 and the security checks: no secret in -vvv output, in files on the host or in the PostgreSQL log after a
 password rotation; PostgreSQL reachable only from 127.0.0.1 and the private network, scram-sha-256, no trust
 over TCP; the bot a non-superuser without the superuser password; no FATAL line in --quiet-minutes of
 healthchecks.

For each fault a writer (scripts/chaos_writer.py, on the host, to 127.0.0.1 only, bounded in rows and time)
commits ~40 rows/s and logs every acknowledged id; afterwards the ids missing from the database are the rows
lost. The table: fault, recovered, time to recover, rows acknowledged, rows lost. Exit status 1 when a fault
did not recover or lost an acknowledged row it should not have.

The scenario functions take a Lab, so the Molecule scenario's test_faults.py runs the same code against its VPS.
"""

import argparse
import base64
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITER = os.path.join(ROOT, 'scripts', 'chaos_writer.py')
HOST_DIR = '/var/lib/soulnear-chaos'
HEALTH = '/opt/soulnear/bin/soulnear-health'
HEALTH_LOG = '/var/log/soulnear/health.log'
SERVICE_CHECKS = ('database', 'tables', 'db_container', 'bot_container')

# The host-side query helper: the superuser login of soulnear.json, over the published port.
_SQL = r'''
import json, sys
import psycopg2
db = json.load(open('/etc/soulnear/soulnear.json'))['db']
conn = psycopg2.connect(host=db.get('host', '127.0.0.1'), port=int(db.get('port', 5432)), user=db['superuser'],
                        password=db['superuser_password'], dbname=sys.argv[2] or db['name'], connect_timeout=5)
conn.autocommit = True
cur = conn.cursor()
cur.execute(sys.argv[1])
print(json.dumps(cur.fetchall() if cur.description else None, default=str))
'''


class Result(dict):
    """fault, recovered, seconds, acked, lost, notes."""


class Lab:
    """A deployed SoulNear host the scenarios work on.

    sh(cmd, timeout) runs a shell command on the host and returns (rc, stdout, stderr); playbook(path, *args)
    runs a playbook of the project against it and returns a CompletedProcess (text)."""

    def __init__(self, sh, playbook, log=print, reboot=None, playbook_background=None):
        self._sh = sh
        self.playbook = playbook
        self.playbook_background = playbook_background
        self.log = log
        self.reboot_host = reboot
        self.config = json.loads(self.run('cat /etc/soulnear/soulnear.json'))
        db = self.config['db']
        self.db, self.volume, self.dbname = db['container'], db['volume'], db['name']
        self.bot = self.config['bot']['container']
        self.backup_dir = self.config['backup_dir']
        self.next_id = int(time.time()) % 100000 * 100000  # ids of one run never collide with an earlier run's
        self.run('mkdir -p %s && chmod 700 %s' % (HOST_DIR, HOST_DIR))
        with open(WRITER, 'rb') as handle:
            self.put('%s/chaos_writer.py' % HOST_DIR, handle.read())

    # -- the host ------------------------------------------------------------------------------
    def sh(self, cmd, timeout=300):
        return self._sh(cmd, timeout)

    def run(self, cmd, timeout=300):
        rc, out, err = self.sh(cmd, timeout)
        if rc != 0:
            raise RuntimeError('on the host: %s -> exit %s: %s%s' % (cmd, rc, out[-2000:], err[-2000:]))
        return out

    def put(self, path, data):
        encoded = base64.b64encode(data).decode()
        self.run('echo %s | base64 -d > %s' % (encoded, shlex.quote(path)))

    def sql(self, statement, db=''):
        out = self.run('python3 -c %s %s %s' % (shlex.quote(_SQL), shlex.quote(statement), shlex.quote(db)))
        return json.loads(out.strip().splitlines()[-1])

    def report(self):
        rc, out, err = self.sh('%s report --json' % HEALTH, 120)
        try:
            return json.loads(out)
        except ValueError:
            return dict(ok=False, checks={}, msg='no report: %s %s' % (out[-500:], err[-500:]))

    def serving(self, report=None):
        """The database answers with its tables and both containers are running and healthy (or about to be)."""
        report = report or self.report()
        checks = report.get('checks') or {}
        return all(name in checks and checks[name]['ok'] for name in SERVICE_CHECKS)

    def wait(self, predicate, timeout, interval=2.0):
        """Seconds until predicate() is true, or None at the deadline."""
        started = time.time()
        while True:
            if predicate():
                return round(time.time() - started, 1)
            if time.time() - started > timeout:
                return None
            time.sleep(interval)

    def healthy_again(self, timeout=300):
        return self.wait(lambda: self.serving() and self.containers_healthy(), timeout)

    def containers_healthy(self):
        out = self.run("docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' %s %s" % (self.db, self.bot))
        return out.split() == ['running', 'healthy', 'running', 'healthy']

    def container(self, name, field):
        return self.run("docker inspect -f '{{%s}}' %s" % (field, name)).strip()

    def health_lines(self):
        rc, out, _ = self.sh('cat %s' % HEALTH_LOG)
        return out.splitlines() if rc == 0 else []

    def alerts(self, lines):
        """Subjects of the alerts the monitor sent (or logged as not sent: no channel configured) in lines."""
        subjects = []
        for line in lines:
            for event in line.split(' || ')[1:]:
                match = re.match(r'^alert (?:sent|not sent \([^)]*\)|FAILED): (.*)$', event.strip())
                if match:
                    subjects.append(match.group(1))
        return subjects

    def monitor_runs_after(self, count, minimum=1, timeout=200):
        """Wait until the monitor logged `minimum` lines after the first `count`; returns them."""
        self.wait(lambda: len(self.health_lines()) >= count + minimum, timeout)
        return self.health_lines()[count:]

    # -- the writer ----------------------------------------------------------------------------
    def start_writer(self, fault, seconds=600, rate=40):
        key = re.sub(r'[^a-z0-9]+', '-', fault.lower()).strip('-')[:40]
        first = self.next_id
        self.next_id += 100000
        for suffix in ('log', 'out', 'stop'):
            self.run('rm -f %s/%s.%s' % (HOST_DIR, key, suffix))
        self.run('cd %s && (setsid nohup python3 chaos_writer.py --fault %s --log %s.log --stop-file %s.stop '
                 '--rate %s --seconds %s --first-id %d > %s.out 2>&1 &)'
                 % (HOST_DIR, shlex.quote(key), key, key, rate, seconds, first, key))
        writer = dict(key=key, fault=fault)
        if self.wait(lambda: self.acked(writer) >= 20, 60, 0.5) is None:
            raise RuntimeError('the writer for %s did not commit 20 rows within 60 s: %s'
                               % (fault, self.sh('cat %s/%s.out' % (HOST_DIR, key))[1]))
        return writer

    def acked(self, writer):
        rc, out, _ = self.sh('wc -l < %s/%s.log' % (HOST_DIR, writer['key']))
        return int(out.strip() or 0) if rc == 0 else 0

    def stop_writer(self, writer, settle=5):
        time.sleep(settle)  # rows after the recovery count too
        self.run('touch %s/%s.stop' % (HOST_DIR, writer['key']))
        self.wait(lambda: self.sh('test -s %s/%s.out' % (HOST_DIR, writer['key']))[0] == 0, 30, 0.5)

    def lost(self, writer, timeout=300):
        """(acknowledged ids, acknowledged ids missing from the database); waits for the database to answer."""
        acked = [int(x) for x in self.run('cat %s/%s.log' % (HOST_DIR, writer['key'])).split()]
        present = set()
        if acked:
            query = "SELECT id FROM chaos_writes WHERE fault = '%s'" % writer['key']
            self.wait(lambda: self.sh('python3 -c %s %s ""' % (shlex.quote(_SQL), shlex.quote(query)))[0] == 0,
                      timeout, 2)
            present = set(r[0] for r in self.sql(query) or [])
        return acked, [i for i in acked if i not in present]

    def finish(self, writer, result, settle=5):
        self.stop_writer(writer, settle)
        acked, missing = self.lost(writer)
        result.update(acked=len(acked), lost=len(missing))
        if missing:
            result.setdefault('notes', []).append('missing ids (first 5): %s' % missing[:5])
        return result

    def acknowledge(self):
        """The incident a fault caused is dealt with (soulnear-health acknowledge): `make diagnose` looks back no
        further than now - the traces a deliberate crash leaves (crash recovery, FATAL lines, Docker's restart
        count) are not reported again - and the monitor's restart budget starts over."""
        self.run('%s acknowledge' % HEALTH)

    def ensure_serving(self, timeout=300):
        if self.healthy_again(timeout) is None:
            raise RuntimeError('the deployment is not healthy before the fault: %s' % self.report().get('msg'))


def _result(fault, recovered, seconds, notes=None):
    return Result(fault=fault, recovered=bool(recovered), seconds=seconds, acked=0, lost=0, notes=notes or [])


# -- the faults ------------------------------------------------------------------------------------------------

def fault_kill_database(lab, limit=150):
    """docker kill of the database container: Docker's restart policy does not fire (a manual stop to it); the
    monitor restarts it at its first failed check."""
    name = 'database container killed (docker kill)'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    before = len(lab.health_lines())
    started = time.time()
    lab.run('docker kill %s' % lab.db)
    seconds = lab.healthy_again(limit)
    lines = lab.monitor_runs_after(before)
    result = _result(name, seconds is not None, seconds)
    recovered_by = [line for line in lines if 'restarting it at once' in line and 'recovered: restarted' in line]
    result['notes'].append('restarted by the monitor at its first check' if recovered_by else
                           'NOT restarted at once by the monitor: %s' % lines[-3:])
    result['recovered'] = result['recovered'] and bool(recovered_by)
    result['notes'].append('alerts: %s' % lab.alerts(lines))
    result['elapsed'] = round(time.time() - started, 1)
    return lab.finish(writer, result)


def fault_kill_postmaster(lab, limit=90):
    """SIGKILL to the postmaster (PID 1 of the container, from the host): the container exits 137 and Docker's
    restart policy starts it; PostgreSQL runs crash recovery."""
    name = 'postmaster killed (SIGKILL)'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    pid = lab.container(lab.db, '.State.Pid')
    lab.run('kill -9 %s' % pid)
    seconds = lab.healthy_again(limit)
    result = _result(name, seconds is not None, seconds)
    result['notes'].append('restart count %s' % lab.container(lab.db, '.RestartCount'))
    return lab.finish(writer, result)


def fault_restart_docker(lab, limit=120):
    """systemctl restart docker: live-restore keeps both containers running through it."""
    name = 'Docker daemon restarted'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    started = {c: lab.container(c, '.State.StartedAt') for c in (lab.db, lab.bot)}
    lab.run('systemctl restart docker', timeout=180)
    seconds = lab.healthy_again(limit)
    result = _result(name, seconds is not None, seconds)
    same = all(lab.container(c, '.State.StartedAt') == s for c, s in started.items())
    result['notes'].append('containers kept running (live-restore)' if same else 'containers were restarted')
    return lab.finish(writer, result)


def fault_reboot(lab, limit=300):
    """The host restarted (the sandbox or VPS container restarted): everything comes back without a manual step;
    the monitor sends one alert about the reboot."""
    name = 'host reboot'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    time.sleep(2)
    before = len(lab.health_lines())
    started = time.time()
    lab.reboot_host()
    seconds = lab.healthy_again(limit)
    # From the moment the host went down: the shutdown and boot count too.
    result = _result(name, seconds is not None, None if seconds is None else round(time.time() - started, 1))
    lines = lab.monitor_runs_after(before, minimum=2, timeout=240)
    reboot_alerts = [a for a in lab.alerts(lines) if a.startswith('the host restarted')]
    result['notes'].append('reboot alerts: %s' % reboot_alerts)
    if len(reboot_alerts) != 1:
        result['recovered'] = False
    # The writer died with the host: what it acknowledged before must be there.
    acked, missing = lab.lost(writer)
    result.update(acked=len(acked), lost=len(missing))
    return result


def fault_stop_database(lab, limit=300):
    """docker stop of the database, left down: the monitor alerts at the first failed check, restarts it at the
    second, and sends one recovery alert."""
    name = 'database stopped and kept down'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    before = len(lab.health_lines())
    lab.run('docker stop %s' % lab.db, timeout=120)
    seconds = lab.healthy_again(limit)
    lines = lab.monitor_runs_after(before, minimum=2)
    result = _result(name, seconds is not None, seconds)
    alerts = lab.alerts(lines)
    down = [a for a in alerts if 'is down' in a]
    result['notes'].append('alerts: %s' % alerts)
    if len(down) != 1 or not [a for a in alerts if 'recovered by restart' in a]:
        result['recovered'] = False
    return lab.finish(writer, result)


def fault_volume_lost(lab, limit=900):
    """The database container and its volume removed: the next deploy refuses on the empty database with the
    restore instructions; make restore brings back the data up to the last backup (with point-in-time recovery
    on: up to the last archived commit, make restore TIME=latest) and clears the guard."""
    name = 'database volume lost'
    lab.ensure_serving()
    pitr = bool((lab.config.get('pitr') or {}).get('enabled'))
    writer = lab.start_writer(name)
    at_backup = lab.acked(writer)  # acknowledged before the dump started: all of them are in the backup
    backup = lab.playbook('playbooks/backup.yml')
    if backup.returncode != 0:
        raise RuntimeError('backup before the fault failed: %s' % backup.stdout[-2000:])
    time.sleep(3)
    if pitr:
        # With point-in-time recovery the restore brings back every archived commit: each row acknowledged more
        # than archive_timeout (+ slack) before the loss must be back, not only those in the dump.
        timeout = int(lab.sql("SELECT setting FROM pg_settings WHERE name = 'archive_timeout'")[0][0])
        at_backup = lab.acked(writer)
        time.sleep(timeout + 15)
    started = time.time()
    lab.run('docker rm -f %s && docker volume rm %s' % (lab.db, lab.volume))
    deploy = lab.playbook('deploy.yml')
    said = ' '.join(deploy.stdout.split())  # the message as one line, however the callback wrapped it
    refused = deploy.returncode != 0 and 'DATA LOSS SUSPECTED' in said and 'make restore' in said
    result = _result(name, False, None)
    result['notes'].append('deploy refused with the restore instructions' if refused else
                           'deploy did NOT refuse (rc %s): %s' % (deploy.returncode, _tail(deploy)))
    status = lab.playbook('playbooks/guard.yml')
    result['notes'].append('guard flag raised' if 'FLAG RAISED' in status.stdout else 'guard flag NOT raised')
    how = ('-e', 'restore_time=latest') if pitr else ('-e', 'restore_backup=latest')
    if pitr and 'make restore TIME=latest' not in said:
        refused = False
        result['notes'].append('the refusal does NOT name the point-in-time restore (make restore TIME=latest)')
    restore = lab.playbook('playbooks/restore.yml', *how, '-e', 'restore_confirm=%s' % lab.dbname)
    restored = ' '.join(restore.stdout.split())
    behind = 'COMMITS THAT POINT-IN-TIME RECOVERY PROMISES ARE MISSING' in restored
    if restore.returncode != 0 and not behind:
        result['notes'].append('restore FAILED: %s' % _tail(restore))
        return lab.finish(writer, result)
    said = re.search(r'(RESTORED, BUT [^"]*|Restored %s to latest[^"]*)' % re.escape(lab.dbname), restored)
    if pitr and said:
        # The restore's own proof of its recovery point (pg_pitr: the archive's last commit, the monitor's samples).
        result['notes'].append('the restore said: %s' % said.group(1)[:600])
    again = lab.playbook('deploy.yml')
    seconds = lab.healthy_again(240)
    result['recovered'] = refused and again.returncode == 0 and seconds is not None and not behind
    result['seconds'] = round(time.time() - started, 1)
    if again.returncode != 0:
        result['notes'].append('deploy after the restore FAILED: %s' % _tail(again))
    lab.finish(writer, result)
    acked = [int(x) for x in lab.run('cat %s/%s.log' % (HOST_DIR, writer['key'])).split()]
    present = set(r[0] for r in lab.sql("SELECT id FROM chaos_writes WHERE fault = '%s'" % writer['key']) or [])
    early_missing = [i for i in acked[:at_backup] if i not in present]
    result['notes'].append('%d acknowledged %s, %s back; rows after it are lost by design (%s)' % (
        at_backup, 'more than archive_timeout before the loss' if pitr else 'before the backup',
        'all of them' if not early_missing else 'NOT all of them',
        'restore to the last archived commit' if pitr else 'restore = the last backup'))
    result['lost_before_backup'] = len(early_missing)
    if early_missing:
        result['recovered'] = False  # a data-loss breach is a failure to recover, whatever came back up
    # What the restore cannot bring back, for the table: the commits after the dump, or (PITR) the last seconds.
    result['expected_loss'] = 'in the last %d s before the loss' % (timeout + 15) if pitr else 'after the last backup'
    return result


def fault_cut_during_migration(lab, limit=120):
    """The connection cut for a few seconds while a migration runs: nothing of it is applied, the rerun
    completes."""
    name = 'connection cut during a migration'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    migrations = '%s/migrations' % HOST_DIR
    source = lab.config.get('migrations_dir') or '/opt/soulnear/app/current/database/migrations'
    rc, out, _ = lab.sh('test -d %s && echo yes' % source)
    if 'yes' not in out:
        source = '/opt/soulnear/app/src/database/migrations'
    lab.run('rm -rf %s && cp -a %s %s' % (migrations, source, migrations))
    lab.put('%s/900_chaos_slow.sql' % migrations,
            b'CREATE TABLE chaos_mig_a (id int);\nSELECT pg_sleep(8);\nCREATE TABLE chaos_mig_b (id int);\n')
    book = 'scripts/chaos-migrate.yml'
    proc = lab.playbook_background(book, '-e', 'chaos_migrations=%s' % migrations)
    in_sleep = lab.wait(lambda: bool(lab.sql("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(8)%' "
                                             "AND pid <> pg_backend_pid()")), 120, 0.5)
    result = _result(name, False, None)
    if in_sleep is None:
        proc.kill()
        result['notes'].append('the migration never reached its slow statement: %s' % proc.communicate()[0][-2000:])
        return lab.finish(writer, result)
    # The cut: the migration's server session killed, and every connection from the host to the database's port
    # dropped for 5 s (a dead network: reconnects hang until it is back).
    lab.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(8)%' "
            "AND pid <> pg_backend_pid()")
    rule = 'OUTPUT -p tcp --dport %s -j DROP' % lab.config['db'].get('port', 5432)
    lab.run('iptables -I %s' % rule)
    try:
        time.sleep(5)
    finally:
        lab.run('iptables -D %s' % rule)
    first = proc.communicate(timeout=600)[0]
    half = lab.sql("SELECT to_regclass('chaos_mig_a') IS NOT NULL, to_regclass('chaos_mig_b') IS NOT NULL")[0]
    recorded = lab.sql("SELECT count(*) FROM schema_migrations WHERE version = '900'")[0][0]
    result['notes'].append('first run %s; after the cut: chaos_mig_a %s, chaos_mig_b %s, recorded %s'
                           % ('failed' if proc.returncode else 'succeeded (retried)', *half, recorded))
    consistent = (half == [False, False] and recorded == 0) or (half == [True, True] and recorded == 1)
    started = time.time()
    rerun = lab.playbook(book, '-e', 'chaos_migrations=%s' % migrations)
    complete = lab.sql("SELECT to_regclass('chaos_mig_a') IS NOT NULL AND to_regclass('chaos_mig_b') IS NOT NULL")
    result['recovered'] = consistent and rerun.returncode == 0 and complete[0][0]
    result['seconds'] = round(time.time() - started, 1)
    if rerun.returncode:
        result['notes'].append('rerun FAILED: %s' % _tail(rerun))
    if not first:
        result['notes'].append('no output from the first run')
    # Leave the deployment as it was: the chaos migration undone.
    lab.sql("DROP TABLE IF EXISTS chaos_mig_a, chaos_mig_b; DELETE FROM schema_migrations WHERE version = '900'")
    lab.run('rm -rf %s' % migrations)
    return lab.finish(writer, result)


def fault_backup_disk_full(lab):
    """The backups directory on a nearly full file system: refused before writing (preflight), and a dump that
    fills the disk half-way leaves nothing behind; the database keeps running."""
    name = 'backup disk nearly full'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    result = _result(name, False, None)
    # 8 KB: the lock file takes one page, the dump fills the other (and the preflight sees far too little space).
    lab.run('mount -t tmpfs -o size=8k,mode=0700 soulnear-chaos-full %s' % lab.backup_dir)
    try:
        refused = lab.playbook('playbooks/backup.yml')
        half = lab.playbook('playbooks/backup.yml', '-e', 'backup_space_margin=0.00001')
        left = lab.run('ls -A %s' % lab.backup_dir).split()
    finally:
        lab.run('umount %s' % lab.backup_dir)
    ok_refused = refused.returncode != 0 and 'not enough free disk space' in refused.stdout
    ok_half = half.returncode != 0 and re.search(r'filled up after [1-9][0-9.]* [KM]?B of the dump', half.stdout)
    result['notes'].append('preflight refusal: %s' % ('clear' if ok_refused else _tail(refused)))
    result['notes'].append('full during the dump: %s' % (re.search(r'filled up after [^;]*', half.stdout).group(0)
                                                         if ok_half else _tail(half)))
    result['notes'].append('left in the directory: %s' % left)
    result['recovered'] = bool(ok_refused and ok_half and left == ['.soulnear-backup.lock'] and lab.serving())
    return lab.finish(writer, result)


def fault_corrupt_backup(lab, alert_timeout=150):
    """The newest backup damaged after it was verified: the health check fails it, a restore of it is refused
    before anything changes, latest falls back to the newest backup that verifies, the monitor alerts."""
    name = 'newest backup corrupted'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    result = _result(name, False, None)
    for _ in range(2):
        taken = lab.playbook('playbooks/backup.yml')
        if taken.returncode != 0:
            raise RuntimeError('backup failed: %s' % _tail(taken))
        time.sleep(1.1)
    newest = re.search(r'path: (/\S+?\.dump)', taken.stdout).group(1)
    before = len(lab.health_lines())
    lab.run('dd if=/dev/urandom of=%s bs=1k count=4 seek=8 conv=notrunc status=none' % newest)
    report = lab.report()
    age = report['checks'].get('backup_age', {})
    restore = lab.playbook('playbooks/restore.yml', '-e', 'restore_backup=%s' % os.path.basename(newest),
                           '-e', 'restore_confirm=%s' % lab.dbname)
    latest = lab.playbook('playbooks/restore.yml', '-e', 'restore_backup=latest',
                          '-e', 'restore_confirm=%s' % lab.dbname, '--check')
    lines = lab.wait(lambda: [a for a in lab.alerts(lab.health_lines()[before:]) if 'backup_age' in a],
                     alert_timeout, 5)
    checks = dict(
        health_fails=not age.get('ok', True) and 'does not match its .sha256 sidecar' in age.get('message', ''),
        restore_refused=restore.returncode != 0 and 'is corrupt or truncated' in restore.stdout,
        latest_falls_back='the newest backup of %s that verifies' % lab.dbname in latest.stdout,
        monitor_alerted=lines is not None)
    result['notes'].append(', '.join('%s=%s' % kv for kv in checks.items()))
    result['recovered'] = all(checks.values())
    # Leave it healthy: the damaged file goes, a fresh backup is the newest.
    lab.run('rm -f %s %s.sha256' % (newest, newest))
    lab.playbook('playbooks/backup.yml')
    return lab.finish(writer, result)


def fault_wrong_password(lab):
    """A wrong app password in the vault, deployed with the app step (a full deploy treats the vault as the truth
    and rotates the password): the deploy fails at its first database step with a clear message and the running
    bot is untouched; the right password puts everything back."""
    name = 'wrong database password in the vault'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    started_at = lab.container(lab.bot, '.State.StartedAt')
    wrong = lab.playbook('deploy.yml', '--tags', 'app', '-e', 'vault_app_db_password=wrong-%d' % time.time())
    clear = wrong.returncode != 0 and 'password authentication failed' in wrong.stdout
    untouched = lab.container(lab.bot, '.State.StartedAt') == started_at and lab.containers_healthy()
    fixed = lab.playbook('deploy.yml', '--tags', 'app')
    seconds = lab.healthy_again(240)
    result = _result(name, clear and untouched and fixed.returncode == 0 and seconds is not None, seconds)
    result['notes'].append('failed clearly: %s; bot untouched: %s; redeploy with the right password: rc %s'
                           % (clear, untouched, fixed.returncode))
    if not clear:
        result['notes'].append(_tail(wrong))
    return lab.finish(writer, result)


def fault_hung_database(lab, limit=240):
    """The postmaster frozen (SIGSTOP to PID 1 of the database container: running to Docker, silent to clients):
    the monitor says HUNG at its first check and kills it after a short grace at the second (not the 60 s clean-stop
    timeout a frozen process cannot honour); crash recovery keeps every committed row. Goal: back within 30 s of the
    second failed check."""
    name = 'database hung (SIGSTOP)'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    before = len(lab.health_lines())
    started = time.time()
    lab.run('docker kill --signal STOP %s' % lab.db)
    seconds = lab.healthy_again(limit)
    lines = lab.monitor_runs_after(before, minimum=2)
    result = _result(name, seconds is not None, seconds)
    hung = [line for line in lines if 'database HUNG' in line]
    killed = [line for line in lines if 'stopping it with' in line and 'recovered: restarted' in line]
    result['notes'].append('said HUNG at the first check: %s; killed after the grace at the second: %s'
                           % (bool(hung), bool(killed)))
    result['notes'].append('alerts: %s' % lab.alerts(lines))
    result['recovered'] = result['recovered'] and bool(hung) and bool(killed)
    result['elapsed'] = round(time.time() - started, 1)
    return lab.finish(writer, result)


def fault_kill_bot(lab, limit=120):
    """The bot killed from outside (docker kill: exit 137; no deploy or operator stopped it): the watcher runs the
    monitor at once, which restarts it, with an alert when the outage starts and one when it ends. Goal: <= 15 s
    to healthy."""
    name = 'bot killed (docker kill)'
    lab.ensure_serving()
    writer = lab.start_writer(name)
    before = len(lab.health_lines())
    lab.run('docker kill %s' % lab.bot)
    seconds = lab.healthy_again(limit)
    lines = lab.monitor_runs_after(before)
    result = _result(name, seconds is not None, seconds)
    alerts = lab.alerts(lines)
    started = [a for a in alerts if 'exited (code 137)' in a]
    ended = [a for a in alerts if 'recovered by restart' in a]
    result['notes'].append('alerts: %s' % alerts)
    result['recovered'] = result['recovered'] and len(started) == 1 and len(ended) == 1
    return lab.finish(writer, result)


def fault_repository_deleted(lab, limit=300):
    """The pgBackRest repository's files deleted: WAL archiving fails and the health check says so; the next
    scheduled physical backup (soulnear-backup pitr-backup, run here instead of waiting for 01:15) re-creates the
    stanza, takes a first full backup and alerts what was lost; archiving works again without a deploy."""
    name = 'PITR repository deleted'
    if not (lab.config.get('pitr') or {}).get('enabled'):
        return _result(name, True, None, ['point-in-time recovery is off: nothing to delete'])
    lab.ensure_serving()
    writer = lab.start_writer(name)
    repo = lab.config['pitr']['repo_dir']
    started = time.time()
    lab.run('find %s -mindepth 1 -maxdepth 1 -exec rm -rf {} +' % shlex.quote(repo))
    lab.sql('SELECT pg_switch_wal()')
    failing = lab.wait(lambda: not lab.report()['checks'].get('physical_backup', {}).get('ok', True), 120, 5)
    backup = lab.sh('/opt/soulnear/bin/soulnear-backup pitr-backup --type diff', 1800)
    seconds = lab.healthy_again(limit)
    result = _result(name, False, None if seconds is None else round(time.time() - started, 1))
    repaired = 'REPAIRED point-in-time recovery' in backup[1] + backup[2]
    report = lab.report()
    archiving_ok = report['checks'].get('wal_archiving', {}).get('ok') and \
        report['checks'].get('physical_backup', {}).get('ok')
    result['notes'].append('health failed while it was gone: %s; the scheduled backup repaired it: %s (rc %s); '
                           'archiving and physical backup healthy after: %s'
                           % (failing is not None, repaired, backup[0], bool(archiving_ok)))
    result['recovered'] = bool(failing is not None and backup[0] == 0 and repaired and archiving_ok and seconds)
    return lab.finish(writer, result)


FAULTS = [fault_kill_database, fault_kill_postmaster, fault_restart_docker, fault_reboot, fault_stop_database,
          fault_volume_lost, fault_cut_during_migration, fault_backup_disk_full, fault_corrupt_backup,
          fault_wrong_password, fault_hung_database, fault_kill_bot, fault_repository_deleted]


def _tail(proc, lines=12):
    text = (proc.stdout or '') + (proc.stderr or '')
    failed = [line for line in text.splitlines() if 'FAILED' in line or 'fatal:' in line or '"msg"' in line or
              'msg:' in line]
    return ' | '.join((failed or text.splitlines())[-lines:])[-1500:]


# -- security --------------------------------------------------------------------------------------------------

SHUTDOWN_FATALS = ('the database system is starting up', 'the database system is shutting down',
                   'terminating connection due to administrator command', 'the database system is in recovery mode',
                   'the database system is not yet accepting connections')


def secret_files(lab, secrets):
    """Files on the host holding a secret, with their mode: [(path, mode)]."""
    patterns = ' '.join('-e %s' % shlex.quote(s) for s in secrets)
    rc, out, _ = lab.sh('grep -rlsF %s /etc /opt /root /home /srv /tmp /usr/local /var --exclude-dir=overlay2 '
                        '--exclude-dir=volumes --exclude-dir=proc 2>/dev/null | xargs -r stat -c "%%a %%n"'
                        % patterns, 600)
    return [(line.split(' ', 1)[1], line.split(' ', 1)[0]) for line in out.splitlines() if ' ' in line]


# The project's secret files (mode 0600), and Docker's own copies of the bot's environment (root-only).
OWN_SECRET_FILES = (r'^/etc/soulnear/[^/]+\.(json|env)$', r'^/etc/soulnear/.*/secrets/[^/]+$')
DOCKER_SECRET_FILES = (r'^/var/lib/docker/containers/[0-9a-f]+/config\.v2\.json$',
                       r'^/var/lib/containerd/io\.containerd\.metadata\.v1\.bolt/meta\.db$')


def check_secret_files(lab, secrets):
    """Every file holding a secret is one of the project's secret files (mode 0600) or Docker's copy of a container's
    environment that only root can read; nothing else holds one."""
    problems = []
    for path, mode in secret_files(lab, secrets):
        if path.startswith(HOST_DIR):
            continue
        if any(re.match(p, path) for p in OWN_SECRET_FILES):
            if mode not in ('600', '400'):
                problems.append('secret file %s has mode %s' % (path, mode))
            continue
        readable = lab.sh('runuser -u nobody -- test -r %s' % shlex.quote(path))[0] == 0
        if any(re.match(p, path) for p in DOCKER_SECRET_FILES):
            if readable:
                problems.append("Docker's %s holds a secret and other users can read it" % path)
            continue
        problems.append('secret in %s (mode %s%s)' % (path, mode, ', readable by other users' if readable else ''))
    return problems


# -U/-d: a probe as a role that exists, which the server does not log (a wrong user would be a FATAL line).
PROBE = 'pg_isready -U postgres -d postgres -t 5'


def check_network(lab):
    """Published on 127.0.0.1 only (and the database host's private address when it serves bot hosts:
    soulnear_db_listen_address); unreachable from a container on the default bridge; reachable from the private
    network; no trust for TCP; scram-sha-256; the bot a non-superuser without the superuser password."""
    problems = []
    listen = lab.config['db'].get('listen_address') or ''
    ports = lab.run("docker inspect -f '{{json .NetworkSettings.Ports}}' %s" % lab.db)
    bindings = [b for v in (json.loads(ports) or {}).values() for b in (v or [])]
    if not bindings or any(b.get('HostIp') not in ('127.0.0.1', listen) for b in bindings):
        problems.append('published on %s' % bindings)
    networks = json.loads(lab.run("docker inspect -f '{{json .NetworkSettings.Networks}}' %s" % lab.db))
    private = [n for n in networks if n != 'bridge']
    addresses = [v['IPAddress'] for v in networks.values() if v.get('IPAddress')]
    image = lab.container(lab.db, '.Config.Image')
    for address in addresses:
        rc, out, err = lab.sh('docker run --rm --network bridge %s %s -h %s -p 5432' % (image, PROBE, address))
        if rc == 0:
            problems.append('reachable from the default bridge at %s' % address)
    host_ip = lab.run("hostname -I | awk '{print $1}'").strip()
    if host_ip != listen:  # the private address a database host serves its bot hosts on is meant to be reachable
        rc, out, err = lab.sh('docker run --rm --network bridge %s %s -h %s -p %s'
                              % (image, PROBE, host_ip, lab.config['db'].get('port', 5432)))
        if rc == 0:
            problems.append("reachable on the host's address %s" % host_ip)
    if private:
        rc, out, err = lab.sh('docker run --rm --network %s %s %s -h %s -p 5432'
                              % (private[0], image, PROBE, lab.db))
        if rc != 0:
            problems.append('NOT reachable from the private network %s: %s' % (private[0], out + err))
    rules = lab.sql("SELECT type, auth_method FROM pg_hba_file_rules WHERE type LIKE 'host%'")
    if any(method == 'trust' for _, method in rules or []):
        problems.append('trust for TCP in pg_hba.conf: %s' % rules)
    if lab.sql('SHOW password_encryption')[0][0] != 'scram-sha-256':
        problems.append('password_encryption is not scram-sha-256')
    app = lab.config['db']['app_user']
    row = lab.sql("SELECT rolsuper, rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = '%s'"
                  % app.replace("'", "''"))
    if not row or row[0][0] or not row[0][1]:
        problems.append('the app role %s is a superuser or has no SCRAM verifier: %s' % (app, row))
    env = lab.run("docker inspect -f '{{json .Config.Env}}' %s" % lab.bot)
    if lab.config['db']['superuser_password'] in env:
        problems.append("the superuser password is in the bot's environment")
    return problems


def postgres_log_fatals(lab, since_bytes=0):
    """FATAL lines of PostgreSQL's log after byte since_bytes, without those of deliberate stops and starts."""
    log = '/var/log/soulnear/postgres/postgresql.log'
    rc, out, _ = lab.sh('tail -c +%d %s' % (since_bytes + 1, log))
    return [line for line in out.splitlines() if 'FATAL' in line and not any(s in line for s in SHUTDOWN_FATALS)]


def log_size(lab):
    rc, out, _ = lab.sh('stat -c %s /var/log/soulnear/postgres/postgresql.log')
    return int(out.strip() or 0) if rc == 0 else 0


def security_checks(lab, secrets, quiet_minutes=10.0, rotate=None):
    """The security table rows: (check, passed, detail)."""
    rows = []
    leaked = []
    for book in ('deploy.yml', 'playbooks/health.yml', 'playbooks/backup.yml', 'playbooks/guard.yml',
                 'playbooks/lock.yml'):
        proc = lab.playbook(book, '-vvv')
        text = proc.stdout + proc.stderr
        leaked += ['%s: %s...' % (book, s[:4]) for s in secrets if s and s in text]
    rows.append(('no secret in -vvv output of the playbooks', not leaked, '; '.join(leaked) or 'clean'))
    if rotate:
        start = log_size(lab)
        try:
            old, new = rotate()
        except RuntimeError as exc:  # a failed check, not the end of the run: the other checks and the table follow
            rows.append(('no password in the PostgreSQL log after a rotation', False, str(exc)[:1500]))
        else:
            rc, out, _ = lab.sh('tail -c +%d /var/log/soulnear/postgres/postgresql.log' % (start + 1))
            found = [s[:4] + '...' for s in (old, new) if s in out]
            rows.append(('no password in the PostgreSQL log after a rotation', not found,
                         ', '.join(found) or 'clean'))
    problems = check_secret_files(lab, secrets)
    rows.append(('secrets only in the 0600 secret files', not problems, '; '.join(problems) or 'clean'))
    problems = check_network(lab)
    rows.append(('127.0.0.1 and the private network only, scram, no trust, bot not superuser', not problems,
                 '; '.join(problems) or 'clean'))
    start = log_size(lab)
    time.sleep(quiet_minutes * 60)
    fatals = postgres_log_fatals(lab, start)
    rows.append(('no FATAL line in %.0f min of healthchecks' % quiet_minutes, not fatals,
                 '; '.join(fatals[:3]) or 'clean'))
    return rows


# -- the sandbox and the command line ----------------------------------------------------------------------------

def docker_sh(container):
    def sh(cmd, timeout=300):
        try:
            proc = subprocess.run(['docker', 'exec', container, 'bash', '-c', cmd], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, '', 'timed out after %ss' % timeout
        return proc.returncode, proc.stdout, proc.stderr
    return sh


def sandbox_playbook(name, extra_file):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_FORCE_COLOR='0')

    def command(book, args):
        return [os.path.join(ROOT, '.venv', 'bin', 'ansible-playbook'), '-i',
                os.path.join(ROOT, 'inventory', 'sandbox', 'hosts.yml'), '-e', '@' + extra_file,
                os.path.join(ROOT, book)] + list(args)

    def playbook(book, *args, timeout=1800):
        return subprocess.run(command(book, args), cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)

    def background(book, *args):
        return subprocess.Popen(command(book, args), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return playbook, background


def sandbox(action, name):
    env = dict(os.environ, SANDBOX_NAME=name, SANDBOX_HOSTNAME=name)
    subprocess.run([os.path.join(ROOT, 'scripts', 'sandbox.sh'), action], cwd=ROOT, env=env, check=True)


def print_table(results, security, out=sys.stdout, title=None):
    if title:
        print(title + '\n', file=out)
    header = ('#', 'fault', 'recovered', 'time to recover', 'rows acknowledged', 'rows lost')
    rows = []
    for number, result in results:
        seconds = '-' if result.get('seconds') is None else '%.0f s' % result['seconds']
        lost = str(result['lost'])
        if result.get('expected_loss'):
            window = result['expected_loss'] if isinstance(result['expected_loss'], str) else 'after the last backup'
            lost += ' (%s; 0 before)' % window if not result.get('lost_before_backup') else \
                ' (%d before that!)' % result['lost_before_backup']
        # A data-loss breach (acknowledged rows lost that the restore promises) is never "recovered".
        recovered = result['recovered'] and not result.get('lost_before_backup')
        rows.append((str(number), result['fault'], 'yes' if recovered else 'NO', seconds,
                     str(result['acked']), lost))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: '| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |'  # noqa: E731
    print(line(header), file=out)
    print('|' + '|'.join('-' * (w + 2) for w in widths) + '|', file=out)
    for row in rows:
        print(line(row), file=out)
    print('', file=out)
    for number, result in results:
        for note in result.get('notes', []):
            print('  %s. %s' % (number, note), file=out)
    if security:
        print('\n| security check | passed | detail |\n|---|---|---|', file=out)
        for check, passed, detail in security:
            print('| %s | %s | %s |' % (check, 'yes' if passed else 'NO', detail), file=out)


def extra_vars(pairs, parser):
    """NAME=VALUE pairs as a dict; a value that parses as JSON (false, 3, "x") is taken as such."""
    result = {}
    for pair in pairs:
        name, sep, value = pair.partition('=')
        if not sep or not re.match(r'^[a-z_][a-z0-9_]*$', name):
            parser.error('--extra-vars takes NAME=VALUE, not %r' % pair)
        try:
            result[name] = json.loads(value)
        except ValueError:
            result[name] = value
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description='Fault scenarios and security checks on a sandbox (make chaos).')
    parser.add_argument('--name', default=os.environ.get('CHAOS_SANDBOX', 'soulnear-chaos'),
                        help='the sandbox container (scripts/sandbox.sh SANDBOX_NAME), default %(default)s')
    parser.add_argument('--only', help='comma-separated fault numbers (1-13); "none" for the security checks only')
    parser.add_argument('--no-deploy', action='store_true', help='the sandbox is deployed already')
    parser.add_argument('--no-security', action='store_true')
    parser.add_argument('--quiet-minutes', type=float, default=10.0, help='healthchecks watched for FATAL lines')
    parser.add_argument('--keep', action='store_true', help='leave the sandbox running afterwards')
    parser.add_argument('--table', help='also write the table to this file')
    parser.add_argument('-e', '--extra-vars', action='append', default=[], metavar='NAME=VALUE',
                        help='an extra variable for every playbook run on the sandbox (repeatable; the value is read '
                             'as JSON when it parses, e.g. soulnear_pitr_enabled=false)')
    args = parser.parse_args(argv)
    selected = list(range(1, len(FAULTS) + 1))
    if args.only:
        selected = [] if args.only == 'none' else [int(x) for x in args.only.split(',')]
    extra = os.path.join(ROOT, '.cache', 'chaos-%s.json' % args.name)
    os.makedirs(os.path.dirname(extra), exist_ok=True)
    variables = dict(ansible_host=args.name, soulnear_alert_command=(
        '{ echo "== $SOULNEAR_ALERT_SUBJECT"; cat; echo; } >> /var/log/soulnear/chaos-alerts.log'))
    variables.update(extra_vars(args.extra_vars, parser))
    with open(extra, 'w') as handle:
        json.dump(variables, handle)
    playbook, background = sandbox_playbook(args.name, extra)
    started = time.time()
    sandbox('up', args.name)
    try:
        if not args.no_deploy:
            print('== deploying to %s' % args.name, flush=True)
            proc = playbook('deploy.yml')
            if proc.returncode != 0:
                print(proc.stdout[-5000:] + proc.stderr[-2000:])
                return 2
        sh = docker_sh(args.name)

        def reboot():
            subprocess.run(['docker', 'restart', '-t', '60', args.name], check=True, capture_output=True)
            sandbox('up', args.name)

        lab = Lab(sh, playbook, reboot=reboot, playbook_background=background)
        results = []
        for number in selected:
            fault = FAULTS[number - 1]
            print('== %d. %s' % (number, fault.__doc__.split('\n')[0]), flush=True)
            t0 = time.time()
            try:
                result = fault(lab)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                result = _result(fault.__name__, False, None, ['scenario error: %s' % exc])
                lab.healthy_again(300)
            with contextlib.suppress(Exception):
                lab.acknowledge()
            print('   %s in %.0f s: %s' % ('recovered' if result['recovered'] else 'NOT RECOVERED',
                                          time.time() - t0, json.dumps(result, default=str)), flush=True)
            results.append((number, result))
        security = []
        if not args.no_security:
            print('== security checks', flush=True)
            secrets = [open(os.path.join(ROOT, '.cache', 'sandbox-secrets', n)).read().split()[0]
                       for n in ('postgres_password', 'app_db_password')
                       if os.path.exists(os.path.join(ROOT, '.cache', 'sandbox-secrets', n))]

            def rotate():
                new = 'rotated%d' % time.time()
                first = playbook('deploy.yml', '-e', 'vault_app_db_password=%s' % new)
                back = playbook('deploy.yml')
                if first.returncode or back.returncode:
                    raise RuntimeError('rotation deploys failed: %s %s' % (_tail(first), _tail(back)))
                return secrets[1], new
            try:
                security = security_checks(lab, secrets, args.quiet_minutes, rotate)
            except Exception as exc:  # noqa: BLE001 - the fault table is printed whatever happened here
                security = [('security checks', False, 'error: %s' % str(exc)[:1500])]
        results.sort(key=lambda item: item[0])  # --only 6,1 runs 6 first; the table is in the faults' order
        title = 'make chaos, %s, %d fault(s)%s, %.0f min in all, %s core(s)%s' % (
            time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), len(results),
            ' and the security checks' if security else '', (time.time() - started) / 60, os.cpu_count(),
            ''.join(' -e %s' % v for v in args.extra_vars))
        print('\n== ' + title + '\n')
        print_table(results, security)
        if args.table:
            with open(args.table, 'w') as handle:
                print_table(results, security, handle, title)
        bad = [r for _, r in results if not r['recovered'] or (r['lost'] and not r.get('expected_loss'))
               or r.get('lost_before_backup')]
        return 1 if bad or any(not passed for _, passed, _ in security) else 0
    finally:
        if not args.keep:
            sandbox('down', args.name)


if __name__ == '__main__':
    sys.exit(main())
