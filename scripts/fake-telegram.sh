#!/usr/bin/env bash
# The fake Telegram Bot API (images/fake-telegram) on a deployment host's nested Docker engine, where the bot finds
# it as api.telegram.org: a network alias on the deployment's network (soulnear_net). For tests and for trying a bot
# on the local sandbox without a real token.
#
#   scripts/fake-telegram.sh up [HOST]       build its image on HOST, make the certificates, run it (idempotent)
#   scripts/fake-telegram.sh ca [HOST]       print the controller path of its test CA (copied back from HOST)
#   scripts/fake-telegram.sh status [HOST]   its state and control URL
#   scripts/fake-telegram.sh call PATH [JSON]   the control API (from the host), e.g. call 'state?token=123:abc'
#                                            (the host: FAKE_TELEGRAM_HOST or SANDBOX_NAME)
#   scripts/fake-telegram.sh down [HOST]     remove the container (the bot reaches no api.telegram.org any more)
#   scripts/fake-telegram.sh purge [HOST]    down, and remove its image, files and certificates from HOST and the CA
#                                            copy here
#
# HOST is the container of a deployment host (the local sandbox of scripts/sandbox.sh, a Molecule VPS), reached with
# docker exec; default $FAKE_TELEGRAM_HOST, else $SANDBOX_NAME, else soulnear-sandbox. The deployment must be up (its
# network exists): make deploy first. The host needs no registry: the image is built there from the base image the
# deployment already loaded (soulnear/python:3-bookworm), with no network.
#
# Then deploy the bot with the CA trusted and a token of the form the frameworks accept:
#   -e app_ca_file=$(scripts/fake-telegram.sh ca) -e '{"app_env": {"BOT_TOKEN": "123456:TEST"}}'
# and drive it through the control API (images/fake-telegram/README.md), e.g.
#   scripts/fake-telegram.sh call updates '{"token": "123456:TEST", "text": "/start"}'
#
# Settings (environment): FAKE_TELEGRAM_NETWORK (soulnear_net), FAKE_TELEGRAM_NAME (container, fake-telegram),
# FAKE_TELEGRAM_BASE_IMAGE (soulnear/python:3-bookworm), FAKE_TELEGRAM_WAIT (seconds to become healthy, 90).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

NETWORK="${FAKE_TELEGRAM_NETWORK:-soulnear_net}"
NAME="${FAKE_TELEGRAM_NAME:-fake-telegram}"
BASE_IMAGE="${FAKE_TELEGRAM_BASE_IMAGE:-soulnear/python:3-bookworm}"
WAIT_SECONDS="${FAKE_TELEGRAM_WAIT:-90}"
REPO=soulnear-test/fake-telegram
LABEL=org.soulnear.test=fake-telegram
SRC=images/fake-telegram
# On the host: the image's build context, and the certificates (certs/ from make-certs.sh, root only; serve/ what the
# container mounts: its certificate and a key readable by its uid 10001).
HOST_DIR=/opt/soulnear-fake-telegram
CERTS="$HOST_DIR/certs"
SERVE="$HOST_DIR/serve"

log() { printf '[fake-telegram] %s\n' "$*" >&2; }
die() { printf '[fake-telegram] ERROR: %s\n' "$*" >&2; exit 1; }

