# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SQL migration logic shared by the pg_migrate and db_health modules.

No Ansible imports: the host commands import this file too.

Files and ordering
- Versioned: ``<digits>[_-]description.sql`` (001_init.sql, 20251105_add_x.sql)
  or Flyway style ``V<version>__description.sql`` where the version may have
  parts (V1_2__x.sql and V1.2__x.sql are version 1.2). Versions compare
  numerically part by part: 2 < 10 < 10.1 < 20251105.
- Repeatable: ``R__description.sql``; (re)applied after the versioned files
  whenever its checksum changes, in name order.
- Any other ``*.sql`` file is an error: it would otherwise never run.
- A first line ``-- pg_migrate: no-transaction`` runs the file outside a
  transaction, one statement at a time.

Checksums are sha256 of the file decoded as UTF-8 with a BOM removed and
line endings normalised to LF, so a checkout on Windows is not drift.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import getpass
import hashlib
import os
import re
import socket
import time
import zlib

from .pg import ConnectError, RetryPolicy, connect, describe_error, is_retryable, psycopg2
from .sql import SqlSplitError, is_transaction_control, line_of_position, split_statements

if psycopg2 is not None:
    from psycopg2 import sql as pgsql
else:  # pragma: no cover
    pgsql = None

_VERSIONED = (
    re.compile(r'^V(?P<version>\d+(?:[._]\d+)*)__(?P<desc>.+)\.sql$'),
    re.compile(r'^(?P<version>\d+)(?:[_\-.](?P<desc>.*))?\.sql$'),
)
_REPEATABLE = re.compile(r'^R__(?P<desc>.+)\.sql$')
_DIRECTIVE = re.compile(r'^\s*--\s*pg_migrate:\s*(?P<words>.*)$', re.I)

LOCK_CLASS = 0x534E4D47  # 'SNMG': first key of the two-key advisory lock
NAME_COLUMNS = ('name', 'filename', 'file_name', 'script', 'migration')
DRIFT_POLICIES = ('fail', 'warn', 'adopt')


class MigrationError(Exception):
    """A failure meant for the operator; the message names the cause and the fix."""

    def __init__(self, message, result=None):
        Exception.__init__(self, message)
        self.result = result or {}


_VERSION_TEXT = re.compile(r'^[Vv]?(\d+(?:[._]\d+)*)$')
_VERSION_SEP = re.compile(r'[._]')


def parse_version(text):
    """'001' -> (1,), 'V1_2' or '1.2' -> (1, 2); None when text is not a version."""
    if text is None:
        return None
    match = _VERSION_TEXT.match(str(text).strip())
    if not match:
        return None
    digits = match.group(1)
    if digits.isdigit():
        return (int(digits),)
    return tuple(int(part) for part in _VERSION_SEP.split(digits))


def version_text(key):
    return '.'.join(str(part) for part in key)


def normalise(raw):
    """File bytes -> text with BOM removed and LF line endings (what the checksum covers)."""
    text = raw.decode('utf-8-sig')
    return text.replace('\r\n', '\n').replace('\r', '\n')


def checksum_of(text):
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


class MigrationFile:
    def __init__(self, path, name, kind, key, text):
        self.path = path
        self.name = name
        self.kind = kind  # 'versioned' | 'repeatable'
        self.key = key    # version tuple; None for repeatables
        self.text = text
        self.checksum = checksum_of(text)
        first = text.split('\n', 1)[0]
        match = _DIRECTIVE.match(first)
        words = match.group('words').lower().replace(',', ' ').split() if match else []
        self.transactional = 'no-transaction' not in words

    @property
    def version(self):
        return version_text(self.key) if self.key is not None else None

    def summary(self):
        return dict(version=self.version, name=self.name, checksum=self.checksum,
                    kind=self.kind, transaction=self.transactional)


