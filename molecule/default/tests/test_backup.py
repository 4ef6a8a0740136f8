"""Verify the backup role on the deployed VPS: cron entries, logrotate, and the scheduled commands really run.

The commands are run exactly as cron would run them: the job line from /etc/cron.d/soulnear-backup,
through /bin/sh, as root, with cron's minimal environment (PATH=/usr/bin:/bin).
"""

import json
import re

from conftest import BOT, DB, psql, run_playbook, wait_healthy

CRON_FILE = '/etc/cron.d/soulnear-backup'
LOGROTATE = '/etc/logrotate.d/soulnear-backup'


def config(host):
    return json.loads(host.check_output('cat /etc/soulnear/soulnear.json'))


def cron_jobs(host):
    """{'backup': (schedule fields, user, job), 'restore-test': ..., 'pitr-backup --type full': ...} parsed from
    the cron file."""
    jobs = {}
    for line in host.file(CRON_FILE).content_string.splitlines():
        if not line.strip() or line.startswith('#') or re.match(r'^[A-Z_]+=', line):
            continue
        fields = line.split(None, 6)
        command = fields[6]
        kind = re.search(r'soulnear-backup (.+?) >>', command).group(1)
        jobs[kind] = (fields[:5], fields[5], command)
    return jobs


def run_like_cron(host, job):
    return host.run("env -i PATH=/usr/bin:/bin HOME=/root SHELL=/bin/sh /bin/sh -c %s", job)


def backups(host, directory):
    out = host.check_output('ls -1 %s', directory)
    return sorted(n for n in out.split() if re.match(r'^backup_\d{8}_\d{6}\.dump$', n))


def test_cron_entries_daily_backup_at_2_and_weekly_restore_test(host):
    assert host.service('cron').is_running and host.service('cron').is_enabled
    cron = host.file(CRON_FILE)
    assert cron.exists and cron.user == 'root' and cron.mode == 0o644
    assert 'Ansible managed' in cron.content_string
    jobs = cron_jobs(host)
    schedule, user, job = jobs['backup']
    assert schedule == ['0', '2', '*', '*', '*'] and user == 'root'
    assert re.match(r'^/\S+/soulnear-backup backup >> /var/log/soulnear/backup\.log 2>&1$', job)
    schedule, user, job = jobs['restore-test']
    assert schedule == ['30', '3', '*', '*', '0'] and user == 'root'
    assert job.endswith('soulnear-backup restore-test >> /var/log/soulnear/backup.log 2>&1')


def test_command_configuration_and_backups_directory(host):
    command = cron_jobs(host)['backup'][2].split()[0]
    wrapper = host.file(command)
    assert wrapper.exists and wrapper.user == 'root' and wrapper.mode == 0o755
    assert wrapper.content_string.startswith('#!/usr/bin/python3')
    assert host.file('/opt/soulnear/lib/soulnear/backup.py').exists
    backup_json = host.file('/etc/soulnear/backup.json')
    assert backup_json.mode == 0o600 and backup_json.user == 'root'
    settings = json.loads(backup_json.content_string)
    assert (settings['keep_daily'], settings['keep_weekly'], settings['keep_monthly']) == (7, 4, 6)
    directory = host.file(config(host)['backup_dir'])
    assert directory.is_directory and directory.user == 'root' and directory.mode == 0o700
    # The host's own Python runs it (python3-psycopg2 from the docker_host role).
    assert host.run('/usr/bin/python3 -c "import psycopg2"').rc == 0


def test_logrotate_snippet(host):
    snippet = host.file(LOGROTATE)
    assert snippet.exists and snippet.mode == 0o644
    text = snippet.content_string
    assert '/var/log/soulnear/backup.log {' in text
    for word in ('daily', 'compress', 'missingok', 'notifempty'):
        assert re.search(r'^\s+%s$' % word, text, re.M), word
    assert int(re.search(r'^\s+rotate (\d+)$', text, re.M).group(1)) >= 7
    debug = host.run('logrotate -d %s', LOGROTATE)
    assert debug.rc == 0, debug.stderr
    assert 'error' not in debug.stderr.lower()


