# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data-loss guard: never migrate, start or "heal" over a database that lost its data.

A record on the host (JSON, mode 0600, default /var/lib/soulnear/data-guard.json) remembers which database
cluster the deployment runs on (`system_identifier`, which initdb makes unique, so a re-initialised volume has
another one) and that the data existed (row counts of the required tables, counted up to COUNT_CAP rows so the
check stays cheap on big tables). Who reads and writes it:

- the data_guard module, which a deploy runs BEFORE its migrations: it refuses to go on when the database came
  back empty or as another cluster, and prints how to restore the newest verified backup;
- the host monitor, every minute: it keeps the record current while all is well and raises the flag when not;
- db_health, read-only: a raised flag or a mismatch fails its `tables` check;
- pg_restore: a completed restore records the restored database and lowers the flag;
- the operator: `soulnear-health guard clear --confirm <db>` or `make guard-clear CONFIRM=<db>` accepts the
  current database (for example after moving the data to a new server by hand) and lowers the flag.

Rules (evaluate):
- A raised flag stays raised until it is cleared or a restore completes, whatever the database looks like now.
- No record, or a record of a database that never held data: nothing to lose, so it passes (the first deploy
  on an empty database) and the database is recorded.
- The record says the data existed, and now the cluster is another one (identity) or every required table is
  missing or empty (empty): refused, and the flag is raised.
- allow_empty_database: an EMPTY database passes anyway (a deliberate clean redeploy, or a first deploy onto a
  volume that was emptied on purpose); the record starts over and the flag is lowered, which the record's
  `events` keep.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import time
from datetime import datetime

from .backup_files import DEFAULT_NAME_PATTERN, newest_intact
from .files import lock, write_private
from .pg import psycopg2

DEFAULT_STATE_FILE = '/var/lib/soulnear/data-guard.json'
COUNT_CAP = 10000  # rows counted per table: enough to tell "empty" from "held data", cheap on any table
EVENTS_KEPT = 20
PROGRESS_KEPT = 30  # samples of the server's progress (see _recorded): half an hour of minutely monitor runs
OPERATIONS = ('check', 'clear', 'query')


class GuardError(Exception):
    """The guard cannot decide (unreadable record, failing query); the message names the fix."""


def _now():
    return time.time()


def _when(stamp):
    if not stamp:
        return 'an unknown time'
    return datetime.fromtimestamp(float(stamp)).astimezone().isoformat(timespec='seconds')


def default_actor():
    return '%s@%s' % (os.environ.get('SUDO_USER') or os.environ.get('USER') or 'root', socket.gethostname())


# -- what the database looks like now ------------------------------------------------------------------------

def observe(conn, required_tables, cap=COUNT_CAP):
    """The database behind conn: database, system_identifier, database_oid, tables {name: rows up to cap, None
    when missing}, empty (every required table missing or without rows), timeline and next_xid (the next 64-bit
    transaction id: every transaction that wrote something before now has a smaller one)."""
    tables = {}
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT current_database(), (SELECT system_identifier::text FROM pg_control_system()), '
                        '(SELECT oid::bigint FROM pg_database WHERE datname = current_database()), '
                        '(SELECT timeline_id FROM pg_control_checkpoint()), '
                        'pg_snapshot_xmax(pg_current_snapshot())::text::bigint')
            database, ident, oid, timeline, next_xid = cur.fetchone()
            for name in required_tables or []:
                cur.execute('SELECT to_regclass(%s)::text', (name,))
                regclass = cur.fetchone()[0]
                if regclass is None:
                    tables[name] = None
                    continue
                # regclass::text is the table's name quoted as an identifier, safe to put into the statement.
                cur.execute('SELECT count(*) FROM (SELECT 1 FROM %s LIMIT %d) rows' % (regclass, int(cap)))
                tables[name] = cur.fetchone()[0]
    except psycopg2.Error as exc:
        raise GuardError('the data-loss guard could not read the database: %s. Fix: grant the login read access to '
                         'the required tables' % ' '.join(str(exc).split())) from None
    empty = bool(tables) and not any(tables.values())
    return dict(database=database, system_identifier=ident, database_oid=oid, tables=tables, empty=empty,
                cap=int(cap), timeline=timeline, next_xid=next_xid)


