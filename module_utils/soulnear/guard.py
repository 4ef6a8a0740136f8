# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data-loss guard: never migrate, start or "heal" over a database that lost its data.

A record on the host (JSON, mode 0600, default /var/lib/soulnear/data-guard.json) remembers, for every database
name the deployment ran on, which database cluster it lives in (`system_identifier`, which initdb makes unique, so
a re-initialised volume has another one) and which of its tables held rows. Who reads and writes it:

- the data_guard module, which a deploy runs BEFORE its migrations: it refuses to go on when the database came
  back empty or as another cluster, and prints how to restore the newest verified backup;
- the host monitor, every minute: it keeps the record current while all is well and raises the flag when not;
- db_health, read-only: a raised flag or a mismatch fails its `tables` check;
- pg_restore and the point-in-time restore: a completed restore records the restored database and lowers the flag;
- the operator: `soulnear-health guard clear --confirm <db>` or `make guard-clear CONFIRM=<db>` accepts the
  current database (for example after moving the data to a new server by hand) and lowers the flag.

What is observed (observe): the database's own tables, whatever the bot calls them - every ordinary, permanent
table outside pg_catalog, information_schema and pg_toast, in any schema the login may read, except the tables of
extensions (PostGIS's spatial_ref_sys is not the bot's data) and unlogged tables (a crash empties them by design).
Rows are counted up to COUNT_CAP per table (SELECT count(*) FROM (SELECT 1 FROM t LIMIT cap)), so a big table
costs little. The cost is bounded: at most TABLES_OBSERVED (100) tables, the largest first (pg_class.reltuples,
the statistics' live tuples, relpages), plus the tables that held rows when last recorded (at most as many again)
and the optional required_tables; a database with thousands of tables costs what one with 200 does. Tables are
named schema.table (public.customers). The tracking tables of migration tools (BOOKKEEPING_TABLES and the deployment's
migrations_table) are counted and recorded, but their rows are not data: a freshly migrated schema has never held
data, and one migrated again after its data was lost is empty. A required table counts whatever its name.

The record: {"databases": {"<name>": entry}, "events": [{at, by, what, database}]}, one entry per database name;
entry(path, database) reads one (database, system_identifier, database_oid, tables, held, had_data, recorded_at,
recorded_by, progress, flag). A record of an older version (one database, its fields at the top) is read as the
entry of its database (one without a name as the entry of the first database that asks), and the next write
stores the current shape. A database name without an entry starts afresh, even when other names have one: a
host pointed at a new database has nothing to lose there yet.

Rules (evaluate), per database:
- A raised flag stays raised until it is cleared or a restore completes, whatever the database looks like now.
- No entry, or an entry of a database that never held data: nothing to lose, so it passes (the first deploy
  on an empty database) and the database is recorded.
- The entry says the data existed, and now the cluster is another one (identity), or the database is empty:
  the tables that held rows when last recorded are all missing or empty and no other table holds rows either (a
  table the bot dropped or renamed while others hold rows is not data loss), or every required table is missing
  or empty (when required_tables are set): refused, and the flag is raised.
- allow_empty: an EMPTY database passes anyway (a deliberate clean redeploy, or a first deploy onto a
  volume that was emptied on purpose); its entry starts over and the flag is lowered, which the `events` keep.
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
TABLES_OBSERVED = 100  # tables observed, the largest first (plus those that held rows and the required ones)
EVENTS_KEPT = 20  # per database
PROGRESS_KEPT = 30  # samples of the server's progress (see _recorded): half an hour of minutely monitor runs
LISTED = 5  # tables a message names before "and N more"
OPERATIONS = ('check', 'clear', 'query')
# Tracking tables of migration tools (pg_migrate and the tools it takes over, Alembic, Django, Knex, Rails): their
# rows say which migrations ran, not that the bot ever stored anything.
BOOKKEEPING_TABLES = ('schema_migrations', 'alembic_version', 'flyway_schema_history', 'goose_db_version',
                      'gorp_migrations', '_sqlx_migrations', '_prisma_migrations', '__diesel_schema_migrations',
                      'django_migrations', 'knex_migrations', 'knex_migrations_lock', 'ar_internal_metadata',
                      'soulnear_leader_lease')


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

# The database's own tables the login may read: key (schema.table, for people and the record), ident (quoted, for
# statements), name, and the size that orders them. Extension members and unlogged tables say nothing of the data.
_CANDIDATES = (
    "WITH t AS (SELECT n.nspname || '.' || c.relname AS key, format('%%I.%%I', n.nspname, c.relname) AS ident, "
    "c.relname AS name, greatest(c.reltuples, pg_stat_get_live_tuples(c.oid), 0) AS size, c.relpages AS pages "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND left(n.nspname, 8) <> 'pg_toast' "
    "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
    "AND d.deptype = 'e') "
    "AND has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')) ")
_LARGEST = _CANDIDATES + 'SELECT key, ident, name, count(*) OVER () FROM t ORDER BY size DESC, pages DESC, key LIMIT %s'
_KNOWN = _CANDIDATES + 'SELECT key, ident, name FROM t WHERE key = ANY(%s) ORDER BY key LIMIT %s'
_REQUIRED = ("SELECT n.nspname || '.' || c.relname, format('%%I.%%I', n.nspname, c.relname), c.relname "
             "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)")


def _count(conn, cur, ident, cap):
    """Rows of the table ident (quoted) up to cap; None when it was dropped since it was listed."""
    try:
        cur.execute('SELECT count(*) FROM (SELECT 1 FROM %s LIMIT %d) rows' % (ident, int(cap)))
    except psycopg2.Error as exc:
        if getattr(exc, 'pgcode', None) != '42P01':  # undefined_table
            raise
        if not conn.autocommit:
            conn.rollback()
        return None
    return cur.fetchone()[0]


def _bookkeeping(key, name, extra):
    return name in BOOKKEEPING_TABLES or key in extra or name in extra


def observe(conn, required_tables=None, cap=COUNT_CAP, state_file=None, migrations_table=None,
            limit=TABLES_OBSERVED):
    """The database behind conn: database, system_identifier, database_oid, tables {schema.table: rows up to cap,
    None when missing}, holding (the tables whose rows are data: not bookkeeping, or required), bookkeeping,
    required, empty (no table holds data, or every required table is missing or empty), tables_total (the tables
    there are), timeline and next_xid (the next 64-bit transaction id: every transaction that wrote something
    before now has a smaller one).

    Observed: the largest `limit` tables, the required_tables (as given when missing), and with state_file the
    tables that held rows when the guard last recorded this database (and the tracking tables it knew).
    migrations_table: the deployment's migration tracking table, bookkeeping like BOOKKEEPING_TABLES."""
    tables, names, required, extra = {}, {}, [], set()
    if migrations_table:
        extra.add(migrations_table)
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT current_database(), (SELECT system_identifier::text FROM pg_control_system()), '
                        '(SELECT oid::bigint FROM pg_database WHERE datname = current_database()), '
                        '(SELECT timeline_id FROM pg_control_checkpoint()), '
                        'pg_snapshot_xmax(pg_current_snapshot())::text::bigint')
            database, ident, oid, timeline, next_xid = cur.fetchone()
            known = []
            if state_file:
                before = entry(state_file, database) or {}
                known = _held(before)
                extra.update(before.get('bookkeeping') or [])
            cur.execute(_LARGEST, (int(limit),))
            found = cur.fetchall()
            total = found[0][3] if found else 0
            listed = dict((key, (quoted, name)) for key, quoted, name, _total in found)
            wanted = [k for k in known if k not in listed] + ['public.' + k for k in known if '.' not in k]
            if wanted:
                cur.execute(_KNOWN, (wanted, int(limit)))
                listed.update((key, (quoted, name)) for key, quoted, name in cur.fetchall())
            for given in required_tables or []:
                cur.execute(_REQUIRED, (given,))
                row = cur.fetchone()
                if row is None:
                    tables[given] = None
                    required.append(given)
                    continue
                listed[row[0]] = (row[1], row[2])
                required.append(row[0])
            for key, (quoted, name) in sorted(listed.items()):
                names[key] = name
                tables[key] = _count(conn, cur, quoted, cap)
    except psycopg2.Error as exc:
        raise GuardError('the data-loss guard could not read the database: %s. Fix: grant the login read access to '
                         'the application\'s tables' % ' '.join(str(exc).split())) from None
    bookkeeping = sorted(k for k in names if k not in required and _bookkeeping(k, names[k], extra))
    holding = sorted(k for k, rows in tables.items() if rows and k not in bookkeeping)
    empty = not holding or bool(required) and not any(tables.get(k) for k in required)
    return dict(database=database, system_identifier=ident, database_oid=oid, tables=tables, holding=holding,
                bookkeeping=bookkeeping, required=required, empty=empty, tables_total=max(total, len(tables)),
                cap=int(cap), timeline=timeline, next_xid=next_xid)


