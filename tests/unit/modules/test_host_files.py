"""host_files through Ansible: create, nothing to do, fix, validate, links, trees, check mode, secrets."""

import os
import stat

from ansiblerun import run_module


def mode(path):
    return oct(stat.S_IMODE(os.lstat(path).st_mode))


def test_converge_then_nothing_then_fix(tmp_path):
    root = tmp_path / 'root'
    entries = [
        dict(path=str(root), state='directory', mode='0750'),
        dict(path=str(root / 'conf.json'), content='{"a": 1}\n', mode='0600'),
        dict(path=str(root / 'secret'), content='hunter2-secret', mode='0600', secret=True),
        dict(path=str(root / 'link'), state='link', src=str(root / 'conf.json')),
    ]
    trees = [dict(dest=str(root / 'lib' / 'pkg'), files={'__init__.py': '', 'a.py': 'A = 1\n'})]
    args = dict(entries=entries, trees=trees)

    rc, dry, out = run_module(tmp_path, 'host_files', args, '--check', '--diff')
    assert rc == 0 and dry['changed'] is True and not root.exists(), out
    assert 'hunter2-secret' not in out  # a secret's content is never shown, not even in the diff

    rc, first, out = run_module(tmp_path, 'host_files', args, '-vvv')
    assert rc == 0 and first['changed'] is True, out
    assert 'hunter2-secret' not in out
    assert (root / 'conf.json').read_text() == '{"a": 1}\n' and mode(root / 'conf.json') == '0o600'
    assert mode(root) == '0o750' and os.readlink(root / 'link') == str(root / 'conf.json')
    assert (root / 'lib' / 'pkg' / 'a.py').read_text() == 'A = 1\n' and mode(root / 'lib' / 'pkg' / 'a.py') == '0o644'

    rc, second, out = run_module(tmp_path, 'host_files', args)
    assert rc == 0 and second['changed'] is False and second['changed_paths'] == [], out

    os.chmod(root / 'conf.json', 0o644)
    (root / 'lib' / 'pkg' / 'a.py').write_text('A = 2\n')
    rc, fixed, out = run_module(tmp_path, 'host_files', args)
    assert rc == 0 and fixed['changes'] == {str(root / 'conf.json'): ['mode 0644 -> 0600'],
                                            str(root / 'lib' / 'pkg' / 'a.py'): ['content']}, out
    assert (root / 'lib' / 'pkg' / 'a.py').read_text() == 'A = 1\n'


def test_failed_validation_keeps_the_old_file(tmp_path):
    target = tmp_path / 'app.conf'
    target.write_text('good\n')
    args = dict(entries=[dict(path=str(target), content='bad\n', mode='0644', validate='grep -q good %s')])
    rc, result, out = run_module(tmp_path, 'host_files', args)
    assert rc != 0 and 'failed validation' in result['msg'], out
    assert target.read_text() == 'good\n'
    assert [p for p in os.listdir(tmp_path) if p.startswith('.app.conf')] == []  # no temporary file left


def test_absent_and_wrong_type(tmp_path):
    (tmp_path / 'old').mkdir()
    (tmp_path / 'old' / 'f').write_text('x')
    (tmp_path / 'dir').mkdir()
    gone = dict(entries=[dict(path=str(tmp_path / 'old'), state='absent')])
    rc, result, out = run_module(tmp_path, 'host_files', gone)
    assert rc == 0 and result['changed'] and not (tmp_path / 'old').exists(), out
    rc, result, out = run_module(tmp_path, 'host_files', dict(entries=[dict(path=str(tmp_path / 'dir'), content='x')]))
    assert rc != 0 and 'is not a regular file' in result['msg']


def test_absent_ignores_what_a_file_would_take(tmp_path):
    """A role switches one entry between file and absent with the same content, validate and mode."""
    target = tmp_path / 'unit.timer'
    target.write_text('[Timer]\n')
    toggled = dict(path=str(target), state='absent', content='[Timer]\n', validate='test -s %s', mode='0644')
    rc, result, out = run_module(tmp_path, 'host_files', dict(entries=[toggled]))
    assert rc == 0 and result['changed'] and not target.exists(), out
    rc, result, out = run_module(tmp_path, 'host_files', dict(entries=[toggled]))
    assert rc == 0 and not result['changed'], out
