"""deploy.yml's preflight, run for real by ansible-playbook against this machine (local connection).

Every run here has a problem the controller-side check finds, so it fails before anything on the host is
touched (only the play's fact gathering, the service manager, runs before it); `--tags` that match no step are
a second guard.
"""

import os
import subprocess
import sys

import pytest
import yaml

from ansiblerun import ROOT
BIN = os.path.dirname(sys.executable)
SECRETS = dict(vault_postgres_password='preflight-test-superuser-pw', vault_app_db_password='preflight-test-app-pw',
               vault_bot_token='123456:preflight-test-token', vault_alert_telegram_token='')


def run_preflight(tmp_path, playbook='deploy.yml', args=('--tags', 'preflight-test-no-step'), **extra_vars):
    inventory = tmp_path / 'hosts.yml'
    host = dict(ansible_connection='local', ansible_python_interpreter=sys.executable, ansible_become=False)
    inventory.write_text(yaml.safe_dump({'soulnear': {'hosts': {'preflight-test': host}}}))
    variables = tmp_path / 'vars.yml'
    variables.write_text(yaml.safe_dump(dict(SECRETS, **extra_vars)))
    env = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'))
    proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', str(inventory), playbook, *args,
                           '-e', '@%s' % variables],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, ' '.join((proc.stdout + proc.stderr).split())


@pytest.mark.parametrize('old, new', [('postgres_uid', 'soulnear_db_uid'),
                                      ('monitoring_required_tables', 'soulnear_required_tables'),
                                      ('app_src_dir', 'soulnear_app_src_dir'),
                                      # point-in-time recovery's settings, now the pitr role's
                                      ('backup_pitr_retention_full', 'pitr_retention_full'),
                                      ('soulnear_pitr_s3_bucket', 'pitr_s3_bucket'),
                                      ('postgres_archive_timeout', 'pitr_archive_timeout')])
def test_a_renamed_variable_is_named_with_its_new_name(tmp_path, old, new):
    code, output = run_preflight(tmp_path, **{old: 'anything'})
    assert code != 0, output
    assert 'The deploy cannot start (nothing was changed)' in output
    assert '%s is no longer read: it was renamed to %s' % (old, new) in output


@pytest.mark.parametrize('playbook, old, operation, prefix', [
    ('playbooks/restore.yml', dict(confirm='soul_bot', time='latest'), 'restore', 'restore_'),
    ('playbooks/guard.yml', dict(guard_clear=True, confirm='soul_bot'), 'restore', 'restore_'),
    ('playbooks/redeploy-clean.yml', dict(confirm='soul_bot'), 'clean redeploy', 'redeploy_clean_'),
    ('playbooks/upgrade-postgres.yml', dict(confirm='soul_bot', confirm_loss='soul_bot'), 'PostgreSQL upgrade',
     'upgrade_')])
def test_an_operation_playbook_refuses_its_old_command_line_names(tmp_path, playbook, old, operation, prefix):
    # An operation's variables took its prefix: the old ones are refused before the lock, naming the new.
    code, output = run_preflight(tmp_path, playbook, (), **old)
    assert code != 0, output
    assert 'The %s cannot start (nothing was changed)' % operation in output
    for name in old:
        assert '%s is no longer read: it was renamed to %s%s' % (name, prefix, name) in output
    assert 'deploy lock' not in output and 'data-loss guard' not in output.split('cannot start')[-1]


def test_metrics_without_the_exporter_password_stops_before_anything_changes(tmp_path):
    code, output = run_preflight(tmp_path, metrics_enabled=True)
    assert code != 0, output
    assert 'metrics_enabled is true but vault_metrics_postgres_password is not set' in output
    # With the password the metrics problem is gone (another problem keeps the run at the controller's check).
    code, output = run_preflight(tmp_path, metrics_enabled=True, vault_metrics_postgres_password='x' * 16,
                                 postgres_uid=999)
    assert code != 0 and 'postgres_uid is no longer read' in output, output
    assert 'vault_metrics_postgres_password' not in output


def test_example_secrets_are_refused_and_no_value_is_printed(tmp_path):
    code, output = run_preflight(tmp_path, vault_bot_token='CHANGE-ME-bot-token-value')
    assert code != 0, output
    assert 'vault_bot_token still has the example value' in output
    assert 'CHANGE-ME-bot-token-value' not in output
    assert SECRETS['vault_postgres_password'] not in output


