"""pg_migrate run through Ansible itself (ansible-playbook on localhost) against a real PostgreSQL."""

import yaml
from ansiblerun import ansible_playbook, task_result
from migration_tools import fixture


def playbook(tmp_path, params, path, **options):
    task = dict(params, path=str(path))
    task.update(options)
    play = [{
        'name': 'Migrate',
        'hosts': 'localhost',
        'gather_facts': False,
        'tasks': [{'name': 'Apply migrations', 'pg_migrate': task, 'register': 'result'}],
    }]
    book = tmp_path / 'migrate.yml'
    book.write_text(yaml.safe_dump(play))
    return book


def test_playbook_check_apply_rerun_and_failure(pg_db, tmp_path):
    path = tmp_path / 'migrations'
    path.mkdir()
    (path / '001_init.sql').write_text('CREATE TABLE aiogram_states (key text PRIMARY KEY, state text);\n')
    (path / '002_users.sql').write_text('CREATE TABLE users (id bigint PRIMARY KEY);\n')
    book = playbook(tmp_path, pg_db, path)

    check = ansible_playbook(book, '--check', '--diff')
    assert check.returncode == 0, check.stdout + check.stderr
    result = task_result(check)
    assert result['changed'] is True
    assert result['msg'] == 'Would apply 2 migration(s)'
    assert '002_users.sql' in result['diff']['after']

    applied = ansible_playbook(book)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    result = task_result(applied)
    assert result['changed'] is True and result['msg'] == 'Applied 2 new migration(s)'
    assert result['applied'] == ['001_init.sql', '002_users.sql'] and result['current_version'] == '2'
    assert isinstance(result['duration_ms'], int)

    again = ansible_playbook(book)
    result = task_result(again)
    assert result['changed'] is False and result['msg'] == 'All migrations up to date'

    (path / '003_broken.sql').write_text('CREATE TABLE ok_part (id int);\nINSERT INTO missing_table VALUES (1);\n')
    failed = ansible_playbook(book)
    assert failed.returncode != 0
    result = task_result(failed)
    assert result['failed'] is True
    assert '003_broken.sql failed at line 2' in result['msg'] and 'missing_table' in result['msg']
    assert 'Traceback' not in failed.stdout


def test_password_never_printed_even_at_vvv(pg_db, tmp_path):
    path = tmp_path / 'migrations'
    path.mkdir()
    (path / '001_init.sql').write_text('SELECT 1;\n')
    proc = ansible_playbook(playbook(tmp_path, pg_db, path), '-vvv')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pg_db['login_password'] not in proc.stdout + proc.stderr
    wrong = dict(pg_db, login_password='wrong-secret-value')
    proc = ansible_playbook(playbook(tmp_path, wrong, path), '-vvv')
    assert proc.returncode != 0
    assert 'password authentication failed' in proc.stdout
    assert 'wrong-secret-value' not in proc.stdout + proc.stderr


def test_failure_reports_changed_when_the_database_changed_and_check_mode_reports_problems(pg_db, tmp_path):
    path = tmp_path / 'migrations'
    path.mkdir()
    (path / '001_init.sql').write_text('CREATE TABLE t (id int);\n')
    (path / '002_bad.sql').write_text('INSERT INTO missing VALUES (1);\n')
    book = playbook(tmp_path, pg_db, path)
    failed = ansible_playbook(book)
    result = task_result(failed)
    assert result['failed'] is True and result['changed'] is True  # 001 and the tracking table stayed
    assert result['applied'] == ['001_init.sql'] and '002_bad.sql failed at line 1' in result['msg']

    (path / '002_bad.sql').write_text('CREATE TABLE u (id int);\nCOMMIT;\n\\i other.sql\n')
    for extra in (['--check'], []):
        proc = ansible_playbook(book, *extra)
        result = task_result(proc)
        assert result['failed'] is True and result['changed'] is False, extra
        assert "002_bad.sql line 2: 'COMMIT'" in result['msg'] and '002_bad.sql line 3: psql meta-command' \
            in result['msg']


def test_module_reads_another_tools_layout(pg_db, tmp_path):
    proc = ansible_playbook(playbook(tmp_path, pg_db, fixture('golang-migrate')))
    result = task_result(proc)
    assert proc.returncode == 0, proc.stdout
    assert result['layout'] == 'golang-migrate' and result['msg'] == 'Applied 4 new migration(s)'
    assert result['down_files'][0] == '1_init.down.sql'