command="${1:-}"
[ -n "$command" ] || { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }
shift
HOST="${FAKE_TELEGRAM_HOST:-${SANDBOX_NAME:-soulnear-sandbox}}"
case "$command" in
    call) ;;   # PATH [JSON]; the host from the environment
    *) if [ $# -ge 1 ]; then HOST="$1"; shift; fi ;;
esac
# A container name (Docker's rule); it also names the directory of the CA copy here.
[[ "$HOST" =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ ]] || die "'$HOST' is not a container name"
CACHE="$ROOT/.cache/fake-telegram/$HOST"

on_host() { docker exec "$HOST" "$@"; }
# ... with this script's stdin
on_host_in() { docker exec -i "$HOST" "$@"; }

need_host() {
    [ "$(docker inspect -f '{{.State.Running}}' "$HOST" 2>/dev/null)" = true ] \
        || die "host container $HOST is not running. Fix: scripts/sandbox.sh up (SANDBOX_NAME=$HOST), or name the host: $0 $command HOST"
    on_host docker info >/dev/null 2>&1 \
        || die "no Docker engine answers inside $HOST. Fix: deploy to it first (make deploy)"
}

need_network() {
    on_host docker network inspect "$NETWORK" >/dev/null 2>&1 \
        || die "$HOST has no Docker network $NETWORK: the deployment is not there yet. Fix: deploy first (make deploy), or set FAKE_TELEGRAM_NETWORK"
}

# The image is tagged with the hash of its build context, so a changed server.py is built again and an unchanged one
# never is.
source_hash() {
    (cd "$SRC" && sha256sum Dockerfile server.py | sha256sum | cut -c1-12)
}

ensure_image() {
    local image="$REPO:$(source_hash)"
    if on_host docker image inspect "$image" >/dev/null 2>&1; then
        log "image $image present on $HOST"
    else
        on_host docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
            || die "$HOST has no base image $BASE_IMAGE. Fix: deploy first (it loads the bot's base image), or set FAKE_TELEGRAM_BASE_IMAGE to an image $HOST has"
        log "building $image on $HOST from $BASE_IMAGE"
        on_host sh -c "rm -rf $HOST_DIR/src && mkdir -p $HOST_DIR/src"
        tar -C "$SRC" -c Dockerfile server.py | on_host_in tar -x -C "$HOST_DIR/src"
        if ! out="$(on_host docker build --network none --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$image" \
                    "$HOST_DIR/src" 2>&1)"; then
            printf '%s\n' "$out" | tail -n 20 >&2
            die "docker build of $image failed on $HOST (above)"
        fi
    fi
    # Older builds of it go (the running container, if any, is replaced below).
    on_host docker image ls --format '{{.Repository}}:{{.Tag}}' "$REPO" | { grep -vx "$image" || true; } \
        | while read -r old; do on_host docker image rm "$old" >/dev/null 2>&1 || true; done
    printf '%s\n' "$image"
}

# make-certs.sh on the host (it keeps what exists), the container's copy owned by its uid, and the CA copied back.
ensure_certs() {
    on_host sh -c "mkdir -p $HOST_DIR && chmod 0755 $HOST_DIR"
    on_host_in sh -c "cat > $HOST_DIR/make-certs.sh && chmod 0755 $HOST_DIR/make-certs.sh" <"$SRC/make-certs.sh"
    on_host "$HOST_DIR/make-certs.sh" "$CERTS" | sed 's/^/[fake-telegram] /' >&2
    on_host sh -c "set -e; mkdir -p $SERVE; chmod 0755 $SERVE
        install -m 0644 -o 10001 -g 10001 $CERTS/server.crt $SERVE/server.crt
        install -m 0600 -o 10001 -g 10001 $CERTS/server.key $SERVE/server.key"
    fetch_ca
}

fetch_ca() {
    mkdir -p "$CACHE"
    on_host cat "$CERTS/ca.crt" >"$CACHE/ca.crt.tmp" 2>/dev/null \
        || { rm -f "$CACHE/ca.crt.tmp"; die "no CA on $HOST yet. Fix: $0 up $HOST"; }
    if cmp -s "$CACHE/ca.crt.tmp" "$CACHE/ca.crt"; then
        rm -f "$CACHE/ca.crt.tmp"
    else
        mv -f "$CACHE/ca.crt.tmp" "$CACHE/ca.crt"
        log "CA copied to ${CACHE#"$ROOT"/}/ca.crt"
    fi
}

container_field() { on_host docker inspect -f "$1" "$NAME" 2>/dev/null || true; }

address() {
    container_field "{{with index .NetworkSettings.Networks \"$NETWORK\"}}{{.IPAddress}}{{end}}"
}