def _rows(rows, cap=COUNT_CAP):
    if rows is None:
        return 'missing'
    return '%d+ rows' % rows if rows >= cap else '%d row%s' % (rows, '' if rows == 1 else 's')


def _listed(items, limit=LISTED):
    """'a, b, c and 4 more'."""
    items = list(items)
    text = ', '.join(items[:limit])
    return text + (' and %d more' % (len(items) - limit) if len(items) > limit else '')


def describe_counts(tables, cap=COUNT_CAP, limit=LISTED):
    """The tables for people, the fullest first: '3 table(s), 2 with rows: public.orders 1500 rows, ...'."""
    if not tables:
        return 'no tables'
    ordered = sorted(tables.items(), key=lambda item: (item[1] is None, -(item[1] or 0), item[0]))
    return '%d table(s), %d with rows: %s' % (len(ordered), sum(1 for _unused, rows in ordered if rows), _listed(
        ['%s %s' % (name, _rows(rows, cap)) for name, rows in ordered], limit))


def _held(entry):
    """The tables that held rows when entry was recorded (an older record's: its tables with rows)."""
    held = (entry or {}).get('held')
    if held is None:
        held = sorted(k for k, rows in ((entry or {}).get('tables') or {}).items() if rows)
    return list(held)


def _now_rows(tables, key):
    """Rows of key now; an older record named public tables without their schema."""
    if key not in tables and '.' not in key:
        key = 'public.' + key
    return tables.get(key)


