"""The documentation's structure: README sections, role READMEs in step with defaults, module docs that render."""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'library', '*.py')))
ROLES = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, 'roles', '*', 'meta')))
# A path into the machine this was written on, or the workspace next to the repository (built so this file does
# not match itself).
OUTSIDE = re.compile(r'\.\./' + 'shared/|/' + 'work/')
README_SECTIONS = ('Deploy the full stack on a local disposable host', 'Run the tests', 'Against a real server',
                   'Operating it', 'Where things live', 'Documentation')


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as handle:
        return handle.read()


def role_variables():
    for path in sorted(glob.glob(os.path.join(ROOT, 'roles', '*', 'defaults', 'main.yml'))):
        lines = read(path).splitlines()
        for index, line in enumerate(lines):
            match = re.match(r'^([a-z][a-z0-9_]*):', line)
            if match:
                yield path, match.group(1), lines[index - 1]


def test_readme_has_its_sections_and_both_commands():
    headings = re.findall(r'^## (.+)$', read('README.md'), re.M)
    assert [h for h in README_SECTIONS if h not in headings] == []
    text = read('README.md')
    assert '\n    make deploy\n' in text and '\n    make test\n' in text
    assert 'exec make test' in read('.ci', 'run')


def test_every_make_target_is_in_the_readme():
    proc = subprocess.run(['make', '-s', 'help'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    targets = re.findall(r'^\s+([a-z][a-z0-9-]*):', proc.stdout, re.M)
    assert len(targets) > 5, proc.stdout
    text = read('README.md')
    assert [t for t in targets if t != 'help' and 'make %s' % t not in text] == []


def test_every_role_variable_is_commented():
    assert [name for _, name, above in role_variables() if not above.startswith('#')] == []


def test_role_readmes_are_in_step_with_defaults_and_linked():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'role-readme.py'), '--check'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    readme = read('README.md')
    assert [r for r in ROLES if 'roles/%s/README.md' % r not in readme] == []
    for path, name, _ in role_variables():
        assert '`%s`' % name in read(os.path.dirname(os.path.dirname(path)), 'README.md')


def test_links_point_at_files_in_the_repository():
    for doc in ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md'))):
        for target in re.findall(r'\]\(([^)#]+)\)', read(doc)):
            if '://' in target:
                continue
            assert os.path.exists(os.path.join(ROOT, os.path.dirname(doc), target)), '%s links to %s' % (doc, target)


def test_nothing_points_outside_the_repository():
    tracked = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for path in tracked:
        if path.endswith(('.tar', '.gz', '.png')) or not os.path.isfile(os.path.join(ROOT, path)):
            continue
        try:
            text = read(path)
        except UnicodeDecodeError:
            continue
        if OUTSIDE.search(text):
            offenders.append(path)
    assert offenders == []


@pytest.mark.parametrize('module', MODULES)
def test_module_documentation_renders(module):
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-doc'), '-M',
                           os.path.join(ROOT, 'library'), module], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for section in ('OPTIONS', 'ATTRIBUTES', 'EXAMPLES', 'RETURN VALUES'):
        assert section in proc.stdout, section
    # The module says which existing collection module it complements and what it adds.
    assert re.search(r'community\.(postgresql|docker)\.|ansible\.builtin\.|community\.postgresql', proc.stdout)


def test_the_where_things_live_map_names_only_files_that_exist():
    """README's map (issue 21): every task file is in a role of its row, every module in library/, every Python
    file in module_utils/soulnear/ - a renamed or deleted file fails here, not in a reader's hands."""
    text = read('README.md')
    section = text[text.index('## Where things live'):text.index('## Documentation')]
    missing = []
    for row in [line for line in section.splitlines() if line.startswith('| ') and '[' in line]:
        cells = [c.strip() for c in row.strip('|').split('|')]
        roles = re.findall(r'\[(\w+)\]\(roles/', cells[1])
        for name in re.findall(r'`([\w.]+\.yml)`', cells[2]):
            if not any(os.path.exists(os.path.join(ROOT, 'roles', r, 'tasks', name)) for r in roles):
                missing.append('%s (tasks of %s)' % (name, ', '.join(roles)))
        for name in re.findall(r'`(\w+)`', cells[3]):
            if not os.path.exists(os.path.join(ROOT, 'library', name + '.py')):
                missing.append('%s (module)' % name)
        for name in re.findall(r'`([\w.]+\.py)`', cells[4]):
            if not os.path.exists(os.path.join(ROOT, 'module_utils', 'soulnear', name)):
                missing.append('%s (module_utils/soulnear)' % name)
    assert missing == [], 'README\'s "Where things live" names what is not there: %s' % missing