wait_healthy() {
    local start=$SECONDS health
    while :; do
        health="$(container_field '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}')"
        case "$health" in
            "running healthy") return 0 ;;
            running*) ;;
            *) on_host docker logs --tail 20 "$NAME" >&2 || true
               die "$NAME is not running ($health); its log is above" ;;
        esac
        if (( SECONDS - start >= WAIT_SECONDS )); then
            on_host docker logs --tail 20 "$NAME" >&2 || true
            die "$NAME did not become healthy within ${WAIT_SECONDS}s ($health); its log is above"
        fi
        sleep 1
    done
}

cmd_up() {
    need_host
    need_network
    local image config
    image="$(ensure_image)"
    ensure_certs
    # What the running container must match: image, certificate, network. Anything else: it is replaced.
    config="$( { echo "$image $NETWORK"; on_host cat "$SERVE/server.crt"; } | sha256sum | cut -c1-12)"
    if [ "$(container_field '{{index .Config.Labels "org.soulnear.test.config"}}')" = "$config" ]; then
        if [ "$(container_field '{{.State.Running}}')" != true ]; then
            log "starting $NAME"
            on_host docker start "$NAME" >/dev/null
        else
            log "$NAME already runs $image on $NETWORK"
        fi
    else
        if [ -n "$(container_field '{{.Id}}')" ]; then
            log "replacing $NAME (image, certificate or network changed)"
            on_host docker rm -f "$NAME" >/dev/null
        fi
        log "running $NAME on $NETWORK as api.telegram.org"
        on_host docker run -d --name "$NAME" --label "$LABEL" --label "org.soulnear.test.config=$config" \
            --restart unless-stopped --network "$NETWORK" --network-alias api.telegram.org \
            --sysctl net.ipv4.ip_unprivileged_port_start=0 -v "$SERVE:/certs:ro" "$image" >/dev/null
    fi
    wait_healthy
    log "ready: https://api.telegram.org on $NETWORK of $HOST; control API http://$(address):8080/_fake/ (from $HOST)"
    log "its CA: ${CACHE#"$ROOT"/}/ca.crt (app_ca_file)"
}

cmd_ca() {
    need_host
    fetch_ca
    printf '%s\n' "$CACHE/ca.crt"
}

cmd_status() {
    need_host
    local state
    state="$(container_field '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}} {{.Config.Image}}')"
    if [ -z "$state" ]; then
        log "$NAME: absent on $HOST ($0 up $HOST runs it)"
        return 0
    fi
    log "$NAME on $HOST: $state; control API http://$(address):8080/_fake/ (from $HOST)"
}

# The control API, from the host (the container's address on the deployment network is reachable there only).
cmd_call() {
    local path="${1:?usage: $0 call PATH [JSON]}" body="${2:-}"
    need_host
    local ip
    ip="$(address)"
    [ -n "$ip" ] || die "$NAME is not running on $NETWORK of $HOST. Fix: $0 up $HOST"
    on_host python3 -c '
import sys, urllib.request
url, body = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, data=body.encode() if body else None, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        sys.stdout.write(response.read().decode() + "\n")
except urllib.error.HTTPError as exc:
    sys.stdout.write(exc.read().decode() + "\n")
    sys.exit(1)
' "http://$ip:8080/_fake/${path#/}" "$body"
}

cmd_down() {
    need_host
    if [ -n "$(container_field '{{.Id}}')" ]; then
        on_host docker rm -f "$NAME" >/dev/null
        log "removed $NAME from $HOST"
    else
        log "no $NAME on $HOST"
    fi
}

cmd_purge() {
    cmd_down
    on_host docker image ls --format '{{.Repository}}:{{.Tag}}' "$REPO" \
        | while read -r old; do on_host docker image rm "$old" >/dev/null 2>&1 || true; done
    on_host rm -rf "$HOST_DIR"
    rm -rf "$CACHE"
    log "removed its image and files from $HOST and ${CACHE#"$ROOT"/}"
}

case "$command" in
    up) cmd_up ;;
    ca) cmd_ca ;;
    status) cmd_status ;;
    call) cmd_call "$@" ;;
    down) cmd_down ;;
    purge) cmd_purge ;;
    -h|--help|help) sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$command'. Usage: $0 up|ca|status|call|down|purge [HOST]" ;;
esac
