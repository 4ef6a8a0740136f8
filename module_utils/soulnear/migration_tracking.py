# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where pg_migrate records what it applied, and what another tool recorded (takeover; migrate.py runs them).

- The tracking table: resolved as the operator wrote its name, created or adopted from an older runner, read and
  written; its name is the second key of the run's advisory lock. A table of another tool (or of the bot's own
  script) is told apart and refused (foreign_owner).
- Takeover: another tool's history table, read (never written) and matched to the files of path.

No Ansible imports: the host commands import this file too. docs/pg_migrate.md ("Coming from another tool").
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import getpass
import os
import re
import socket
import zlib

from .migration_files import _FLYWAY_B, _FLYWAY_V, _NUMBERED, MigrationError
from .migration_text import parse_version, version_text
from .pg import psycopg2

if psycopg2 is not None:
    from psycopg2 import sql as pgsql
else:  # pragma: no cover
    pgsql = None

TAKEOVER_TOOLS = ('flyway', 'golang-migrate', 'dbmate', 'goose', 'sql-migrate', 'sqlx', 'prisma', 'diesel',
                  'pg_migrate')
TAKEOVER_TABLES = {
    'flyway': 'flyway_schema_history', 'golang-migrate': 'schema_migrations', 'dbmate': 'schema_migrations',
    'goose': 'goose_db_version', 'sql-migrate': 'gorp_migrations', 'sqlx': '_sqlx_migrations',
    'prisma': '_prisma_migrations', 'diesel': '__diesel_schema_migrations',
}
LOCK_CLASS = 0x534E4D47  # 'SNMG': first key of the two-key advisory lock
NAME_COLUMNS = ('name', 'filename', 'file_name', 'script', 'migration')


# -- tracking table ----------------------------------------------------------------------------------
def lock_key(qualified_name):
    """Second key of the advisory lock: from the resolved schema.table name of the tracking table."""
    return zlib.crc32(qualified_name.encode('utf-8')) & 0x7FFFFFFF


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
                for pattern in (_FLYWAY_V, _NUMBERED):
                    match = pattern.match(self.name if self.name.endswith('.sql') else self.name + '.sql')
                    if match:
                        self.key = parse_version(match.group('version'))
                        break
            if self.key is None and self.version:
                match = re.match(r'^V?(\d+(?:[._]\d+)*)', str(self.version))
                self.key = parse_version(match.group(1)) if match else None
        if self.success is None:
            self.success = True

    @property
    def is_b_script(self):
        return bool(self.name and _FLYWAY_B.match(self.name))


_FIND_IN_PATH = ("SELECT n.nspname FROM unnest(current_schemas(false)) WITH ORDINALITY AS s(name, pos) "
                 "JOIN pg_namespace n ON n.nspname = s.name "
                 "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'f') "
                 "ORDER BY s.pos LIMIT 1")
_FIND = ("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
         "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'f')")


