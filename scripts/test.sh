#!/usr/bin/env bash
# The one test command (README, .ci/run): prepares a fresh machine, then runs lint and every test.
#   1. virtualenv from the pinned requirements        (scripts/venv.sh)
#   2. PostgreSQL server binaries for the pytest suite (scripts/test-deps.sh)
#   3. lint: yamllint, ansible-lint, ruff              (scripts/lint.sh)
#   4. pytest: modules against a real PostgreSQL       (tests/)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "virtualenv"; scripts/venv.sh
step "test dependencies"; scripts/test-deps.sh
step "lint"; scripts/lint.sh
step "pytest"; # shellcheck disable=SC2086 # PYTEST_ARGS is a word list on purpose
.venv/bin/python -m pytest ${PYTEST_ARGS:--q}
step "all tests passed"
