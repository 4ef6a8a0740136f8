# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_migrate's large first file, applied while it is still being read and checked (Migrator._apply_streamed).

Migrator._preflight hands it over when it is at least Migrator.STREAM_BYTES and may stream (no callbacks, not
lint: refuse, no atomic body, no no-transaction directive); every other file is checked before anything runs.

No Ansible imports: the host commands import this file too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import queue
import sys
import threading
import time

from .migration_files import MigrationError, _numbered_problems
from .migration_text import body_of, check_statements, prepare
from .pg import is_retryable, psycopg2
from .sql import WATCHED_WORDS, Facts, SqlSplitError, begin_modes, first_word_upper, iter_statements


def _cannot_run(mfile, problems):
    return MigrationError(_numbered_problems(
        ['%s line %d: %s' % (mfile.label, line, message) for line, message in problems],
        'pending migration(s) that cannot run as written; nothing was applied'))


class _Scan:
    """The thread that reads the file: its statements, handed over as they are split. Statements go over in
    batches and the queue never blocks the reader: it finishes its scan quickly (the statements are kept anyway)
    instead of competing for the interpreter for the whole run."""

    def __init__(self, body, first_line):
        self.body = body
        self.first_line = first_line
        self.found, self.outcome, self.batches, self.cancel = [], {}, queue.Queue(), threading.Event()
        self.thread = threading.Thread(target=self._produce, name='pg_migrate scan', daemon=True)
        self.switch = None

    def _produce(self):
        batch, size = [], 0
        try:
            for item in iter_statements(self.body, self.first_line, self.found):
                batch.append(item)
                size += len(item[1])
                if len(batch) >= 512 or size >= 1 << 20:
                    if self.cancel.is_set():
                        return
                    self.batches.put(batch)
                    batch, size = [], 0
        except SqlSplitError as exc:
            self.outcome['split'] = exc
        except Exception as exc:  # noqa: BLE001 - handed to the applying thread
            self.outcome['crash'] = exc
        self.batches.put(batch)
        self.batches.put(None)

    def statements(self):
        while True:
            batch = self.batches.get()
            if batch is None:
                return
            yield from batch

    def start(self):
        self.switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self.switch, 0.0005))  # a statement back from the server waits less for the reader
        self.thread.start()

    def stop(self):
        self.cancel.set()
        self.thread.join(5)
        sys.setswitchinterval(self.switch)


