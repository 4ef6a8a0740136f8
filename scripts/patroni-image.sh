#!/usr/bin/env bash
# Build soulnear/patroni:15 (images/patroni: Debian's patroni and etcd on soulnear/postgres:15),
# the image of the Patroni switchover test (tests/patronienv.py, docs/patroni.md).
# Idempotent: rebuilt only when missing, when its build context or base image changed (label
# org.soulnear.context-hash, as scripts/images.sh does) or with IMAGES_FORCE_REBUILD=1.
#
# Environment: DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR as in scripts/images.sh (default: the mirrors
# of this machine's apt sources, else the ones baked into the base image).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
IMAGE="soulnear/patroni:15"
BASE_IMAGE="soulnear/postgres:15"
HASH_LABEL="org.soulnear.context-hash"
CACHE_DIR="$ROOT/.cache/images"
T0=$SECONDS

log() { printf '[patroni-image] %s\n' "$*"; }
die() { printf '[patroni-image] ERROR: %s\n' "$*" >&2; exit 1; }

# The first deb URI of this machine's apt sources (one-line and deb822 formats) whose suite
# matches the pattern; empty when the machine is not Debian (a shorter scripts/images.sh's).
apt_source_uri() {
    grep -qs '^ID=debian' /etc/os-release || return 0
    {
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk -v re="$1" '$1 == "deb" && $2 !~ /^\[/ && $3 ~ re { print $2; exit }'
        cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | awk -v re="$1" 'BEGIN { RS = ""; FS = "\n" }
                { uris = suites = ""
                  for (i = 1; i <= NF; i++) { if ($i ~ /^URIs:/) uris = $i; else if ($i ~ /^Suites:/) suites = $i }
                  if ($0 !~ /(^|\n)Types:[^\n]*[ \t]deb([ \t]|\n|$)/ || $0 ~ /\nEnabled: *no/) next
                  n = split(suites, s, /[ \t]+/)
                  for (j = 2; j <= n; j++) if (s[j] ~ re) { split(uris, u, /[ \t]+/); print u[2]; exit } }'
    } | head -n 1
}
MIRROR="${DEBIAN_MIRROR:-$(apt_source_uri '^bookworm(-updates)?$')}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(apt_source_uri '^bookworm-security$')}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

docker info >/dev/null 2>&1 || "$ROOT/scripts/docker-engine.sh"
base_id="$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)"
[ -n "$base_id" ] || die "$BASE_IMAGE is missing. Fix: run scripts/images.sh first."

want="$({ (cd images/patroni && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
          printf '%s\n' "base=$base_id" "mirror=$MIRROR" "security=$SECURITY_MIRROR"; } | sha256sum | cut -d' ' -f1)"
have="$(docker image inspect --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$IMAGE" 2>/dev/null || true)"
if [ "${IMAGES_FORCE_REBUILD:-0}" != 1 ] && [ "$have" = "$want" ]; then
    log "$IMAGE up to date (checked in $(( SECONDS - T0 ))s)"
    exit 0
fi

mkdir -p "$CACHE_DIR"
logf="$CACHE_DIR/build-patroni.log"
log "$IMAGE: building from images/patroni (mirror: ${MIRROR:-as in the base image})"
if ! docker build --network host --pull=false --label "$HASH_LABEL=$want" \
        --build-arg "DEBIAN_MIRROR=$MIRROR" --build-arg "DEBIAN_SECURITY_MIRROR=$SECURITY_MIRROR" \
        -t "$IMAGE" images/patroni >"$logf" 2>&1; then
    tail -n 30 "$logf" >&2
    die "docker build of $IMAGE failed (log: $logf). Fix: read the log; apt errors mean the Debian mirror is unreachable (set DEBIAN_MIRROR)."
fi
# The previous build of ours, now untagged (only images with our label; ones in use are kept).
docker image prune -f --filter "label=$HASH_LABEL" >/dev/null 2>&1 || true
log "$IMAGE built in $(( SECONDS - T0 ))s"
