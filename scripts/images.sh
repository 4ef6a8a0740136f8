#!/usr/bin/env bash
# Build (or pull) the local images the sandbox, Molecule and the tests rely on.
# Idempotent and fast on a second run: an image is rebuilt only when missing,
# when its build context changed, or with IMAGES_FORCE_REBUILD=1.
#
# Images (names are a contract used elsewhere in the project - keep them):
#   soulnear/debian:bookworm    pull debian:bookworm, else debootstrap + docker import
#   soulnear/postgres:15        pull postgres:15, else build images/postgres (bookworm's postgresql-15)
#   soulnear/sandbox:bookworm   images/sandbox: systemd "VPS" host (no docker.io preinstalled)
#   soulnear/python:3-bookworm  images/python: python3 + psycopg2, base for the sample bot
#   soulnear/patroni:15         images/patroni: soulnear/postgres:15 plus Debian's patroni and etcd, for the
#                               Patroni switchover test (tests/support/patronienv.py)
# Only when asked (docs/debian.md; CI's make test needs none of them):
#   IMAGES_TRIXIE=1             soulnear/debian:trixie and soulnear/sandbox:trixie, a Debian 13 "VPS"
#                               (molecule/trixie; make test-full and make images-trixie set it)
#   IMAGES_PG17=1               soulnear/postgres:17: images/postgres on soulnear/debian:trixie (trixie's
#                               postgresql-17 and pgBackRest 2.55), pull postgres:17 first (make images-pg17)
# Archives for the nested Docker engine inside the sandbox (docker load):
#   .cache/images/soulnear-postgres-15.tar
#   .cache/images/soulnear-python-3-bookworm.tar
#   .cache/images/soulnear-postgres-17.tar      (IMAGES_PG17=1)
#
# Environment:
#   IMAGES_TRIXIE=1, IMAGES_PG17=1   the images above, besides the default ones
#   IMAGES_FORCE_REBUILD=1   rebuild everything (no pulls are skipped either)
#   IMAGES_PULL=0            never try a registry pull (air-gapped hosts: saves nothing
#                            here as a failing pull is fast, but avoids surprises)
#   DEBIAN_MIRROR            Debian mirror for debootstrap and the images' apt sources
#   DEBIAN_SECURITY_MIRROR   Debian security mirror for the images' apt sources
#                            (both default to the mirrors this machine's own apt sources use, so a
#                            corporate mirror just works; deb.debian.org on a machine that is not Debian)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

FORCE="${IMAGES_FORCE_REBUILD:-0}"
PULL="${IMAGES_PULL:-1}"
TRIXIE="${IMAGES_TRIXIE:-0}"
PG17="${IMAGES_PG17:-0}"
# The first deb URI of this machine's apt sources (one-line and deb822 formats) whose suite matches
# the pattern; empty when the machine is not Debian or has none.
apt_source_uri() {
    local pattern="$1"
    grep -qs '^ID=debian' /etc/os-release || return 0
    {
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk -v re="$pattern" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                                              if ($(i + 1) ~ re) { print $i; exit } }'
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -e "$f" ] || continue
            awk -v re="$pattern" 'BEGIN { RS = ""; FS = "\n" }
                { types = uris = suites = ""
                  for (i = 1; i <= NF; i++) {
                      if ($i ~ /^Types:/) types = $i; else if ($i ~ /^URIs:/) uris = $i; else if ($i ~ /^Suites:/) suites = $i }
                  if (types !~ /[ \t]deb([ \t]|$)/ || $0 ~ /\nEnabled: *no/) next
                  n = split(suites, s, /[ \t]+/)
                  for (j = 2; j <= n; j++) if (s[j] ~ re) { split(uris, u, /[ \t]+/); print u[2]; exit } }' "$f"
        done
    } | head -n 1
}
MIRROR="${DEBIAN_MIRROR:-$(apt_source_uri '^[a-z]+(-updates)?$')}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(apt_source_uri '^[a-z]+-security$')}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
CACHE_DIR="$ROOT/.cache/images"
HASH_LABEL="org.soulnear.context-hash"

# soulnear/debian:<suite> is the base of every image built here (BASE_IMAGE build argument).
BASE_IMAGE="soulnear/debian:bookworm"
TRIXIE_BASE_IMAGE="soulnear/debian:trixie"
PG_IMAGE="soulnear/postgres:15"
PG17_IMAGE="soulnear/postgres:17"
SANDBOX_IMAGE="soulnear/sandbox:bookworm"
TRIXIE_SANDBOX_IMAGE="soulnear/sandbox:trixie"
PY_IMAGE="soulnear/python:3-bookworm"
PATRONI_IMAGE="soulnear/patroni:15"

