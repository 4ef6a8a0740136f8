#!/usr/bin/env bash
# make's playbook targets run through here: ansible-playbook with the operator's values passed as DATA (issue 23).
# make exports them unexpanded (the Makefile's last lines), so a value like CONFIRM='soul_bot other=x',
# TIME='$(touch /tmp/x)' or INVENTORY='a; rm -rf b' is a string Ansible receives in a JSON vars file, never a
# shell word, a make function or an extra key=value.
#
#   scripts/play.sh PLAYBOOK [SPEC...] [-- ANSIBLE-PLAYBOOK ARGS...]
#     name=ENV          the variable name gets the value of environment variable ENV (empty when unset)
#     name=ENV|default  ... or default when ENV is empty
#     name?=ENV         only when ENV is not empty
#     name?=ENV@path    only when not empty, made an absolute path
#     name:=JSON        a constant (true, 3, "text")
#   Arguments after -- go to ansible-playbook as they are (scripts, not make, pass them: --check, --diff, -e ...).
# Also from the environment: INVENTORY, VAULT_PASSWORD_FILE, ASK_VAULT_PASS, BECOME_PASSWORD_FILE, ASK_BECOME_PASS,
# ANSIBLE_PLAYBOOK (the binary), VENV_PYTHON.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ $# -gt 0 ] || { echo "usage: scripts/play.sh PLAYBOOK [SPEC...]" >&2; exit 2; }
playbook="$1"
shift
specs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do specs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
ANSIBLE_PLAYBOOK="${ANSIBLE_PLAYBOOK:-.venv/bin/ansible-playbook}"
PYTHON="${VENV_PYTHON:-.venv/bin/python}"

vars="$(mktemp "${TMPDIR:-/tmp}/soulnear-make-vars.XXXXXX")"
trap 'rm -f "$vars"' EXIT
"$PYTHON" - "${specs[@]}" > "$vars" <<'PY'
import json
import os
import sys

out = {}
for spec in sys.argv[1:]:
    if ':=' in spec:
        name, literal = spec.split(':=', 1)
        out[name] = json.loads(literal)
        continue
    optional = '?=' in spec
    name, source = spec.split('?=' if optional else '=', 1)
    source, _, default = source.partition('|')
    source, _, kind = source.partition('@')
    value = os.environ.get(source, '')
    if value == '':
        if optional:
            continue
        value = default
    out[name] = os.path.abspath(value) if kind == 'path' else value
json.dump(out, sys.stdout)
PY

args=(-i "${INVENTORY:-inventory/sandbox/hosts.yml}")
if [ -n "${VAULT_PASSWORD_FILE:-}" ]; then args+=(--vault-password-file "$VAULT_PASSWORD_FILE"); fi
if [ -n "${ASK_VAULT_PASS:-}" ]; then args+=(--ask-vault-pass); fi
if [ -n "${BECOME_PASSWORD_FILE:-}" ]; then args+=(--become-password-file "$BECOME_PASSWORD_FILE"); fi
if [ -n "${ASK_BECOME_PASS:-}" ]; then args+=(--ask-become-pass); fi
rc=0
"$ANSIBLE_PLAYBOOK" "${args[@]}" "$playbook" -e "@$vars" "$@" || rc=$?
exit "$rc"