# -- the record ------------------------------------------------------------------------------------------------

def _normalised(raw, path):
    """The record in its current shape {databases: {name: entry}, events: [...]}. An older record (one database,
    its fields at the top) becomes the entry of its database, or of '' when it names none (see _entry_of)."""
    if raw is None:
        return None
    if 'databases' in raw:
        if not isinstance(raw['databases'], dict):
            raise GuardError('the data-loss guard record %s has no valid "databases" object; move it away and run '
                             'again' % path)
        databases = dict((name, dict(e)) for name, e in raw['databases'].items() if isinstance(e, dict))
        events = [dict(e) for e in raw.get('events') or [] if isinstance(e, dict)]
        return dict(raw, databases=databases, events=events)
    old = dict((k, v) for k, v in raw.items() if k != 'events')
    name = old.get('database') or ''
    events = [dict(e, database=e.get('database', name)) for e in raw.get('events') or [] if isinstance(e, dict)]
    return dict(databases={name: old} if old else {}, events=events)


def load(path):
    """The record {databases: {name: entry}, events: [...]} (an older flat record read as the entry of its
    database), or None when there is none yet."""
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
    return _normalised(record, path)


def _entry_of(record, database):
    """(key, entry) of database: its own entry, else the entry of an older record that named no database (a host
    then watched one database, so the first database that asks takes it over), else (database, None)."""
    databases = (record or {}).get('databases') or {}
    if database in databases:
        return database, databases[database]
    if '' in databases:
        return '', databases['']
    return database, None


def _view(record, database, found):
    """An entry as callers read it: its fields, flag, and the events of its database."""
    if found is None:
        return None
    view = dict(found, database=found.get('database') or database)
    view.setdefault('flag', None)
    view['events'] = [e for e in (record or {}).get('events') or [] if e.get('database') in (database, '')]
    return view


def entry(path, database):
    """The record's entry of database (database, system_identifier, database_oid, tables, held, had_data,
    recorded_at, recorded_by, progress, flag, events), or None when it has none (or there is no record)."""
    record = load(path)
    _key, found = _entry_of(record, database)
    return _view(record, database, found)


def _put(record, database, new, key):
    """record with new as the entry of database (key: where it was found, '' when an older record is taken over)."""
    record = dict(record or {})
    databases = dict(record.get('databases') or {})
    events = list(record.get('events') or [])
    if key != database:
        databases.pop(key, None)
        events = [dict(e, database=database) if e.get('database') == key else e for e in events]
    new = dict(new)
    new.pop('events', None)
    new['database'] = database
    databases[database] = new
    record.update(databases=databases, events=events)
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


