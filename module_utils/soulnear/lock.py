# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deploy lock: no two deploys, redeploys or restores on one host at once.

The lock is a directory (default /var/lib/soulnear/deploy.lock) holding one JSON record, `holder`:
who holds it (operator and controller), the run's id, the operation, when it was taken and the holder's last
heartbeat. Every change happens under an fcntl lock on the sibling file `<dir>.guard`, so reading the record,
deciding and writing the new one is one atomic step: of two runs that try to take (or take over) the lock at
the same moment, exactly one wins.

A lock is stale, and may be taken over, only when its holder has not renewed it for `ttl_minutes` (a deploy
renews it at every step; its long-running modules renew it while they work), or when its holder is a process
on this host that no longer exists. A live holder is never taken over however long it has held the lock.

Readers: the deploy_lock module (take, renew, release, status), the host monitor (a held lock is a maintenance
window: no restarts, no alerts) and the long-running modules (renew while they work).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import socket
import time

from . import files

DEFAULT_PATH = '/var/lib/soulnear/deploy.lock'
DEFAULT_TTL_MINUTES = 60
RECORD = 'holder'


class LockHeld(Exception):
    """Another live run holds the lock; .record is its record."""

    def __init__(self, path, record, ttl_minutes=DEFAULT_TTL_MINUTES):
        self.path = path
        self.record = record
        super(LockHeld, self).__init__(describe_refusal(path, record, ttl_minutes))


def _guard(path):
    return files.lock(os.path.abspath(path).rstrip('/') + '.guard', wait=True)


def read(path):
    """The lock's record, or None when nobody holds it. A directory without a readable record (a run killed
    between creating it and writing the record, or an older layout) reads as a record with no heartbeat."""
    if not os.path.isdir(path):
        return None
    try:
        with open(os.path.join(path, RECORD)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        try:
            since = os.stat(path).st_mtime
        except OSError:
            return None
        return dict(holder='unknown (no holder record)', since=since, heartbeat=since)
    if not isinstance(record, dict):
        record = dict(holder=str(record))
    record.setdefault('since', 0)
    record.setdefault('heartbeat', record['since'])
    return record


def pid_alive(pid):
    """False only when no process with this id runs on this host; one of another user, or a pid that cannot be
    read, counts as alive (never taken for gone). Also the leader's test of its state file (leader.read_state)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def is_stale(record, ttl_minutes=DEFAULT_TTL_MINUTES, now=None):
    """True when the holder has stopped renewing for ttl_minutes, or is a process on this host that is gone."""
    now = time.time() if now is None else now
    pid = record.get('pid')
    if pid and record.get('host') == socket.gethostname():
        return not pid_alive(pid)
    return now - float(record.get('heartbeat') or 0) >= float(ttl_minutes) * 60


def status(path=DEFAULT_PATH, ttl_minutes=DEFAULT_TTL_MINUTES, now=None):
    """{held, stale, record, age_seconds, idle_seconds} of the lock (held is False when nobody holds it)."""
    now = time.time() if now is None else now
    record = read(path)
    if record is None:
        return dict(held=False, stale=False, record=None, age_seconds=None, idle_seconds=None)
    return dict(held=True, stale=is_stale(record, ttl_minutes, now), record=record,
                age_seconds=int(now - float(record.get('since') or 0)),
                idle_seconds=int(now - float(record.get('heartbeat') or 0)))


def _write(path, record):
    os.makedirs(path, mode=0o700, exist_ok=True)
    files.write_private(os.path.join(path, RECORD), json.dumps(record, sort_keys=True) + '\n')


def acquire(path, run_id, holder, operation='deploy', ttl_minutes=DEFAULT_TTL_MINUTES, pid=None, now=None,
            check_mode=False):
    """Take the lock for run_id (or renew it when run_id already holds it).

    Returns (result, record): result is 'taken', 'renewed' or 'taken over' (then record['took_over'] is the
    stale record that was replaced). Raises LockHeld when another live run holds it. check_mode decides the
    same way and writes nothing.
    """
    if not run_id:
        raise ValueError('run_id is required')
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    guard = _guard(path)
    try:
        now = time.time() if now is None else now
        current = read(path)
        if current is not None and current.get('run_id') == run_id:
            current['heartbeat'] = now
            if not check_mode:
                _write(path, current)
            return 'renewed', current
        if current is not None and not is_stale(current, ttl_minutes, now):
            raise LockHeld(path, current, ttl_minutes)
        record = dict(run_id=run_id, holder=holder, operation=operation, since=now, heartbeat=now,
                      host=socket.gethostname())
        if pid:
            record['pid'] = int(pid)
        if current is not None:
            record['took_over'] = current
        if not check_mode:
            _write(path, record)
        return ('taken over' if current is not None else 'taken'), record
    finally:
        guard.close()


def renew(path, run_id, now=None):
    """Refresh the heartbeat of the lock run_id holds; False when it does not hold it (nothing is written)."""
    guard = _guard(path)
    try:
        current = read(path)
        if current is None or current.get('run_id') != run_id:
            return False
        current['heartbeat'] = time.time() if now is None else now
        _write(path, current)
        return True
    finally:
        guard.close()


def release(path, run_id=None, force=False, check_mode=False):
    """Release the lock run_id holds (or any holder's with force). Returns the released record, or None when
    there was nothing to release for this run (a refused run must never release the holder's lock)."""
    guard = _guard(path)
    try:
        current = read(path)
        if current is None:
            return None
        if not force and current.get('run_id') != run_id:
            return None
        if not check_mode:
            shutil.rmtree(path, ignore_errors=True)
        return current
    finally:
        guard.close()


def _when(stamp):
    return time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(stamp or 0)))


def describe(record):
    """'alice@laptop (deploy, run ab12cd) since 2026-11-29 10:00:00 UTC'"""
    if not record:
        return 'nobody'
    run = record.get('run_id')
    what = ', '.join(x for x in (record.get('operation'), 'run %s' % run if run else None) if x)
    return '%s%s since %s' % (record.get('holder') or 'unknown', ' (%s)' % what if what else '',
                              _when(record.get('since')))


def describe_refusal(path, record, ttl_minutes=DEFAULT_TTL_MINUTES):
    return ('Another deploy, redeploy or restore holds the lock %s: %s, last active %s. Wait for it to finish. '
            'If no such run is active any more (it was killed), release the lock with make unlock CONFIRM=yes; '
            'it also expires by itself %s minutes after its holder was last active.'
            % (path, describe(record), _when(record.get('heartbeat')), ttl_minutes))