class TrackingTable:
    """A table named by the operator: resolved to schema.table exactly as written (no case folding)."""

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
        self.given_schema, self.table = (parts if len(parts) == 2 else (None, parts[0]))
        self.display = name
        self.schema = self.given_schema
        self.oid = None
        self.columns = {}
        self.name_col = 'name'
        self.version_type = 'text'

    @property
    def qualified(self):
        return '%s.%s' % (self.schema, self.table)

    @property
    def ident(self):
        return pgsql.Identifier(self.schema, self.table)

    def lock_key(self):
        return lock_key(self.qualified)

    def resolve(self, cur):
        """Find the table (search_path order when unqualified); True when it exists."""
        if self.given_schema is None:
            cur.execute(_FIND_IN_PATH, (self.table,))
            row = cur.fetchone()
            if row is None:
                cur.execute('SELECT current_schema()')
                row = cur.fetchone()
                if row[0] is None:
                    raise MigrationError('table %s: the search_path names no existing schema to create it in; '
                                         'qualify it (table: myschema.%s)' % (self.display, self.table))
            self.schema = row[0]
        cur.execute(_FIND, (self.schema, self.table))
        row = cur.fetchone()
        self.oid = row[0] if row else None
        return self.oid is not None

    def inspect(self, cur):
        """Resolve and read the table's columns; False when it does not exist."""
        if not self.resolve(cur):
            self.columns = {}
            return False
        cur.execute('SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a '
                    'WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped', (self.oid,))
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
        if not self.columns:
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
            return ['created table %s' % self.qualified]
        if 'version' not in self.columns and self.name_col not in self.columns:
            raise MigrationError('table %s exists but has neither a version nor a file name column, so it is not '
                                 'a migrations table pg_migrate can adopt; rename it or set table to another name'
                                 % self.qualified)
        missing = self.missing_columns()
        for column, ctype in missing:
            cur.execute(pgsql.SQL('ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} ' + ctype).format(
                self.ident, pgsql.Identifier(column)))
        if not missing:
            return []
        had_version = 'version' not in [c for c, _unused in missing]
        self.inspect(cur)
        if not had_version:
            # Fill the new version column from the file names the old runner recorded.
            cur.execute(pgsql.SQL('SELECT ctid::text, {} FROM {}').format(pgsql.Identifier(self.name_col), self.ident))
            for ctid, name in cur.fetchall():
                key = Record((None, name, None, None, True, None)).key
                if key is not None:
                    cur.execute(pgsql.SQL('UPDATE {} SET version = %s WHERE ctid = %s::tid').format(self.ident),
                                (version_text(key), ctid))
        return ['adopted table %s left by an older runner (added columns: %s)'
                % (self.qualified, ', '.join(c for c, _unused in missing))]

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
                                     'file to a whole-number version' % (self.qualified, self.version_type,
                                                                         version_text(key)))
            return key[0]
        return version_text(key)

    def insert(self, cur, mfile, kind, checksum, elapsed_ms, success, applied_by, error=None, applied_at=None):
        if kind == 'repeatable':
            cur.execute(pgsql.SQL('DELETE FROM {} WHERE kind = %s AND {} = %s').format(
                self.ident, pgsql.Identifier(self.name_col)), ('repeatable', mfile.name))
        if kind == 'repeatable' and self.columns.get('version', ('', False))[1]:
            raise MigrationError('table %s requires a version on every row, so the repeatable migration %s cannot '
                                 'be recorded; run ALTER TABLE %s ALTER COLUMN version DROP NOT NULL (and drop a '
                                 'primary key on version) or rename the file with a version'
                                 % (self.qualified, mfile.name, self.qualified))
        cur.execute(pgsql.SQL(
            'INSERT INTO {} (version, {}, kind, checksum, execution_ms, success, applied_by, error, applied_at) '
            'VALUES (%s, %s, %s, %s, %s, %s, %s, %s, coalesce(%s, now()))').format(
                self.ident, pgsql.Identifier(self.name_col)),
            (self.version_value(mfile.key), mfile.name, kind, checksum, int(elapsed_ms), success, applied_by, error,
             applied_at))

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


def foreign_owner(table, catalog, cur):
    """(tool, evidence) when an existing table belongs to another migration tool; None when it is pg_migrate's
    (current or older). How the two are told apart is documented in docs/pg_migrate.md."""
    cols = set(table.columns)
    if {'version', 'dirty'} <= cols:
        return 'golang-migrate', 'its version and dirty columns are golang-migrate\'s'
    if {'installed_rank', 'script', 'success'} <= cols:
        return 'flyway', 'its installed_rank and script columns are Flyway\'s'
    if {'version_id', 'is_applied'} <= cols:
        return 'goose', 'its version_id and is_applied columns are goose\'s'
    if {'migration_name', 'finished_at'} <= cols:
        return 'prisma', 'its migration_name and finished_at columns are Prisma\'s'
    if {'description', 'installed_on', 'execution_time'} <= cols:
        return 'sqlx', 'its description, installed_on and execution_time columns are sqlx\'s'
    if cols == {'version', 'run_on'}:
        return 'diesel', 'its version and run_on columns are Diesel\'s'
    if cols == {'id', 'applied_at'}:
        return 'sql-migrate', 'its id and applied_at columns are sql-migrate\'s'
    if cols == {'version'} and catalog is not None and catalog.layout == 'dbmate':
        cur.execute(pgsql.SQL('SELECT version::text FROM {}').format(table.ident))
        versions = set(row[0] for row in cur.fetchall())
        labels = set(f.version_label for f in catalog.versioned)
        if versions <= labels:
            return 'dbmate', ('it has a single version column and its versions are those of the dbmate files in '
                              'path')
    # pg_migrate adopts a table of its own older releases (or the example bot's first runner): their columns are
    # among its own and the file name columns it reads. Any other column means the bot's own migration script (or
    # a tool not listed above) keeps this table: adopting it would add NOT NULL columns under its inserts.
    known = set(c for c, _unused in TrackingTable.COLUMNS) | set(NAME_COLUMNS) | {'id'}
    unknown = sorted(cols - known)
    if unknown:
        return None, 'it has columns pg_migrate never writes (%s)' % ', '.join(unknown)
    return None


