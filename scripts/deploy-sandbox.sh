#!/usr/bin/env bash
# README's first command: set up this machine, create the local disposable host ("sandbox")
# when it is missing, deploy the full stack to it with `ansible-playbook deploy.yml` and print
# the health report. Run again, it changes nothing (changed=0) and prints the report again.
# Extra arguments go to ansible-playbook (e.g. -e postgres_max_connections=150, --check --diff).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
scripts/sandbox.sh up
.venv/bin/ansible-playbook deploy.yml "$@"
echo "deploy: finished in $(( $(date +%s) - start ))s"