def discover(path):
    """The migration files of a directory: (versioned sorted by version, repeatables sorted by name)."""
    if not os.path.isdir(path):
        raise MigrationError('migrations directory %s does not exist or is not a directory; '
                             'set path to the directory holding the *.sql files' % path)
    versioned, repeatable, unversioned = [], [], []
    seen = {}
    with os.scandir(path) as entries:
        candidates = sorted((e.name, e.path) for e in entries if e.name.endswith('.sql') and e.is_file())
    for name, full in candidates:
        with open(full, 'rb') as handle:
            raw = handle.read()
        try:
            text = normalise(raw)
        except UnicodeDecodeError as exc:
            raise MigrationError('migration %s is not valid UTF-8 (%s); save it as UTF-8' % (name, exc)) from None
        if _REPEATABLE.match(name):
            repeatable.append(MigrationFile(full, name, 'repeatable', None, text))
            continue
        for pattern in _VERSIONED:
            match = pattern.match(name)
            if match:
                key = parse_version(match.group('version'))
                if key in seen:
                    raise MigrationError('migrations %s and %s have the same version %s; give one of them '
                                         'a new version' % (seen[key], name, version_text(key)))
                seen[key] = name
                versioned.append(MigrationFile(full, name, 'versioned', key, text))
                break
        else:
            unversioned.append(name)
    if unversioned:
        raise MigrationError('migration file(s) without a version prefix: %s. Name them NNN_description.sql, '
                             'V<version>__description.sql or R__description.sql (repeatable); pg_migrate '
                             'does not skip files silently' % ', '.join(unversioned))
    versioned.sort(key=lambda f: f.key)
    return versioned, repeatable


def default_applied_by():
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = str(os.getuid())
    return '%s@%s' % (user, socket.gethostname())


class Record:
    """One row of the tracking table, whatever shape the table has."""

    def __init__(self, row):
        self.version, self.name, self.kind, self.checksum, self.success, self.error = row
        self.kind = self.kind or 'versioned'
        self.key = None
        if self.kind != 'repeatable':
            self.key = parse_version(self.version)
            if self.key is None and self.name:
                # Legacy runners sometimes stored '001_init' or the file name as the version.
                for pattern in _VERSIONED:
                    match = pattern.match(self.name if self.name.endswith('.sql') else self.name + '.sql')
                    if match:
                        self.key = parse_version(match.group('version'))
                        break
            if self.key is None and self.version:
                match = re.match(r'^V?(\d+(?:[._]\d+)*)', str(self.version))
                self.key = parse_version(match.group(1)) if match else None
        if self.success is None:
            self.success = True


