# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup, restore and restore-test logic shared by pg_backup, pg_restore and the soulnear-backup host command.

No Ansible imports: the backup role installs this file on the host next to the
`soulnear-backup` command that cron runs (see main() at the end).

Backups
- pg_dump runs inside the database container (`docker exec`), so the client
  is the server's own version; its custom-format output is streamed to the
  host and hashed while it is written, so the sha256 costs no second read.
- A dump is written to a hidden temporary name, fsynced, checked with
  `pg_restore --list`, then its sha256 sidecar (`sha256sum -c` format) is
  written and the dump renamed to its final name. A file under a final name is
  therefore always complete and verified; a failed run removes its temporary
  file, and a run killed half-way leaves one that the next run removes.
- One lock file per backup directory: backup, restore and restore-test never
  run at the same time on one directory.

Retention (restic/borg semantics): walking the verified backups newest first,
a backup is kept when it is the newest of one of the `keep_daily` most recent
days, `keep_weekly` most recent ISO weeks or `keep_monthly` most recent months
that have a backup, or one of the `keep_last` newest. Files without a sidecar
are reported and never deleted: this code did not verify them.

Restore: sha256 against the sidecar, `pg_restore --list`, then side by side a
safety backup of the live database and pg_restore into a new database, checks, then one
transaction renames live -> <db>__pre_restore_<ts> and new -> <db> (both or
neither), with the bot stopped only around that swap. Any failure before the
swap drops the new database; the live one is never written to.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from .alert import send as send_alert
from .containers import DockerError, container_state, exec_argv, exec_env, exec_run, inspect
from .containers import start as start_container
from .containers import stop as stop_container
from .pg import ConnectError, connect, connection_argument_spec, describe_error, psycopg2, sqlstate_of

if psycopg2 is not None:
    from psycopg2 import sql as pgsql
else:  # pragma: no cover - connect() reports the missing library
    pgsql = None

DEFAULT_NAME_PATTERN = 'backup_%Y%m%d_%H%M%S.dump'
SAFETY_NAME_PATTERN = 'pre_restore_%Y%m%d_%H%M%S.dump'
SIDECAR_SUFFIX = '.sha256'
TEMP_MARK = '.partial-'
LOCK_NAME = '.soulnear-backup.lock'
CHUNK = 1 << 20
COMPRESSIONS = ('auto', 'gzip', 'zstd', 'lz4', 'none')

DEFAULTS = dict(
    container='soulnear_postgres',
    exec_user='postgres',
    backup_dir='/var/backups/soulnear',
    name_pattern=DEFAULT_NAME_PATTERN,
    compression='auto',
    compression_level=None,
    space_margin=1.2,
    verify='list',
    keep_daily=7,
    keep_weekly=4,
    keep_monthly=6,
    keep_last=2,
    prune=True,
    offsite='',
    bot_container='',
    bot_stop_timeout=30,
    safety_backup=True,
    owner='',
    no_owner=False,
    largest_tables=5,
    require_checksum=True,
    maintenance_db='postgres',
    analyze=False,
    maintenance_work_mem='256MB',
)


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


def make_settings(conn, **options):
    """Settings for every function here: connection parameters (module style) plus DEFAULTS overridden by options."""
    settings = dict(DEFAULTS)
    settings.update((k, v) for k, v in options.items() if v is not None)
    settings['conn'] = dict(conn)
    if not settings['conn'].get('login_db'):
        raise BackupError('no database given: set login_db to the database to back up or restore (e.g. soul_bot)')
    if settings['compression'] not in COMPRESSIONS:
        raise BackupError('compression must be one of %s, not %r' % (', '.join(COMPRESSIONS), settings['compression']))
    pattern_regex(settings['name_pattern'])
    return settings


def settings_from_params(params, options):
    """Settings from a module's parameters: the shared connection options plus the module's own `options`."""
    return make_settings(dict((k, params[k]) for k in connection_argument_spec()),
                         **dict((k, params[k]) for k in options))


def _null_log(_message):
    pass


def human(size):
    value = float(size)
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if abs(value) < 1024 or unit == 'TB':
            return ('%d %s' % (value, unit)) if unit == 'B' else ('%.1f %s' % (value, unit))
        value /= 1024.0
    return '%d B' % size  # pragma: no cover


# --- names ----------------------------------------------------------------------------------------------

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


# --- retention ------------------------------------------------------------------------------------------

_PERIODS = (
    ('daily', lambda t: t.date()),
    ('weekly', lambda t: t.isocalendar()[:2]),
    ('monthly', lambda t: (t.year, t.month)),
)


def plan_retention(backups, keep_daily=7, keep_weekly=4, keep_monthly=6, keep_last=2):
    """Decide which backups to keep: returns (keep {name: [reasons]}, prune [names], unverified [names]).

    `backups` are dicts with name, time and verified (list_backups). Unverified backups are neither
    kept by a rule nor pruned. At least the newest verified backup is always kept.
    """
    verified = sorted((b for b in backups if b['verified']), key=lambda b: (b['time'], b['name']), reverse=True)
    keep = {}
    for backup in verified[:max(1, int(keep_last))]:
        keep.setdefault(backup['name'], []).append('last')
    counts = dict(daily=int(keep_daily), weekly=int(keep_weekly), monthly=int(keep_monthly))
    for rule, period_of in _PERIODS:
        last_period, kept = None, 0
        for backup in verified:
            if kept >= counts[rule]:
                break
            period = period_of(backup['time'])
            if period != last_period:
                keep.setdefault(backup['name'], []).append(rule)
                last_period = period
                kept += 1
    prune = [b['name'] for b in verified if b['name'] not in keep]
    unverified = [b['name'] for b in backups if not b['verified']]
    return keep, prune, unverified


