#!/usr/bin/env bash
# Create or refresh the project virtualenv (.venv) from the pinned requirements.
# Idempotent: a stamp of the requirement files' hash skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
python=${PYTHON:-python3}
stamp=$(cat requirements.txt requirements-dev.txt constraints.txt | sha256sum | cut -c1-16)

if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.requirements-stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "venv: $venv is up to date"
  exit 0
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
  echo "venv: $python is older than 3.9; install a newer Python 3 or set PYTHON=" >&2
  exit 1
fi
echo "venv: installing pinned requirements into $venv"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
echo "$stamp" > "$venv/.requirements-stamp"
echo "venv: ready ($("$venv/bin/ansible" --version | sed -n 1p))"  # sed reads it all: no BrokenPipeError
