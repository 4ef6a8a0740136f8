"""The documentation promises: every role variable is in README, every module's docs render."""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'library', '*.py')))


def role_variables():
    for path in sorted(glob.glob(os.path.join(ROOT, 'roles', '*', 'defaults', 'main.yml'))):
        lines = open(path).read().splitlines()
        for index, line in enumerate(lines):
            match = re.match(r'^([a-z][a-z0-9_]*):', line)
            if match:
                yield path, match.group(1), lines[index - 1]


def test_every_role_variable_is_commented_and_in_the_readme():
    readme = open(os.path.join(ROOT, 'README.md')).read()
    missing = [name for _, name, _ in role_variables() if '`%s`' % name not in readme]
    uncommented = [name for _, name, above in role_variables() if not above.startswith('#')]
    assert missing == [], 'run scripts/role-vars-table.py ROLE and update README.md'
    assert uncommented == []


@pytest.mark.parametrize('module', MODULES)
def test_module_documentation_renders(module):
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-doc'), '-M',
                           os.path.join(ROOT, 'library'), module], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'RETURN VALUES' in proc.stdout and 'EXAMPLES' in proc.stdout
    assert 'Gap it fills' in proc.stdout