def apply_retention(directory, settings, check_mode=False, log=_null_log):
    """Prune directory by the retention settings; returns dict(pruned, kept, unverified)."""
    backups = list_backups(directory, settings['name_pattern'])
    keep, prune, unverified = plan_retention(backups, settings['keep_daily'], settings['keep_weekly'],
                                             settings['keep_monthly'], settings['keep_last'])
    for name in prune:
        if check_mode:
            log('would prune %s' % name)
            continue
        # The dump goes first: a crash in between leaves an orphan sidecar (removed below next time),
        # never a dump without its sidecar (which retention would then keep forever as unverified).
        _remove(os.path.join(directory, name))
        _remove(os.path.join(directory, name + SIDECAR_SUFFIX))
        log('pruned %s' % name)
    if not check_mode:
        regex = pattern_regex(settings['name_pattern'])
        for name in os.listdir(directory):
            if name.endswith(SIDECAR_SUFFIX) and regex.match(name[:-len(SIDECAR_SUFFIX)]) \
                    and not os.path.exists(os.path.join(directory, name[:-len(SIDECAR_SUFFIX)])):
                _remove(os.path.join(directory, name))
                log('removed orphan sidecar %s' % name)
    if unverified:
        log('left alone (no %s sidecar, not made or verified by soulnear-backup): %s'
            % (SIDECAR_SUFFIX, ', '.join(unverified)))
    kept = [dict(name=b['name'], reasons=keep[b['name']]) for b in backups if b['name'] in keep]
    return dict(pruned=prune, kept=kept, unverified=unverified)


# --- files ----------------------------------------------------------------------------------------------

def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path):
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, 'rb', buffering=0) as handle:
        while True:
            count = handle.readinto(view)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


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


def write_private(path, data):
    """Write bytes to path atomically (temporary name, fsync, rename), mode 0600."""
    tmp = os.path.join(os.path.dirname(path), '.%s%s%d' % (os.path.basename(path), TEMP_MARK, os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _write_all(fd, view):
    while view:
        view = view[os.write(fd, view):]


def free_bytes(path):
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


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
        self.handle = open(self.path, 'a+')
        os.chmod(self.path, 0o600)
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or 'unknown'
            self.handle.close()
            raise BackupError('another backup, restore or restore-test is running on %s (%s); wait for it to '
                              'finish (ps -p PID shows it) and run again' % (os.path.dirname(self.path), holder)) \
                from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write('pid %d, %s, since %s\n' % (os.getpid(), self.purpose,
                                                      datetime.datetime.now().isoformat(timespec='seconds')))
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        self.handle.close()  # closing releases the flock
        return False


def remove_stale_partials(directory, log=_null_log):
    """Temporary files left by a run that was killed (we hold the lock, so no run owns them)."""
    removed = []
    for name in sorted(os.listdir(directory)):
        if name.startswith('.') and TEMP_MARK in name:
            _remove(os.path.join(directory, name))
            removed.append(name)
            log('removed %s, left by an interrupted run' % name)
    return removed


# --- database and container -------------------------------------------------------------------------------

def _conn_params(settings, db=None):
    params = dict(settings['conn'])
    if db is not None:
        params['login_db'] = db
    return params


def _pg_env(settings):
    """Environment for the tools in the container: the password travels by variable name only (exec_argv)."""
    password = settings['conn'].get('login_password')
    return {'PGPASSWORD': password} if password else {}


def _connect(settings, db=None):
    try:
        return connect(_conn_params(settings, db), application_name='soulnear-backup')
    except ConnectError as exc:
        raise BackupError(str(exc)) from None


def _query(conn, statement, args=None):
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return cur.fetchall() if cur.description else None


def require_container(name):
    try:
        state = container_state(name)
    except DockerError as exc:
        raise BackupError(str(exc)) from None
    if not state['running']:
        raise BackupError('the database container %s is %s; pg_dump and pg_restore run inside it. Start it '
                          '(docker start %s, or ansible-playbook deploy.yml --tags postgres) and run again'
                          % (name, state['status'], name))
    return state


def compression_args(method, level, server_version_num):
    """pg_dump options for the compression setting, and a label for the result."""
    major = int(server_version_num) // 10000
    if method == 'auto':
        method = 'zstd' if major >= 16 else 'gzip'
    if method == 'none':
        return ['--compress=0'], 'none'
    if major < 16:
        if method != 'gzip':
            raise BackupError('compression=%s needs pg_dump 16 or later, and the server (whose pg_dump is used) is '
                              'PostgreSQL %d; use compression=gzip or auto' % (method, major))
        if level is None:
            return [], 'gzip'
        return ['--compress=%d' % int(level)], 'gzip:%d' % int(level)
    spec = method if level is None else '%s:%d' % (method, int(level))
    return ['--compress=' + spec], spec


def _stderr_text(handle, limit=2000):
    handle.seek(0)
    text = handle.read().decode('utf-8', 'replace').strip()
    return text[-limit:]


def _tool_argv(tool, settings, db, *extra):
    return [tool, '--no-password', '--username', settings['conn'].get('login_user') or 'postgres',
            '--dbname', db] + list(extra)


def archive_toc(settings, path):
    """`pg_restore --list` of a dump on the host, run in the database container; raises when it is unreadable."""
    with open(path, 'rb') as stdin, tempfile.TemporaryFile() as err:
        cmd = exec_argv(settings['container'], ['pg_restore', '--list'], user=settings['exec_user'], interactive=True)
        proc = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=err, env=exec_env({}))
        if proc.returncode != 0:
            raise BackupError('%s is not a readable PostgreSQL custom-format archive: pg_restore --list says: %s. '
                              'Do not restore it; use another backup'
                              % (path, _stderr_text(err) or 'exit %d' % proc.returncode))
    lines = proc.stdout.decode('utf-8', 'replace').splitlines()
    return [line for line in lines if line and not line.startswith(';')]


def verify_full(settings, path):
    """Read and decompress the whole archive (pg_restore to /dev/null): catches corrupt data blocks too."""
    with open(path, 'rb') as stdin, tempfile.TemporaryFile() as err:
        cmd = exec_argv(settings['container'], ['pg_restore', '--file=/dev/null'], user=settings['exec_user'],
                        interactive=True)
        proc = subprocess.run(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err, env=exec_env({}))
        if proc.returncode != 0:
            raise BackupError('%s cannot be read completely: pg_restore says: %s. Do not restore it; use another '
                              'backup' % (path, _stderr_text(err) or 'exit %d' % proc.returncode))


def toc_tables(toc):
    """'schema table' of every TABLE DATA entry of a `pg_restore --list` (the owner, last, left out)."""
    tables = []
    for line in toc:
        match = re.match(r'^\d+; \d+ \d+ TABLE DATA (.+) \S+$', line)
        if match:
            tables.append(match.group(1))
    return tables


# --- backup -----------------------------------------------------------------------------------------------

def _free_name(directory, pattern, when):
    """Final file name for a backup taken at `when`; moves on by a second if the name is taken."""
    for _ in range(120):
        name = when.strftime(pattern)
        if not os.path.exists(os.path.join(directory, name)):
            return name
        when += datetime.timedelta(seconds=1)
    raise BackupError('no free backup name in %s near %s' % (directory, when))


def stream_dump(settings, db, path, compress_args):
    """pg_dump in the container -> path (created 0600), hashed while written, fsynced; returns (size, sha256)."""
    argv = _tool_argv('pg_dump', settings, db, '--format=custom', *compress_args)
    env = _pg_env(settings)
    cmd = exec_argv(settings['container'], argv, user=settings['exec_user'], env=env)
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=exec_env(env))
            try:
                while True:
                    count = proc.stdout.readinto(view)
                    if not count:
                        break
                    digest.update(view[:count])
                    _write_all(fd, view[:count])
                    size += count
                os.fsync(fd)
            except OSError as exc:
                proc.kill()
                proc.wait()
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise BackupError('the disk holding %s filled up after %s of the dump; the partial file was '
                                      'removed. Free space there, or move the backups to a larger disk'
                                      % (os.path.dirname(path), human(size))) from None
                raise BackupError('writing %s failed: %s' % (path, exc)) from None
            finally:
                proc.stdout.close()
            code = proc.wait()
            if code != 0:
                raise BackupError('pg_dump of %s in container %s failed (exit %d): %s'
                                  % (db, settings['container'], code, _stderr_text(err)))
    finally:
        os.close(fd)
    return size, digest.hexdigest()