def _refuse_foreign(table, owner, evidence):
    other = 'pg_schema_migrations' if table.table != 'pg_schema_migrations' else 'pg_migrate_history'
    if owner is None:
        return MigrationError(
            'table %s is not pg_migrate\'s: %s, so it belongs to the bot\'s own migration script or another tool, '
            'and pg_migrate neither adopts nor writes it. Give pg_migrate a table of its own: table: %s (in a '
            'deployment: soulnear_migrations_table: %s); nothing was changed' % (table.qualified, evidence, other,
                                                                                 other))
    default = TAKEOVER_TABLES.get(owner, table.display)
    return MigrationError(
        'table %s belongs to %s (%s), so pg_migrate will not adopt it: adopting adds columns to another tool\'s '
        'table. Keep it as it is and give pg_migrate a table of its own that records what %s applied: table: %s '
        '(any free name) with takeover: %s%s' % (
            table.qualified, owner, evidence, owner, other, owner,
            '' if default == table.table else ' and takeover_table: %s' % table.display))


# -- takeover: another tool's history ------------------------------------------------------------------
class History:
    """What another tool recorded as applied, matched to the files of path."""

    def __init__(self, tool, table):
        self.tool = tool
        self.table = table
        self.keys = {}        # version key -> applied_at
        self.names = {}       # recorded name (file or folder) -> applied_at
        self.labels = {}      # version as written -> applied_at
        self.floor = None     # everything up to this version is applied
        self.problems = []

    def applied_files(self, catalog):
        """[(file, applied_at)] for the files of path the other tool applied, and the history entries without a
        file."""
        found = []
        matched_keys, matched_names, matched_labels = set(), set(), set()
        for mfile in catalog.versioned:
            if mfile.key in self.keys:
                found.append((mfile, self.keys[mfile.key]))
                matched_keys.add(mfile.key)
            elif mfile.name in self.names:
                found.append((mfile, self.names[mfile.name]))
                matched_names.add(mfile.name)
            elif mfile.version_label in self.labels:
                found.append((mfile, self.labels[mfile.version_label]))
                matched_labels.add(mfile.version_label)
            elif self.floor is not None and mfile.key <= self.floor:
                found.append((mfile, None))
        unknown = [version_text(k) for k in self.keys if k not in matched_keys]
        unknown += [n for n in self.names if n not in matched_names]
        unknown += [v for v in self.labels if v not in matched_labels and parse_version(v) not in matched_keys]
        if self.floor is not None and not any(f.key == self.floor for f in catalog.versioned) \
                and not any(f.key == self.floor for f in catalog.baselines) and self.tool == 'golang-migrate':
            unknown.append(version_text(self.floor))
        return found, sorted(set(unknown))


def _rows(cur, query, ident):
    cur.execute(pgsql.SQL(query).format(ident))
    return cur.fetchall()


_HISTORY_COLUMNS = {
    'flyway': {'installed_rank', 'version', 'type', 'success', 'installed_on'},
    'golang-migrate': {'version', 'dirty'},
    'dbmate': {'version'},
    'goose': {'id', 'version_id', 'is_applied', 'tstamp'},
    'sql-migrate': {'id', 'applied_at'},
    'sqlx': {'version', 'success', 'installed_on'},
    'prisma': {'migration_name', 'finished_at', 'rolled_back_at', 'started_at'},
    'diesel': {'version', 'run_on'},
}


def _looks_like(tool, source):
    if tool == 'pg_migrate':
        return 'version' in source.columns or source.name_col in source.columns
    return _HISTORY_COLUMNS[tool] <= set(source.columns)


def _flyway(history, source, cur):
    failed = {}
    for version, typ, success, installed_on in _rows(
            cur, 'SELECT version, type, success, installed_on FROM {} ORDER BY installed_rank', source.ident):
        key = parse_version(version)
        if key is None or typ == 'SCHEMA':
            continue  # repeatables (no version) re-run once after the takeover
        if typ == 'BASELINE':
            history.floor = max(history.floor or key, key)
        elif not success:
            failed[key] = version
        elif typ.startswith('UNDO') or typ == 'DELETE':
            history.keys.pop(key, None)
            failed.pop(key, None)
        else:
            history.keys[key] = installed_on
            failed.pop(key, None)
            if typ.endswith('_BASELINE'):
                history.floor = max(history.floor or key, key)
    if failed:
        history.problems.append(
            '%s records version(s) %s as failed (success = false): Flyway itself refuses to migrate until '
            'flyway repair. Inspect the database, finish or undo that migration, run flyway repair (or delete '
            'those rows), then run again' % (source.qualified, ', '.join(sorted(failed.values()))))


