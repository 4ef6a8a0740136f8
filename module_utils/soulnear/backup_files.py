# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backups directory as backup, retention, restore and the health check read it, and the error they report.

- File names follow a strftime-style pattern (DEFAULT_NAME_PATTERN); the date in the name is the backup's time.
- A backup is verified when its sha256 sidecar (`<name>.sha256`, `sha256sum -c` format) exists: the backup
  writes it only after `pg_restore --list` accepted the dump.
- One lock file per directory: backup, restore and restore-test never run at the same time on one directory.
- Hidden `.<name>.partial-<pid>` files are being written (files.private_file); the next locked run removes
  those a killed run left.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os
import re
import subprocess

from .containers import DockerError
from .files import TEMP_MARK, lock, remove, write_private
from .pg import ConnectError, describe_error, psycopg2

DEFAULT_NAME_PATTERN = 'backup_%Y%m%d_%H%M%S.dump'
SAFETY_NAME_PATTERN = 'pre_restore_%Y%m%d_%H%M%S.dump'
SIDECAR_SUFFIX = '.sha256'
LOCK_NAME = '.soulnear-backup.lock'


class BackupError(Exception):
    """A failure meant for the operator: the message names the cause and the fix."""

    def __init__(self, message, result=None):
        Exception.__init__(self, message)
        self.result = result or {}


# What the modules and the host command turn into an operator's message (never a traceback).
FAILURES = (BackupError, ConnectError, DockerError, OSError, subprocess.SubprocessError) + (
    (psycopg2.Error,) if psycopg2 is not None else ())


def describe_failure(exc):
    if psycopg2 is not None and isinstance(exc, psycopg2.Error):
        return 'PostgreSQL error: %s' % describe_error(exc)
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return '%s: %s' % (exc.filename, exc.strerror)
    return str(exc)


def null_log(_message):
    pass


_CODES = {'Y': r'(?P<Y>\d{4})', 'm': r'(?P<m>\d{2})', 'd': r'(?P<d>\d{2})',
          'H': r'(?P<H>\d{2})', 'M': r'(?P<M>\d{2})', 'S': r'(?P<S>\d{2})'}
_PATTERN_CACHE = {}


def pattern_regex(pattern):
    """Compiled regex for a strftime-style name pattern; only %Y %m %d %H %M %S (each once) are allowed."""
    if pattern in _PATTERN_CACHE:
        return _PATTERN_CACHE[pattern]
    if not pattern or '/' in pattern or pattern.startswith('.') or pattern.endswith(SIDECAR_SUFFIX):
        raise BackupError('name pattern %r must be a plain file name (no "/", not hidden, not ending in %s)'
                          % (pattern, SIDECAR_SUFFIX))
    parts, seen, i = [], set(), 0
    while i < len(pattern):
        char = pattern[i]
        if char == '%':
            code = pattern[i + 1:i + 2]
            if code not in _CODES or code in seen:
                raise BackupError('name pattern %r: only %%Y %%m %%d %%H %%M %%S may be used, each once' % pattern)
            seen.add(code)
            parts.append(_CODES[code])
            i += 2
        else:
            parts.append(re.escape(char))
            i += 1
    if not set('Ymd') <= seen:
        raise BackupError('name pattern %r needs %%Y, %%m and %%d: retention works on the date in the name' % pattern)
    regex = re.compile('^' + ''.join(parts) + '$')
    _PATTERN_CACHE[pattern] = regex
    return regex


def parse_name(name, pattern):
    """The timestamp in a backup file name, or None when the name does not follow the pattern."""
    match = pattern_regex(pattern).match(name)
    if not match:
        return None
    fields = match.groupdict()
    try:
        return datetime.datetime(int(fields['Y']), int(fields['m']), int(fields['d']), int(fields.get('H') or 0),
                                 int(fields.get('M') or 0), int(fields.get('S') or 0))
    except ValueError:
        return None


def list_backups(directory, pattern=DEFAULT_NAME_PATTERN):
    """Backups in directory following pattern, newest first: name, path, time, size, verified (sidecar present)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    present = set(names)
    found = []
    for name in names:
        when = parse_name(name, pattern)
        path = os.path.join(directory, name)
        if when is None or not os.path.isfile(path):
            continue
        found.append(dict(name=name, path=path, time=when, size=os.path.getsize(path),
                          verified=name + SIDECAR_SUFFIX in present))
    found.sort(key=lambda b: (b['time'], b['name']), reverse=True)
    return found


def read_sidecar(dump_path):
    """The sha256 recorded next to dump_path, or None when there is no sidecar."""
    try:
        with open(dump_path + SIDECAR_SUFFIX) as handle:
            text = handle.read().split()
    except FileNotFoundError:
        return None
    if not text or not re.match(r'^[0-9a-f]{64}$', text[0]):
        raise BackupError('%s%s is not a sha256 sidecar (expected "<64 hex digits>  <file name>"); '
                          'restore an intact copy of it or pass the check deliberately with require_checksum=false'
                          % (dump_path, SIDECAR_SUFFIX))
    return text[0]


def write_sidecar(dump_path, digest):
    """Record the sha256 of dump_path next to it (mode 0600), as `sha256sum -c` reads it."""
    write_private(dump_path + SIDECAR_SUFFIX, '%s  %s\n' % (digest, os.path.basename(dump_path)))


def ensure_dir(path, check_mode=False):
    """Create the backups directory (0700) when missing; True when it was (or would be) created."""
    if os.path.isdir(path):
        return False
    if not check_mode:
        os.makedirs(path, 0o700)
        os.chmod(path, 0o700)
    return True


class DirLock:
    """flock on <dir>/.soulnear-backup.lock: one backup/restore/restore-test per directory at a time."""

    def __init__(self, directory, purpose):
        self.path = os.path.join(directory, LOCK_NAME)
        self.purpose = purpose
        self.handle = None

    def __enter__(self):
        self.handle = lock(self.path)
        if self.handle is None:
            with open(self.path) as busy:
                holder = busy.read().strip() or 'unknown'
            raise BackupError('another backup, restore or restore-test is running on %s (%s); wait for it to '
                              'finish (ps -p PID shows it) and run again' % (os.path.dirname(self.path), holder))
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write('pid %d, %s, since %s\n' % (os.getpid(), self.purpose,
                                                      datetime.datetime.now().isoformat(timespec='seconds')))
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        self.handle.close()  # closing releases the flock
        return False


def remove_stale_partials(directory, log=null_log):
    """Temporary files left by a run that was killed (we hold the lock, so no run owns them)."""
    removed = []
    for name in sorted(os.listdir(directory)):
        if name.startswith('.') and TEMP_MARK in name:
            remove(os.path.join(directory, name))
            removed.append(name)
            log('removed %s, left by an interrupted run' % name)
    return removed