def preflight(settings, directory, db=None):
    """Facts a backup needs before writing anything: server version, database size, free space, the estimate."""
    db = db or settings['conn']['login_db']
    require_container(settings['container'])
    conn = _connect(settings, db)
    try:
        db_size = _query(conn, 'SELECT pg_database_size(current_database())')[0][0]
        version = conn.server_version
    finally:
        conn.close()
    probe = directory
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe) or '/'
    free = free_bytes(probe)
    estimate = int(db_size * float(settings['space_margin']))
    return dict(database=db, database_size=db_size, server_version=version, free=free, estimate=estimate)


def create_backup(settings, check_mode=False, log=_null_log, directory=None, pattern=None, retention=True,
                  offsite=True, db=None, lock=True):
    """Take one verified backup; returns the result dict the modules and the host command report."""
    started = time.time()
    directory = os.path.abspath(directory or settings['backup_dir'])
    pattern = pattern or settings['name_pattern']
    pattern_regex(pattern)
    facts = preflight(settings, directory, db)
    db = facts['database']
    compress, label = compression_args(settings['compression'], settings['compression_level'],
                                       facts['server_version'])
    result = dict(changed=True, database=db, database_size=facts['database_size'], compression=label,
                  free_before=facts['free'], estimated_size=facts['estimate'], pruned=[], kept=[], unverified=[],
                  offsite=None, stale_removed=[])
    if facts['free'] < facts['estimate']:
        raise BackupError('not enough free disk space for a backup of %s in %s: %s free, about %s needed (database '
                          'size %s x space_margin %s). Nothing was written. Free space there (older backups, docker '
                          'system prune), move the backups to a larger disk, or lower space_margin if dumps of '
                          'this database are known to be much smaller'
                          % (db, directory, human(facts['free']), human(facts['estimate']),
                             human(facts['database_size']), settings['space_margin']), result)
    name = _free_name(directory, pattern, datetime.datetime.now()) if os.path.isdir(directory) \
        else datetime.datetime.now().strftime(pattern)
    path = os.path.join(directory, name)
    result['path'] = path
    if check_mode:
        log('would dump %s (%s, compression %s) to %s' % (db, human(facts['database_size']), label, path))
        if retention and settings['prune']:
            planned = list_backups(directory, pattern) + [dict(name=name, path=path, time=parse_name(name, pattern),
                                                               size=0, verified=True)]
            keep, prune, unverified = plan_retention(planned, settings['keep_daily'], settings['keep_weekly'],
                                                     settings['keep_monthly'], settings['keep_last'])
            result.update(pruned=prune, unverified=unverified,
                          kept=[dict(name=b['name'], reasons=keep[b['name']]) for b in planned if b['name'] in keep])
        result['created_dir'] = ensure_dir(directory, check_mode=True)
        result.update(size=None, sha256=None, duration=round(time.time() - started, 3))
        return result

    result['created_dir'] = ensure_dir(directory)
    with DirLock(directory, 'backup of %s' % db) if lock else _NoLock():
        if lock:
            result['stale_removed'] = remove_stale_partials(directory, log)
        name = _free_name(directory, pattern, datetime.datetime.now())
        path = result['path'] = os.path.join(directory, name)
        tmp = os.path.join(directory, '.%s%s%d' % (name, TEMP_MARK, os.getpid()))
        log('dumping %s (%s) with pg_dump in %s, compression %s' % (db, human(facts['database_size']),
                                                                     settings['container'], label))
        try:
            size, digest = stream_dump(settings, db, tmp, compress)
            log('dump written: %s, sha256 %s; verifying' % (human(size), digest))
            toc = archive_toc(settings, tmp)
            if settings['verify'] == 'full':
                verify_full(settings, tmp)
            # Sidecar first, then the dump's final name: a dump under a final name always has its sidecar.
            write_private(path + SIDECAR_SUFFIX, ('%s  %s\n' % (digest, name)).encode('ascii'))
            os.rename(tmp, path)
            fsync_dir(directory)
        except BaseException:
            _remove(tmp)
            if not os.path.exists(path):
                _remove(path + SIDECAR_SUFFIX)
            raise
        result.update(size=size, sha256=digest, toc_entries=len(toc), tables=len(toc_tables(toc)), verified=True)
        log('backup %s verified (%d archive entries, %d tables)' % (path, len(toc), result['tables']))
        if retention and settings['prune']:
            result.update(apply_retention(directory, dict(settings, name_pattern=pattern), log=log))
    if offsite and settings.get('offsite'):
        result['offsite'] = copy_offsite(settings, path, log)
    result['duration'] = round(time.time() - started, 3)
    return result


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- offsite --------------------------------------------------------------------------------------------------

