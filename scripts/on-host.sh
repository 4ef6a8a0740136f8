#!/usr/bin/env bash
# Run a command on the SoulNear host of the inventory in use, with a terminal when we have one
# (make shell-db, make logs-bot, ...). The host is the first one of the group soulnear; how to reach
# it comes from the inventory itself:
#   ansible_connection docker / community.docker.docker -> docker exec [-it] <ansible_host> ...
#   ssh (the default)                                    -> ssh [-t] [-p port] [-i key] user@host ...
#   local                                                -> runs here
# On an ssh host whose user is not root the command runs through sudo (docker needs root).
#
#   INVENTORY=inventory/production/hosts.yml scripts/on-host.sh docker ps
#   SOULNEAR_HOST=bot2 scripts/on-host.sh ...     pick another host of the group
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

INVENTORY="${INVENTORY:-inventory/sandbox/hosts.yml}"
ANSIBLE="${ANSIBLE:-.venv/bin/ansible}"
ANSIBLE_INVENTORY="${ANSIBLE_INVENTORY:-$(dirname "$ANSIBLE")/ansible-inventory}"
GROUP="${SOULNEAR_GROUP:-soulnear}"
PYTHON="${PYTHON:-.venv/bin/python}"

die() { printf 'on-host: %s\n' "$*" >&2; exit 2; }

[ $# -gt 0 ] || die "usage: scripts/on-host.sh COMMAND [ARG...]"
[ -e "$INVENTORY" ] || die "inventory $INVENTORY not found. Fix: set INVENTORY=path/to/hosts.yml"

host="${SOULNEAR_HOST:-}"
if [ -z "$host" ]; then
    host="$("$ANSIBLE" "$GROUP" -i "$INVENTORY" --list-hosts 2>/dev/null | sed -n '2{s/^ *//;p}')"
    [ -n "$host" ] || die "no host in group '$GROUP' of $INVENTORY. Fix: add the host to that group"
fi

# The host's connection variables as shell assignments (values quoted for eval).
vars="$("$ANSIBLE_INVENTORY" -i "$INVENTORY" --host "$host")" \
    || die "ansible-inventory could not read host $host from $INVENTORY"
eval "$(printf '%s' "$vars" | "$PYTHON" -c '
import json, shlex, sys
v = json.load(sys.stdin)
for key, var in (("ansible_connection", "conn"), ("ansible_host", "addr"), ("ansible_user", "user"),
                 ("ansible_port", "port"), ("ansible_ssh_private_key_file", "key")):
    value = v.get(key, "")
    if "{{" in str(value):
        sys.exit("on-host: %s of %s is a template (%s); set it literally or use SOULNEAR_HOST" % (key, sys.argv[1], value))
    print("%s=%s" % (var, shlex.quote(str(value))))
' "$host")"
addr="${addr:-$host}"

tty_flags=()
if [ -t 0 ] && [ -t 1 ]; then tty_flags=(-t); fi

case "${conn:-ssh}" in
    docker|community.docker.docker)
        interactive=()
        if [ -t 0 ]; then interactive=(-i); fi
        exec docker exec "${interactive[@]}" "${tty_flags[@]}" "$addr" "$@"
        ;;
    ssh|paramiko|paramiko_ssh|smart|ansible.builtin.ssh)
        ssh_args=("${tty_flags[@]}")
        [ -n "${port:-}" ] && ssh_args+=(-p "$port")
        [ -n "${key:-}" ] && ssh_args+=(-i "$key")
        target="$addr"
        [ -n "${user:-}" ] && target="$user@$addr"
        remote="$(printf '%q ' "$@")"
        if [ -n "${user:-}" ] && [ "$user" != root ]; then remote="sudo $remote"; fi
        exec ssh "${ssh_args[@]}" "$target" "$remote"
        ;;
    local|ansible.builtin.local)
        if [ "$(id -u)" -ne 0 ]; then exec sudo "$@"; fi
        exec "$@"
        ;;
    *)
        die "connection '${conn}' of host $host is not supported here (docker, ssh or local)"
        ;;
esac
