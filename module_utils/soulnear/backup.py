# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Taking a backup: create_backup, shared by the pg_backup module and the `soulnear-backup` host command.

- pg_dump runs inside the database container (`docker exec`), so the client
  is the server's own version - or, for a database the deployment does not own
  (soulnear_db_mode external), in a throwaway client container over TCP/TLS
  (pgtools.tool_command); its custom-format output is streamed to the
  host and hashed while it is written, so the sha256 costs no second read.
- A dump is written to a hidden temporary name, fsynced, checked with
  `pg_restore --list`, then its sha256 sidecar (`sha256sum -c` format) is
  written and the dump renamed to its final name. A file under a final name is
  therefore always complete and verified; a failed run removes its temporary
  file, and a run killed half-way leaves one that the next run removes.
- Then retention (retention.py) prunes the directory (this database's backups only, and its older
  pre_restore_* safety dumps), databases a killed restore left behind (<db>__restore_*) are dropped, and the
  verified backup is copied offsite.

Settings come from backup_settings.py; names, sidecars and the directory lock from backup_files.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import datetime
import errno
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time

from . import metrics
from .backup_files import FAILURES as FAILURES_DB
from .backup_files import (
    SIDECAR_SUFFIX, BackupError, DirLock, ensure_dir, list_backups, null_log, parse_name, pattern_regex,
    read_sidecar, remove_stale_partials, write_sidecar)
from .containers import exec_env
from .files import CHUNK, free_bytes, fsync_dir, human, private_file, remove, sha256_file, write_private
from .pgtools import archive_toc, connect_to, drop_database, may_create_databases, query, require_tools, stderr_tail, \
    tool_argv, tool_command, tool_env, toc_tables, tools_where, verify_full
from .retention import apply_retention, prune_safety_backups, retention_plan


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


def _free_name(directory, pattern, when):
    """Final file name for a backup taken at `when`; moves on by a second if the name is taken."""
    for _unused in range(120):
        name = when.strftime(pattern)
        if not os.path.exists(os.path.join(directory, name)):
            return name
        when += datetime.timedelta(seconds=1)
    raise BackupError('no free backup name in %s near %s' % (directory, when))


def _write_all(fd, view):
    while view:
        view = view[os.write(fd, view):]


def stream_dump(settings, db, out, compress_args):
    """pg_dump in the container -> the unbuffered file out, hashed while written, fsynced; returns (size, sha256)."""
    argv = tool_argv('pg_dump', settings, db, '--format=custom', *compress_args)
    env = tool_env(settings)
    cmd = tool_command(settings, argv, env)
    digest = hashlib.sha256()
    size = 0
    view = memoryview(bytearray(CHUNK))
    fd = out.fileno()
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
                # What reached the disk: a chunk is counted in `size` only once all of it was written.
                written = max(size, _file_size(fd))
                raise BackupError('the disk holding %s filled up after %s of the dump had been written; the partial '
                                  'file was removed. Free space there, or move the backups to a larger disk'
                                  % (os.path.dirname(out.name), human(written))) from None
            raise BackupError('writing %s failed: %s' % (out.name, exc)) from None
        finally:
            proc.stdout.close()
        code = proc.wait()
        if code != 0:
            raise BackupError('pg_dump of %s in %s failed (exit %d): %s'
                              % (db, tools_where(settings), code, stderr_tail(err)))
    return size, digest.hexdigest()


def _file_size(fd):
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 0


def preflight(settings, directory, db=None):
    """Facts a backup needs before writing anything: server version, database size, free space, the estimate."""
    db = db or settings['conn']['login_db']
    require_tools(settings)
    conn = connect_to(settings, db)
    try:
        db_size = query(conn, 'SELECT pg_database_size(current_database())')[0][0]
        version = conn.server_version
    finally:
        conn.close()
    free = free_bytes(directory)
    estimate = int(db_size * float(settings['space_margin']))
    return dict(database=db, database_size=db_size, server_version=version, free=free, estimate=estimate)