def _event(record, database, what, by):
    """Append an event of database; each database keeps its last EVENTS_KEPT."""
    events = list(record.get('events') or [])
    events.append(dict(at=_now(), by=by, what=what, database=database))
    seen, kept = {}, []
    for event in reversed(events):
        seen[event.get('database')] = seen.get(event.get('database'), 0) + 1
        if seen[event.get('database')] <= EVENTS_KEPT:
            kept.append(event)
    record['events'] = kept[::-1]


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


def _recorded(found, observed, by, progress=None):
    """The entry updated to what was observed (the flag untouched); progress: the samples to carry on (default:
    the entry's own)."""
    found = dict(found or {})
    found.pop('events', None)
    had_data = bool(found.get('had_data')) and found.get('system_identifier') == observed['system_identifier']
    now = _now()
    found.update(database=observed['database'], system_identifier=observed['system_identifier'],
                 database_oid=observed['database_oid'], tables=observed['tables'],
                 held=list(observed.get('holding') or []), bookkeeping=list(observed.get('bookkeeping') or []),
                 had_data=had_data or not observed['empty'], recorded_at=now, recorded_by=by,
                 progress=_progress(found.get('progress') if progress is None else progress, observed, now))
    found.setdefault('flag', None)
    return found


# -- the decision ---------------------------------------------------------------------------------------------

def _empty_reason(found, observed):
    cap = observed.get('cap', COUNT_CAP)
    tables, before = observed['tables'], found.get('tables') or {}
    when = _when(found.get('recorded_at'))
    required = observed.get('required') or []
    if observed.get('holding'):  # other tables hold rows, but none of the required ones
        return ('the database %s is empty: every required table is missing or without rows (%s), though it held '
                'data when last recorded on %s' % (observed['database'], _listed(
                    '%s %s' % (k, _rows(tables.get(k), cap)) for k in required), when))
    # An older record's tables with rows may include a tracking table that still has them.
    lost = [k for k in _held(found) if not _now_rows(tables, k)]
    if not lost:
        return ('the database %s is empty (%s) but held data when last recorded on %s (%s)'
                % (observed['database'], describe_counts(tables, cap), when, describe_counts(before, cap)))
    return ('the database %s is empty: the %d table(s) that held rows when last recorded on %s are missing or '
            'empty now (%s) and no other table holds rows'
            % (observed['database'], len(lost), when, _listed('%s %s, %s before' % (
                k, _rows(_now_rows(tables, k), cap), _rows(before.get(k), cap)) for k in lost)))


def evaluate(found, observed, allow_empty=False, evidence=None):
    """The verdict on the entry found (of observed's database, or None): dict(ok, problem, reason, allowed):
    problem is None, 'flag', 'identity', 'empty' or 'unrecorded'; allowed is True when allow_empty let an empty
    database through a problem. evidence: called only when there is no entry and the database is empty, it returns
    why data existed anyway (a verified backup of it that holds rows) or None."""
    flag = (found or {}).get('flag')
    problem, reason = None, None
    if flag:
        problem = 'flag'
        reason = 'the data-loss flag was raised %s by %s: %s' % (_when(flag.get('raised_at')), flag.get('by'),
                                                                 flag.get('reason'))
    elif found and found.get('had_data'):
        recorded_ident, ident = found.get('system_identifier'), observed['system_identifier']
        if recorded_ident and ident and recorded_ident != ident:
            problem = 'identity'
            reason = ('the database server is another cluster than the one recorded on %s (system identifier %s, '
                      'now %s): the data volume was lost or re-initialised'
                      % (_when(found.get('recorded_at')), recorded_ident, ident))
        elif observed['empty']:
            problem = 'empty'
            reason = _empty_reason(found, observed)
    elif found is None and observed['empty'] and evidence is not None:
        # No record (a rebuilt host pointed at the old backup disk, a deleted record): an empty database is not
        # "nothing to lose" when a verified backup of it holds rows.
        held = evidence()
        if held:
            problem = 'unrecorded'
            reason = ('there is no record of %s on this host (a rebuilt host, or its record deleted), and it is '
                      'empty, but %s' % (observed['database'], held))
    if problem and allow_empty and observed['empty']:
        return dict(ok=True, problem=problem, reason=reason, allowed=True)
    return dict(ok=problem is None, problem=problem, reason=reason, allowed=False)