def is_rsync_target(target):
    return target.startswith('rsync://') or bool(re.match(r'^[^/]+:', target))


def copy_offsite(settings, path, log=_null_log):
    """Copy a verified backup and its sidecar to the second location; never raises (the local backup is good)."""
    target = settings['offsite']
    name = os.path.basename(path)
    try:
        if is_rsync_target(target):
            dest = target.rstrip('/') + '/'
            # rsync writes to a temporary name and renames; the sidecar goes second, so a sidecar
            # on the other side means its dump arrived complete.
            for source in (path, path + SIDECAR_SUFFIX):
                proc = subprocess.run(['rsync', '--times', '--chmod=F600', '--timeout=600', source, dest],
                                      capture_output=True, timeout=6 * 3600)
                if proc.returncode != 0:
                    raise BackupError('rsync to %s failed (exit %d): %s'
                                      % (dest, proc.returncode, proc.stderr.decode('utf-8', 'replace').strip()))
            log('copied %s to %s' % (name, dest))
            return dict(target=target, ok=True, kind='rsync', pruned=[])
        ensure_dir(target)
        tmp = os.path.join(target, '.%s%s%d' % (name, TEMP_MARK, os.getpid()))
        try:
            with open(path, 'rb') as src:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, 'wb') as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                    dst.flush()
                    os.fsync(dst.fileno())
            expected = read_sidecar(path)
            if sha256_file(tmp) != expected:
                raise BackupError('the copy in %s does not match the sha256 of %s' % (target, name))
            with open(path + SIDECAR_SUFFIX, 'rb') as handle:
                write_private(os.path.join(target, name + SIDECAR_SUFFIX), handle.read())
            os.rename(tmp, os.path.join(target, name))
            fsync_dir(target)
        finally:
            _remove(tmp)
        pruned = []
        if settings['prune']:
            pruned = apply_retention(target, settings, log=log)['pruned']
        log('copied %s to %s (checked sha256)' % (name, target))
        return dict(target=target, ok=True, kind='path', pruned=pruned)
    except (BackupError, OSError, subprocess.SubprocessError) as exc:
        log('offsite copy to %s FAILED: %s' % (target, exc))
        return dict(target=target, ok=False, error=str(exc))


# --- restore ----------------------------------------------------------------------------------------------------

def resolve_backup(settings, backup='latest'):
    """Path of the backup to restore: the newest verified one for 'latest', else a name in backup_dir or a path."""
    directory = settings['backup_dir']
    if not backup or backup == 'latest':
        verified = [b for b in list_backups(directory, settings['name_pattern']) if b['verified']]
        if not verified:
            raise BackupError('no verified backup (a %s file with its %s sidecar) in %s; take one with '
                              'playbooks/backup.yml or name a file with backup=FILE'
                              % (settings['name_pattern'], SIDECAR_SUFFIX, directory))
        return verified[0]['path']
    path = backup if os.path.isabs(backup) else os.path.join(directory, backup)
    if not os.path.isfile(path):
        available = [b['name'] for b in list_backups(directory, settings['name_pattern'])[:5]]
        raise BackupError('backup %s not found; the newest in %s are: %s' % (path, directory,
                                                                            ', '.join(available) or 'none'))
    return path


def check_backup(settings, path, log=_null_log):
    """sha256 against the sidecar, then the archive's table of contents; returns (sha256, toc)."""
    expected = read_sidecar(path)
    if expected is None and settings['require_checksum']:
        raise BackupError('%s has no %s sidecar, so it cannot be shown to be intact; nothing was changed. Use a '
                          'verified backup, or set require_checksum=false to restore it anyway'
                          % (path, SIDECAR_SUFFIX))
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise BackupError('%s is corrupt or truncated: its sha256 is %s but the sidecar recorded %s when it was '
                          'written (size now %s); nothing was changed. Restore another backup (backup=FILE) or a '
                          'good copy of this one from the offsite location'
                          % (path, actual, expected, human(os.path.getsize(path))))
    log('checksum of %s OK (%s)' % (os.path.basename(path), actual if expected else 'no sidecar, not checked'))
    toc = archive_toc(settings, path)
    log('archive readable: %d entries, %d tables' % (len(toc), len(toc_tables(toc))))
    return actual, toc


def _ident(name):
    return pgsql.Identifier(name)


