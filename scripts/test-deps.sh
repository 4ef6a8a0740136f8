#!/usr/bin/env bash
# Host packages the pytest suite needs: PostgreSQL server binaries for the throwaway
# test clusters (tests/pgcluster.py) and pgbench for the backup benchmark.
set -euo pipefail

if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && command -v pgbench >/dev/null && id postgres >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "test-deps: PostgreSQL server binaries are missing; run as root or: sudo apt-get install postgresql postgresql-contrib" >&2
  exit 1
fi
echo "test-deps: installing PostgreSQL server binaries"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
# The Debian package starts a cluster when it can; the tests use their own.
if command -v pg_ctlcluster >/dev/null; then pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | while read -r v c; do pg_ctlcluster "$v" "$c" stop 2>/dev/null || true; done; fi