def backup_evidence(settings, database, backup_dir, pattern=DEFAULT_NAME_PATTERN, skip=(), log=lambda _m: None):
    """Why the database held data although nothing recorded it: the newest verified backup of it in backup_dir whose
    dump has a row in a table that is not migration bookkeeping (read with pg_restore until that row); None when
    there is no such backup. settings: the backup tools' settings (where pg_restore runs)."""
    from .pgtools import first_data_row
    if not backup_dir or not os.path.isdir(backup_dir):
        return None
    try:
        good, _corrupt = newest_intact(backup_dir, pattern or DEFAULT_NAME_PATTERN, database, save=False)
    except OSError as exc:
        log('the backups in %s could not be read: %s' % (backup_dir, exc))
        return None
    if good is None:
        return None
    table = first_data_row(settings, good['path'], skip=tuple(BOOKKEEPING_TABLES) + tuple(skip))
    if table is None:
        return None
    return ('the newest verified backup of it, %s (taken %s), holds data (table %s has rows): the data was lost '
            'before this host recorded it' % (good['name'], good['time'].isoformat(sep=' '), table))


def restore_advice(database, backup_dir=None, pattern=DEFAULT_NAME_PATTERN, pitr=False):
    """How to get the data back, naming the newest backup of database that still verifies. With point-in-time
    recovery on (pitr), the restore to the latest archived commit comes first: it loses at most the last
    archive_timeout of commits, the newest dump everything since it was taken."""
    parts = []
    if pitr:
        parts.append('Point-in-time recovery is on: get back every commit up to the last archived one with: make '
                     'restore TIME=latest CONFIRM=%s (playbooks/restore.yml -e restore_time=latest '
                     '-e restore_confirm=%s); the restore lowers this flag. Only when that fails (the repositories '
                     'are lost too), restore a dump as below, then deploy once with -e pitr_new_history=true '
                     '(docs/pitr.md).'
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
                         'BACKUP=latest CONFIRM=%s (playbooks/restore.yml -e restore_backup=latest '
                         '-e restore_confirm=%s); the restore lowers this flag.'
                         % (good['name'], good['time'].isoformat(sep=' '), age, database, database))
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


def check(path, observed, allow_empty=False, by=None, check_mode=False, advice=None, raise_flag=True, evidence=None):
    """Compare the database with its entry in the record. When it passes the entry is brought up to date; when it
    does not the flag is raised (raise_flag) so it stays raised. Nothing is written in check mode. advice (text, or
    a function returning it, called only on a refusal) says how to restore; default restore_advice() without
    backups.

    Returns dict(ok, changed, status, problem, msg, record, observed): record is the database's entry (see
    entry()); status is one of 'recorded' (first record of this database), 'unchanged' / 'updated' (passed),
    'accepted empty' (allow_empty), 'refused'."""
    by = by or default_actor()
    database = observed['database']
    with _Locked(path, write=not check_mode) as record:
        key, found = _entry_of(record, database)
        record = record or dict(databases={}, events=[])
        verdict = evaluate(found, observed, allow_empty, evidence)
        result = dict(ok=verdict['ok'], problem=verdict['problem'], observed=observed, changed=False)
        if verdict['ok'] and verdict['allowed']:
            new = _recorded(None, observed, by, progress=(found or {}).get('progress'))
            record = _put(record, database, new, key)
            _event(record, database, 'accepted an empty database (allow_empty_database) over: %s'
                   % verdict['reason'], by)
            result.update(status='accepted empty', changed=True,
                          msg='the data-loss guard accepted the empty database %s because allow_empty_database is '
                              'set (%s); it is recorded afresh and the flag is lowered'
                              % (database, verdict['reason']))
        elif verdict['ok']:
            new = _recorded(found, observed, by)
            record = _put(record, database, new, key)
            if found is None:
                _event(record, database, 'first record (%s)' % describe_counts(observed['tables'], observed['cap']),
                       by)
                status = 'recorded'
                text = 'nothing to lose yet' if observed['empty'] else 'the data is recorded'
            else:
                status = 'updated'
                text = 'the database is the recorded one and holds data' if new['had_data'] else \
                    'the database has held no data yet: nothing to lose'
            result.update(status=status, changed=found is None or found.get('system_identifier') !=
                          new['system_identifier'] or found.get('had_data') != new['had_data'],
                          msg='data-loss guard: %s (database %s, cluster %s, %s)'
                              % (text, database, observed['system_identifier'],
                                 describe_counts(observed['tables'], observed['cap'])))
        else:
            new = dict(found or {})
            if raise_flag and not new.get('flag'):
                new['flag'] = dict(raised_at=_now(), by=by, reason=verdict['reason'], problem=verdict['problem'],
                                   observed=dict((k, observed[k]) for k in ('system_identifier', 'holding')))
                record = _put(record, database, new, key)
                _event(record, database, 'flag raised: %s' % verdict['reason'], by)
                result['changed'] = True
            result.update(status='refused', msg=_message(verdict, observed, advice))
        result['record'] = _view(record, database, new)
        if not check_mode and (result['changed'] or result['status'] != 'refused'):
            save(path, record)
    return result