class TrackingTable:
    """schema_migrations: created when missing, adopted (columns added) when left by an older runner."""

    COLUMNS = (
        ('version', 'text'),
        ('name', 'text'),
        ('kind', "text NOT NULL DEFAULT 'versioned'"),
        ('checksum', 'text'),
        ('applied_at', 'timestamptz NOT NULL DEFAULT now()'),
        ('execution_ms', 'integer NOT NULL DEFAULT 0'),
        ('success', 'boolean NOT NULL DEFAULT true'),
        ('applied_by', 'text'),
        ('error', 'text'),
    )

    def __init__(self, name):
        parts = name.split('.', 1)
        self.schema, self.table = (parts if len(parts) == 2 else (None, parts[0]))
        self.display = name
        self.ident = (pgsql.Identifier(self.schema, self.table) if self.schema
                      else pgsql.Identifier(self.table))
        self.columns = {}
        self.name_col = 'name'
        self.version_type = 'text'

    def lock_key(self):
        return zlib.crc32(self.display.encode('utf-8')) & 0x7FFFFFFF

    def inspect(self, cur):
        """Read the table's columns; False when it does not exist."""
        cur.execute('SELECT to_regclass(%s)', (self.display if self.schema else self.table,))
        if cur.fetchone()[0] is None:
            self.columns = {}
            return False
        cur.execute('SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a '
                    'WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped',
                    (self.display if self.schema else self.table,))
        self.columns = dict((row[0], (row[1], row[2])) for row in cur.fetchall())
        self.name_col = next((c for c in NAME_COLUMNS if c in self.columns), 'name')
        self.version_type = self.columns.get('version', ('text', False))[0]
        return True

    def missing_columns(self):
        missing = [(c, t) for c, t in self.COLUMNS if c not in self.columns]
        if self.name_col != 'name':
            missing = [(c, t) for c, t in missing if c != 'name']
        return missing

    def ensure(self, cur):
        """Create or adopt the table; returns a list of what was done (empty when nothing)."""
        done = []
        if not self.inspect(cur):
            cur.execute(pgsql.SQL(
                'CREATE TABLE {} ('
                ' id bigserial PRIMARY KEY,'
                ' version text UNIQUE,'
                ' name text NOT NULL,'
                " kind text NOT NULL DEFAULT 'versioned' CHECK (kind IN ('versioned', 'repeatable', 'baseline')),"
                ' checksum text,'
                ' applied_at timestamptz NOT NULL DEFAULT now(),'
                ' execution_ms integer NOT NULL DEFAULT 0,'
                ' success boolean NOT NULL DEFAULT true,'
                ' applied_by text,'
                ' error text)').format(self.ident))
            self.inspect(cur)
            return ['created table %s' % self.display]
        if 'version' not in self.columns and self.name_col not in self.columns:
            raise MigrationError('table %s exists but has neither a version nor a file name column, so it is not '
                                 'a migrations table pg_migrate can adopt; rename it or set table to another name'
                                 % self.display)
        missing = self.missing_columns()
        for column, ctype in missing:
            cur.execute(pgsql.SQL('ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} ' + ctype).format(
                self.ident, pgsql.Identifier(column)))
        if missing:
            done.append('adopted table %s left by another runner (added columns: %s)'
                        % (self.display, ', '.join(c for c, _ in missing)))
            had_version = 'version' not in [c for c, _ in missing]
            self.inspect(cur)
            if not had_version:
                # Fill the new version column from the file names the old runner recorded.
                cur.execute(pgsql.SQL('SELECT ctid::text, {} FROM {}').format(
                    pgsql.Identifier(self.name_col), self.ident))
                for ctid, name in cur.fetchall():
                    key = Record((None, name, None, None, True, None)).key
                    if key is not None:
                        cur.execute(pgsql.SQL('UPDATE {} SET version = %s WHERE ctid = %s::tid').format(self.ident),
                                    (version_text(key), ctid))
        return done

    def read(self, cur):
        """All records; works on a legacy table that was not adopted yet (check mode)."""
        if not self.columns:
            return []

        def col(name, fallback='NULL'):
            if name == 'name':
                name = self.name_col
            if name in self.columns:
                return pgsql.SQL('{}::text').format(pgsql.Identifier(name)) if name == 'version' \
                    else pgsql.Identifier(name)
            return pgsql.SQL(fallback)
        query = pgsql.SQL('SELECT {}, {}, {}, {}, {}, {} FROM {}').format(
            col('version'), col('name'), col('kind'), col('checksum'), col('success', 'true'), col('error'),
            self.ident)
        cur.execute(query)
        return [Record(row) for row in cur.fetchall()]

    def version_value(self, key):
        """The version as the column stores it (legacy integer columns keep integers)."""
        if key is None:
            return None
        if 'int' in self.version_type or self.version_type == 'numeric':
            if len(key) != 1:
                raise MigrationError('table %s stores versions as %s, so version %s cannot be recorded; rename the '
                                     'file to a whole-number version' % (self.display, self.version_type,
                                                                         version_text(key)))
            return key[0]
        return version_text(key)

    def insert(self, cur, mfile, kind, checksum, elapsed_ms, success, applied_by, error=None):
        if kind == 'repeatable':
            cur.execute(pgsql.SQL('DELETE FROM {} WHERE kind = %s AND {} = %s').format(
                self.ident, pgsql.Identifier(self.name_col)), ('repeatable', mfile.name))
        if kind == 'repeatable' and self.columns.get('version', ('', False))[1]:
            raise MigrationError('table %s requires a version on every row, so the repeatable migration %s cannot '
                                 'be recorded; run ALTER TABLE %s ALTER COLUMN version DROP NOT NULL (and drop a '
                                 'primary key on version) or rename the file with a version'
                                 % (self.display, mfile.name, self.display))
        cur.execute(pgsql.SQL(
            'INSERT INTO {} (version, {}, kind, checksum, execution_ms, success, applied_by, error) '
            'VALUES (%s, %s, %s, %s, %s, %s, %s, %s)').format(self.ident, pgsql.Identifier(self.name_col)),
            (self.version_value(mfile.key), mfile.name, kind, checksum, int(elapsed_ms), success, applied_by, error))

    def update_checksum(self, cur, key, name, checksum):
        cur.execute(pgsql.SQL('UPDATE {} SET checksum = %s, {} = %s WHERE version::text = %s').format(
            self.ident, pgsql.Identifier(self.name_col)), (checksum, name, str(self.version_value(key))))
        if cur.rowcount == 0:
            # Legacy rows may store '001' for version 1: match on the parsed version instead.
            for record in self.read(cur):
                if record.key == key:
                    cur.execute(pgsql.SQL('UPDATE {} SET checksum = %s, {} = %s WHERE version::text = %s').format(
                        self.ident, pgsql.Identifier(self.name_col)), (checksum, name, record.version))

    def delete_failed(self, cur):
        cur.execute(pgsql.SQL('DELETE FROM {} WHERE NOT success').format(self.ident))
        return cur.rowcount


