#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine (idempotent).
#
#   - `docker info` already answers      -> nothing to do
#   - `dockerd` missing                  -> apt-get install docker.io (Debian's engine)
#   - PID 1 is systemd                   -> systemctl start docker
#   - otherwise (containers, CI runners) -> start dockerd detached in the background,
#                                           log to /var/log/dockerd.log
# then wait up to DOCKER_WAIT_SECONDS (60) for `docker info` to answer.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

WAIT_SECONDS="${DOCKER_WAIT_SECONDS:-60}"
LOG_FILE="${DOCKERD_LOG:-/var/log/dockerd.log}"

log() { printf '[docker-engine] %s\n' "$*"; }
die() { printf '[docker-engine] ERROR: %s\n' "$*" >&2; exit 1; }

engine_up() { docker info >/dev/null 2>&1; }

# Is a dockerd process alive?  (/proc directly: procps may not be installed.)
# Zombies do not count: where PID 1 does not reap (a plain container), a dead
# dockerd stays in /proc as state Z.
dockerd_running() {
    local d comm state
    for d in /proc/[0-9]*; do
        comm="$(cat "$d/comm" 2>/dev/null || true)"
        [ "$comm" = dockerd ] || continue
        state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "$d/status" 2>/dev/null || true)"
        [ "$state" = Z ] || return 0
    done
    return 1
}

if engine_up; then
    log "engine already running ($(docker info --format '{{.ServerVersion}} / {{.Driver}}' 2>/dev/null))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    die "no Docker engine answers and starting one needs root. Fix: run this script as root (sudo $0), or add your user to the 'docker' group if an engine is running."
fi

# --- install --------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 \
        || die "dockerd is not installed and apt-get is not available. Fix: install a Docker engine for this distribution by hand."
    log "dockerd not found: installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq \
        || die "apt-get update failed. Fix: check network access to the Debian mirror (/etc/apt/sources.list*)."
    # The preinstalled docker client may come from another package (docker-ce-cli);
    # docker.io ships its own client, so conflicts are resolved by apt.
    apt-get install -y -qq docker.io >/dev/null \
        || die "apt-get install docker.io failed. Fix: see the apt output above; a conflicting docker-ce/containerd.io package may need removing."
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is still not on PATH."
fi

# --- start ----------------------------------------------------------------
# sd_booted(): /run/systemd/system exists only when systemd is PID 1.
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -d /run/systemd/system ]; then
    log "PID 1 is systemd: systemctl start docker"
    systemctl start docker \
        || die "systemctl start docker failed. Fix: look at 'journalctl -u docker --no-pager -n 50'."
else
    if dockerd_running; then
        # A dockerd is already starting (or hung): wait for it instead of starting a second one.
        log "dockerd process exists but does not answer yet: waiting for it"
    else
        log "PID 1 is not systemd: starting dockerd in the background (log: $LOG_FILE)"
        mkdir -p "$(dirname "$LOG_FILE")"
        # setsid + nohup: own session, immune to SIGHUP, so the daemon outlives this
        # script and the shell/CI step that ran it. stdin from /dev/null so it does
        # not hold the caller's terminal/pipe open.
        setsid nohup dockerd >>"$LOG_FILE" 2>&1 </dev/null &
        disown || true
    fi
fi

# --- wait -----------------------------------------------------------------
start=$SECONDS
while ! engine_up; do
    if (( SECONDS - start >= WAIT_SECONDS )); then
        if [ -f "$LOG_FILE" ]; then
            printf '%s\n' "--- last lines of $LOG_FILE ---" >&2
            tail -n 20 "$LOG_FILE" >&2 || true
        fi
        die "the Docker engine did not answer within ${WAIT_SECONDS}s. Fix: read $LOG_FILE (common causes: a stale /var/run/docker.pid, no iptables, storage driver errors); remove a stale pid file and re-run."
    fi
    if ! dockerd_running && (( SECONDS - start >= 3 )); then
        tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
        die "dockerd exited right after starting. Fix: read $LOG_FILE (shown above) for the cause."
    fi
    sleep 1
done

log "engine ready after $(( SECONDS - start ))s ($(docker info --format '{{.ServerVersion}} / {{.Driver}}'))"