def _golang_migrate(history, source, cur):
    rows = _rows(cur, 'SELECT version, dirty FROM {} ORDER BY version DESC', source.ident)
    if rows:
        version, dirty = rows[0]
        if dirty:
            history.problems.append(
                '%s marks version %s dirty: golang-migrate stopped in the middle of that migration. Inspect the '
                'database, finish or undo version %s by hand, then run "migrate force %s" (finished) or "migrate '
                'force <previous version>" (undone) and run again' % (source.qualified, version, version, version))
        history.floor = (int(version),) if version is not None and int(version) >= 0 else None


def _dbmate(history, source, cur):
    for (version,) in _rows(cur, 'SELECT version::text FROM {}', source.ident):
        history.labels[version] = None


def _goose(history, source, cur):
    state = {}
    for version_id, is_applied, tstamp in _rows(
            cur, 'SELECT version_id, is_applied, tstamp FROM {} ORDER BY id', source.ident):
        if version_id:
            state[(int(version_id),)] = tstamp if is_applied else False
    history.keys = dict((k, v) for k, v in state.items() if v is not False)


def _sql_migrate(history, source, cur):
    for name, applied_at in _rows(cur, 'SELECT id, applied_at FROM {}', source.ident):
        history.names[name] = applied_at


def _sqlx(history, source, cur):
    failed = []
    for version, success, installed_on in _rows(cur, 'SELECT version, success, installed_on FROM {}', source.ident):
        if success:
            history.keys[(int(version),)] = installed_on
        else:
            failed.append(str(version))
    if failed:
        history.problems.append(
            '%s records version(s) %s as failed (success = false; sqlx calls it dirty and refuses to migrate). '
            'Inspect the database, finish or undo that migration, delete its row, then run again'
            % (source.qualified, ', '.join(failed)))


def _prisma(history, source, cur):
    state = {}
    for name, finished_at, rolled_back_at in _rows(
            cur, 'SELECT migration_name, finished_at, rolled_back_at FROM {} ORDER BY started_at', source.ident):
        if rolled_back_at is not None:
            state.setdefault(name, None)
        elif finished_at is None:
            state[name] = False
        else:
            state[name] = finished_at
    failed = sorted(n for n, v in state.items() if v is False)
    if failed:
        history.problems.append(
            '%s records migration(s) %s as started but not finished: Prisma refuses to migrate until they are '
            'resolved. Inspect the database, then run "prisma migrate resolve --applied" or "--rolled-back" for '
            'them, and run again' % (source.qualified, ', '.join(failed)))
    history.names = dict((n, v) for n, v in state.items() if v)


def _diesel(history, source, cur):
    for version, run_on in _rows(cur, 'SELECT version::text, run_on FROM {}', source.ident):
        key = parse_version(version.replace('-', ''))
        if key is not None:
            history.keys[key] = run_on


def _pg_migrate(history, source, cur):
    if not source.columns:
        source.inspect(cur)
    failed = []
    for record in source.read(cur):
        if not record.success:
            failed.append(record.name or record.version)
        elif record.kind != 'repeatable' and record.key is not None:
            history.keys[record.key] = None
    if failed:
        history.problems.append('%s records failed migration(s) %s; repair them there first (repair: true with '
                                'table: %s)' % (source.qualified, ', '.join(failed), source.display))


# How each tool's history table says what it applied (and what it left half done).
_HISTORY_READERS = {
    'flyway': _flyway, 'golang-migrate': _golang_migrate, 'dbmate': _dbmate, 'goose': _goose,
    'sql-migrate': _sql_migrate, 'sqlx': _sqlx, 'prisma': _prisma, 'diesel': _diesel, 'pg_migrate': _pg_migrate,
}


def read_history(tool, source, cur):
    """The other tool's history from its table (never written to)."""
    history = History(tool, source.qualified)
    reader = _HISTORY_READERS.get(tool)
    if reader is not None:
        reader(history, source, cur)
    return history