class Plan:
    """What a run would do, computed from the files and the tracking table."""

    def __init__(self, versioned, repeatable, records, baseline=None, target=None, out_of_order=False):
        self.versioned = versioned
        self.repeatable = repeatable
        by_key = {}
        self.repeat_records = {}
        for record in records:
            if record.kind == 'repeatable':
                self.repeat_records[record.name] = record
            elif record.key is not None:
                by_key[record.key] = record
        self.records = by_key
        self.failed = [r for r in records if not r.success]
        files_by_key = dict((f.key, f) for f in versioned)
        self.missing = sorted((r.name or r.version) for k, r in by_key.items() if k not in files_by_key)
        self.drift = [f for f in versioned if f.key in by_key and by_key[f.key].checksum
                      and by_key[f.key].success and by_key[f.key].checksum != f.checksum]
        self.unchecksummed = [f for f in versioned if f.key in by_key and not by_key[f.key].checksum]
        pending = [f for f in versioned if f.key not in by_key]
        applied_keys = [k for k, r in by_key.items() if r.success]
        self.current = max(applied_keys) if applied_keys else None
        self.baseline = []
        if baseline is not None:
            limit = parse_version(baseline)
            if limit is None:
                raise MigrationError('baseline %r is not a version (expected e.g. 5, 20251105 or 1.2)' % baseline)
            self.baseline = [f for f in pending if f.key <= limit]
            pending = [f for f in pending if f.key > limit]
        if target is not None:
            limit = parse_version(target)
            if limit is None:
                raise MigrationError('target %r is not a version' % target)
            pending = [f for f in pending if f.key <= limit]
        self.out_of_order = [f for f in pending if self.current is not None and f.key < self.current]
        if self.out_of_order and not out_of_order:
            raise MigrationError(
                'migration(s) %s are older than the newest applied version %s but were never applied (added out of '
                'order). Give them a version above %s, or set out_of_order: true to apply them anyway'
                % (', '.join(f.name for f in self.out_of_order), version_text(self.current),
                   version_text(self.current)))
        self.pending = pending
        self.repeat_due = []
        if target is None:
            for mfile in repeatable:
                record = self.repeat_records.get(mfile.name)
                if record is None or record.checksum != mfile.checksum or not record.success:
                    self.repeat_due.append(mfile)

    def todo(self):
        return self.pending + self.repeat_due

    def applied_names(self):
        names = [r.name or r.version for k, r in sorted(self.records.items()) if r.success]
        return names + sorted(self.repeat_records)