class StreamedFile:
    """Apply one large file while it is still being read and checked: a thread scans it (the regular
    expressions hold the interpreter while the statements wait for the server), the statements run as they
    come, inside the file's transaction, and nothing is committed before the whole file is checked. A
    problem found late rolls everything back, the bookkeeping included: nothing applied, as for the others."""

    def __init__(self, migrator, conn, mfile, prelude):
        self.migrator = migrator
        self.conn = conn
        self.mfile = mfile
        self.prelude = prelude
        self.raw, self.begin, self.done, self.stop, self.error = [], None, 0, False, None

    def apply(self):
        migrator, conn, mfile = self.migrator, self.conn, self.mfile
        body, first_line, no_tx, problems = body_of(mfile, migrator.context)
        if no_tx:
            self._prepare_or_raise()
            migrator._apply_prepared(conn, mfile, prelude=self.prelude)
            return
        migrator._reset_session(conn)
        scan = _Scan(body, first_line)
        scan.start()
        started = time.time()
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
                for item in scan.statements():
                    self._as_read(cur, item, scan.found)
                scan.thread.join()
                statements, modes, transactional = self._checked(scan, body, first_line, no_tx, problems)
                if self._handed_over(transactional):
                    return
                self._run_rest(cur, statements, modes, started)
            conn.commit()
            migrator.db_changed = True
            if self.prelude is not None:
                migrator._booked()
        finally:
            scan.stop()

    def _prepare_or_raise(self):
        _unused, found = prepare(self.mfile, self.migrator.context)
        if found:
            raise _cannot_run(self.mfile, found)

    def _as_read(self, cur, item, found):
        """One statement as the reader hands it over: run it, unless the file is already decided only once it is
        all read (a problem found, a statement failed, a statement the whole file decides about)."""
        self.raw.append(item)
        if self.stop or found:
            self.stop = True
            return
        if len(self.raw) == 1 and self._first(cur, item):
            return
        if first_word_upper(item[1]) in WATCHED_WORDS:
            facts = Facts([item], self.migrator.context.server_version)
            if facts.control or facts.outside or facts.discard_all:
                self.stop = True  # decided once the whole file is read
                return
        self.migrator.lint.check_streamed(cur, self.mfile, *item)  # before it runs
        try:
            cur.execute(item[1])
            self.done += 1
        except psycopg2.Error as exc:
            if is_retryable(exc, self.conn):
                raise
            self.stop, self.error = True, (item, exc)

    def _first(self, cur, item):
        """The first statement: a wrapper's BEGIN sets its options, and the bookkeeping (prelude) joins the
        transaction. True when the statement needs nothing more."""
        modes = begin_modes(item[1])
        try:
            if modes is not None:  # a wrapper's BEGIN: its options first, then the bookkeeping
                self.begin, self.done = item, 1
                if modes:
                    cur.execute('SET TRANSACTION ' + modes)
            if self.prelude is not None:
                self.prelude(cur)
        except psycopg2.Error as exc:
            if is_retryable(exc, self.conn):
                raise
            self.stop, self.error = True, (item if modes else (0, ''), exc)
        return self.begin is not None or self.stop

    def _checked(self, scan, body, first_line, no_tx, problems):
        """The whole file read: (statements as they run, BEGIN options, in a transaction); a problem rolls
        everything back and raises."""
        mfile = self.mfile
        if 'crash' in scan.outcome:
            raise scan.outcome['crash']
        if 'split' in scan.outcome:
            exc = scan.outcome['split']
            problems.append((exc.line, '%s; the file cannot be split into statements' % exc.message))
        problems.extend(scan.found)
        statements, modes, transactional = [], None, True
        if 'split' not in scan.outcome:
            statements = check_statements(mfile, body, first_line, no_tx, self.raw, problems, self.migrator.context)
            _unused, modes, transactional = mfile.prepared
        if problems:
            self.conn.rollback()
            raise _cannot_run(mfile, problems)
        return statements, modes, transactional

    def _handed_over(self, transactional):
        """A statement that failed while the file was read raises, rolled back; a lock timeout, or a file that
        runs outside a transaction, goes to Migrator._apply_prepared. True when it went there."""
        migrator, conn, mfile, error = self.migrator, self.conn, self.mfile, self.error
        if error is not None and getattr(error[1], 'pgcode', None) != '55P03':
            conn.rollback()
            (line, statement), exc = error
            raise migrator._failure(mfile, mfile if statement else None, line, statement, exc, None, 0) from None
        if error is not None or not transactional:
            # A lock timeout (retried with backoff and named), or a file that runs outside a transaction.
            conn.rollback()
            if error is not None:
                migrator.log('%s: lock not available within %ss (attempt 1); retrying in %.1fs'
                             % (mfile.label, migrator.ddl_lock_timeout, migrator._backoff(0)))
                migrator.sleep(migrator._backoff(0))
            migrator._apply_prepared(conn, mfile, prelude=self.prelude, attempt=1 if error is not None else 0)
            return True
        return False

    def _run_rest(self, cur, statements, modes, started):
        """The statements that did not run while the file was read, then its tracking row."""
        migrator, conn, mfile = self.migrator, self.conn, self.mfile
        if self.prelude is not None and not self.raw:
            self.prelude(cur)
        offset = 1 if self.begin is not None and modes is not None else 0
        line, statement = 0, ''
        try:
            for line, statement in statements[max(0, self.done - offset):]:  # noqa: B007 - names a failure
                cur.execute(statement)
            line, statement = 0, ''
            cur.execute('SET SESSION AUTHORIZATION DEFAULT')
            migrator.table.insert(cur, mfile, 'versioned', mfile.checksum, (time.time() - started) * 1000, True,
                                  migrator.applied_by)
        except psycopg2.Error as exc:
            if is_retryable(exc, conn):
                raise
            conn.rollback()
            raise migrator._failure(mfile, mfile if statement else None, line, statement, exc, None, 0) from None
