"""The soulnear-backup host command (backup_command.py), rendered from the backup role's templates with Ansible
itself and run as cron runs it, against a real PostgreSQL container."""

import json
import os
import subprocess
import sys

import yaml
from ansible.module_utils.soulnear.backup_files import list_backups
from ansiblerun import ansible_playbook
from backupenv import bot_db_fixture, bot_template_fixture  # noqa: F401 - the bot_db fixture

from ansiblerun import ROOT


def render_host_command(tmp_path, pg_container, db, **overrides):
    """Render the soulnear role's soulnear.json and the backup role's backup.json and wrapper with Ansible itself."""
    etc, bin_dir = tmp_path / 'etc', tmp_path / 'bin'
    etc.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    extra = dict(soulnear_lib_dir=os.path.join(ROOT, 'module_utils'), soulnear_config_dir=str(etc),
                 soulnear_backup_dir=str(tmp_path / 'backups'), soulnear_log_dir=str(tmp_path / 'log'),
                 soulnear_db_container=pg_container.name, soulnear_db_host=pg_container.host,
                 soulnear_db_port=pg_container.port, soulnear_db_name=db['name'],
                 vault_postgres_password=pg_container.password, vault_app_db_password=db['password'],
                 soulnear_bot_container='', soulnear_alert_command='cat > %s' % (tmp_path / 'alert.txt'),
                 backup_python=sys.executable)
    extra.update(overrides)
    (tmp_path / 'extra.json').write_text(json.dumps(extra))
    templates = [('soulnear', 'soulnear.json.j2', str(etc / 'soulnear.json'), '0600'),
                 ('backup', 'backup.json.j2', str(etc / 'backup.json'), '0600'),
                 ('backup', 'soulnear-backup.j2', str(bin_dir / 'soulnear-backup'), '0755')]
    play = [{'name': 'Render the host command', 'hosts': 'localhost', 'gather_facts': False,
             'vars_files': [os.path.join(ROOT, 'roles', 'soulnear', 'defaults', 'main.yml'),
                            os.path.join(ROOT, 'roles', 'soulnear', 'vars', 'main.yml'),
                            os.path.join(ROOT, 'roles', 'backup', 'defaults', 'main.yml')],
             'tasks': [{'name': 'Render %s' % src, 'ansible.builtin.template': {
                 'src': os.path.join(ROOT, 'roles', role, 'templates', src), 'dest': dest, 'mode': mode}}
                 for role, src, dest, mode in templates]}]
    book = tmp_path / 'render.yml'
    book.write_text(yaml.safe_dump(play))
    proc = ansible_playbook(book, '-e', '@' + str(tmp_path / 'extra.json'))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return bin_dir / 'soulnear-backup'


def test_host_command_backs_up_tests_restore_and_alerts_on_failure(pg_container, bot_db, tmp_path):
    command = render_host_command(tmp_path, pg_container, bot_db)
    proc = subprocess.run([str(command), 'backup'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'soulnear-backup backup: OK ' in proc.stdout and pg_container.password not in proc.stdout
    backups = list_backups(str(tmp_path / 'backups'))
    assert len(backups) == 1 and backups[0]['verified']

    proc = subprocess.run([str(command), 'restore-test'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'Restore test of %s passed: 7 tables' % backups[0]['name'] in proc.stdout
    assert not pg_container.query("SELECT 1 FROM pg_database WHERE datname LIKE %s",
                                  (bot_db['name'] + '__restore_test%',))

    proc = subprocess.run([str(command), 'list'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and backups[0]['name'] in proc.stdout and 'verified' in proc.stdout

    # A failing scheduled backup exits non-zero and calls the alert hook with the reason.
    backup_json = tmp_path / 'etc' / 'backup.json'
    backup_json.write_text(json.dumps(dict(json.loads(backup_json.read_text()), space_margin=1000000)))
    proc = subprocess.run([str(command), 'backup'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'FAILED: not enough free disk space' in proc.stdout
    alert = (tmp_path / 'alert.txt').read_text()
    assert 'soulnear backup FAILED' in alert and 'not enough free disk space' in alert
    assert len(list_backups(str(tmp_path / 'backups'))) == 1
