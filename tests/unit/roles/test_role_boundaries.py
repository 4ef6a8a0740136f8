"""The roles' boundaries (issue 21): a role's private variables (`__<role>_...`, its registers and internal vars) are
read only inside that role; what the others need is public - the soulnear role's topology facts (documented in its
README) and the postgres role's one result fact, postgres_result."""

import glob
import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'roles', '*')) if os.path.isdir(p))


def project_files():
    for pattern in ('roles/**/*.yml', 'roles/**/*.j2', 'playbooks/**/*.yml', 'deploy.yml'):
        yield from glob.glob(os.path.join(ROOT, pattern), recursive=True)


@pytest.mark.parametrize('role', ROLES)
def test_no_file_outside_a_role_reads_its_private_variables(role):
    private = re.compile(r'(?<![\w.])__%s_[a-z0-9_]+' % role)
    found = []
    for path in project_files():
        rel = os.path.relpath(path, ROOT)
        if rel.startswith('roles/%s/' % role):
            continue
        with open(path) as handle:
            found += ['%s: %s' % (rel, name) for name in sorted(set(private.findall(handle.read())))]
    assert found == [], 'private variables of the %s role read elsewhere (publish a fact instead): %s' % (role, found)


def test_the_soulnear_roles_public_facts_are_documented():
    with open(os.path.join(ROOT, 'roles', 'soulnear', 'vars', 'main.yml')) as handle:
        facts = [name for name in yaml.safe_load(handle) if not name.startswith('__')]
    with open(os.path.join(ROOT, 'roles', 'soulnear', 'README.md')) as handle:
        readme = handle.read()
    public = [name for name in facts if name.startswith('soulnear_') and not name.endswith('_login')]
    assert 'soulnear_runs_db' in public and 'soulnear_pitr_on' in public
    assert [name for name in public if '`%s`' % name not in readme] == []
