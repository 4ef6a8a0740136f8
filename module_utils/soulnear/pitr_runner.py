# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where point-in-time recovery's tools run (pitr.py and pitr_restore.py use them; pitr.py names them too):
Runner runs a command as the server's user where the database runs - `docker exec` in the running container or,
when it is stopped (or its data is gone), `docker run --rm` of its image with its network and bind mounts;
pgbackrest() runs pgBackRest there; last_commit() and oldest_unarchived_commit() read WAL with pg_waldump there
(the last commit in a repository's archive, the oldest commit not archived yet). PitrError is the failure all of
point-in-time recovery raises.

Nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re
import subprocess

from . import containers

PGDATA = '/var/lib/postgresql/data'
REPO_MOUNT = '/var/lib/pgbackrest'
CONFIG_MOUNT = '/etc/pgbackrest'
LOG_MOUNT = '/var/log/postgresql'
HELPER_MOUNTS = (REPO_MOUNT, CONFIG_MOUNT, LOG_MOUNT)
# Console output off, warnings and errors on stderr: stdout carries only a command's own output (JSON, text).
QUIET = ['--log-level-console=off', '--log-level-stderr=warn']


class PitrError(Exception):
    """A failure meant for the operator: the message names the cause and the fix."""

    def __init__(self, message, result=None):
        Exception.__init__(self, message)
        self.result = result or {}


# -- running pgBackRest where the database runs ---------------------------------------------------------------

class Runner:
    """Runs commands as the server's user with the database container's image, network and bind mounts (the
    repository, pgBackRest's configuration, the log directory): `docker exec` while the container runs, else a
    throwaway `docker run --rm` (optionally with another volume as the data directory)."""

    def __init__(self, container, user='postgres', image=None):
        data = containers.inspect(container)
        if data is None:
            raise PitrError('the database container %s does not exist: pgBackRest runs in it (and in throwaway '
                            'containers of its image). Fix: deploy (make deploy) or, when it was lost with its data, '
                            'restore it: make restore TIME=latest CONFIRM=<database>' % container)
        state = data.get('State') or {}
        self.container = container
        self.user = user
        self.running = bool(state.get('Running')) and not state.get('Restarting')
        self.image = image or (data.get('Config') or {}).get('Image')
        mounts = data.get('Mounts') or []
        self.binds = [m for m in mounts if m.get('Type') == 'bind' and m.get('Destination') in HELPER_MOUNTS]
        self.volume = next((m.get('Name') for m in mounts
                            if m.get('Destination') == PGDATA and m.get('Type') == 'volume'), None)
        mode = (data.get('HostConfig') or {}).get('NetworkMode') or ''
        networks = sorted(((data.get('NetworkSettings') or {}).get('Networks') or {}).keys())
        self.network = mode if mode and mode not in ('default',) else (networks[0] if networks else None)
        self.restart_count = int(data.get('RestartCount') or 0)

    def bind_source(self, destination):
        return next((m.get('Source') for m in self.binds if m.get('Destination') == destination), None)

    def command(self, argv, throwaway=False, volume=None, env=None):
        env = dict(env or {})
        if self.running and not throwaway and volume is None:
            return containers.exec_argv(self.container, argv, user=self.user, env=env)
        cmd = [containers.docker_binary(), 'run', '--rm', '-i', '-u', self.user, '--entrypoint', argv[0],
               '--label', 'soulnear.component=pitr-helper']
        if self.network:
            cmd += ['--network', self.network]
        for mount in self.binds:
            cmd += ['-v', '%s:%s%s' % (mount['Source'], mount['Destination'], '' if mount.get('RW', True) else ':ro')]
        if volume:
            cmd += ['-v', '%s:%s' % (volume, PGDATA)]
        for key in sorted(env):
            cmd += ['-e', key]
        return cmd + [self.image] + list(argv[1:])

    def run(self, argv, timeout=600, throwaway=False, volume=None, env=None):
        """(exit code, stdout text, stderr text)."""
        env = dict(env or {})
        env.setdefault('TZ', 'UTC')
        cmd = self.command(argv, throwaway=throwaway, volume=volume, env=env)
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=containers.exec_env(env),
                              stdin=subprocess.DEVNULL, check=False)
        return proc.returncode, proc.stdout.decode('utf-8', 'replace'), proc.stderr.decode('utf-8', 'replace')


def error_text(out, err):
    """pgBackRest's ERROR lines (or the end of its output) as one line."""
    lines = [line.strip() for line in (err + '\n' + out).splitlines() if line.strip()]
    errors = [re.sub(r'^.*?ERROR:\s*', '', line) for line in lines if 'ERROR:' in line]
    text = ' | '.join(errors or lines[-3:]) or 'no output'
    return text[:1500]


def pgbackrest(settings, runner, args, timeout=None, throwaway=False, volume=None, check=True, what=None):
    """pgbackrest --stanza=<stanza> <args> as the server's user; returns (rc, stdout, stderr)."""
    argv = ['pgbackrest', '--stanza=%s' % settings['stanza']] + QUIET + list(args)
    rc, out, err = runner.run(argv, timeout=timeout or settings['command_timeout'], throwaway=throwaway,
                              volume=volume)
    if check and rc != 0:
        raise PitrError('pgbackrest %s failed (exit %d): %s' % (what or args[-1], rc, error_text(out, err)))
    return rc, out, err


