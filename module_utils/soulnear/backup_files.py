# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backups directory as backup, retention, restore and the health check read it, and the error they report.

- File names follow a strftime-style pattern (DEFAULT_NAME_PATTERN); the date in the name is the backup's time.
- A backup is verified when its sha256 sidecar (`<name>.sha256`, `sha256sum -c` format) exists: the backup
  writes it only after `pg_restore --list` accepted the dump. The sidecar also names the database
  (`# database: soul_bot`, a comment line sha256sum ignores); for a sidecar written before that, the database
  comes from the archive's own header. Several databases can share one directory: listing, retention and
  `latest` take the backups of one database.
- intact(): a verified backup's file still matches its sidecar. The sha256 of a file is computed once and cached
  (`.soulnear-checksums.json`, keyed by name, size and mtime), so checking the newest backup every minute
  costs a stat.
- One lock file per directory: backup, restore and restore-test never run at the same time on one directory.
- Hidden `.<name>.partial-<pid>` files are being written (files.private_file); the next locked run removes
  those a killed run left.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import os
import re
import subprocess

from .containers import DockerError
from .files import TEMP_MARK, lock, remove, sha256_file, write_private
from .pg import ConnectError, describe_error, psycopg2

DEFAULT_NAME_PATTERN = 'backup_%Y%m%d_%H%M%S.dump'
SAFETY_NAME_PATTERN = 'pre_restore_%Y%m%d_%H%M%S.dump'
SIDECAR_SUFFIX = '.sha256'
SIDECAR_DATABASE = '# database: '  # the sidecar's second line; sha256sum -c skips lines starting with #
LOCK_NAME = '.soulnear-backup.lock'
CHECKSUM_CACHE = '.soulnear-checksums.json'


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


def list_backups(directory, pattern=DEFAULT_NAME_PATTERN, database=None):
    """Backups in directory following pattern, newest first: name, path, time, size, mtime, verified (sidecar
    present) and database (recorded in the sidecar or the archive's header; None when unknown).

    With database, only that database's backups and those whose database is unknown (a file that is not an
    archive cannot be told apart, and is never pruned anyway unless it is verified)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    present = set(names)
    found = []
    for name in names:
        when = parse_name(name, pattern)
        path = os.path.join(directory, name)
        if when is None:
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if not os.path.isfile(path):
            continue
        verified = name + SIDECAR_SUFFIX in present
        owner = _sidecar_database(path) if verified else None
        if owner is None:
            owner = archive_database(path)
        if database is not None and owner not in (None, database):
            continue
        found.append(dict(name=name, path=path, time=when, size=st.st_size, mtime=st.st_mtime_ns,
                          verified=verified, database=owner))
    found.sort(key=lambda b: (b['time'], b['name']), reverse=True)
    return found


def _sidecar_lines(dump_path):
    with open(dump_path + SIDECAR_SUFFIX) as handle:
        return handle.read().splitlines()


def _sidecar_database(dump_path):
    try:
        lines = _sidecar_lines(dump_path)
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines[1:]:
        if line.startswith(SIDECAR_DATABASE):
            return line[len(SIDECAR_DATABASE):].strip() or None
    return None


def read_sidecar(dump_path):
    """The sha256 recorded next to dump_path, or None when there is no sidecar."""
    try:
        text = ' '.join(_sidecar_lines(dump_path)[:1]).split()
    except FileNotFoundError:
        return None
    if not text or not re.match(r'^[0-9a-f]{64}$', text[0]):
        raise BackupError('%s%s is not a sha256 sidecar (expected "<64 hex digits>  <file name>"); '
                          'restore an intact copy of it or pass the check deliberately with require_checksum=false'
                          % (dump_path, SIDECAR_SUFFIX))
    return text[0]


def write_sidecar(dump_path, digest, database=None):
    """Record the sha256 of dump_path next to it (mode 0600), as `sha256sum -c` reads it, and the database it
    holds on a comment line."""
    text = '%s  %s\n' % (digest, os.path.basename(dump_path))
    if database:
        text += '%s%s\n' % (SIDECAR_DATABASE, database)
    write_private(dump_path + SIDECAR_SUFFIX, text)


# -- the archive's header ------------------------------------------------------------------------------------

def archive_database(path):
    """The database name pg_dump wrote into a custom-format archive's header; None when the file is not one (or
    is too damaged to say). Read in Python, so listing a directory needs no docker exec."""
    try:
        with open(path, 'rb') as handle:
            data = handle.read(4096)
    except OSError:
        return None
    try:
        return _parse_header(data)
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def _parse_header(data):
    """ReadHead() of pg_dump's pg_backup_archiver.c, as far as the database name."""
    if data[:5] != b'PGDMP':
        return None
    pos = 5
    vmaj, vmin = data[pos], data[pos + 1]
    pos += 2
    vrev = 0
    if vmaj > 1 or (vmaj == 1 and vmin > 0):
        vrev = data[pos]
        pos += 1
    version = (vmaj, vmin, vrev)
    if version < (1, 4) or vmaj > 1:
        return None  # archives older than PostgreSQL 7.x have no database name; newer layouts are unknown
    int_size = data[pos]
    pos += 1
    if not 1 <= int_size <= 8:
        return None
    if version >= (1, 7):
        pos += 1  # offSize
    pos += 1  # format

    def read_int(at):
        sign = data[at]
        value = 0
        for i in range(int_size):
            value |= data[at + 1 + i] << (8 * i)
        return (-value if sign else value), at + 1 + int_size

    if version >= (1, 15):
        pos += 1  # compression algorithm (PostgreSQL 16+)
    else:
        _level, pos = read_int(pos)
    for _unused in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        _value, pos = read_int(pos)
    length, pos = read_int(pos)
    if length < 0 or length > 256 or pos + length > len(data):
        return None
    return data[pos:pos + length].decode('utf-8') or None