class Migrator:
    """Apply pending migrations under a session-level advisory lock.

    params: connection parameters (soulnear_pg.connection_argument_spec) plus
    path, table, drift, baseline, target, out_of_order, lock_timeout,
    applied_by, repair.
    """

    def __init__(self, params, check_mode=False, warn=None, sleep=time.sleep, log=None):
        self.params = params
        self.check_mode = check_mode
        self.warn = warn or (lambda msg: None)
        self.log = log or (lambda msg: None)
        self.sleep = sleep
        self.table = TrackingTable(params.get('table') or 'schema_migrations')
        self.applied_by = params.get('applied_by') or default_applied_by()
        self.drift_policy = params.get('drift') or 'fail'
        if self.drift_policy not in DRIFT_POLICIES:
            raise MigrationError('drift must be one of %s' % ', '.join(DRIFT_POLICIES))
        self.applied = []
        self.baselined = []
        self.notes = []
        self.current = None  # the file being applied, for messages about a lost connection
        self.policy = RetryPolicy(retries=params.get('retries', 3), sleep=sleep,
                                  on_retry=lambda n, wait, exc: self.log(
                                      'retry %d in %.1fs after: %s' % (n, wait, describe_error(exc))))

    # -- entry point -----------------------------------------------------
    def run(self):
        started = time.time()
        versioned, repeatable = discover(self.params['path'])
        attempt = 0
        while True:
            try:
                conn = connect(self.params, policy=self.policy, application_name=self._app_name())
            except ConnectError as exc:
                raise MigrationError(str(exc), self._result(None, started)) from None
            try:
                plan = self._run_on(conn, versioned, repeatable)
                return self._result(plan, started)
            except psycopg2.Error as exc:
                # The connection died between files or mid-file: the server rolled the open
                # transaction back, so reconnecting and planning again is safe.
                if not is_retryable(exc) or attempt >= self.policy.retries:
                    where = ''
                    if self.current is not None:
                        where = (' while applying %s (the server rolled its transaction back; nothing of it was '
                                 'applied)' % self.current.name)
                    fix = 'run again once the server is reachable' if is_retryable(exc) \
                        else 'fix the cause and run again'
                    raise MigrationError('migration run failed%s: %s. Nothing is half-applied; %s%s'
                                         % (where, describe_error(exc), fix, self._applied_note()),
                                         self._result(None, started)) from None
                self.log('connection lost (%s); reconnecting' % describe_error(exc))
                self.sleep(self.policy.delay(attempt))
                attempt += 1
            except MigrationError as exc:
                exc.result = self._result(None, started)
                raise
            finally:
                if not conn.closed:
                    conn.close()

    def _app_name(self):
        return ('pg_migrate %s' % self.applied_by)[:63]

    # -- one connected attempt ---------------------------------------------
    def _run_on(self, conn, versioned, repeatable):
        conn.autocommit = True
        with conn.cursor() as cur:
            if self.check_mode:
                exists = self.table.inspect(cur)
                records = self.table.read(cur) if exists else []
                if not exists:
                    self.notes.append('would create table %s' % self.table.display)
                elif self.table.missing_columns():
                    self.notes.append('would adopt table %s left by another runner' % self.table.display)
                plan = self._check_plan(Plan(versioned, repeatable, records, self.params.get('baseline'),
                                             self.params.get('target'), self.params.get('out_of_order')))
                self.baselined = [f.name for f in plan.baseline]
                if plan.unchecksummed or (plan.drift and self.drift_policy == 'adopt'):
                    self.notes.append('would record the checksums of %d file(s)'
                                      % (len(plan.unchecksummed) + len(plan.drift)))
                return plan
            self._lock(cur)
            try:
                conn.autocommit = False
                self.notes.extend(self.table.ensure(cur))
                conn.commit()
                if self.params.get('repair'):
                    removed = self.table.delete_failed(cur)
                    conn.commit()
                    if removed:
                        self.notes.append('removed %d failed record(s) so they run again (repair)' % removed)
                plan = Plan(versioned, repeatable, self.table.read(cur), self.params.get('baseline'),
                            self.params.get('target'), self.params.get('out_of_order'))
                conn.commit()
                self._check_plan(plan)
                self._adopt_checksums(cur, plan)
                conn.commit()
                for mfile in plan.baseline:
                    self.table.insert(cur, mfile, 'baseline', mfile.checksum, 0, True, self.applied_by)
                    self.baselined.append(mfile.name)
                conn.commit()
                for mfile in plan.todo():
                    self._apply(conn, mfile)
                conn.autocommit = True
                if not (self.applied or self.baselined or self.notes):
                    return plan
                return Plan(versioned, repeatable, self.table.read(cur), None, self.params.get('target'), True)
            finally:
                if not conn.closed:
                    try:
                        conn.rollback()
                        conn.autocommit = True
                        cur.execute('SELECT pg_advisory_unlock(%s, %s)', (LOCK_CLASS, self.table.lock_key()))
                    except psycopg2.Error as exc:
                        # The server drops session-level advisory locks with the connection anyway.
                        self.log('could not release the lock explicitly: %s' % describe_error(exc))

    def _check_plan(self, plan):
        if plan.failed and not self.params.get('repair'):
            record = plan.failed[0]
            raise MigrationError(
                'migration %s failed outside a transaction on an earlier run, so part of it may be applied: %s. '
                'Inspect the database and finish or undo that work by hand, then run again with repair: true '
                '(or DELETE FROM %s WHERE NOT success) to retry the file'
                % (record.name or record.version, record.error or 'no error recorded', self.table.display))
        if plan.drift:
            names = ', '.join(f.name for f in plan.drift)
            if self.drift_policy == 'fail':
                raise MigrationError(
                    'applied migration(s) changed on disk since they ran (checksum drift): %s. Restore the original '
                    'file and put the change in a new migration, or set drift: adopt to accept the files as they are '
                    'now' % names)
            if self.drift_policy == 'warn':
                self.warn('applied migration(s) changed on disk since they ran (checksum drift): %s' % names)
        if plan.missing:
            self.warn('recorded migration(s) have no file any more: %s' % ', '.join(plan.missing))
        return plan

    def _adopt_checksums(self, cur, plan):
        adopt = list(plan.unchecksummed)
        if self.drift_policy == 'adopt':
            adopt += plan.drift
        for mfile in adopt:
            self.table.update_checksum(cur, mfile.key, mfile.name, mfile.checksum)
            self.notes.append('recorded checksum of %s' % mfile.name)

    def _lock(self, cur):
        key = self.table.lock_key()
        timeout = float(self.params.get('lock_timeout', 60))
        deadline = time.time() + timeout
        while True:
            cur.execute('SELECT pg_try_advisory_lock(%s, %s)', (LOCK_CLASS, key))
            if cur.fetchone()[0]:
                return
            if time.time() >= deadline:
                break
            self.sleep(min(0.2, max(0.0, deadline - time.time())))
        cur.execute("SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start::text, a.state "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::int::oid "
                    "AND l.objid = %s::int::oid AND l.objsubid = 2", (LOCK_CLASS, key))
        holder = cur.fetchone()
        if holder:
            who = 'pid %s, application_name %r, client %s, connected since %s, state %s' % holder
            fix = 'wait for it to finish, or stop it with SELECT pg_terminate_backend(%s)' % holder[0]
        else:
            who, fix = 'a session that has just released it', 'run again'
        raise MigrationError('another migration run holds the lock on %s (%s); gave up after %ss. %s'
                             % (self.table.display, who, int(timeout), fix))

    # -- applying one file -----------------------------------------------
    def _statements(self, mfile):
        try:
            statements = split_statements(mfile.text)
        except SqlSplitError as exc:
            raise MigrationError('migration %s cannot be parsed at line %d: %s; nothing was applied from it'
                                 % (mfile.name, exc.line, exc)) from None
        if not mfile.transactional:
            return statements
        # A file wrapped in BEGIN; ... COMMIT; gets our transaction instead of its own.
        if len(statements) >= 2 and is_transaction_control(statements[0][1]) \
                and is_transaction_control(statements[-1][1]) \
                and statements[0][1].split()[0].upper() in ('BEGIN', 'START'):
            statements = statements[1:-1]
        for line, statement in statements:
            if is_transaction_control(statement):
                raise MigrationError(
                    'migration %s line %d: %r controls the transaction itself; pg_migrate already runs each file in '
                    'one transaction. Remove it, or put "-- pg_migrate: no-transaction" on the first line to run the '
                    'file outside a transaction' % (mfile.name, line, statement.split('\n')[0][:60]))
        return statements

    def _apply(self, conn, mfile):
        statements = self._statements(mfile)
        self.current = mfile
        kind = mfile.kind
        started = time.time()
        self.log('applying %s' % mfile.name)
        if mfile.transactional:
            conn.autocommit = False
            with conn.cursor() as cur:
                line, statement = 0, ''
                try:
                    for line, statement in statements:  # noqa: B007 - line names the failing statement
                        cur.execute(statement)
                    self.table.insert(cur, mfile, kind, mfile.checksum, (time.time() - started) * 1000, True,
                                      self.applied_by)
                    conn.commit()
                except psycopg2.Error as exc:
                    if is_retryable(exc):
                        raise
                    conn.rollback()
                    where = line_of_position(statement, line, getattr(exc.diag, 'statement_position', None))
                    raise MigrationError(
                        'migration %s failed at line %d: %s. Its transaction was rolled back: nothing of this file '
                        'was applied%s, and later files were not run. Fix the file and run again'
                        % (mfile.name, where, describe_error(exc), self._applied_note())) from None
        else:
            self._apply_outside_transaction(conn, mfile, statements, started)
        self.applied.append(mfile.name)
        self.current = None

    def _applied_note(self):
        if not self.applied:
            return ''
        return '; the %d file(s) applied before it in this run stay applied (%s)' % (
            len(self.applied), ', '.join(self.applied))

    def _apply_outside_transaction(self, conn, mfile, statements, started):
        conn.autocommit = True
        line, statement = 0, ''
        with conn.cursor() as cur:
            try:
                for line, statement in statements:  # noqa: B007 - line names the failing statement
                    cur.execute(statement)
                self.table.insert(cur, mfile, mfile.kind, mfile.checksum, (time.time() - started) * 1000, True,
                                  self.applied_by)
                return
            except psycopg2.Error as exc:
                where = line_of_position(statement, line, getattr(exc.diag, 'statement_position', None))
                error = 'line %d: %s (statement: %s)' % (where, describe_error(exc), ' '.join(statement.split())[:200])
        self._record_failure(conn, mfile, started, error)
        raise MigrationError(
            'migration %s (no-transaction) failed at %s. Statements before it in this file may already be applied '
            'and were recorded as a failed migration; later files were not run. Inspect the database, then run again '
            'with repair: true to retry the file%s' % (mfile.name, error, self._applied_note()))

    def _record_failure(self, conn, mfile, started, error):
        """Record a failed no-transaction file, on a new connection when the old one died."""
        elapsed = (time.time() - started) * 1000
        target = conn
        try:
            if conn.closed:
                target = connect(self.params, policy=self.policy, application_name=self._app_name())
            target.autocommit = True
            with target.cursor() as cur:
                self.table.insert(cur, mfile, mfile.kind, mfile.checksum, elapsed, False, self.applied_by, error)
        except (psycopg2.Error, ConnectError) as exc:
            self.warn('could not record the failure of %s: %s' % (mfile.name, exc))
        finally:
            if target is not conn:
                target.close()

    # -- results ---------------------------------------------------------
    def _result(self, plan, started):
        result = dict(applied=list(self.applied), baselined=list(self.baselined), notes=list(self.notes),
                      duration_ms=int((time.time() - started) * 1000))
        result['changed'] = bool(self.applied or self.baselined or self.notes
                                 or (self.check_mode and plan is not None and plan.todo()))
        if plan is not None:
            result.update(
                pending=[f.summary() for f in plan.todo()],
                current_version=version_text(plan.current) if plan.current else None,
                drift=[f.name for f in plan.drift],
                missing=plan.missing,
                failed=[r.name or r.version for r in plan.failed],
                applied_before=plan.applied_names(),
            )
        return result


def status(params, path, table='schema_migrations'):
    """Read-only migration status for health checks: pending, failed, drift, current version."""
    versioned, repeatable = discover(path)
    conn = connect(params, application_name='soulnear health')
    try:
        with conn.cursor() as cur:
            tracking = TrackingTable(table)
            records = tracking.read(cur) if tracking.inspect(cur) else []
        plan = Plan(versioned, repeatable, records, out_of_order=True)
        return dict(exists=bool(tracking.columns), pending=[f.name for f in plan.todo()],
                    failed=[r.name or r.version for r in plan.failed], drift=[f.name for f in plan.drift],
                    missing=plan.missing,
                    current_version=version_text(plan.current) if plan.current else None)
    finally:
        conn.close()
