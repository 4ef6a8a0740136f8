#!/usr/bin/env bash
# Build the modules as an installable Ansible collection, soulnear.deploy, and optionally run Ansible's own
# `ansible-test sanity` on it (issue 21).
#   scripts/collection.sh                  -> .cache/collection/soulnear-deploy-<version>.tar.gz
#   scripts/collection.sh --sanity [ARGS]  the same, then ansible-test sanity in the built tree (ARGS: e.g.
#                                          --test pep8); exits non-zero on any finding
#   KEEP=1 scripts/collection.sh ...       keep the build tree (its path is printed)
#
# The repository keeps its layout (library/, module_utils/soulnear/, plugins/: what ansible.cfg points at). The
# build copies it into ansible_collections/soulnear/deploy/ in a temporary directory:
#   library/*.py              -> plugins/modules/
#   module_utils/soulnear/    -> plugins/module_utils/soulnear/, without the host commands (below)
#   plugins/doc_fragments, plugins/filter -> the same places
# and rewrites what only resolves in the flat layout to the collection's names:
#   from ansible.module_utils.soulnear.x import ... -> from ansible_collections.soulnear.deploy.plugins.module_utils.soulnear.x import ...
#   extends_documentation_fragment: soulnear_connection, soulnear_docker_db, soulnear_audit -> soulnear.deploy.<the fragment>
#   a module named in seealso (- module: pg_backup) or in O()/RV() markup (O(pg_backup#module:x))
#     -> soulnear.deploy.pg_backup: outside a collection a module has no FQCN to name it by
# The module_utils files import each other relatively (from .x import), which holds in both layouts.
#
# Left out: the module_utils files no module imports, directly or through another file (today the host commands
# health_command.py and backup_command.py - soulnear-health, soulnear-backup - and watch.py, the container event
# follower of soulnear-health). They are programs run on the host from the copy of the package the soulnear role
# installs there: they parse argv, print and exit, which module code must not; shipping them as module_utils
# would ship code that is never a module's.
#
# Namespace soulnear, name deploy: the project's name and what the content does (galaxy names: lowercase,
# letters, digits and underscores).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/.venv/bin
namespace=soulnear
name=deploy
version=1.0.0
out=$root/.cache/collection

sanity=
if [ "${1:-}" = --sanity ]; then sanity=1; shift; fi

build=$(mktemp -d "${TMPDIR:-/tmp}/soulnear-collection.XXXXXX")
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$build"' EXIT; fi
dest=$build/ansible_collections/$namespace/$name
mkdir -p "$dest/plugins/modules" "$dest/plugins/module_utils" "$dest/meta" "$out"