def test_an_offsite_pitr_repository_needs_its_endpoint_keys_and_a_long_passphrase(tmp_path):
    code, output = run_preflight(tmp_path, pitr_s3_bucket='offsite', vault_pitr_cipher_pass='short-pass')
    assert code != 0, output
    assert 'pitr_s3_bucket is set but pitr_s3_endpoint is empty' in output
    assert 'vault_pitr_s3_key or vault_pitr_s3_key_secret is empty' in output
    assert 'vault_pitr_cipher_pass is not set or shorter than 20 characters' in output
    assert 'short-pass' not in output
    code, output = run_preflight(tmp_path, pitr_s3_bucket='offsite', pitr_s3_endpoint='s3.example',
                                 vault_pitr_s3_key='key-id-value', vault_pitr_s3_key_secret='key-secret-value',
                                 vault_pitr_cipher_pass='p' * 32, postgres_uid=999)
    assert code != 0 and 'postgres_uid is no longer read' in output, output
    assert 'pitr_s3_bucket is set' not in output and 'vault_pitr_cipher_pass is not set' not in output
    assert 'key-secret-value' not in output and 'p' * 32 not in output


def test_a_misspelt_variable_is_refused_with_the_name_it_meant(tmp_path):
    """A typo never deploys silently (issue 23): a variable of the project's prefixes that no role defines or reads
    is refused before anything changes, with the closest known name; an unrelated name gets no guess."""
    code, output = run_preflight(tmp_path, postgres_max_conections=150, app_zzz_whatever=1)
    assert code != 0, output
    assert 'postgres_max_conections is not a variable of this project (a typo?): did you mean ' \
           'postgres_max_connections?' in output
    assert 'app_zzz_whatever is not a variable of this project (a typo?): The roles' in output
    # Known names, the renamed ones (said differently) and variables of other prefixes pass this check.
    code, output = run_preflight(tmp_path, postgres_max_connections=150, postgres_uid=999, my_own_setting=1)
    assert 'is not a variable of this project' not in output and 'postgres_uid is no longer read' in output


def test_an_unencrypted_or_unverified_offsite_repository_is_warned_about(tmp_path):
    code, output = run_preflight(tmp_path, pitr_s3_bucket='soulnear-backups',
                                 pitr_s3_endpoint='s3.example.com', pitr_s3_cipher_type='none',
                                 pitr_s3_verify_tls=False, vault_pitr_s3_key='key-id',
                                 vault_pitr_s3_key_secret='key-secret-value')
    assert 'WARNING: the offsite pgBackRest repository (soulnear-backups) is NOT encrypted' in output, output
    assert 'its TLS certificate is NOT verified' in output
    assert 'key-secret-value' not in output


def test_a_secret_encrypted_with_another_vault_password_is_named(tmp_path):
    """One example secret left encrypted with another vault password used to end in "can only concatenate list (not
    VaultExceptionMarker)" (issue 23): the preflight names the variable and says the vault password differs."""
    vault = os.path.join(BIN, 'ansible-vault')
    (tmp_path / 'right').write_text('the-right-vault-password\n')
    (tmp_path / 'other').write_text('another-vault-password\n')

    def encrypted(password_file, value, name):
        return subprocess.run([vault, 'encrypt_string', '--vault-password-file', str(tmp_path / password_file),
                               value, '--name', name], capture_output=True, text=True, check=True).stdout
    text = (encrypted('right', SECRETS['vault_postgres_password'], 'vault_postgres_password')
            + encrypted('right', SECRETS['vault_app_db_password'], 'vault_app_db_password')
            + encrypted('other', 'a-token-from-the-old-vault', 'vault_bot_token'))
    (tmp_path / 'vault.yml').write_text(text)
    inventory = tmp_path / 'hosts.yml'
    host = dict(ansible_connection='local', ansible_python_interpreter=sys.executable, ansible_become=False)
    inventory.write_text(yaml.safe_dump({'soulnear': {'hosts': {'preflight-test': host}}}))
    env = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'))
    for password, expected in (('right', 'vault_bot_token cannot be decrypted with the vault password given (it was '
                                          'encrypted with another vault password)'),
                               ('other', 'vault_app_db_password, vault_postgres_password cannot be decrypted')):
        proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', str(inventory), 'deploy.yml',
                               '--tags', 'preflight-test-no-step', '-e', '@%s' % (tmp_path / 'vault.yml'),
                               '--vault-password-file', str(tmp_path / password)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        output = ' '.join((proc.stdout + proc.stderr).split())
        assert proc.returncode != 0 and expected in output, output[-2000:]
        assert 'VaultExceptionMarker' not in output and 'a-token-from-the-old-vault' not in output