@metrics.backup_run
def create_backup(settings, check_mode=False, log=null_log, directory=None, pattern=None, retention=True,
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
            planned = list_backups(directory, pattern, db) + [dict(name=name, path=path, size=0, verified=True,
                                                                   time=parse_name(name, pattern), database=db)]
            result.update(retention_plan(planned, settings))
        result['created_dir'] = ensure_dir(directory, check_mode=True)
        result.update(size=None, sha256=None, duration=round(time.time() - started, 3))
        return result

    result['created_dir'] = ensure_dir(directory)
    with DirLock(directory, 'backup of %s' % db) if lock else contextlib.nullcontext():
        if lock:
            result['stale_removed'] = remove_stale_partials(directory, log)
        name = _free_name(directory, pattern, datetime.datetime.now())
        path = result['path'] = os.path.join(directory, name)
        log('dumping %s (%s) with pg_dump in %s, compression %s' % (db, human(facts['database_size']),
                                                                    tools_where(settings), label))
        try:
            # The dump gets its final name only when the block ends: after the check and its sidecar.
            with private_file(path, buffering=0) as dump:
                size, digest = stream_dump(settings, db, dump, compress)
                log('dump written: %s, sha256 %s; verifying' % (human(size), digest))
                toc = archive_toc(settings, dump.name)
                if settings['verify'] == 'full':
                    verify_full(settings, dump.name)
                # Sidecar first, then the dump's final name: a dump under a final name always has its sidecar.
                write_sidecar(path, digest, db)
            fsync_dir(directory)
        except BaseException:
            if not os.path.exists(path):
                remove(path + SIDECAR_SUFFIX)
            raise
        result.update(size=size, sha256=digest, toc_entries=len(toc), tables=len(toc_tables(toc)), verified=True)
        log('backup %s verified (%d archive entries, %d tables)' % (path, len(toc), result['tables']))
        if retention and settings['prune']:
            result.update(apply_retention(directory, dict(settings, name_pattern=pattern, database=db), log=log))
            result['pruned_safety'] = prune_safety_backups(directory, dict(settings, database=db), log=log)
        if lock:
            # Under the directory's lock no restore of this directory runs: its scratch databases are leftovers.
            result['dropped_databases'] = drop_stale_restore_databases(settings, db, log)
    if offsite and settings.get('offsite'):
        result['offsite'] = copy_offsite(settings, path, log)
    result['duration'] = round(time.time() - started, 3)
    return result


# --- leftovers of a killed restore ------------------------------------------------------------------------

def stale_restore_databases(conn, db):
    """<db>__restore_<ts>, <db>__restore_test_<ts> and <db>__restore_rehearsal_<ts> (rehearsal.py) databases nobody
    is connected to."""
    rows = query(conn, "SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname) "
                       "FROM pg_database d WHERE strpos(d.datname, %s) = 1 ORDER BY 1", (db + '__restore_',))
    pattern = re.compile(r'^%s__restore_(test_|rehearsal_)?\d+(_\d+)?$' % re.escape(db))
    return [name for name, sessions in rows if pattern.match(name) and not sessions]


def drop_stale_restore_databases(settings, db, log=null_log):
    """Drop the scratch databases a killed restore or restore test left (the caller holds the directory's lock, so
    no restore of it is running; one with a session is left alone). Returns their names; never raises."""
    dropped = []
    try:
        conn = connect_to(settings, settings['maintenance_db'])
    except BackupError as exc:
        log('could not look for databases left by a killed restore: %s' % exc)
        return dropped
    try:
        # Only a login that makes scratch databases (superuser, CREATEDB: the database host) clears them. A bot host's
        # app role owns them too, but its lock is its own: it would drop one the database host is restoring into.
        if not may_create_databases(conn):
            return dropped
        for name in stale_restore_databases(conn, db):
            drop_database(conn, name)
            dropped.append(name)
            log('dropped %s, left by an interrupted restore' % name)
    except FAILURES_DB as exc:
        log('could not drop the databases left by a killed restore: %s' % exc)
    finally:
        conn.close()
    return dropped


# --- offsite --------------------------------------------------------------------------------------------------

def is_rsync_target(target):
    return target.startswith('rsync://') or bool(re.match(r'^[^/]+:', target))


def copy_offsite(settings, path, log=null_log):
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
                                      capture_output=True, timeout=6 * 3600, check=False)
                if proc.returncode != 0:
                    raise BackupError('rsync to %s failed (exit %d): %s'
                                      % (dest, proc.returncode, proc.stderr.decode('utf-8', 'replace').strip()))
            log('copied %s to %s' % (name, dest))
            return dict(target=target, ok=True, kind='rsync', pruned=[])
        ensure_dir(target)
        # As for the dump itself: the copy gets its final name after its check and its sidecar.
        with open(path, 'rb') as src, private_file(os.path.join(target, name)) as dst:
            shutil.copyfileobj(src, dst, CHUNK)
            dst.flush()
            if sha256_file(dst.name) != read_sidecar(path):
                raise BackupError('the copy in %s does not match the sha256 of %s' % (target, name))
            with open(path + SIDECAR_SUFFIX, 'rb') as handle:
                write_private(os.path.join(target, name + SIDECAR_SUFFIX), handle.read())
        fsync_dir(target)
        pruned = []
        if settings['prune']:
            pruned = apply_retention(target, settings, log=log)['pruned']
        log('copied %s to %s (checked sha256)' % (name, target))
        return dict(target=target, ok=True, kind='path', pruned=pruned)
    except (BackupError, OSError, subprocess.SubprocessError) as exc:
        log('offsite copy to %s FAILED: %s' % (target, exc))
        return dict(target=target, ok=False, error=str(exc))
