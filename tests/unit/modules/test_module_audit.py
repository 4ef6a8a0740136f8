"""The modules that write their own audit line (doc fragment soulnear_audit): a refusal that changed nothing is
recorded as refused, a check-mode run and a status are not recorded, and an audit log that cannot be written is a
warning - never the run's outcome. The lines of runs that changed something: test_restore (pg_restore), the Molecule
scenario (pg_restore, pg_pitr). deploy_lock's release writes the line of a run that failed where no module recorded
it (the clean redeploy before its bot step)."""

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


def take_lock(tmp_path, operation):
    rc, result, out = run_module(tmp_path, 'deploy_lock', dict(path=str(tmp_path / 'deploy.lock'),
                                                               holder='ops@laptop', operation=operation))
    assert rc == 0 and result['result'] == 'taken', out
    return result['run_id']


def release(tmp_path, run_id, *args, **extra):
    return run_module(tmp_path, 'deploy_lock', dict(dict(path=str(tmp_path / 'deploy.lock'), state='absent',
                                                         run_id=run_id), **extra), *args)


def test_the_lock_release_records_a_run_that_failed_where_no_module_did(tmp_path):
    failed = dict(failed_step='(7/14) Remove the database container', audit_log=str(tmp_path / 'audit.log'),
                  audit_extra=dict(backup='/var/backups/soulnear/pre_clean.dump'))
    # A release without the failed step (every run that ended well) writes nothing; in check mode neither.
    rc, result, out = release(tmp_path, take_lock(tmp_path, 'clean-redeploy'), audit_log=failed['audit_log'])
    assert rc == 0 and result['result'] == 'released' and lines(tmp_path) == [], out
    run_id = take_lock(tmp_path, 'clean-redeploy')
    rc, result, out = release(tmp_path, run_id, '--check', **failed)
    assert rc == 0 and lines(tmp_path) == [], out
    rc, result, out = release(tmp_path, run_id, **failed)
    assert rc == 0 and result['result'] == 'released', out
    [line] = lines(tmp_path)
    assert (line['event'], line['result'], line['who'], line['failed_step'], line['backup']) == (
        'clean-redeploy', 'failed', 'ops@laptop', '(7/14) Remove the database container',
        '/var/backups/soulnear/pre_clean.dump')
    assert line['duration'] >= 0 and result['audited']['failed_step'] == line['failed_step']
    # An operation that is not an audit event is said, not recorded.
    rc, result, out = release(tmp_path, take_lock(tmp_path, 'guard-clear'), **failed)
    assert rc == 0 and len(lines(tmp_path)) == 1, out
    assert 'not an audit event' in ' '.join(result.get('warnings', [])), out