def _db_name(base, suffix):
    """<base><suffix> within PostgreSQL's 63-byte name limit."""
    return base.encode('utf-8')[:63 - len(suffix)].decode('utf-8', 'ignore') + suffix


def database_info(conn, db):
    """Owner, encoding, locale and size of a database; None when it does not exist."""
    # to_jsonb(d): the locale columns differ between versions (datlocprovider/daticulocale in 15 and 16,
    # datlocale and the builtin provider in 17, neither before 15).
    rows = _query(conn, 'SELECT to_jsonb(d), pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), '
                        'pg_database_size(d.oid) FROM pg_database d WHERE d.datname = %s', (db,))
    if not rows:
        return None
    row, owner, encoding, size = rows[0]
    return dict(oid=row['oid'], owner=owner, encoding=encoding, collate=row['datcollate'], ctype=row['datctype'],
                provider=row.get('datlocprovider', 'c'), icu_locale=row.get('daticulocale') or row.get('datlocale'),
                connlimit=row['datconnlimit'], size=size)


def _create_database(conn, name, owner, like):
    """CREATE DATABASE name with the live database's owner, encoding and locale (template0)."""
    parts = [pgsql.SQL('CREATE DATABASE {} OWNER {} TEMPLATE template0').format(_ident(name), _ident(owner))]
    if like:
        parts.append(pgsql.SQL('ENCODING {} LC_COLLATE {} LC_CTYPE {}').format(
            pgsql.Literal(like['encoding']), pgsql.Literal(like['collate']), pgsql.Literal(like['ctype'])))
        if like['provider'] == 'i':
            parts.append(pgsql.SQL('LOCALE_PROVIDER icu ICU_LOCALE {}').format(pgsql.Literal(like['icu_locale'])))
        elif like['provider'] == 'b':
            parts.append(pgsql.SQL('LOCALE_PROVIDER builtin BUILTIN_LOCALE {}').format(
                pgsql.Literal(like['icu_locale'])))
        if like['connlimit'] != -1:
            parts.append(pgsql.SQL('CONNECTION LIMIT {}').format(pgsql.Literal(like['connlimit'])))
    _query(conn, pgsql.SQL(' ').join(parts))


def _copy_database_settings(conn, source, target):
    """Database-level GUCs (ALTER DATABASE/ROLE ... SET) and grants: pg_dump without --create leaves them out."""
    rows = _query(conn, 'SELECT s.setrole, r.rolname, s.setconfig FROM pg_db_role_setting s JOIN pg_database d '
                        'ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = %s',
                  (source,))
    for setrole, rolname, config in rows:
        for item in config or []:
            key, _, value = item.partition('=')
            values = [v.strip() for v in value.split(',')] if key == 'search_path' else [value]
            value_sql = pgsql.SQL(', ').join(pgsql.Literal(v) for v in values)
            if setrole == 0:
                statement = pgsql.SQL('ALTER DATABASE {} SET {} = {}').format(_ident(target), _ident(key), value_sql)
            else:
                statement = pgsql.SQL('ALTER ROLE {} IN DATABASE {} SET {} = {}').format(
                    _ident(rolname), _ident(target), _ident(key), value_sql)
            _query(conn, statement)
    acl = _query(conn, "SELECT datacl IS NOT NULL, coalesce((SELECT array_agg(format('%%s:%%s:%%s', "
                       "CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
                       "a.is_grantable)) FROM aclexplode(datacl) a), '{}') FROM pg_database WHERE datname = %s",
                 (source,))
    if acl and acl[0][0]:
        _query(conn, pgsql.SQL('REVOKE ALL ON DATABASE {} FROM PUBLIC').format(_ident(target)))
        for entry in acl[0][1]:
            grantee, privilege, grantable = entry.split(':')
            who = _ident(grantee) if grantee else pgsql.SQL('PUBLIC')
            option = pgsql.SQL(' WITH GRANT OPTION') if grantable == 'true' else pgsql.SQL('')
            _query(conn, pgsql.SQL('GRANT {} ON DATABASE {} TO {}{}').format(
                pgsql.SQL(privilege), _ident(target), who, option))


def drop_database(conn, name):
    _query(conn, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s '
                 'AND pid <> pg_backend_pid()', (name,))
    _query(conn, pgsql.SQL('DROP DATABASE IF EXISTS {}').format(_ident(name)))


def largest_tables(conn, limit):
    rows = _query(conn, "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                        "AND n.nspname NOT LIKE 'pg\\_toast%%' ORDER BY pg_total_relation_size(c.oid) DESC, 1, 2 "
                        "LIMIT %s", (int(limit),))
    return [tuple(row) for row in rows]


def row_counts(conn, tables):
    """Exact row counts of (schema, table) pairs; None for a table that does not exist there."""
    counts = {}
    present = set(tuple(r) for r in _query(conn, "SELECT schemaname, tablename FROM pg_tables"))
    for schema, table in tables:
        key = '%s.%s' % (schema, table)
        if (schema, table) in present:
            counts[key] = _query(conn, pgsql.SQL('SELECT count(*) FROM {}.{}').format(
                _ident(schema), _ident(table)))[0][0]
        else:
            counts[key] = None
    return counts


def _container_free(settings, conn):
    """Free bytes where the server keeps its data: statvfs of the volume's host path, else df in the container."""
    data_dir = _query(conn, 'SHOW data_directory')[0][0]
    mounts = [m for m in (inspect(settings['container']) or {}).get('Mounts') or []
              if data_dir == m.get('Destination') or data_dir.startswith(m.get('Destination', '') + '/')]
    if mounts:
        source = max(mounts, key=lambda m: len(m['Destination'])).get('Source')
        if source and os.path.isdir(source):
            return free_bytes(source)
    code, out, err = exec_run(settings['container'], ['df', '-Pk', data_dir], user=settings['exec_user'], timeout=30)
    if code != 0:
        raise BackupError('df %s in %s failed: %s' % (data_dir, settings['container'],
                                                       err.decode('utf-8', 'replace').strip()))
    return int(out.decode().splitlines()[-1].split()[3]) * 1024


