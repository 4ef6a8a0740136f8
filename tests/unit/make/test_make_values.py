"""make passes the operator's values to Ansible as data (issue 23): the strings a security review used to run
commands or add extra variables through `make restore`, `make unlock`, `make logs-bot`, ... arrive as plain
strings, and nothing they contain runs. ansible-playbook is replaced by a recorder (ANSIBLE_PLAYBOOK); make,
the Makefile, scripts/play.sh and scripts/on-host.sh are the real ones."""

import json
import os
import stat
import subprocess
import sys

import pytest

from ansiblerun import ROOT


@pytest.fixture
def recorder(tmp_path):
    record = tmp_path / 'record.json'
    stub = tmp_path / 'ansible-playbook'
    stub.write_text('#!%s\nimport json, os, sys\nargv = sys.argv[1:]\n'
                    'extra = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]\n'
                    'data = [json.load(open(e[1:])) for e in extra if e.startswith("@")]\n'
                    'json.dump(dict(argv=argv, vars=data), open(os.environ["RECORD"], "w"))\n' % sys.executable)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return stub, record


def run_make(tmp_path, recorder, target, **values):
    stub, record = recorder
    env = dict(os.environ, RECORD=str(record))
    args = ['make', '-s', target, 'ANSIBLE_PLAYBOOK=%s' % stub, 'VENV_PYTHON=%s' % sys.executable]
    args += ['%s=%s' % item for item in values.items()]
    proc = subprocess.run(args, cwd=str(tmp_path / 'work'), env=env, capture_output=True, text=True, timeout=120)
    data = json.loads(record.read_text()) if record.exists() else None
    if record.exists():
        record.unlink()
    return proc, data


@pytest.fixture
def work(tmp_path):
    """A copy of the Makefile, make/ and the scripts, run from its own directory so a stray `touch` would land
    there (and be seen)."""
    work = tmp_path / 'work'
    work.mkdir()
    for name in ('Makefile', 'make', 'scripts'):
        subprocess.run(['cp', '-r', os.path.join(ROOT, name), str(work)], check=True)
    (work / 'inv.yml').write_text('soulnear:\n  hosts:\n    here: {ansible_connection: local}\n')
    return work


INJECTIONS = {
    'extra_var': 'soul_bot other_var=x',
    'make_function': '$(shell touch PWNED_make)',
    'shell_substitution': '$$(touch PWNED_subst)',
    'backticks': '`touch PWNED_backtick`',
    'quotes': "x'; touch PWNED_quote; echo '",
    'double_quotes': 'x"; touch PWNED_dquote; echo "',
    'semicolon': 'soul_bot; touch PWNED_semicolon',
    'newline_free_pipe': 'soul_bot | touch PWNED_pipe',
}


def pwned(work):
    return sorted(p.name for p in work.iterdir() if p.name.startswith('PWNED'))


@pytest.mark.parametrize('kind', sorted(INJECTIONS))
def test_restore_values_are_data(tmp_path, recorder, work, kind):
    text = INJECTIONS[kind]
    proc, data = run_make(tmp_path, recorder, 'restore', CONFIRM=text, TIME=text, REPO=text,
                          INVENTORY='inv.yml; touch PWNED_inventory')
    assert pwned(work) == [], proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = text  # exactly as typed: make expands nothing in it
    assert data['vars'] == [dict(restore_confirm=expected, restore_time=expected, restore_repo=expected,
                                 restore_backup='latest')], data
    assert data['argv'][:2] == ['-i', 'inv.yml; touch PWNED_inventory']
    assert 'other_var' not in json.dumps(data['vars'][0]).replace(expected, '')