log() { printf '[images] %s\n' "$*"; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

T0=$SECONDS
BUILT=0
step_start=0
step() { step_start=$SECONDS; BUILT=1; log "$*"; }
step_done() { log "  done in $(( SECONDS - step_start ))s"; }

command -v docker >/dev/null 2>&1 || die "docker client not found. Fix: run scripts/docker-engine.sh (installs Debian's docker.io)."
if ! docker info >/dev/null 2>&1; then
    log "no Docker engine answers: running scripts/docker-engine.sh"
    "$ROOT/scripts/docker-engine.sh"
fi

mkdir -p "$CACHE_DIR"
# One images.sh at a time (CI steps or engineers running it concurrently).
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    log "another images.sh is running: waiting for it"
    flock 9
fi

image_id()    { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
image_label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# Content hash of a build context: every file's path and content, plus extra
# strings (the base image ID, so derived images follow a rebuilt base).
context_hash() {
    local dir="$1"; shift
    {
        (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        printf '%s\n' "$@"
    } | sha256sum | cut -d' ' -f1
}

# Should IMAGE be (re)built for the wanted hash?  Returns 0 = build needed.
#   missing                       -> build
#   forced                        -> build
#   exists without our label      -> it came from a registry pull: keep it
#   exists with a different hash  -> context changed: build
needs_build() {
    local image="$1" want="$2" have
    [ "$FORCE" = 1 ] && return 0
    [ -n "$(image_id "$image")" ] || return 0
    have="$(image_label "$image" "$HASH_LABEL")"
    if [ -z "$have" ] || [ "$have" = "<no value>" ]; then
        return 1
    fi
    [ "$have" != "$want" ]
}

try_pull() {
    local remote="$1" local_name="$2"
    [ "$PULL" = 1 ] || return 1
    if timeout 300 docker pull -q "$remote" >/dev/null 2>&1; then
        docker tag "$remote" "$local_name"
        log "  pulled $remote -> $local_name"
        return 0
    fi
    log "  docker pull $remote failed (no registry?): building locally"
    return 1
}

# docker build with the output in a log file; the tail is shown on failure. Further arguments are
# NAME=VALUE build arguments.
build_image() {
    local image="$1" dir="$2" hash="$3" logf arg
    shift 3
    local build_args=()
    for arg in "$@"; do build_args+=(--build-arg "$arg"); done
    logf="$CACHE_DIR/build-${image//[\/:]/-}.log"
    if ! docker build --network host --pull=false "${build_args[@]}" \
            --label "$HASH_LABEL=$hash" -t "$image" "$dir" >"$logf" 2>&1; then
        tail -n 30 "$logf" >&2
        die "docker build of $image failed (full log: $logf). Fix: read the log; apt errors usually mean the Debian mirror is unreachable from 'docker build --network host'."
    fi
}

# --- soulnear/debian:<suite> --------------------------------------------------
# The recipe is this function's own text and the suite: editing it changes the hash and
# triggers a rebuild of the base and, through the base ID, of everything on top.
debootstrap_base() {
    local rootfs="$1" suite="$2"
    debootstrap --variant=minbase "$suite" "$rootfs" "$MIRROR" >"$CACHE_DIR/debootstrap-$suite.log" 2>&1 \
        || { tail -n 30 "$CACHE_DIR/debootstrap-$suite.log" >&2
             die "debootstrap $suite failed (log: $CACHE_DIR/debootstrap-$suite.log). Fix: check access to $MIRROR."; }
    # Same apt sources as the official debian:<suite> image (updates + security).
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Container-friendly apt/dpkg settings, as in the official image: no caches,
    # no translations, no recommends-by-accident, no services started during builds.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    printf '#!/bin/sh\n# no service starts inside image builds\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    # Host leftovers and caches that do not belong in an image.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
           "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/var/tmp/* \
           "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname" "$rootfs/etc/machine-id" \
           "$rootfs/debootstrap"
    : >"$rootfs/etc/machine-id"
}

ROOTFS=""
cleanup() {
    if [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ]; then
        # debootstrap mounts /proc and /sys in the target; never rm -rf through a mount.
        for m in proc sys dev/pts dev; do
            if mountpoint -q "$ROOTFS/rootfs/$m" 2>/dev/null; then
                umount -l "$ROOTFS/rootfs/$m" || true
            fi
        done
        rm -rf --one-file-system "$ROOTFS"
    fi
}
trap cleanup EXIT

# ensure_base SUITE: soulnear/debian:SUITE, pulled as debian:SUITE, else debootstrap + docker import.
ensure_base() {
    local suite="$1" image="soulnear/debian:$1" want
    want="$({ declare -f debootstrap_base; printf 'suite=%s\n' "$suite"; } | sha256sum | cut -d' ' -f1)"
    if ! needs_build "$image" "$want"; then
        log "$image up to date"
        return
    fi
    step "$image: building"
    if try_pull "debian:$suite" "$image"; then step_done; return; fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "  installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } \
            || die "cannot install debootstrap. Fix: apt-get install debootstrap (needs the Debian mirror)."
    fi
    [ -e "/usr/share/debootstrap/scripts/$suite" ] \
        || die "this machine's debootstrap does not know $suite. Fix: install a newer debootstrap (Debian 12's knows trixie)."
    # /var/tmp, not /tmp: /tmp may be a small tmpfs or mounted nodev.
    ROOTFS="$(mktemp -d /var/tmp/soulnear-rootfs.XXXXXX)"
    log "  debootstrap --variant=minbase $suite ($MIRROR)"
    debootstrap_base "$ROOTFS/rootfs" "$suite"
    log "  docker import"
    tar --numeric-owner -C "$ROOTFS/rootfs" -c . \
        | docker import \
            --change "LABEL $HASH_LABEL=$want" \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' \
            - "$image" >/dev/null
    cleanup
    ROOTFS=""
    step_done
}

# --- images built FROM a base ------------------------------------------------
# ensure_built IMAGE DIR [PULL_FROM] [BASE] [NAME=VALUE...]: DIR's Dockerfile built with the build arguments
# BASE_IMAGE=BASE (default soulnear/debian:bookworm) and NAME=VALUE; the hash covers the context, the base's
# image ID and the arguments, so a rebuilt base or another argument rebuilds the image.
ensure_built() {
    local image="$1" dir="$2" pull_from="${3:-}" base="${4:-$BASE_IMAGE}" want base_id
    shift $(( $# < 4 ? $# : 4 ))
    local args=("BASE_IMAGE=$base" "$@")
    base_id="$(image_id "$base")"
    [ -n "$base_id" ] || die "cannot build $image: its base image $base is missing"
    want="$(context_hash "$ROOT/$dir" "base=$base_id" "${args[@]}")"
    if ! needs_build "$image" "$want"; then
        log "$image up to date"
        return
    fi
    step "$image: building from $dir"
    if [ -n "$pull_from" ] && try_pull "$pull_from" "$image"; then step_done; return; fi
    build_image "$image" "$ROOT/$dir" "$want" "${args[@]}"
    step_done
}

# --- archives for the nested engine ------------------------------------------
# The image ID sits next to the archive; re-save only when it changed.
save_archive() {
    local image="$1" archive="$CACHE_DIR/$2" id
    id="$(image_id "$image")"
    [ -n "$id" ] || die "cannot save $image: image missing"
    if [ "$FORCE" != 1 ] && [ -s "$archive" ] && [ "$(cat "$archive.id" 2>/dev/null)" = "$id" ]; then
        log "${archive#"$ROOT"/} up to date"
        return
    fi
    step "saving $image -> ${archive#"$ROOT"/}"
    rm -f "$archive.tmp"
    docker save -o "$archive.tmp" "$image" \
        || { rm -f "$archive.tmp"; die "docker save $image failed. Fix: check free space in $CACHE_DIR."; }
    chmod 0644 "$archive.tmp"   # docker save creates 0600; nothing secret in here
    mv -f "$archive.tmp" "$archive"
    printf '%s\n' "$id" >"$archive.id.tmp" && mv -f "$archive.id.tmp" "$archive.id"
    log "  $(du -h "$archive" | cut -f1)"
    step_done
}

ensure_base bookworm
ensure_built "$PG_IMAGE" images/postgres postgres:15 "$BASE_IMAGE" PG_MAJOR=15
ensure_built "$SANDBOX_IMAGE" images/sandbox
ensure_built "$PY_IMAGE" images/python
ensure_built "$PATRONI_IMAGE" images/patroni "" "$PG_IMAGE"
save_archive "$PG_IMAGE" soulnear-postgres-15.tar
save_archive "$PY_IMAGE" soulnear-python-3-bookworm.tar
if [ "$TRIXIE" = 1 ] || [ "$PG17" = 1 ]; then
    ensure_base trixie
fi
if [ "$TRIXIE" = 1 ]; then
    ensure_built "$TRIXIE_SANDBOX_IMAGE" images/sandbox "" "$TRIXIE_BASE_IMAGE"
fi
if [ "$PG17" = 1 ]; then
    ensure_built "$PG17_IMAGE" images/postgres postgres:17 "$TRIXIE_BASE_IMAGE" PG_MAJOR=17
    save_archive "$PG17_IMAGE" soulnear-postgres-17.tar
fi

# Old builds of ours that lost their tag (only untagged images carrying our
# label; images still used by a container are kept by docker).
if [ "$BUILT" = 1 ]; then
    docker image prune -f --filter "label=$HASH_LABEL" >/dev/null 2>&1 || true
fi

log "all images ready in $(( SECONDS - T0 ))s"