def restore_into(settings, path, db, log=_null_log):
    """pg_restore the archive at path (on the host) into the existing database db, streamed into the container."""
    options = ['--exit-on-error']
    if settings['no_owner']:
        options += ['--no-owner', '--role=' + settings['owner']] if settings.get('owner') else ['--no-owner']
    argv = _tool_argv('pg_restore', settings, db, *options)
    env = _pg_env(settings)
    # Session settings for a database nobody uses yet: index builds sort in memory instead of on disk
    # (the largest win), and commits do not wait for the WAL flush (a crash fails the restore anyway).
    env['PGOPTIONS'] = '-c synchronous_commit=off'
    if settings.get('maintenance_work_mem'):
        env['PGOPTIONS'] += ' -c maintenance_work_mem=%s' % settings['maintenance_work_mem']
    log('restoring %s into database %s (pg_restore in %s)' % (os.path.basename(path), db, settings['container']))
    with open(path, 'rb') as stdin, tempfile.TemporaryFile() as err:
        cmd = exec_argv(settings['container'], argv, user=settings['exec_user'], env=env, interactive=True)
        proc = subprocess.run(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err, env=exec_env(env))
        if proc.returncode != 0:
            raise BackupError('pg_restore of %s into %s failed (exit %d): %s'
                              % (os.path.basename(path), db, proc.returncode, _stderr_text(err)))


def check_restored(settings, db, toc, log=_null_log):
    """Checks on a freshly restored database: every dumped table is there and readable, migrations not failed."""
    conn = _connect(settings, db)
    try:
        if settings['analyze']:
            _query(conn, 'ANALYZE')
        present = set('%s %s' % r for r in _query(conn, "SELECT schemaname, tablename FROM pg_tables WHERE "
                                                        "schemaname NOT IN ('pg_catalog', 'information_schema')"))
        missing = [t.replace(' ', '.', 1) for t in toc_tables(toc) if t not in present]
        if missing:
            raise BackupError('the restored database %s lacks tables that are in the backup: %s'
                              % (db, ', '.join(missing)))
        checks = dict(tables=len(present), missing_tables=missing)
        if 'public schema_migrations' in present:
            columns = set(r[0] for r in _query(conn, "SELECT column_name FROM information_schema.columns WHERE "
                                                     "table_schema = 'public' AND table_name = 'schema_migrations'"))
            failed = _query(conn, 'SELECT count(*) FROM schema_migrations WHERE NOT success')[0][0] \
                if 'success' in columns else 0
            checks['failed_migrations'] = failed
            if failed:
                log('note: the backup records %d failed migration(s) in schema_migrations' % failed)
        return checks
    finally:
        conn.close()


def _swap(settings, live, new, old, log):
    """Rename live -> old and new -> live in ONE transaction (both or neither), retrying while sessions linger."""
    conn = _connect(settings, settings['maintenance_db'])
    try:
        for attempt in range(10):
            _query(conn, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN (%s, %s) '
                         'AND pid <> pg_backend_pid()', (live, new))
            conn.autocommit = False
            try:
                with conn.cursor() as cur:
                    if old:
                        cur.execute(pgsql.SQL('ALTER DATABASE {} RENAME TO {}').format(_ident(live), _ident(old)))
                    cur.execute(pgsql.SQL('ALTER DATABASE {} RENAME TO {}').format(_ident(new), _ident(live)))
                conn.commit()
                return
            except psycopg2.Error as exc:
                conn.rollback()
                # 55006: a session reconnected between the terminate and the rename; the transaction
                # rolled back both renames, so try again.
                if sqlstate_of(exc) != '55006' or attempt == 9:
                    raise BackupError('swapping %s and %s failed, nothing was renamed: %s'
                                      % (live, new, describe_error(exc))) from None
                log('sessions still connected to %s; retrying the swap' % live)
                time.sleep(0.3)
            finally:
                conn.autocommit = True
    finally:
        conn.close()


def restore_database(settings, backup='latest', confirm=None, check_mode=False, log=_null_log):
    """Replace the live database with a backup (see the module docstring for the order of steps)."""
    started = time.time()
    live = settings['conn']['login_db']
    if confirm != live:
        raise BackupError('restoring replaces the database %s; confirm it by passing confirm=%s (you passed %s). '
                          'Nothing was changed' % (live, live, 'nothing' if confirm in (None, '') else repr(confirm)))
    path = resolve_backup(settings, backup)
    require_container(settings['container'])
    digest, toc = check_backup(settings, path, log)
    stamp = datetime.datetime.now().strftime('%Y%m%d_%H%M%S')
    new, old = _db_name(live, '__restore_' + stamp), _db_name(live, '__pre_restore_' + stamp)
    result = dict(changed=not check_mode, database=live, restored_from=path, sha256=digest,
                  size=os.path.getsize(path), safety_backup=None, previous_database=None, swapped=False,
                  row_counts=dict(before={}, after=None),
                  bot=dict(container=settings['bot_container'] or None, was_running=False, stopped=False,
                           started=False))
    admin = _connect(settings, settings['maintenance_db'])
    try:
        info = database_info(admin, live)
        owner = settings.get('owner') or (info['owner'] if info else settings['conn'].get('login_user') or 'postgres')
        result['owner'] = owner
        if info:
            estimate = int(info['size'] * float(settings['space_margin']))
            free = _container_free(settings, admin)
            if free < estimate:
                raise BackupError('not enough free space for the database server to hold a second copy of %s while '
                                  'restoring: %s free in %s, about %s needed (database size x space_margin); nothing '
                                  'was changed. Free space on the disk of the Docker volume'
                                  % (live, human(free), settings['container'], human(estimate)), result)
        else:
            log('database %s does not exist: it will be created from the backup' % live)
        if check_mode:
            if info:
                result['row_counts']['before'] = _counts_of(settings, live, _largest(settings, live))
            result.update(msg='Would restore %s from %s (%s)%s' % (
                live, os.path.basename(path), human(result['size']),
                ', keeping the current database as %s' % old if info else ''), duration=round(time.time() - started, 3))
            return result

        with DirLock(settings['backup_dir'], 'restore of %s' % live):
            _restore_and_swap(settings, admin, path, toc, info, owner, new, old, result, log)
    finally:
        admin.close()
    if info:
        result['previous_database'] = old
        result['drop_previous_command'] = 'docker exec -u %s %s dropdb --username %s "%s"' % (
            settings['exec_user'], settings['container'], settings['conn'].get('login_user') or 'postgres', old)
    result['duration'] = round(time.time() - started, 3)
    result['msg'] = 'Restored %s from %s (%s) in %.1f s' % (live, os.path.basename(path), human(result['size']),
                                                            result['duration'])
    if info:
        result['msg'] += ('; the previous database is kept as %s (drop it once the restored data is confirmed good: '
                          '%s)' % (old, result['drop_previous_command']))
    return result