cp library/*.py "$dest/plugins/modules/"
cp -r module_utils/soulnear "$dest/plugins/module_utils/"
# The module_utils files the modules reach: their `ansible.module_utils.soulnear` imports, then the relative
# imports between the files, followed to the end.
"$bin/python" - "$dest/plugins/module_utils/soulnear" library/*.py <<'PY'
import ast
import os
import sys

package, modules = sys.argv[1], sys.argv[2:]
prefix = 'ansible.module_utils.soulnear'


def imported(path, relative):
    names = set()
    with open(path) as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if relative and node.level == 1:
            names |= {node.module.split('.')[0]} if node.module else {alias.name for alias in node.names}
        elif not relative and node.module == prefix:
            names |= {alias.name for alias in node.names}
        elif not relative and (node.module or '').startswith(prefix + '.'):
            names.add(node.module.split('.')[3])
    return names


todo = set().union(*(imported(path, False) for path in modules))
reached = set()
while todo:
    name = todo.pop()
    if name not in reached:
        reached.add(name)
        todo |= imported(os.path.join(package, name + '.py'), True)
for entry in sorted(os.listdir(package)):
    if entry.endswith('.py') and entry != '__init__.py' and entry[:-3] not in reached:
        os.remove(os.path.join(package, entry))
        print('left out (no module imports it): module_utils/soulnear/%s' % entry)
PY
for kind in doc_fragments filter; do
  cp -r "plugins/$kind" "$dest/plugins/"
done
find "$dest" -name __pycache__ -prune -exec rm -rf {} +

fqcn_utils="ansible_collections.$namespace.$name.plugins.module_utils.soulnear"
find "$dest/plugins" -name '*.py' -print0 | xargs -0 sed -i -E \
  -e "s/(from|import) ansible\.module_utils\.soulnear\b/\1 $fqcn_utils/" \
  -e "s/^(  - )(soulnear_connection|soulnear_docker_db|soulnear_audit)\b/\1$namespace.$name.\2/"
modules=$(cd library && ls ./*.py | sed 's|^\./||; s|\.py$||' | paste -sd'|')
sed -i -E \
  -e "s/^(\s*- module: )($modules)\s*$/\1$namespace.$name.\2/" \
  -e "s/\b(O|RV|M)\(($modules)#module:/\1($namespace.$name.\2#module:/g" \
  "$dest/plugins/modules/"*.py

ansible_version=$("$bin/python" -c 'import ansible.release as r; print(".".join(r.__version__.split(".")[:2]))')
cat >"$dest/galaxy.yml" <<EOF
namespace: $namespace
name: $name
version: $version
readme: README.md
authors:
  - SoulNear operations contributors
description: Modules that deploy a PostgreSQL-backed bot on Docker hosts, migrate, back up and restore its database.
license:
  - GPL-3.0-or-later
tags: [database, postgresql, docker, deployment]
dependencies: {}
repository: https://example.invalid/soulnear
build_ignore: [tests]
EOF
cat >"$dest/meta/runtime.yml" <<EOF
---
requires_ansible: '>=$ansible_version.0'
EOF
cat >"$dest/README.md" <<EOF
# $namespace.$name

Built by scripts/collection.sh from the SoulNear repository (library/, module_utils/soulnear/, plugins/).
The modules: ${modules//|/, }.
EOF
if [ -f scripts/collection-sanity-ignore.txt ]; then
  mkdir -p "$dest/tests/sanity"
  grep -v '^#' scripts/collection-sanity-ignore.txt | sed '/^$/d' >"$dest/tests/sanity/ignore-$ansible_version.txt" || true
fi

"$bin/ansible-galaxy" collection build --force --output-path "$out" "$dest" >/dev/null
echo "built $out/$namespace-$name-$version.tar.gz"
[ -n "${KEEP:-}" ] && echo "build tree: $dest"

if [ -n "$sanity" ]; then
  python_version=$("$bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  # --venv: each test's requirements (pylint, pycodestyle, voluptuous, ...) from PyPI in virtualenvs of
  # ansible-test's, no Docker registry needed. They live under $HOME/.ansible/test; HOME points into .cache so
  # they stay with the project. ansible-test bootstraps pip in them with a get-pip script from
  # ci-files.testing.ansible.com, which machines that reach only PyPI cannot download: the stand-in below
  # installs the interpreter's bundled pip (ensurepip), then the pip version ansible-test asks for, from PyPI.
  home=$out/home
  pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',\$/\1/p" \
    "$("$bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py")
  get_pip=$home/.ansible/test/cache/get_pip_${pip_version//./_}.py
  if [ ! -f "$get_pip" ]; then
    mkdir -p "${get_pip%/*}"
    cat >"$get_pip" <<'PY'
"""Stand-in for get-pip.py (scripts/collection.sh): bundled pip first, then `pip install ARGS` from the index."""
import ensurepip
import os
import subprocess
import sys

environ = dict(os.environ)  # ensurepip turns off the pip configuration (certificates, indexes) in os.environ
ensurepip.bootstrap(upgrade=True)
args = [arg for arg in sys.argv[1:] if arg not in ('--no-setuptools', '--no-wheel')]
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install', '--quiet'] + args, env=environ))
PY
  fi
  cd "$dest"
  HOME=$home PATH="$bin:$PATH" "$bin/ansible-test" sanity --venv --python "$python_version" --color no "$@"
fi
