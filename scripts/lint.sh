#!/usr/bin/env bash
# yamllint, ansible-lint (production profile) and ruff over the whole tree.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
echo "== yamllint"
"$bin/yamllint" --strict .
echo "== ansible-lint (production profile)"
"$bin/ansible-lint" --profile production --nocolor -q
echo "== ruff"
"$bin/ruff" check --no-cache .