def test_every_playbook_target_passes_its_values_as_data(tmp_path, recorder, work):
    text = INJECTIONS['quotes']
    for target, values, expected in (
            ('guard-clear', dict(CONFIRM=text), dict(restore_guard_clear=True, restore_confirm=text)),
            ('redeploy-clean', dict(CONFIRM=text), dict(redeploy_clean_confirm=text)),
            ('rollback', dict(VERSION=text), dict(app_rollback_version=text)),
            ('redeploy', dict(SOURCE='src dir; touch PWNED_source'),
             dict(app_source_dir=str(work / 'src dir; touch PWNED_source'))),
            ('unlock', dict(CONFIRM=text), dict(soulnear_unlock=text)),
            ('unlock', {}, dict(soulnear_unlock='no')),
            ('health', dict(VAULT_PASSWORD_FILE='v; touch PWNED_vault'), {})):
        proc, data = run_make(tmp_path, recorder, target, INVENTORY='inv.yml', **values)
        assert proc.returncode == 0 and data is not None, (target, proc.stdout + proc.stderr)
        assert data['vars'] == [expected], (target, data)
        if 'VAULT_PASSWORD_FILE' in values:
            assert data['argv'][2:4] == ['--vault-password-file', 'v; touch PWNED_vault']
    assert pwned(work) == []


def test_on_host_arguments_are_data(tmp_path, recorder, work):
    proc, _ = run_make(tmp_path, recorder, 'logs-bot', INVENTORY='inv.yml', LOG_LINES='1; touch PWNED_lines',
                       ANSIBLE=os.path.join(os.path.dirname(sys.executable), 'ansible'))
    assert pwned(work) == [], proc.stdout + proc.stderr


@pytest.fixture
def fake_ssh(tmp_path, work):
    """An inventory host reached over ssh as a user with sudo, through a recording ssh (ansible_ssh_executable):
    it writes its argv and its standard input to ssh.json and runs nothing."""
    record = tmp_path / 'ssh.json'
    ssh = tmp_path / 'fake-ssh'
    ssh.write_text('#!%s\nimport json, sys\njson.dump(dict(argv=sys.argv[1:], stdin=sys.stdin.read()), '
                   'open(%r, "w"))\n' % (sys.executable, str(record)))
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)
    (work / 'ssh.yml').write_text('soulnear:\n  hosts:\n    vps: {ansible_host: 192.0.2.10, ansible_user: deploy, '
                                  'ansible_ssh_executable: %s}\n' % ssh)
    return record


def run_on_host(work, target, **values):
    env = dict(os.environ, ANSIBLE=os.path.join(os.path.dirname(sys.executable), 'ansible'))
    args = ['make', '-s', target, 'INVENTORY=ssh.yml', 'VENV_PYTHON=%s' % sys.executable]
    args += ['%s=%s' % item for item in values.items()]
    return subprocess.run(args, cwd=str(work), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)


def test_on_host_targets_take_the_sudo_password_from_become_password_file(tmp_path, work, fake_ssh):
    """Without a terminal (a script, CI) make ps/logs-*/restart take BECOME_PASSWORD_FILE: the password goes to
    sudo -S on the command's standard input, never on a command line; the command itself reads nothing."""
    secret = tmp_path / 'become.txt'
    secret.write_text('s3cret-sudo-pass\n')
    proc = run_on_host(work, 'logs-bot', BECOME_PASSWORD_FILE=str(secret), LOG_LINES='5')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(fake_ssh.read_text())
    remote = seen['argv'][-1]
    assert seen['argv'][-2] == '192.0.2.10' and 'User=deploy' in seen['argv']
    assert remote.startswith("sudo -S -p '' sh -c 'exec \"$@\" </dev/null' sh soulnear logs bot 5"), remote
    assert seen['stdin'].splitlines()[0] == 's3cret-sudo-pass'
    assert 's3cret-sudo-pass' not in ' '.join(seen['argv']) + proc.stdout + proc.stderr

    # Without the file: plain sudo (it asks on a terminal); an unreadable file is named before anything runs.
    fake_ssh.unlink()
    proc = run_on_host(work, 'logs-db')
    assert json.loads(fake_ssh.read_text())['argv'][-1] == 'sudo soulnear logs db 200', proc.stderr
    fake_ssh.unlink()
    proc = run_on_host(work, 'restart-bot', BECOME_PASSWORD_FILE=str(tmp_path / 'missing'))
    assert proc.returncode != 0 and 'BECOME_PASSWORD_FILE=' in proc.stderr and 'not a readable file' in proc.stderr
    assert not fake_ssh.exists()