_COMMIT = re.compile(r'desc: (?:COMMIT|ABORT)(?:_PREPARED)? '
                     r'(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\S+?);?(?:\s|$)')

# Run in the container: the newest archived segments (up to six) of one repository, newest first, until one holds a
# commit or an abort (the records a recovery target time is measured against); prints "<segment> <pg_waldump line>".
_LAST_COMMIT_SCRIPT = r'''
set -u
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
dir="archive/$STANZA/$ARCHIVE_ID/${SEGMENT:0:16}"
pgbackrest --stanza="$STANZA" --log-level-console=off --log-level-stderr=warn --repo="$REPO" repo-ls "$dir" \
    > list || exit 3
for file in $(grep -E '^[0-9A-F]{24}-[0-9a-f]{40}' list | sort -r | head -n 6); do
    name=${file:0:24}
    pgbackrest --stanza="$STANZA" --log-level-console=off --log-level-stderr=warn --repo="$REPO" repo-get \
        "$dir/$file" > packed || exit 4
    case "$file" in
        *.zst) zstd -dcq packed > "$name" ;;
        *.gz) gzip -dc packed > "$name" ;;
        *.lz4) lz4 -dcq packed > "$name" ;;
        *.bz2) bzip2 -dc packed > "$name" ;;
        *) mv packed "$name" ;;
    esac || exit 5
    line=$(pg_waldump -p "$work" "$name" 2>/dev/null | grep -E 'desc: (COMMIT|ABORT)' | tail -n 1)
    if [ -n "$line" ]; then echo "$name $line"; exit 0; fi
    rm -f "$name"
done
echo none
'''


def last_commit(settings, runner, repo):
    """(time of the last commit or abort in the repository's archived WAL, its segment); (None, None) when the
    newest segments hold none. Decompresses up to six segments (backups and checks switch segments that hold no
    commit) in the container and reads them with pg_waldump."""
    if not repo.get('archive_max') or not repo.get('archive_id'):
        return None, None
    env = dict(STANZA=settings['stanza'], ARCHIVE_ID=repo['archive_id'], SEGMENT=repo['archive_max'],
               REPO=str(repo['key']))
    rc, out, err = runner.run(['bash', '-c', _LAST_COMMIT_SCRIPT], timeout=300, env=env)
    if rc != 0:
        raise PitrError('reading the newest archived WAL of repo%d failed (exit %d): %s'
                        % (repo['key'], rc, error_text(out, err)))
    lines = out.strip().splitlines()
    line = lines[-1] if lines else 'none'
    when = _commit_time(line)
    return (when, line.split()[0]) if when else (None, None)


# Run in the container: the oldest commit PostgreSQL has written but not archived yet. The unarchived WAL is every
# segment waiting in pg_wal/archive_status (*.ready) and the one being written ($CURRENT); the first commit or abort
# in them, oldest segment first, is what a lost disk would take with it. Prints "<segment> <pg_waldump line>".
_UNARCHIVED_SCRIPT = r"""
set -u
cd "$PGDATA/pg_wal" || exit 3
names=$( (ls archive_status 2>/dev/null | sed -n 's/^\([0-9A-F]\{24\}\)\.ready$/\1/p'; echo "$CURRENT") \
    | sort -u | head -n 16)
for name in $names; do
    [ -f "$name" ] || continue
    line=$(pg_waldump "$name" 2>/dev/null | grep -m 1 -E 'desc: (COMMIT|ABORT)')
    if [ -n "$line" ]; then echo "$name $line"; exit 0; fi
done
echo none
"""


def _commit_time(line):
    """The time of a pg_waldump COMMIT/ABORT line (UTC: the helpers run with TZ=UTC), or None."""
    match = _COMMIT.search(line or '')
    if not match:
        return None
    stamp, zone = match.groups()
    when = datetime.datetime.strptime(stamp.split('.')[0], '%Y-%m-%d %H:%M:%S')
    if '.' in stamp:
        when = when.replace(microsecond=int((stamp.split('.')[1] + '000000')[:6]))
    if zone.upper() not in ('UTC', 'GMT', '+00', 'Z'):
        raise PitrError('pg_waldump printed times in zone %s; the helper sets TZ=UTC' % zone)
    return when.replace(tzinfo=datetime.timezone.utc)


def oldest_unarchived_commit(runner, current_segment):
    """(time, segment) of the oldest commit (or abort) in the WAL the server has not archived yet - the segments
    waiting in pg_wal/archive_status and current_segment, the one being written - read with pg_waldump in the
    running container; (None, None) when that WAL holds none (nothing a lost disk would take)."""
    rc, out, err = runner.run(['bash', '-c', _UNARCHIVED_SCRIPT], timeout=120,
                              env=dict(PGDATA=PGDATA, CURRENT=current_segment or ''))
    if rc != 0:
        raise PitrError('reading the unarchived WAL in %s failed (exit %d): %s'
                        % (runner.container, rc, error_text(out, err)))
    lines = out.strip().splitlines()
    line = lines[-1] if lines else 'none'
    when = _commit_time(line)
    return (when, line.split()[0]) if when else (None, None)
