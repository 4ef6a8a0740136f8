#!/usr/bin/env bash
# Download each example bot's requirements as wheels into <bot-dir>/wheels/, so its image builds offline
# (`docker build` with no access to PyPI, e.g. inside the sandbox's nested engine): the Dockerfiles install from
# wheels/ with --no-index when it holds wheels.
#
#   scripts/bot-wheels.sh [bot-dir...]      default: examples/aiogram-alembic examples/ptb-sql
#
# Wheels for CPython 3.11 on manylinux2014 x86_64 (what python:3.11-slim and soulnear/python:3-bookworm run), plus a
# pip wheel (BOT_WHEELS_PIP) that installs them on a base image without pip. Idempotent: a stamp holds the hash of
# requirements.txt and of these settings; a complete wheelhouse is kept as it is. wheels/ is not tracked by git.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
PIP_SPEC="${BOT_WHEELS_PIP:-pip==26.3}"
PLATFORM="${BOT_WHEELS_PLATFORM:-manylinux2014_x86_64}"
PYTHON_VERSION="${BOT_WHEELS_PYTHON:-3.11}"

log() { printf '[bot-wheels] %s\n' "$*"; }
die() { printf '[bot-wheels] ERROR: %s\n' "$*" >&2; exit 1; }

# The pip that downloads: the project's virtualenv, else python3 -m pip.
if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -m pip --version >/dev/null 2>&1; then
    PIP=("$ROOT/.venv/bin/python" -m pip)
elif python3 -m pip --version >/dev/null 2>&1; then
    PIP=(python3 -m pip)
else
    die "no pip found. Fix: make setup (creates .venv) or apt-get install python3-pip"
fi

[ "$#" -gt 0 ] || set -- examples/aiogram-alembic examples/ptb-sql
for bot in "$@"; do
    dir="$(cd "$bot" 2>/dev/null && pwd)" || die "$bot: no such directory"
    [ -f "$dir/requirements.txt" ] || die "$bot: no requirements.txt"
    wheels="$dir/wheels"
    want="$({ sha256sum <"$dir/requirements.txt"; echo "$PIP_SPEC $PLATFORM $PYTHON_VERSION"; } | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$wheels/.stamp" 2>/dev/null)" = "$want" ]; then
        log "${dir#"$ROOT"/}/wheels up to date ($(find "$wheels" -name '*.whl' | wc -l) wheels)"
        continue
    fi
    log "${dir#"$ROOT"/}: downloading wheels for Python $PYTHON_VERSION $PLATFORM"
    # Into a fresh directory first, and the stamp last: an interrupted download never looks complete, and wheels of
    # an older requirements.txt do not linger (--find-links would offer them).
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/bot-wheels.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    if ! "${PIP[@]}" download --quiet --disable-pip-version-check --only-binary=:all: --platform "$PLATFORM" \
            --python-version "$PYTHON_VERSION" -r "$dir/requirements.txt" "$PIP_SPEC" -d "$tmp" >"$tmp.log" 2>&1; then
        grep -v 'is ignored' "$tmp.log" | tail -n 20 >&2
        rm -f "$tmp.log"
        die "pip download failed for $bot. Fix: check access to PyPI (or a mirror in pip.conf); on a machine that cannot reach it, copy wheels/ from one that can."
    fi
    rm -f "$tmp.log"
    rm -rf "$wheels"
    mv "$tmp" "$wheels"
    trap - EXIT
    chmod 0755 "$wheels"
    echo "$want" >"$wheels/.stamp"
    log "  $(find "$wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"
done
