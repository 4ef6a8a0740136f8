#!/usr/bin/env bash
# Run a command on the SoulNear host of the inventory in use, with a terminal when we have one
# (make ps, make shell-db, make logs-bot, ...). The host is the first one of the group soulnear, reached
# the way Ansible reaches it, from the inventory's own variables (no vault password needed: secrets are
# never read):
#   ansible_connection docker / community.docker.docker -> docker exec [-it] <ansible_host> ...
#   ssh (the default) -> ssh with ansible_ssh_args (or ANSIBLE_SSH_ARGS), ansible_port, ansible_user,
#                        ansible_ssh_private_key_file, ansible_ssh_common_args and ansible_ssh_extra_args
#                        (so ProxyJump, ProxyCommand and other options work as they do for Ansible)
#   local -> runs here
# A user other than root runs the command through sudo (docker needs root); with a sudo password,
# sudo asks for it on the terminal, or - without a terminal - reads it from BECOME_PASSWORD_FILE (sent on the
# command's standard input, never on a command line: `sudo -S`; the command then gets no other input).
#
#   INVENTORY=~/soulnear-inventory/hosts.yml scripts/on-host.sh soulnear ps
#   SOULNEAR_HOST=bot2 scripts/on-host.sh ...     pick another host of the group
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

INVENTORY="${INVENTORY:-inventory/sandbox/hosts.yml}"
ANSIBLE="${ANSIBLE:-.venv/bin/ansible}"
ANSIBLE_INVENTORY="${ANSIBLE_INVENTORY:-$(dirname "$ANSIBLE")/ansible-inventory}"
GROUP="${SOULNEAR_GROUP:-soulnear}"
PYTHON="${VENV_PYTHON:-.venv/bin/python}"

die() { printf 'on-host: %s\n' "$*" >&2; exit 2; }

[ $# -gt 0 ] || die "usage: scripts/on-host.sh COMMAND [ARG...]"
[ -e "$INVENTORY" ] || die "inventory $INVENTORY not found. Fix: set INVENTORY=path/to/hosts.yml"

host="${SOULNEAR_HOST:-}"
if [ -z "$host" ]; then
    host="$("$ANSIBLE" "$GROUP" -i "$INVENTORY" --list-hosts 2>/dev/null | sed -n '2{s/^ *//;p}')"
    [ -n "$host" ] || die "no host in group '$GROUP' of $INVENTORY. Fix: add the host to that group"
fi

tty=0
if [ -t 0 ] && [ -t 1 ]; then tty=1; fi
password_file="${BECOME_PASSWORD_FILE:-}"
if [ -n "$password_file" ]; then
    [ -r "$password_file" ] && [ -f "$password_file" ] \
        || die "BECOME_PASSWORD_FILE=$password_file is not a readable file. Fix: give the file holding the sudo password"
    [ "$tty" = 1 ] && password_file=""  # a terminal: sudo asks there, and the command keeps its input
fi

# The host's variables (inline-vaulted secrets stay encrypted: they are not needed here), turned into the
# exact command line by Python. NUL-separated so no argument is ever re-split by the shell.
vars="$("$ANSIBLE_INVENTORY" -i "$INVENTORY" --host "$host")" \
    || die "ansible-inventory could not read host $host from $INVENTORY"
mapfile -d '' argv < <(printf '%s' "$vars" | "$PYTHON" -c '
import json, os, shlex, sys

host, tty, piped, command = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4:]
# -S: the password on standard input; the command itself reads /dev/null (a sudo without a password would leave
# the password line to the command)
sudo = ["sudo", "-S", "-p", "", "sh", "-c", "exec \"$@\" </dev/null", "sh"] if piped else ["sudo"]
v = json.load(sys.stdin)

def get(*names, default=""):
    for name in names:
        value = v.get(name)
        if value not in (None, ""):
            if "{{" in str(value):
                sys.exit("on-host: %s of %s is a template (%s); set it literally or use SOULNEAR_HOST" % (name, host, value))
            return str(value)
    return default

conn = get("ansible_connection", default="ssh")
addr = get("ansible_host", default=host)
user = get("ansible_user", "ansible_ssh_user")
if conn in ("docker", "community.docker.docker"):
    argv = ["docker", "exec"] + (["-i", "-t"] if tty else ["-i"]) + [addr] + command
elif conn in ("ssh", "smart", "ansible.builtin.ssh", "paramiko", "paramiko_ssh"):
    argv = shlex.split(get("ansible_ssh_executable", default="ssh"))
    argv += shlex.split(get("ansible_ssh_args", default=os.environ.get("ANSIBLE_SSH_ARGS", "-C -o ControlMaster=auto -o ControlPersist=60s")))
    if tty:
        argv.append("-t")
    port = get("ansible_port", "ansible_ssh_port")
    if port:
        argv += ["-o", "Port=" + port]
    key = get("ansible_ssh_private_key_file", "ansible_private_key_file")
    if key:
        argv += ["-o", "IdentityFile=" + os.path.expanduser(key)]
    if user:
        argv += ["-o", "User=" + user]
    argv += shlex.split(get("ansible_ssh_common_args")) + shlex.split(get("ansible_ssh_extra_args"))
    remote = " ".join(shlex.quote(part) for part in command)
    if user and user != "root":
        remote = " ".join(shlex.quote(part) for part in sudo + command)
    argv += [addr, remote]
elif conn in ("local", "ansible.builtin.local"):
    argv = (sudo if os.geteuid() != 0 else []) + command
else:
    sys.exit("on-host: connection %r of host %s is not supported here (docker, ssh or local)" % (conn, host))
sys.stdout.write("".join(part + "\0" for part in argv))
' "$host" "$tty" "$([ -n "$password_file" ] && echo 1 || echo 0)" "$@")
[ "${#argv[@]}" -gt 0 ] || die "could not work out how to reach $host"
if [ -n "$password_file" ]; then
    # The password's first line, then nothing: sudo -S reads one line (a sudo that needs none reads nothing).
    exec "${argv[@]}" < <(head -n 1 "$password_file"; echo)
fi
exec "${argv[@]}"