def assess(path, observed, advice=None):
    """check() without writing anything (db_health): the same verdict and message."""
    return check(path, observed, check_mode=True, advice=advice, raise_flag=False)


def accept(path, observed, by=None, reason='cleared by the operator', check_mode=False):
    """Record the current database as the real one in its entry and lower its flag (the operator's clear, a
    completed restore); the entries of other databases stay as they are. Returns dict(changed, record (the entry),
    previous_flag, msg)."""
    by = by or default_actor()
    database = observed['database']
    with _Locked(path, write=not check_mode) as record:
        key, found = _entry_of(record, database)
        previous = (found or {}).get('flag')
        new = _recorded(None, observed, by, progress=(found or {}).get('progress'))
        record = _put(record or dict(databases={}, events=[]), database, new, key)
        _event(record, database, '%s%s' % (
            reason, '; flag lowered (it said: %s)' % previous.get('reason') if previous else ''), by)
        if not check_mode:
            save(path, record)
    return dict(changed=True, record=_view(record, database, new), previous_flag=previous,
                msg='data-loss guard: %s; %s recorded as cluster %s (%s)%s'
                    % (reason, database, observed['system_identifier'],
                       describe_counts(observed['tables'], observed['cap']),
                       '; the flag raised %s is lowered' % _when(previous.get('raised_at')) if previous else ''))


def accept_restored(path, open_conn, database, required_tables, by, reason, log, errors=()):
    """After a completed restore (a dump, or a point in time): record the restored database (its cluster and
    tables) in its entry and lower its flag. open_conn() connects to it; required_tables are observed too. A failure
    (GuardError, OSError or one of errors) is logged with the command that clears the flag by hand, never raised -
    the restore itself succeeded. Returns None without a guard file, else dict(previous_flag, system_identifier,
    tables) or dict(error)."""
    if not path:
        return None
    try:
        conn = open_conn()
        try:
            observed = observe(conn, required_tables, state_file=path)
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


def _status_line(found):
    text = 'database %s: cluster %s, %s, %s, recorded %s by %s' % (
        found.get('database'), found.get('system_identifier'),
        'held data' if found.get('had_data') else 'has held no data yet',
        describe_counts(found.get('tables') or {}), _when(found.get('recorded_at')), found.get('recorded_by'))
    flag = found.get('flag')
    if flag:
        text = 'FLAG RAISED %s by %s: %s | last good record: %s' % (_when(flag.get('raised_at')), flag.get('by'),
                                                                    flag.get('reason'), text)
    return text


def status(path, database=None):
    """The entry of database as people read it: dict(recorded, flag, record (the entry), databases (the names
    recorded), message). Without database: the only entry, or every entry's line when there are several."""
    record = load(path)
    names = sorted(n or '(unnamed)' for n in ((record or {}).get('databases') or {}))
    if database is None and len(names) > 1:
        views = [_view(record, n, e) for n, e in sorted(record['databases'].items())]
        flags = [v['flag'] for v in views if v.get('flag')]
        return dict(recorded=True, flag=flags[0] if flags else None, record=None, databases=names,
                    message=' || '.join(_status_line(v) for v in views))
    if database is None and names:
        database = next(iter(record['databases'])) or None
    _key, found = _entry_of(record, database)
    if found is None:
        others = ' (recorded here: %s)' % ', '.join(names) if names else ''
        return dict(recorded=False, flag=None, record=None, databases=names,
                    message='no data-loss guard record of %s at %s yet%s (the next deploy or monitor run records '
                            'the database)' % ('database %s' % database if database else 'any database', path,
                                               others))
    view = _view(record, database, found)
    return dict(recorded=True, flag=view['flag'], record=view, databases=names, message=_status_line(view))
