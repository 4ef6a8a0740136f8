#!/usr/bin/env bash
# The one test command (README, .ci/run): prepares a fresh machine, then runs lint and every test.
#   1. setup: virtualenv, Docker engine, images        (scripts/setup.sh; PostgreSQL 17's too)
#   2. PostgreSQL server binaries for the pytest suite (scripts/test-deps.sh)
#   3. lint: yamllint, ansible-lint, ruff              (scripts/lint.sh)
#   4. ansible-test sanity on the modules built as a collection (scripts/collection.sh; 2-4 min)
#   5. pytest: modules against real PostgreSQL servers and containers (tests/)
#   6. Molecule: deploy.yml on a disposable systemd VPS, idempotence, verify (molecule/)
# PYTEST_ARGS and MOLECULE_SCENARIOS narrow a run while developing; CI uses the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

# PostgreSQL 17 too (scripts/images.sh IMAGES_PG17=1, about 1.5 min once): test_scram and test_upgrade run on 15 and 17.
step "setup"; IMAGES_PG17="${IMAGES_PG17:-1}" scripts/setup.sh
step "test dependencies"; scripts/test-deps.sh
step "lint"; scripts/lint.sh
step "ansible-test sanity"; scripts/collection.sh --sanity
step "pytest"
# shellcheck disable=SC2086 # PYTEST_ARGS is a word list on purpose
.venv/bin/python -m pytest ${PYTEST_ARGS:--q}
export PATH="$PWD/.venv/bin:$PATH"
for scenario in ${MOLECULE_SCENARIOS:-default}; do
  step "molecule test -s $scenario"
  # The nested engine's volume outlives `molecule destroy`; start every run from an empty one.
  molecule destroy -s "$scenario" >/dev/null 2>&1 || true
  docker volume rm -f "${SOULNEAR_MOLECULE_INSTANCE:-soulnear-molecule}-docker" \
      "${SOULNEAR_MOLECULE_INSTANCE:-soulnear-molecule}-bot-docker" >/dev/null
  molecule test -s "$scenario"
done
step "all tests passed"
