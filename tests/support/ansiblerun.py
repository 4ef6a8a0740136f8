"""Run one of the project's modules (or a playbook) through ansible-playbook on localhost, as a playbook would."""

import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def ansible_playbook(book, *extra, timeout=120):
    """The finished ansible-playbook run of the playbook `book` on localhost, its JSON output on stdout."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK='ansible.posix.json', ANSIBLE_NOCOLOR='1',
               ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    return subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,', '-c', 'local', str(book)]
                          + list(extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def task_result(proc):
    """The result of a run's first task on localhost."""
    data = json.loads(proc.stdout[proc.stdout.index('{'):])
    return data['plays'][0]['tasks'][0]['hosts']['localhost']


def run_module(tmp_path, module, args, *extra, timeout=300):
    """(returncode, result of the task, full output) of one task `module: args` on localhost."""
    play = [{'name': 'Run %s' % module, 'hosts': 'localhost', 'gather_facts': False,
             'tasks': [{'name': module, module: args}]}]
    book = tmp_path / ('%s-%d.yml' % (module, len(list(tmp_path.glob('*.yml')))))
    book.write_text(yaml.safe_dump(play))
    proc = ansible_playbook(book, *extra, timeout=timeout)
    try:
        result = task_result(proc)
    except (ValueError, KeyError, IndexError):
        result = None
    return proc.returncode, result, proc.stdout + proc.stderr