def describe_counts(tables, cap=COUNT_CAP):
    if not tables:
        return 'no required tables'
    return ', '.join('%s %s' % (name, 'missing' if rows is None else ('%d+ rows' % rows if rows >= cap else
                                                                      '%d rows' % rows))
                     for name, rows in sorted(tables.items()))


# -- the record ------------------------------------------------------------------------------------------------

def load(path):
    """The record, or None when there is none yet."""
    try:
        with open(path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise GuardError('the data-loss guard record %s cannot be read (%s). Fix: look at it; if it is damaged, '
                         'move it away and run the check again (the next check records the database as it is)'
                         % (path, exc)) from None
    if not isinstance(record, dict):
        raise GuardError('the data-loss guard record %s is not a JSON object; move it away and run again' % path)
    return record


def save(path, record):
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    write_private(path, json.dumps(record, indent=1, sort_keys=True) + '\n')


class _Locked:
    """The record's read-modify-write under an exclusive lock (the monitor and a deploy may write at once)."""

    def __init__(self, path, write):
        self.path = path
        self.write = write
        self.handle = None

    def __enter__(self):
        if self.write:
            self.handle = lock(self.path + '.lock', wait=True)
        return load(self.path)

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()
        return False


def _event(record, what, by):
    events = list(record.get('events') or [])
    events.append(dict(at=_now(), by=by, what=what))
    record['events'] = events[-EVENTS_KEPT:]


def _progress(samples, observed, at):
    """The server's progress samples [at, system_identifier, timeline, next_xid], with one more when the next
    transaction id moved since the last sample of the same cluster. A restore to the latest archived commit compares
    them with what it recovered: the transactions a server had begun more than archive_timeout before it was last
    seen must be back (pitr_restore.recovery_point)."""
    samples = [list(s) for s in samples or [] if isinstance(s, (list, tuple)) and len(s) == 4]
    if observed.get('next_xid') is None:
        return samples
    sample = [at, observed['system_identifier'], observed.get('timeline'), int(observed['next_xid'])]
    last = next((s for s in reversed(samples) if s[1] == sample[1]), None)
    if last is None or last[2:] != sample[2:]:
        samples.append(sample)
    return samples[-PROGRESS_KEPT:]


def _recorded(record, observed, by, progress=None):
    """The record updated to what was observed (the flag untouched); progress: the samples to carry on (default:
    the record's own)."""
    record = dict(record or {})
    had_data = bool(record.get('had_data')) and record.get('system_identifier') == observed['system_identifier']
    now = _now()
    record.update(database=observed['database'], system_identifier=observed['system_identifier'],
                  database_oid=observed['database_oid'], tables=observed['tables'],
                  had_data=had_data or not observed['empty'], recorded_at=now, recorded_by=by,
                  progress=_progress(record.get('progress') if progress is None else progress, observed, now))
    record.setdefault('flag', None)
    return record


# -- the decision ---------------------------------------------------------------------------------------------

def evaluate(record, observed, allow_empty=False):
    """dict(ok, problem, reason, allowed): problem is None, 'flag', 'identity' or 'empty'; allowed is True when
    allow_empty let an empty database through a problem."""
    flag = (record or {}).get('flag')
    problem, reason = None, None
    if flag:
        problem = 'flag'
        reason = 'the data-loss flag was raised %s by %s: %s' % (_when(flag.get('raised_at')), flag.get('by'),
                                                                flag.get('reason'))
    elif record and record.get('had_data'):
        recorded_ident, ident = record.get('system_identifier'), observed['system_identifier']
        if recorded_ident and ident and recorded_ident != ident:
            problem = 'identity'
            reason = ('the database server is another cluster than the one recorded on %s (system identifier %s, '
                      'now %s): the data volume was lost or re-initialised'
                      % (_when(record.get('recorded_at')), recorded_ident, ident))
        elif observed['empty']:
            problem = 'empty'
            reason = ('the database %s is empty (%s) but held data when last recorded on %s (%s)'
                      % (observed['database'], describe_counts(observed['tables'], observed.get('cap', COUNT_CAP)),
                         _when(record.get('recorded_at')),
                         describe_counts(record.get('tables') or {}, observed.get('cap', COUNT_CAP))))
    if problem and allow_empty and observed['empty']:
        return dict(ok=True, problem=problem, reason=reason, allowed=True)
    return dict(ok=problem is None, problem=problem, reason=reason, allowed=False)


def restore_advice(database, backup_dir=None, pattern=DEFAULT_NAME_PATTERN, pitr=False):
    """How to get the data back, naming the newest backup of database that still verifies. With point-in-time
    recovery on (pitr), the restore to the latest archived commit comes first: it loses at most the last
    archive_timeout of commits, the newest dump everything since it was taken."""
    parts = []
    if pitr:
        parts.append('Point-in-time recovery is on: get back every commit up to the last archived one with: make '
                     'restore TIME=latest CONFIRM=%s (playbooks/restore.yml -e time=latest -e confirm=%s); the '
                     'restore lowers this flag. Only when that fails (the repositories are lost too), restore a '
                     'dump as below, then deploy once with -e backup_pitr_new_history=true (docs/pitr.md).'
                     % (database, database))
    if backup_dir:
        try:
            good, corrupt = newest_intact(backup_dir, pattern or DEFAULT_NAME_PATTERN, database)
        except OSError as exc:
            good, corrupt = None, []
            parts.append('(the backups in %s could not be read: %s)' % (backup_dir, exc))
        if good is not None:
            age = (datetime.now() - good['time']).total_seconds() / 3600.0
            parts.append('Restore the newest verified backup, %s (taken %s, %.1f h ago), with: make restore '
                         'BACKUP=latest CONFIRM=%s (playbooks/restore.yml -e backup=latest -e confirm=%s); the '
                         'restore lowers this flag.' % (good['name'], good['time'].isoformat(sep=' '), age,
                                                        database, database))
            if corrupt:
                parts.append('Newer backups fail their checksum and are skipped: %s.'
                             % ', '.join(b['name'] for b in corrupt))
        else:
            parts.append('There is no verified backup of %s in %s: restore one from the offsite copy (make restore '
                         'BACKUP=/path/to/backup_....dump CONFIRM=%s) before anything writes to this database.'
                         % (database, backup_dir, database))
    else:
        parts.append('Restore the newest verified backup with: make restore BACKUP=latest CONFIRM=%s.' % database)
    parts.append('If this database is the right one after all (you moved the data to a new server yourself), '
                 'accept it: make guard-clear CONFIRM=%s (on the host: soulnear-health guard clear --confirm %s). '
                 'For a deliberate clean redeploy onto an empty database, set allow_empty_database.'
                 % (database, database))
    return ' '.join(parts)


def _message(verdict, observed, advice):
    if callable(advice):
        advice = advice()
    return ('DATA LOSS SUSPECTED: %s. Nothing was migrated, started or created. %s'
            % (verdict['reason'], advice or restore_advice(observed['database'])))


def check(path, observed, allow_empty=False, by=None, check_mode=False, advice=None, raise_flag=True):
    """Compare the database with the record. When it passes the record is brought up to date; when it does not
    the flag is raised (raise_flag) so it stays raised. Nothing is written in check mode. advice (text, or a
    function returning it, called only on a refusal) says how to restore; default restore_advice() without
    backups.

    Returns dict(ok, changed, status, problem, msg, record, observed): status is one of 'recorded' (first record),
    'unchanged' / 'updated' (passed), 'accepted empty' (allow_empty), 'refused'."""
    by = by or default_actor()
    with _Locked(path, write=not check_mode) as record:
        verdict = evaluate(record, observed, allow_empty)
        result = dict(ok=verdict['ok'], problem=verdict['problem'], observed=observed, changed=False)
        if verdict['ok'] and verdict['allowed']:
            new = _recorded(None, observed, by, progress=(record or {}).get('progress'))
            new['events'] = (record or {}).get('events') or []
            _event(new, 'accepted an empty database (allow_empty_database) over: %s' % verdict['reason'], by)
            result.update(status='accepted empty', changed=True, record=new,
                          msg='the data-loss guard accepted the empty database %s because allow_empty_database is '
                              'set (%s); it is recorded afresh and the flag is lowered'
                              % (observed['database'], verdict['reason']))
        elif verdict['ok']:
            new = _recorded(record, observed, by)
            if record is None:
                _event(new, 'first record (%s)' % describe_counts(observed['tables'], observed['cap']), by)
                status = 'recorded'
                text = ('nothing to lose yet' if observed['empty'] else 'the data is recorded')
            else:
                status = 'updated'
                text = 'the database is the recorded one and holds data' if new['had_data'] else \
                    'the database has held no data yet: nothing to lose'
            result.update(status=status, changed=record is None or record.get('system_identifier') !=
                          new['system_identifier'] or record.get('had_data') != new['had_data'], record=new,
                          msg='data-loss guard: %s (cluster %s, %s)' % (text, observed['system_identifier'],
                                                                       describe_counts(observed['tables'],
                                                                                       observed['cap'])))
        else:
            new = dict(record or {})
            if raise_flag and not new.get('flag'):
                new['flag'] = dict(raised_at=_now(), by=by, reason=verdict['reason'], problem=verdict['problem'],
                                   observed=dict((k, observed[k]) for k in ('system_identifier', 'tables')))
                _event(new, 'flag raised: %s' % verdict['reason'], by)
                result['changed'] = True
            result.update(status='refused', record=new,
                          msg=_message(verdict, observed, advice))
        if not check_mode and (result['changed'] or result['status'] != 'refused'):
            save(path, result['record'])
    return result


def assess(path, observed, advice=None):
    """check() without writing anything (db_health): the same verdict and message."""
    return check(path, observed, check_mode=True, advice=advice, raise_flag=False)


def accept(path, observed, by=None, reason='cleared by the operator', check_mode=False):
    """Record the current database as the real one and lower the flag (the operator's clear, a completed
    restore). Returns dict(changed, record, previous_flag, msg)."""
    by = by or default_actor()
    with _Locked(path, write=not check_mode) as record:
        previous = (record or {}).get('flag')
        new = _recorded(None, observed, by, progress=(record or {}).get('progress'))
        new['events'] = (record or {}).get('events') or []
        _event(new, '%s%s' % (reason, '; flag lowered (it said: %s)' % previous.get('reason') if previous else ''),
               by)
        if not check_mode:
            save(path, new)
    return dict(changed=True, record=new, previous_flag=previous,
                msg='data-loss guard: %s; %s recorded as cluster %s (%s)%s'
                    % (reason, observed['database'], observed['system_identifier'],
                       describe_counts(observed['tables'], observed['cap']),
                       '; the flag raised %s is lowered' % _when(previous.get('raised_at')) if previous else ''))


def accept_restored(path, open_conn, database, default_tables, by, reason, log, errors=()):
    """After a completed restore (a dump, or a point in time): record the restored database (its cluster and rows)
    and lower the flag. open_conn() connects to it; a failure (GuardError, OSError or one of errors) is logged with
    the command that clears the flag by hand, never raised - the restore itself succeeded. Returns None without a
    guard file, else dict(previous_flag, system_identifier, tables) or dict(error)."""
    if not path:
        return None
    try:
        record = load(path) or {}
        tables = sorted(record.get('tables') or {}) or list(default_tables)
        conn = open_conn()
        try:
            observed = observe(conn, tables)
        finally:
            conn.close()
        done = accept(path, observed, by=by, reason=reason)
    except (GuardError, OSError) + tuple(errors) as exc:
        log('the data-loss guard could not record the restored database: %s; clear its flag by hand: '
            'soulnear-health guard clear --confirm %s' % (exc, database))
        return dict(error=str(exc))
    log(done['msg'])
    return dict(previous_flag=done['previous_flag'], system_identifier=observed['system_identifier'],
                tables=observed['tables'])


def status(path):
    """The record as people read it: dict(recorded, flag, message)."""
    record = load(path)
    if record is None:
        return dict(recorded=False, flag=None, record=None,
                    message='no data-loss guard record at %s yet (the next deploy or monitor run records the '
                            'database)' % path)
    flag = record.get('flag')
    text = 'cluster %s, database %s, %s, recorded %s by %s' % (
        record.get('system_identifier'), record.get('database'), describe_counts(record.get('tables') or {}),
        _when(record.get('recorded_at')), record.get('recorded_by'))
    if flag:
        text = 'FLAG RAISED %s by %s: %s | last good record: %s' % (_when(flag.get('raised_at')), flag.get('by'),
                                                                    flag.get('reason'), text)
    return dict(recorded=True, flag=flag, record=record, message=text)
