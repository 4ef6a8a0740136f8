#!/usr/bin/env bash
# The disposable local "VPS" the default inventory deploys to: a Debian container
# running systemd (soulnear/sandbox:bookworm), where the project's docker_host
# role installs a nested Docker engine.
#
#   scripts/sandbox.sh [up]   create or start it, wait for systemd (default)
#   scripts/sandbox.sh down   remove the container AND its Docker volume
#   scripts/sandbox.sh status show its state
#
#   SANDBOX_SUITE=trixie      a Debian 13 VPS (soulnear/sandbox:trixie) instead of Debian 12;
#                             SANDBOX_NAME, SANDBOX_IMAGE name another container or image
#
# Flags (docs/design.md, "Disposable hosts"): --privileged fails on machines that
# withhold CAP_SYS_RESOURCE, so only the capabilities systemd and a nested dockerd
# need are added. SYS_PTRACE is required: without it `docker exec` (and
# HEALTHCHECKs) into a nested container whose PID 1 is not root - postgres runs as
# uid 999 - fail with "error executing setns process: exit status 1" (reading
# /proc/PID/ns of another uid needs it).
# The named volume at /var/lib/docker gives the nested engine overlay2 (on the
# container's overlayfs root it would fall back to vfs).
# /proc/sys stays read-only (no --security-opt systempaths=unconfined): a writable one would let the VPS's
# systemd-sysctl write kernel.pid_max and kernel.core_pattern of the machine itself. trixie's Docker 26 needs
# DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1 there, which the docker_host role sets (docs/debian.md).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

NAME="${SANDBOX_NAME:-soulnear-sandbox}"
HOSTNAME_="${SANDBOX_HOSTNAME:-sandbox}"
SUITE="${SANDBOX_SUITE:-bookworm}"
IMAGE="${SANDBOX_IMAGE:-soulnear/sandbox:$SUITE}"
VOLUME="${NAME}-docker"
WAIT_SECONDS="${SANDBOX_WAIT_SECONDS:-120}"

log() { printf '[sandbox] %s\n' "$*"; }
die() { printf '[sandbox] ERROR: %s\n' "$*" >&2; exit 1; }

container_state() { docker inspect --format '{{.State.Status}}' "$NAME" 2>/dev/null || true; }

ensure_engine() {
    command -v docker >/dev/null 2>&1 || die "docker client not found. Fix: run scripts/docker-engine.sh."
    if ! docker info >/dev/null 2>&1; then
        log "no Docker engine answers: running scripts/docker-engine.sh"
        scripts/docker-engine.sh
    fi
}

# systemd inside: "running" or "degraded" (some unit failed) both mean booted.
wait_for_systemd() {
    local start=$SECONDS state=""
    while :; do
        state="$(timeout 10 docker exec "$NAME" systemctl is-system-running --wait 2>/dev/null || true)"
        state="${state//[$'\r\n ']/}"
        case "$state" in
            running) log "systemd is running ($(( SECONDS - start ))s)"; return 0 ;;
            degraded)
                log "systemd is up but degraded ($(( SECONDS - start ))s); failed units:"
                docker exec "$NAME" systemctl --failed --no-legend --plain 2>/dev/null | sed 's/^/[sandbox]   /' || true
                return 0 ;;
        esac
        [ "$(container_state)" = running ] \
            || die "container $NAME stopped while booting. Fix: look at 'docker logs $NAME'; the flags need cgroups mounted at /sys/fs/cgroup on the host."
        if (( SECONDS - start >= WAIT_SECONDS )); then
            die "systemd in $NAME did not finish booting within ${WAIT_SECONDS}s (state: '${state:-unknown}'). Fix: 'docker exec $NAME systemctl list-jobs' shows what hangs; 'scripts/sandbox.sh down' then up starts over."
        fi
        sleep 1
    done
}

cmd_up() {
    local t0=$SECONDS state
    ensure_engine
    state="$(container_state)"
    case "$state" in
        running)
            log "$NAME already running"
            ;;
        "")
            if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
                log "image $IMAGE missing: running scripts/images.sh"
                if [ "$SUITE" = trixie ]; then IMAGES_TRIXIE=1 scripts/images.sh; else scripts/images.sh; fi
            fi
            log "creating $NAME from $IMAGE (volume $VOLUME at /var/lib/docker)"
            docker run -d --name "$NAME" --hostname "$HOSTNAME_" \
                --label org.soulnear.sandbox=1 \
                --cap-add SYS_ADMIN --cap-add NET_ADMIN --cap-add SYS_PTRACE \
                --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
                --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
                --tmpfs /run --tmpfs /run/lock \
                -v "$VOLUME":/var/lib/docker \
                "$IMAGE" /lib/systemd/systemd >/dev/null \
                || die "docker run of $NAME failed (see above). Fix: 'scripts/sandbox.sh down' removes leftovers; do not add --privileged (it fails on these machines)."
            ;;
        *)
            log "$NAME exists ($state): starting it"
            docker start "$NAME" >/dev/null || die "docker start $NAME failed. Fix: 'scripts/sandbox.sh down' and up again to recreate it."
            ;;
    esac
    # A sandbox from an older (or another) image keeps running as it is: say so.
    local want have
    want="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
    have="$(docker inspect --format '{{.Image}}' "$NAME")"
    if [ -n "$want" ] && [ "$want" != "$have" ]; then
        log "note: $NAME runs another image than the current $IMAGE; 'scripts/sandbox.sh down && scripts/sandbox.sh up' recreates it"
    fi
    wait_for_systemd
    log "ready in $(( SECONDS - t0 ))s (docker exec -it $NAME bash)"
}

cmd_down() {
    ensure_engine
    if [ -n "$(container_state)" ]; then
        log "removing container $NAME"
        docker rm -f "$NAME" >/dev/null
    else
        log "no container $NAME"
    fi
    if docker volume inspect "$VOLUME" >/dev/null 2>&1; then
        log "removing volume $VOLUME"
        docker volume rm "$VOLUME" >/dev/null
    fi
}

cmd_status() {
    local state
    state="$(container_state)"
    if [ -z "$state" ]; then
        log "$NAME: absent (scripts/sandbox.sh up creates it)"
        return 0
    fi
    log "$NAME: $state, image $(docker inspect --format '{{.Config.Image}}' "$NAME"), started $(docker inspect --format '{{.State.StartedAt}}' "$NAME")"
    if [ "$state" = running ]; then
        log "systemd: $(docker exec "$NAME" systemctl is-system-running 2>/dev/null || true)"
        if docker exec "$NAME" sh -c 'command -v docker' >/dev/null 2>&1; then
            log "nested docker: $(docker exec "$NAME" docker info --format '{{.ServerVersion}} / {{.Driver}} / {{.ContainersRunning}} running' 2>/dev/null || echo 'installed, not answering')"
        else
            log "nested docker: not installed"
        fi
    fi
    if docker volume inspect "$VOLUME" >/dev/null 2>&1; then
        log "volume $VOLUME: present"
    fi
}

case "${1:-up}" in
    up)     cmd_up ;;
    down)   cmd_down ;;
    status) cmd_status ;;
    -h|--help|help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$1'. Usage: scripts/sandbox.sh [up|down|status]" ;;
esac
