#!/usr/bin/env bash
# make deploy: the same verb for every inventory (issue 21).
#   make deploy                                                      the local sandbox: this machine is set up
#                                                                    (scripts/deploy-sandbox.sh), the sandbox host
#                                                                    created when missing, then deploy.yml
#   make deploy INVENTORY=~/inv/hosts.yml VAULT_PASSWORD_FILE=~/.vp  your servers: the virtualenv, then deploy.yml
# Both print the health report at the end. Extra ansible-playbook arguments: scripts/deploy.sh --check --diff.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
sandbox=inventory/sandbox/hosts.yml
if [ -z "${INVENTORY:-}" ] || [ "$(realpath -m "$INVENTORY")" = "$(realpath -m "$sandbox")" ]; then
    exec scripts/deploy-sandbox.sh "$@"
fi
[ -e "$INVENTORY" ] || { echo "deploy: inventory $INVENTORY not found. Fix: INVENTORY=path/to/hosts.yml" >&2; exit 2; }
start=$(date +%s)
scripts/venv.sh
rc=0
INVENTORY="$INVENTORY" scripts/play.sh deploy.yml -- "$@" || rc=$?
echo "deploy: finished in $(( $(date +%s) - start ))s (rc $rc)"
exit "$rc"
