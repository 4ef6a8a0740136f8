#!/usr/bin/env bash
# Idempotent setup of a fresh machine (Debian 12, no Docker engine running, no registry):
#   1. the virtualenv .venv from the pinned requirements      (scripts/venv.sh)
#   2. a Docker engine when none answers                      (scripts/docker-engine.sh)
#   3. the images the sandbox and the tests need, as archives (scripts/images.sh)
# A second run only checks and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh
scripts/docker-engine.sh
scripts/images.sh