def _safety_backup(settings, live, log):
    log('taking a safety backup of %s' % live)
    try:
        return create_backup(settings, log=log, pattern=SAFETY_NAME_PATTERN, retention=False, offsite=False,
                             lock=False)['path']
    except FAILURES as exc:
        raise BackupError('the safety backup of %s failed: %s' % (live, describe_failure(exc))) from None


def _restore_and_swap(settings, admin, path, toc, info, owner, new, old, result, log):
    """Restore into the new database, check it, swap it in; on any failure before the swap, drop it."""
    live = settings['conn']['login_db']
    pool = ThreadPoolExecutor(2)
    # While the restore writes the new database, the safety backup and the row counts read the live
    # one, side by side; the swap waits for all of them.
    safety = pool.submit(_safety_backup, settings, live, log) if info and settings['safety_backup'] else None
    before = pool.submit(_largest_counted, settings, live) if info else None
    created = False
    try:
        _create_database(admin, new, owner, info)
        created = True
        if info:
            _copy_database_settings(admin, live, new)
        restore_into(dict(settings, owner=owner), path, new, log)
        if safety:
            result['safety_backup'] = safety.result()
        result['checks'] = check_restored(settings, new, toc, log)
        live_tables, counts_before = before.result() if before else ([], {})
        tables = _largest(settings, new)
        if info and [t for t in tables if t not in live_tables]:
            counts_before.update(_counts_of(settings, live, [t for t in tables if t not in live_tables]))
        tables += [t for t in live_tables if t not in tables]
        result['row_counts'] = dict(before=counts_before, after=loaded_rows(settings, new, tables))
        _swap_with_bot_stopped(settings, live, new, old if info else None, result, log)
    except BaseException as exc:
        if result['swapped']:
            raise
        if created:
            drop_database(admin, new)
            log('dropped %s; %s was not touched' % (new, live))
        if isinstance(exc, FAILURES):
            raise BackupError('%s. The live database %s was not changed%s'
                              % (describe_failure(exc).rstrip('.'), live,
                                 '; the partial copy %s was dropped' % new if created else ''), result) from None
        raise
    finally:
        pool.shutdown(wait=True)
        if safety and not result['safety_backup'] and safety.exception() is None:
            result['safety_backup'] = safety.result()


def loaded_rows(settings, db, tables):
    """Rows pg_restore loaded into the fresh database db, per table, from the server's statistics.

    Exact here (nobody else wrote to db, and a backend flushes its counters before it leaves
    pg_stat_activity), and free, where count(*) would read - and set hint bits on - every page just
    written. With track_counts off, count(*) it is.
    """
    conn = _connect(settings, db)
    try:
        if _query(conn, 'SHOW track_counts')[0][0] != 'on':
            return row_counts(conn, tables)
        for _ in range(200):
            if not _query(conn, 'SELECT 1 FROM pg_stat_activity WHERE datname = current_database() '
                                'AND pid <> pg_backend_pid()'):
                break
            time.sleep(0.05)
        loaded = dict(((s, t), n) for s, t, n in _query(
            conn, 'SELECT schemaname, relname, n_tup_ins - n_tup_del FROM pg_stat_user_tables'))
        return dict(('%s.%s' % t, loaded.get(t)) for t in tables)
    finally:
        conn.close()


def _largest(settings, db):
    conn = _connect(settings, db)
    try:
        return largest_tables(conn, settings['largest_tables'])
    finally:
        conn.close()


def _largest_counted(settings, db):
    tables = _largest(settings, db)
    return tables, _counts_of(settings, db, tables)


def _counts_of(settings, db, tables):
    """{schema.table: exact rows} in db."""
    conn = _connect(settings, db)
    try:
        return row_counts(conn, tables)
    finally:
        conn.close()


def _swap_with_bot_stopped(settings, live, new, old, result, log):
    bot = settings.get('bot_container')
    state = container_state(bot) if bot else None
    was_running = bool(state and state['running'])
    result['bot']['was_running'] = was_running
    if bot and not was_running:
        log('the bot (%s) is not running (%s); it is left stopped' % (bot, state['status']))
    if was_running:
        log('stopping the bot (%s) for the swap' % bot)
        stop_container(bot, timeout=settings['bot_stop_timeout'])
        result['bot']['stopped'] = True
    try:
        _swap(settings, live, new, old, log)
        result['swapped'] = True
        log('swapped: %s is now the restored database%s' % (live, (', the previous one is %s' % old) if old else ''))
    finally:
        if was_running:
            log('starting the bot (%s)' % bot)
            try:
                start_container(bot)
            except DockerError as exc:
                raise BackupError('%s; the bot (%s) did not start again: %s. Start it: docker start %s'
                                  % ('the restore itself succeeded' if result['swapped'] else
                                     'the swap failed and the live database was not changed', bot, exc, bot)) \
                    from None
            result['bot']['started'] = True


