# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SQL migration logic shared by the pg_migrate and db_health modules: the runner.

No Ansible imports: the host commands import this file too. docs/pg_migrate.md is the user-facing description.

Migrator applies the pending migrations under a session-level advisory lock; status() is the read-only view of
the health check. What they work with lives beside them: migration_files.py (the files of path and their
layouts), migration_text.py (versions, checksums, a file's statements checked before anything runs),
migration_tracking.py (the tracking table, another tool's history), migration_plan.py (what a run would do),
migrate_checks.py (refusals before anything runs), migrate_streamed.py (a large first file applied while it is
read) and ddl_lint.py (locking DDL named before it runs).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import threading
import time

from .ddl_lint import MODES as LINT_MODES, Linter
from .migrate_checks import refuse_other_history
from .migrate_streamed import StreamedFile
from . import validate
from .migration_files import FORMATS, RUN_CALLBACKS, MigrationError, _listing, _numbered_problems, discover
from .migration_plan import Plan
from .migration_text import Context, prepare, version_text
from .migration_tracking import (LOCK_CLASS, TAKEOVER_TABLES, TAKEOVER_TOOLS, Record, TrackingTable,
                                 _looks_like, _refuse_foreign, default_applied_by, foreign_owner, read_history)
from .pg import ConnectError, RetryPolicy, connect, describe_error, is_retryable, psycopg2
from .sql import has_atomic_body, line_of_position, outside_transaction, waits_by_design

DRIFT_POLICIES = ('fail', 'warn', 'adopt')


# -- waiting for locks --------------------------------------------------------------------------------
class BlockerWatch:
    """Watch, from a second connection, which sessions block our backend while a statement waits for a lock."""

    QUERY = ("SELECT a.pid, a.usename, a.application_name, a.state, "
             "left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200), "
             "extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::int "
             "FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids(%s)) ORDER BY a.pid")

    def __init__(self, params, pid):
        self.params = params
        self.pid = pid
        self.blockers = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name='pg_migrate lock watch', daemon=True)
        self.thread.start()

    def _run(self):
        try:
            conn = connect(self.params, policy=RetryPolicy(retries=0), application_name='pg_migrate lock watch')
        except ConnectError:
            return
        try:
            with conn.cursor() as cur:
                while not self.stopped.is_set():
                    cur.execute(self.QUERY, (self.pid,))
                    rows = cur.fetchall()
                    if rows:
                        self.blockers = rows
                    self.stopped.wait(0.05)
        except psycopg2.Error:
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopped.set()
        self.thread.join(5)

    def describe(self):
        if not self.blockers:
            return ('the blocking session could not be identified (it ended, or this role may not see it in '
                    'pg_stat_activity)')
        return '; '.join('pid %s (user %s, application_name %r, state %s, in its transaction for %ss, query: %s)'
                         % row for row in self.blockers)


def _interval_ms(seconds):
    return '%dms' % int(round(float(seconds or 0) * 1000))


# -- the runner ----------------------------------------------------------------------------------------
class Migrator:
    """Apply pending migrations under a session-level advisory lock.

    STREAM_BYTES: a first pending file at least this large is read and checked while it runs (see
    _apply_streamed); every other file is checked before anything runs.

    params: connection parameters (pg.connection_argument_spec) plus path, format, placeholders, table,
    takeover, takeover_table, drift, baseline, target, out_of_order, repair, lock_timeout, ddl_lock_timeout,
    ddl_lock_retries, statement_timeout, applied_by, lint, lint_min_rows, lint_min_mb (ddl_lint.py).
    """

    STREAM_BYTES = 4 * 1024 * 1024

    def __init__(self, params, check_mode=False, warn=None, sleep=time.sleep, log=None):
        self.params = params
        self.stream_bytes = self.STREAM_BYTES
        self.check_mode = check_mode
        self.warn = warn or (lambda msg: None)
        self.log = log or (lambda msg: None)
        self.sleep = sleep
        checked = validate.Options(params)  # a library caller (the rehearsal, a bench) skips the module's checks
        migration_options(checked, params)
        if checked.problems:
            raise MigrationError(' '.join(problem['msg'] for problem in checked.problems))
        self.layout = params.get('format') or 'auto'
        if self.layout not in FORMATS:
            raise MigrationError('format must be one of %s' % ', '.join(FORMATS))
        self.table = TrackingTable(params.get('table') or 'schema_migrations')
        self.takeover = params.get('takeover') or None
        if self.takeover is not None and self.takeover not in TAKEOVER_TOOLS:
            raise MigrationError('takeover must be one of %s' % ', '.join(TAKEOVER_TOOLS))
        takeover_table = params.get('takeover_table') or TAKEOVER_TABLES.get(self.takeover)
        if self.takeover == 'pg_migrate' and not params.get('takeover_table'):
            raise MigrationError('takeover: pg_migrate reads an older pg_migrate table under another name: set '
                                 'takeover_table to it')
        self.source = TrackingTable(takeover_table) if self.takeover else None
        self.applied_by = params.get('applied_by') or default_applied_by()
        self.drift_policy = params.get('drift') or 'fail'
        if self.drift_policy not in DRIFT_POLICIES:
            raise MigrationError('drift must be one of %s' % ', '.join(DRIFT_POLICIES))
        self.ddl_lock_timeout = float(params.get('ddl_lock_timeout', 5) or 0)
        self.ddl_lock_retries = max(0, int(params.get('ddl_lock_retries', 3) or 0))
        self.statement_timeout = float(params.get('statement_timeout', 0) or 0)
        self.placeholders = params.get('placeholders') or {}
        self.lint = Linter(params, warn=self.warn, log=self.log, error=MigrationError)  # locking DDL, named
        self.catalog = None
        self.context = None
        self.streamed = None
        self._reset_run()
        self.policy = RetryPolicy(retries=params.get('retries', 3), sleep=sleep,
                                  on_retry=lambda n, wait, exc: self.log(
                                      'retry %d in %.1fs after: %s' % (n, wait, describe_error(exc))))

    def _reset_run(self):
        self.applied = []
        self.baselined = []
        self.taken_over = []
        self.callbacks_run = []
        self.notes = []
        self.db_changed = False
        self._blockers = None
        self.current = None  # the file being applied, for messages about a lost connection

    # -- entry point -----------------------------------------------------
    def run(self):
        started = time.time()
        try:
            self.catalog = discover(self.params['path'], self.layout, self.placeholders)
        except MigrationError as exc:
            exc.result = self._result(None, started)
            raise
        attempt = 0
        while True:
            try:
                conn = connect(self.params, policy=self.policy, application_name=self._app_name())
            except ConnectError as exc:
                raise MigrationError(str(exc), self._result(None, started)) from None
            try:
                plan = self._run_on(conn)
                return self._result(plan, started)
            except psycopg2.Error as exc:
                # The connection died between files or mid-file: the server rolled the open
                # transaction back, so reconnecting and planning again is safe.
                retryable = is_retryable(exc, conn)
                if not retryable or attempt >= self.policy.retries:
                    where = ''
                    if self.current is not None:
                        where = (' while applying %s (the server rolled its transaction back; nothing of it was '
                                 'applied)' % self.current.label)
                    fix = 'run again once the server is reachable' if retryable else 'fix the cause and run again'
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
    def _run_on(self, conn):
        conn.autocommit = True
        with conn.cursor() as cur:
            self.table.resolve(cur)
            if self.check_mode:
                return self._plan_and_check(conn, cur)
            self._lock(cur)
            try:
                conn.autocommit = False
                plan = self._plan_and_check(conn, cur)
                todo = plan.todo()
                first = todo[0] if todo else None
                # The bookkeeping joins the first migration's transaction when it has one: a run that fails on
                # its first file then changes nothing at all.
                joined = first is not None and (first is self.streamed or first.prepared[2])
                conn.commit()  # ends the reading transaction
                prelude = (lambda cursor: self._bookkeeping(cursor, plan)) if joined else None
                if not joined:
                    with conn.cursor() as book:
                        self._bookkeeping(book, plan)
                    conn.commit()
                    self._booked()
                if todo:
                    self._apply_all(conn, plan, todo, prelude)
                conn.autocommit = True
                if not (self.applied or self.baselined or self.taken_over or self.notes):
                    return plan
                self.table.inspect(cur)
                return Plan(self.catalog, self.table.read(cur), None, self.params.get('target'), True)
            finally:
                if not conn.closed:
                    try:
                        conn.rollback()
                        conn.autocommit = True
                        cur.execute('SELECT pg_advisory_unlock(%s, %s)', (LOCK_CLASS, self.table.lock_key()))
                    except psycopg2.Error as exc:
                        # The server drops session-level advisory locks with the connection anyway.
                        self.log('could not release the lock explicitly: %s' % describe_error(exc))

    def _plan_and_check(self, conn, cur):
        """Everything that can fail before the first change: the tracking table, a takeover, the plan and
        every pending file. Check mode stops here."""
        self.notes, self.planned_takeover, self.streamed = [], [], None
        exists = self.table.inspect(cur)
        if exists:
            owner = foreign_owner(self.table, self.catalog, cur)
            if owner is not None:
                raise _refuse_foreign(self.table, *owner)
        records = self.table.read(cur) if exists else []
        if not records and not self.takeover and self.params.get('baseline') is None:
            refuse_other_history(cur, self.table, self.catalog)  # a first run must not repeat another tool's work
        if self.check_mode:
            if not exists:
                self.notes.append('would create table %s' % self.table.qualified)
            elif self.table.missing_columns():
                self.notes.append('would adopt table %s left by an older runner' % self.table.qualified)
        if self.params.get('repair'):
            records = [r for r in records if r.success]
        self.takeover_rows = []
        if self.takeover:
            records = records + self._takeover(cur, records)
        plan = Plan(self.catalog, records, self.params.get('baseline'), self.params.get('target'),
                    self.params.get('out_of_order'))
        self._check_plan(plan)
        self._preflight(cur, plan)
        if self.check_mode:
            self.baselined = [f.name for f in plan.baseline]
            self.taken_over = list(self.planned_takeover)
            if plan.unchecksummed or (plan.drift and self.drift_policy == 'adopt'):
                self.notes.append('would record the checksums of %d file(s)'
                                  % (len(plan.unchecksummed) + len(plan.drift)))
        return plan

    def _takeover(self, cur, records):
        """Records for the files the other tool applied (nothing is written here)."""
        source = self.source
        exists = source.inspect(cur)
        if exists and source.qualified == self.table.qualified:
            raise MigrationError(
                'takeover: %s reads %s, which is also the table pg_migrate would record in (table: %s). pg_migrate '
                'never alters another tool\'s table: give it a table of its own, e.g. table: pg_schema_migrations'
                % (self.takeover, source.qualified, self.table.display))
        ours = [r for r in records if r.success]
        if not exists:
            if ours:
                return []  # taken over on an earlier run; the other tool's table is gone since
            raise MigrationError(
                'takeover: %s reads the table %s, which does not exist in this database, and pg_migrate has '
                'recorded nothing yet: running every migration from the start could repeat what is already there. '
                'Set takeover_table to the table %s keeps its history in (schema-qualified if needed), or remove '
                'takeover for a database %s never migrated' % (self.takeover, source.display, self.takeover,
                                                               self.takeover))
        if not _looks_like(self.takeover, source):
            raise MigrationError('takeover_table %s does not look like %s\'s history table (its columns: %s); set '
                                 'takeover_table to the table %s keeps its history in'
                                 % (source.qualified, self.takeover, ', '.join(sorted(source.columns)),
                                    self.takeover))
        history = read_history(self.takeover, source, cur)
        if history.problems:
            raise MigrationError(_numbered_problems(history.problems, 'takeover: %s\'s history is not in a state to '
                                                                      'take over; nothing was changed'
                                                    % self.takeover))
        found, unknown = history.applied_files(self.catalog)
        if ours:
            recorded = set(r.key for r in ours if r.key is not None)
            later = [f.name for f, _unused in found if f.key not in recorded]
            if later:
                raise MigrationError(
                    '%s records migration(s) %s as applied, but pg_migrate has not recorded them: %s ran after the '
                    'takeover. Let one tool migrate this database: record them by hand in %s (kind baseline) if '
                    'their changes are there, then run again' % (source.qualified, _listing(later), self.takeover,
                                                                 self.table.qualified))
            return []
        if unknown:
            self.warn('%s records version(s) %s that have no migration in path; they are not recorded in %s'
                      % (source.qualified, _listing(unknown), self.table.qualified))
        self.takeover_rows = found
        self.planned_takeover = [f.name for f, _unused in found]
        return [Record((version_text(f.key), f.name, 'baseline', f.checksum, True, None)) for f, _unused in found]

    def _check_plan(self, plan):
        if plan.failed and not self.params.get('repair'):
            record = plan.failed[0]
            raise MigrationError(
                'migration %s failed outside a transaction on an earlier run, so part of it may be applied: %s. '
                'Inspect the database and finish or undo that work by hand, then run again with repair: true '
                '(or DELETE FROM %s WHERE NOT success) to retry the file'
                % (record.name or record.version, record.error or 'no error recorded', self.table.qualified))
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

    def _context(self, cur):
        cur.execute("SELECT current_user, current_database(), current_schema(), to_char(now(), "
                    "'YYYY-MM-DD HH24:MI:SS'), current_setting('server_version_num')::int")
        user, database, schema, stamp, version = cur.fetchone()
        builtins = {'flyway:user': user, 'flyway:database': database, 'flyway:defaultschema': schema or '',
                    'flyway:timestamp': stamp, 'flyway:table': self.table.table,
                    'flyway:workingdirectory': os.getcwd()}
        return Context(version, self.placeholders, builtins)

    def _preflight(self, cur, plan):
        """Read and check every file the run would execute; report every problem together."""
        todo = plan.todo()
        if not todo:
            return
        self.context = context = self._context(cur)
        problems = []
        files = list(todo)
        first = todo[0]
        if not self.check_mode and first.kind == 'versioned' and len(first.text) >= self.stream_bytes \
                and not first.no_transaction and not any(self.catalog.callbacks.values()) \
                and not has_atomic_body(first.text) and self.lint.streams():
            self.streamed = files.pop(0)  # a large first file is checked while it runs (_apply_streamed)
        for event in RUN_CALLBACKS:
            files.extend(self.catalog.callbacks.get(event, []))
        for mfile in files:
            _unused, found = prepare(mfile, context)
            problems.extend('%s line %d: %s' % (mfile.label, line, message) for line, message in found)
        if problems and self.streamed is not None:  # report its problems too, all together
            _unused, found = prepare(self.streamed, context)
            problems[:0] = ['%s line %d: %s' % (self.streamed.label, line, message) for line, message in found]
            self.streamed = None
        for event in ('beforeEachMigrate', 'afterEachMigrate'):
            for callback in self.catalog.callbacks.get(event, []):
                if callback.prepared and not callback.prepared[2]:
                    problems.append('%s: a %s callback runs inside every migration\'s transaction, so it cannot hold '
                                    'statements that refuse one' % (callback.label, event))
        if plan.repeat_due and self.table.columns.get('version', ('', False))[1]:
            problems.append('table %s requires a version on every row (an older runner\'s primary key), so the '
                            'repeatable migration(s) %s cannot be recorded; run ALTER TABLE %s DROP CONSTRAINT '
                            '<its primary key>, ALTER COLUMN version DROP NOT NULL, or give them a version'
                            % (self.table.qualified, _listing(f.name for f in plan.repeat_due),
                               self.table.qualified))
        if problems:
            raise MigrationError(_numbered_problems(problems, 'pending migration(s) that cannot run as written; '
                                                              'nothing was applied'))
        self.lint.check(cur, files)  # warns; with lint: refuse, raises before anything runs

    def _bookkeeping(self, cur, plan):
        """Create or adopt the tracking table, remove repaired failures, record a takeover, a baseline and
        checksums, in the caller's transaction (its own, or the first migration's): a failure changes nothing.
        _booked() makes it count once that transaction committed."""
        self.table.inspect(cur)  # again: a rolled-back attempt may have created it in this session's view
        done = []
        done.extend(self.table.ensure(cur))
        if self.params.get('repair'):
            removed = self.table.delete_failed(cur)
            if removed:
                done.append('removed %d failed record(s) so they run again (repair)' % removed)
        origin = '%s (takeover from %s %s)' % (self.applied_by, self.takeover, self.source.qualified) \
            if self.takeover else None
        for mfile, applied_at in self.takeover_rows:
            self.table.insert(cur, mfile, 'baseline', mfile.checksum, 0, True, origin, applied_at=applied_at)
        for mfile in plan.baseline:
            self.table.insert(cur, mfile, 'baseline', mfile.checksum, 0, True, self.applied_by)
        adopt = list(plan.unchecksummed)
        if self.drift_policy == 'adopt':
            adopt += plan.drift
        for mfile in adopt:
            self.table.update_checksum(cur, mfile.key, mfile.name, mfile.checksum)
            done.append('recorded checksum of %s' % mfile.name)
        self._book = (done, [f.name for f in plan.baseline], list(self.planned_takeover),
                      bool(done or self.takeover_rows or plan.baseline))

    def _booked(self):
        done, baselined, taken_over, changed = self._book
        self.notes = list(done)
        self.baselined = baselined
        self.taken_over = taken_over
        if changed:
            self.db_changed = True

    def _lock(self, cur):
        key = self.table.lock_key()
        timeout = float(self.params.get('lock_timeout', 60))
        deadline = time.time() + timeout
        waited = False
        while True:
            cur.execute('SELECT pg_try_advisory_lock(%s, %s)', (LOCK_CLASS, key))
            if cur.fetchone()[0]:
                return
            if not waited:
                self.log('waiting for the migration lock on %s (another run holds it)' % self.table.qualified)
                waited = True
            if time.time() >= deadline:
                break
            self.sleep(min(0.2, max(0.0, deadline - time.time())))
        cur.execute("SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start::text, a.state "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::int::oid "
                    "AND l.objid = %s::int::oid AND l.objsubid = 2 "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    (LOCK_CLASS, key))
        holder = cur.fetchone()
        if holder:
            who = 'pid %s, application_name %r, client %s, connected since %s, state %s' % holder
            fix = 'wait for it to finish, or stop it with SELECT pg_terminate_backend(%s)' % holder[0]
        else:
            who, fix = 'a session that has just released it', 'run again'
        raise MigrationError('another migration run holds the lock on %s (%s); gave up after %ss. %s'
                             % (self.table.qualified, who, int(timeout), fix))

    # -- applying ---------------------------------------------------------
    def _apply_all(self, conn, plan, todo, prelude=None):
        callbacks = self.catalog.callbacks
        versioned_left = len(plan.pending)
        try:
            self._callback(conn, 'beforeMigrate')
            for mfile in todo:
                if mfile.kind == 'repeatable' and versioned_left == 0 and mfile is plan.repeat_due[0]:
                    self._callback(conn, 'beforeRepeatables')
                self._apply(conn, mfile, callbacks.get('beforeEachMigrate', []),
                            callbacks.get('afterEachMigrate', []), prelude if mfile is todo[0] else None)
                if mfile.kind != 'repeatable':
                    versioned_left -= 1
                    if versioned_left == 0:
                        self._callback(conn, 'afterVersioned')
            self._callback(conn, 'afterMigrate')
            self._callback(conn, 'afterMigrateApplied')
        except MigrationError:
            if callbacks.get('afterMigrateError') and not conn.closed:
                try:
                    conn.rollback()
                    self._callback(conn, 'afterMigrateError')
                except (MigrationError, psycopg2.Error) as exc:
                    self.warn('afterMigrateError callback failed: %s' % exc)
            raise

    def _reset_session(self, conn):
        """Back to a fresh session between files, keeping the advisory lock (DISCARD ALL would drop it)."""
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute('CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; '
                        'DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES; '
                        "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false), "
                        "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                        'AND classid = %s::int::oid AND objid = %s::int::oid AND objsubid = 2)',
                        (_interval_ms(self.ddl_lock_timeout), _interval_ms(self.statement_timeout), LOCK_CLASS,
                         self.table.lock_key()))
            if not cur.fetchone()[2]:
                raise MigrationError('pg_migrate lost its advisory lock on %s (a migration ran '
                                     'pg_advisory_unlock_all() or similar), so another run could start; stopped%s'
                                     % (self.table.qualified, self._applied_note()))

    def _callback(self, conn, event):
        for callback in self.catalog.callbacks.get(event, []):
            statements, modes, transactional = callback.prepared
            self.log('running callback %s' % callback.name)
            self._reset_session(conn)
            if transactional:
                self._run_transaction(conn, callback, [(callback, statements)], modes, record=False)
            else:
                self._run_outside(conn, callback, [(callback, statements)], record=False)
            self.callbacks_run.append(callback.name)

    def _apply(self, conn, mfile, before_each=(), after_each=(), prelude=None):
        self.current = mfile
        if mfile is self.streamed:
            self.streamed = None
            self.log('applying %s (read and checked while it runs; committed only when all of it is checked)'
                     % mfile.label)
            self._apply_streamed(conn, mfile, prelude)
        else:
            self.log('applying %s' % mfile.label)
            self._apply_prepared(conn, mfile, before_each, after_each, prelude)
        self.applied.append(mfile.name)
        self.callbacks_run.extend(c.name for c in list(before_each) + list(after_each))
        self.current = None

    def _apply_prepared(self, conn, mfile, before_each=(), after_each=(), prelude=None, attempt=0):
        statements, modes, transactional = mfile.prepared
        self._reset_session(conn)
        parts = [(c, c.prepared[0]) for c in before_each] + [(mfile, statements)] + \
            [(c, c.prepared[0]) for c in after_each]
        if transactional:
            self._run_transaction(conn, mfile, parts, modes, prelude=prelude, attempt=attempt)
            return
        if prelude is not None:  # the bookkeeping needs a transaction of its own here
            conn.autocommit = False
            with conn.cursor() as cur:
                prelude(cur)
            conn.commit()
            self._booked()
            self._reset_session(conn)
        self._run_outside(conn, mfile, parts)

    def _apply_streamed(self, conn, mfile, prelude):
        """Apply one large file while it is still being read and checked (migrate_streamed.py)."""
        StreamedFile(self, conn, mfile, prelude).apply()

    def _backoff(self, attempt):
        return min(0.5 * (2 ** attempt), 8.0)

    def _watch(self, conn, attempt):
        if self.ddl_lock_timeout <= 0 or (attempt == 0 and self.ddl_lock_retries > 0):
            return None
        return BlockerWatch(self.params, conn.get_backend_pid())

    def _run_transaction(self, conn, mfile, parts, modes, record=True, prelude=None, attempt=0):
        """Run the parts in one transaction with the tracking row (and the bookkeeping, as prelude, for the first
        file); retry a lock timeout (55P03) with backoff."""
        while True:
            started = time.time()
            watch = self._watch(conn, attempt)
            source, line, statement = mfile, 0, ''
            conn.autocommit = False
            try:
                with conn.cursor() as cur:
                    if modes and modes[1]:
                        line, statement = modes[0], 'SET TRANSACTION ' + modes[1]
                        cur.execute(statement)
                    if prelude is not None:
                        source, line, statement = None, 0, ''
                        prelude(cur)
                        source = mfile
                    for source, statements in parts:  # noqa: B007 - source names the failing part
                        for line, statement in statements:  # noqa: B007 - line names the failing statement
                            cur.execute(statement)
                    source, line, statement = None, 0, ''
                    if record:
                        cur.execute('SET SESSION AUTHORIZATION DEFAULT')
                        self.table.insert(cur, mfile, mfile.kind if mfile.kind == 'repeatable' else 'versioned',
                                          mfile.checksum, (time.time() - started) * 1000, True, self.applied_by)
                conn.commit()
                self.db_changed = True
                if prelude is not None:
                    self._booked()
                return
            except psycopg2.Error as exc:
                if is_retryable(exc, conn):
                    raise
                conn.rollback()
                if getattr(exc, 'pgcode', None) == '55P03' and attempt < self.ddl_lock_retries:
                    wait = self._backoff(attempt)
                    self.log('%s: lock not available within %ss (attempt %d); retrying in %.1fs'
                             % (mfile.label, self.ddl_lock_timeout, attempt + 1, wait))
                    self.sleep(wait)
                    attempt += 1
                    continue
                raise self._failure(mfile, source, line, statement, exc, watch, attempt) from None
            finally:
                if watch is not None:
                    watch.stop()

    def _failure(self, mfile, source, line, statement, exc, watch, attempt):
        where = line_of_position(statement, line, getattr(exc.diag, 'statement_position', None))
        place = '%s failed at line %d' % (mfile.label, where)
        if source is None:
            place = '%s: recording it in %s failed' % (mfile.label, self.table.qualified)
        elif source is not mfile:
            place = '%s failed in callback %s at line %d' % (mfile.label, source.label, where)
        rolled = 'Its transaction was rolled back: nothing of this file was applied%s, and later files were not run' \
            % self._applied_note()
        if getattr(exc, 'pgcode', None) == '55P03':
            blockers = watch.describe() if watch is not None else 'the blocking session was not identified'
            return MigrationError(
                'migration %s: it waited for a lock longer than ddl_lock_timeout (%ss) %d time(s) (SQLSTATE 55P03), '
                'so it gave up instead of making the bot\'s queries queue behind it. Blocked by %s. %s. Run again when '
                'that session is done (a backup, a long transaction), or end it with SELECT pg_terminate_backend(pid)'
                % (place, self.ddl_lock_timeout, attempt + 1, blockers, rolled))
        return MigrationError('migration %s: %s. %s. Fix the file and run again'
                              % (place, describe_error(exc), rolled))

    def _applied_note(self):
        if not self.applied:
            return ''
        return '; the %d file(s) applied before it in this run stay applied (%s)' % (
            len(self.applied), ', '.join(self.applied))

    def _run_outside(self, conn, mfile, parts, record=True):
        """Run statement by statement outside a transaction; a failure is recorded and needs repair."""
        started = time.time()
        conn.autocommit = True
        line, statement = 0, ''
        with conn.cursor() as cur:
            try:
                for _unused, statements in parts:
                    for line, statement in statements:  # noqa: B007 - line names the failing statement
                        self._execute_outside(conn, cur, mfile, statement)
                        self.db_changed = True
                if record:
                    self.table.insert(cur, mfile, mfile.kind if mfile.kind == 'repeatable' else 'versioned',
                                      mfile.checksum, (time.time() - started) * 1000, True, self.applied_by)
                return
            except psycopg2.Error as exc:
                where = line_of_position(statement, line, getattr(exc.diag, 'statement_position', None))
                error = 'line %d: %s (statement: %s)' % (where, describe_error(exc),
                                                         ' '.join(statement.split())[:200])
                if getattr(exc, 'pgcode', None) == '55P03':
                    error += '; waited for a lock longer than ddl_lock_timeout %d time(s); blocked by %s' % (
                        self.ddl_lock_retries + 1, self._blockers or 'a session that could not be identified')
        if not record:
            raise MigrationError('callback %s (outside a transaction) failed at %s' % (mfile.label, error))
        self._record_failure(conn, mfile, started, error)
        raise MigrationError(
            'migration %s (outside a transaction) failed at %s. Statements before it in this file may already be '
            'applied and were recorded as a failed migration; later files were not run. Inspect the database, then '
            'run again with repair: true to retry the file%s' % (mfile.label, error, self._applied_note()))

    def _execute_outside(self, conn, cur, mfile, statement):
        """One autocommit statement; a lock timeout is retried with backoff (statements before it stay applied)."""
        patient = waits_by_design(statement) and outside_transaction(statement)
        if patient:
            cur.execute("SELECT set_config('lock_timeout', '0', false)")
        attempt = 0
        try:
            while True:
                watch = None if patient else self._watch(conn, attempt)
                try:
                    cur.execute(statement)
                    return
                except psycopg2.Error as exc:
                    if getattr(exc, 'pgcode', None) == '55P03' and not patient:
                        if attempt < self.ddl_lock_retries:
                            wait = self._backoff(attempt)
                            self.log('%s: lock not available (attempt %d); retrying in %.1fs'
                                     % (mfile.label, attempt + 1, wait))
                            self.sleep(wait)
                            attempt += 1
                            continue
                        self._blockers = watch.describe() if watch is not None else None
                    raise
                finally:
                    if watch is not None:
                        watch.stop()
        finally:
            if patient and not conn.closed:
                cur.execute("SELECT set_config('lock_timeout', %s, false)", (_interval_ms(self.ddl_lock_timeout),))

    def _record_failure(self, conn, mfile, started, error):
        """Record a failed no-transaction file, on a new connection when the old one died."""
        elapsed = (time.time() - started) * 1000
        target = conn
        try:
            if conn.closed:
                target = connect(self.params, policy=self.policy, application_name=self._app_name())
            target.autocommit = True
            with target.cursor() as cur:
                cur.execute('SET SESSION AUTHORIZATION DEFAULT')
                self.table.insert(cur, mfile, 'versioned' if mfile.kind != 'repeatable' else 'repeatable',
                                  mfile.checksum, elapsed, False, self.applied_by, error)
            self.db_changed = True
        except (psycopg2.Error, ConnectError) as exc:
            self.warn('could not record the failure of %s: %s' % (mfile.name, exc))
        finally:
            if target is not conn:
                target.close()

    # -- results ---------------------------------------------------------
    def _result(self, plan, started):
        catalog = self.catalog
        result = dict(applied=list(self.applied), baselined=list(self.baselined), notes=list(self.notes),
                      taken_over=list(self.taken_over), callbacks=list(self.callbacks_run),
                      layout=catalog.layout if catalog else None,
                      down_files=list(catalog.down) if catalog else [],
                      ignored=list(catalog.ignored) if catalog else [],
                      duration_ms=int((time.time() - started) * 1000), lint=self.lint.report())
        if self.check_mode:  # what a run would change; a run that would fail changes nothing
            result['changed'] = plan is not None and bool(self.notes or self.baselined or self.taken_over
                                                          or plan.todo())
        else:
            result['changed'] = bool(self.db_changed)
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


def status(params, path, table='schema_migrations', layout='auto'):
    """Read-only migration status for health checks: pending, failed, drift, current version."""
    catalog = discover(path, layout)
    conn = connect(params, application_name='soulnear health')
    try:
        with conn.cursor() as cur:
            tracking = TrackingTable(table)
            exists = tracking.inspect(cur)
            if exists:
                owner = foreign_owner(tracking, catalog, cur)
                if owner is not None:
                    raise _refuse_foreign(tracking, *owner)
            records = tracking.read(cur) if exists else []
            if not records:
                # Another tool migrated this database and pg_migrate recorded nothing: the health check says what a
                # deploy would refuse, instead of listing the tool's whole history as pending.
                refuse_other_history(cur, tracking, catalog)
        plan = Plan(catalog, records, out_of_order=True, text_only=True)
        return dict(exists=bool(tracking.columns), pending=[f.name for f in plan.todo()],
                    failed=[r.name or r.version for r in plan.failed], drift=[f.name for f in plan.drift],
                    missing=plan.missing, layout=catalog.layout,
                    current_version=version_text(plan.current) if plan.current else None)
    finally:
        conn.close()


def migration_options(options, values, prefix=''):
    """pg_migrate's options found in values - the pg_migrate module's parameters, or safe_redeploy's
    migration_options that it passes on (prefix 'migration_options.' names them so): PostgreSQL timeouts within what
    the server keeps (whole milliseconds in 32 bits), bounded retries and lint thresholds, the choices, table names,
    booleans. Here, next to the choices it checks, rather than in validate.py, which every module imports."""
    # lint_min_rows and lint_min_mb: a larger one overflows the lint's bounded count or byte count; 32 TB is
    # PostgreSQL's largest table.
    longest = validate.PG_TIMEOUT_MAX_SECONDS
    numbers = (('lock_timeout', False, validate.TEN_YEARS, 'seconds'), ('ddl_lock_timeout', False, longest, 'seconds'),
               ('statement_timeout', False, longest, 'seconds'), ('ddl_lock_retries', True, 100, ''),
               ('lint_min_rows', True, 10 ** 12, 'rows'), ('lint_min_mb', False, 32 * 1024 * 1024, 'MB'))
    for key, whole, high, unit in numbers:
        if values.get(key) is None:
            continue
        value = validate.whole_or_number(values[key], whole)
        if value is None or (whole and not isinstance(value, int)):
            options.add(prefix + key, values[key], validate.Invalid('a whole number' if whole else 'a number'))
        else:
            options.value(prefix + key, value, validate.in_range, 0, high, unit)
    for key, choices in (('format', FORMATS), ('takeover', TAKEOVER_TOOLS), ('drift', DRIFT_POLICIES),
                         ('lint', LINT_MODES)):
        if values.get(key) is not None and values[key] not in choices:
            options.add(prefix + key, values[key], validate.Invalid('one of %s' % ', '.join(choices)))
    for key in ('table', 'takeover_table'):
        if values.get(key) is not None:
            options.value(prefix + key, values[key], validate.pg_name, 'table')
    if values.get('out_of_order') is not None and not isinstance(values['out_of_order'], bool):
        options.add(prefix + 'out_of_order', values['out_of_order'],
                    validate.Invalid('a boolean, true or false (unquoted)'))
    if values.get('placeholders') is not None and not isinstance(values['placeholders'], dict):
        options.add(prefix + 'placeholders', values['placeholders'], validate.Invalid('a dict of placeholder -> value'))