# -- checksums, computed once ------------------------------------------------------------------------------

def _load_cache(directory):
    try:
        with open(os.path.join(directory, CHECKSUM_CACHE)) as handle:
            cache = json.load(handle)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def intact(backup, cache=None):
    """(ok, actual sha256, expected sha256) of a listed backup: ok is True when the file matches its sidecar,
    False when it does not (changed, truncated, corrupt), None when it has no sidecar.

    The file's sha256 is taken from `cache` (a dict, see check_intact) when its size and mtime are the ones it
    was computed for; otherwise it is computed and stored there."""
    try:
        expected = read_sidecar(backup['path'])
    except (BackupError, OSError, UnicodeDecodeError):
        return False, None, None
    if expected is None:
        return None, None, None
    key = backup['name']
    entry = (cache or {}).get(key)
    if entry and entry.get('size') == backup['size'] and entry.get('mtime') == backup['mtime']:
        actual = entry.get('sha256')
    else:
        actual = sha256_file(backup['path'])
        if cache is not None:
            cache[key] = dict(size=backup['size'], mtime=backup['mtime'], sha256=actual)
    return actual == expected, actual, expected


def check_intact(directory, backups, limit=None, save=True):
    """Run intact() over the verified backups (newest first), stopping after the first intact one when limit is
    'first'. Returns (first intact backup or None, [corrupt backups with actual/expected]). The checksum cache of
    the directory is read once and written back when it changed (best effort: a read-only directory still works)."""
    cache = _load_cache(directory)
    before = json.dumps(cache, sort_keys=True)
    good, corrupt = None, []
    for backup in backups:
        if not backup['verified']:
            continue
        ok, actual, expected = intact(backup, cache)
        if ok:
            good = good or backup
            if limit == 'first':
                break
        elif ok is False:
            corrupt.append(dict(backup, actual=actual, expected=expected))
    cache = dict((k, v) for k, v in cache.items() if os.path.exists(os.path.join(directory, k)))
    if save and json.dumps(cache, sort_keys=True) != before:
        try:
            write_private(os.path.join(directory, CHECKSUM_CACHE), json.dumps(cache, sort_keys=True))
        except OSError:
            pass
    return good, corrupt


def newest_intact(directory, pattern=DEFAULT_NAME_PATTERN, database=None, save=True):
    """(the newest verified backup of database whose file matches its sidecar, [newer ones that do not]);
    save=False leaves the checksum cache unwritten (check mode)."""
    return check_intact(directory, list_backups(directory, pattern, database), limit='first', save=save)


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