def restore_test(settings, backup='latest', log=_null_log):
    """Restore a backup into a throwaway database, check it, drop it; returns a report (raises on failure)."""
    started = time.time()
    path = resolve_backup(settings, backup)
    require_container(settings['container'])
    with DirLock(settings['backup_dir'], 'restore-test'):
        digest, toc = check_backup(settings, path, log)
        scratch = _db_name(settings['conn']['login_db'], '__restore_test_' + datetime.datetime.now().strftime('%H%M%S'))
        admin = _connect(settings, settings['maintenance_db'])
        try:
            info = database_info(admin, settings['conn']['login_db'])
            owner = settings.get('owner') or (info['owner'] if info else settings['conn'].get('login_user') or
                                              'postgres')
            _create_database(admin, scratch, owner, info)
            try:
                restore_into(dict(settings, owner=owner), path, scratch, log)
                checks = check_restored(settings, scratch, toc, log)
                conn = _connect(settings, scratch)
                try:
                    # count(*) of every table reads every heap page: unreadable data fails here.
                    counts = row_counts(conn, [(s, t) for s, t in _query(
                        conn, "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
                              "('pg_catalog', 'information_schema') ORDER BY 1, 2")])
                finally:
                    conn.close()
            finally:
                drop_database(admin, scratch)
                log('dropped the throwaway database %s' % scratch)
        finally:
            admin.close()
    checks['rows'] = sum(v for v in counts.values() if v)
    largest = dict(sorted(counts.items(), key=lambda kv: -(kv[1] or 0))[:settings['largest_tables']])
    duration = round(time.time() - started, 3)
    return dict(changed=False, restored_from=path, sha256=digest, size=os.path.getsize(path), database=scratch,
                checks=checks, row_counts=dict(before=None, after=largest), duration=duration,
                msg='Restore test of %s passed: %d tables, %d rows, %.1f s' % (os.path.basename(path),
                                                                               checks['tables'], checks['rows'],
                                                                               duration))


# --- host command -------------------------------------------------------------------------------------------------

def settings_from_config(config, backup_config):
    """Settings from /etc/soulnear/soulnear.json (soulnear role) and /etc/soulnear/backup.json (backup role)."""
    db = config.get('db') or {}
    conn = dict(login_host=db.get('host', '127.0.0.1'), login_port=int(db.get('port', 5432)),
                login_user=db.get('superuser', 'postgres'), login_password=db.get('superuser_password', ''),
                login_db=db.get('name', 'soul_bot'), connect_timeout=10, retries=3)
    options = dict((k, v) for k, v in backup_config.items() if k in DEFAULTS)
    options.setdefault('container', db.get('container', DEFAULTS['container']))
    options.setdefault('backup_dir', config.get('backup_dir', DEFAULTS['backup_dir']))
    options.setdefault('bot_container', (config.get('bot') or {}).get('container', ''))
    if options.get('compression_level') in ('', None):
        options['compression_level'] = None
    return make_settings(conn, **options)


def _load_json(path, required=True):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        if required:
            raise BackupError('%s is missing; it is written by the soulnear role (ansible-playbook deploy.yml)'
                              % path) from None
        return {}
    except ValueError as exc:
        raise BackupError('%s is not valid JSON (%s); re-run the playbook to rewrite it' % (path, exc)) from None


def _stamp():
    return datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')


def main(argv=None):
    """soulnear-backup backup|restore-test|list: the command cron runs on the database host."""
    parser = argparse.ArgumentParser(prog='soulnear-backup', description=main.__doc__)
    parser.add_argument('--config-dir', default='/etc/soulnear',
                        help='directory holding soulnear.json (soulnear role) and backup.json (backup role)')
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('backup', help='dump, verify, prune, copy offsite; alert and exit 1 on failure')
    test = sub.add_parser('restore-test', help='restore a backup into a throwaway database, check it, drop it')
    test.add_argument('--backup', default='latest', help='latest (default) or a file name in the backups directory')
    sub.add_parser('list', help='list the backups with their verification state')
    args = parser.parse_args(argv)

    def log(message):
        print('%s soulnear-backup %s: %s' % (_stamp(), args.command, message), flush=True)

    config = {}
    try:
        config = _load_json(os.path.join(args.config_dir, 'soulnear.json'))
        settings = settings_from_config(config, _load_json(os.path.join(args.config_dir, 'backup.json'),
                                                           required=False))
        if args.command == 'list':
            for item in list_backups(settings['backup_dir'], settings['name_pattern']):
                print('%s  %10s  %s' % (item['name'], human(item['size']),
                                        'verified' if item['verified'] else 'NO SIDECAR'))
            return 0
        if args.command == 'backup':
            result = create_backup(settings, log=log)
            log('OK %s %s sha256 %s in %.1f s; pruned %d: %s' % (
                result['path'], human(result['size']), result['sha256'], result['duration'],
                len(result['pruned']), ', '.join(result['pruned']) or '-'))
            offsite = result.get('offsite')
            if offsite and not offsite['ok']:
                raise BackupError('the backup %s is good, but the offsite copy to %s failed: %s'
                                  % (result['path'], offsite['target'], offsite['error']))
            return 0
        result = restore_test(settings, args.backup, log=log)
        log('OK ' + result['msg'])
        return 0
    except FAILURES as exc:
        message = describe_failure(exc)
        log('FAILED: %s' % message)
        for error in send_alert(config.get('alert'), 'soulnear %s FAILED' % args.command, message):
            log('alert not delivered: %s' % error)
        return 1

if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