def test_scheduled_backup_really_runs(host):
    cfg = config(host)
    before = backups(host, cfg['backup_dir'])
    job = cron_jobs(host)['backup'][2]
    result = run_like_cron(host, job)
    assert result.rc == 0, result.stdout + result.stderr
    new = sorted(set(backups(host, cfg['backup_dir'])) - set(before))
    assert len(new) == 1
    newest = new[0]
    path = '%s/%s' % (cfg['backup_dir'], newest)
    assert host.file(path).mode == 0o600 and host.file(path + '.sha256').mode == 0o600
    assert host.run('cd %s && sha256sum -c %s.sha256', cfg['backup_dir'], newest).rc == 0
    # The bot's tables are in it, readable by the server's own pg_restore.
    listing = host.check_output('docker exec -i %s pg_restore --list < %s', DB, path)
    assert 'TABLE DATA public users' in listing and 'TABLE DATA public schema_migrations' in listing
    log = host.file('/var/log/soulnear/backup.log').content_string
    assert re.search(r'soulnear-backup backup: OK %s ' % re.escape(path), log)
    assert cfg['db']['superuser_password'] not in log and cfg['db']['app_password'] not in log
    # No temporary file left behind.
    assert host.run('ls -A %s | grep -F .partial-', cfg['backup_dir']).rc == 1


def test_scheduled_restore_test_really_runs(host):
    job = cron_jobs(host)['restore-test'][2]
    result = run_like_cron(host, job)
    assert result.rc == 0, result.stdout + result.stderr
    log = host.file('/var/log/soulnear/backup.log').content_string
    assert re.search(r'soulnear-backup restore-test: OK Restore test of backup_\d{8}_\d{6}\.dump passed', log)
    # The throwaway database is gone.
    assert psql(host, "SELECT count(*) FROM pg_database WHERE datname LIKE 'soul_bot__restore_test%'",
                db='postgres') == '0'


def test_backup_playbook_prints_the_backup(host):
    proc = run_playbook('playbooks/backup.yml')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r'sha256: [0-9a-f]{64}', proc.stdout) and 'path: /' in proc.stdout
    assert config(host)['db']['superuser_password'] not in proc.stdout + proc.stderr


def test_restore_playbook_needs_confirmation_then_restores_and_the_bot_works(host):
    refused = run_playbook('playbooks/restore.yml', '-e', 'restore_backup=latest')
    assert refused.returncode != 0
    assert 'restore_confirm=soul_bot' in refused.stdout
    # The names before the restore_ prefix are refused, naming the new one, before the lock is taken.
    old = run_playbook('playbooks/restore.yml', '-e', 'backup=latest', '-e', 'confirm=soul_bot')
    assert old.returncode != 0 and 'confirm is no longer read: it was renamed to restore_confirm' in old.stdout
    assert 'Take the deploy lock' not in old.stdout
    users = psql(host, 'SELECT count(*) FROM users')

    proc = run_playbook('playbooks/restore.yml', '-e', 'restore_backup=latest', '-e', 'restore_confirm=soul_bot')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'Restored soul_bot from backup_' in proc.stdout
    # pg_restore wrote the audit line itself.
    line = json.loads(host.file('/var/log/soulnear/audit.log').content_string.splitlines()[-1])
    assert (line['event'], line['result']) == ('restore', 'success')
    assert line['backup'].startswith('/var/backups/soulnear/backup_') and line['safety_backup']
    assert config(host)['db']['superuser_password'] not in proc.stdout + proc.stderr
    previous = psql(host, "SELECT datname FROM pg_database WHERE datname LIKE 'soul\\_bot\\_\\_pre\\_restore\\_%' "
                          "ORDER BY datname DESC LIMIT 1", db='postgres')
    assert previous
    # The bot runs again on the restored database, which its role still owns.
    assert wait_healthy(host)[BOT] == 'running healthy'
    assert psql(host, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'soul_bot'",
                db='postgres') == 'soulnear'
    assert psql(host, 'SELECT count(*) FROM users') == users
    # Leave the VPS as it was: drop the kept previous database.
    host.check_output('docker exec %s dropdb -U postgres %s', DB, previous)
