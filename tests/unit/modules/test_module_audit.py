"""The modules that write their own audit line (doc fragment soulnear_audit): a refusal that changed nothing is
recorded as refused, a check-mode run and a status are not recorded, and an audit log that cannot be written is a
warning - never the run's outcome. The lines of runs that changed something: test_restore (pg_restore), the Molecule
scenario (pg_restore, pg_pitr)."""

import json

from ansiblerun import run_module


def upgrade_args(tmp_path, **extra):
    return dict(dict(login_host='127.0.0.1', login_port=1, login_user='soulnear', login_password='unused-password',
                     login_db='soul_bot', state_file=str(tmp_path / 'upgrade.json'), backup_dir=str(tmp_path),
                     audit_log=str(tmp_path / 'audit.log'), audit_who='pytest@controller'), **extra)


def lines(tmp_path):
    path = tmp_path / 'audit.log'
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_refused_upgrade_confirm_is_recorded_as_refused(tmp_path):
    rc, result, out = run_module(tmp_path, 'pg_upgrade', upgrade_args(tmp_path, operation='confirm', confirm='nope'))
    assert rc != 0 and result['changed'] is False, out
    [line] = lines(tmp_path)
    assert (line['event'], line['result'], line['who'], line['operation']) == (
        'upgrade-postgres', 'refused', 'pytest@controller', 'confirm')
    assert 'unused-password' not in json.dumps(line)


def test_check_mode_and_status_write_no_line(tmp_path):
    rc, result, out = run_module(tmp_path, 'pg_upgrade', upgrade_args(tmp_path, operation='confirm', confirm='nope'),
                                 '--check')
    assert rc != 0, out
    rc, result, out = run_module(tmp_path, 'pg_upgrade', upgrade_args(tmp_path, operation='status'))
    assert lines(tmp_path) == [], out


def test_an_audit_log_that_cannot_be_written_is_a_warning(tmp_path):
    blocked = tmp_path / 'not-a-directory'
    blocked.write_text('a file where the log directory would be')
    rc, result, out = run_module(tmp_path, 'pg_upgrade', upgrade_args(
        tmp_path, operation='confirm', confirm='nope', audit_log=str(blocked / 'audit.log')))
    assert rc != 0 and 'confirm=soul_bot' in result['msg'], out  # the refusal itself, not the log's problem
    assert 'could not write the audit log' in ' '.join(result.get('warnings', [])), out
