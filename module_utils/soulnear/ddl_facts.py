# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What only the database knows, for pg_migrate's lint of locking DDL (ddl_lint.py): sizes, current column
types, function volatility, validated CHECK constraints.

Facts() knows nothing (the unit tests, or text without a server); LiveFacts(cur) asks the server, read-only, each
question once per run, under a savepoint when the cursor is in a transaction so that a failed lookup never breaks
the migration's transaction. No Ansible imports: the host commands import this file too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from .ddl_tokens import display, quoted

# The lint's thresholds (lint_min_rows, lint_min_mb); LiveFacts counts a table without statistics up to min_rows.
MIN_ROWS = 10000   # 10,000 rows rewrite in well under a second; the incident's 2 M rows took 46 s
MIN_MB = 10.0      # 10 MB (wide rows, TOAST) take seconds to copy on a small VPS disk


# -- what the database knows ------------------------------------------------------------------------------------
class Rel:
    """A relation the database has: display name, kind, total size in bytes and rows (an estimate or counted)."""

    def __init__(self, name, kind='r', size=None, rows=None, rows_how='estimate', oid=None):
        self.name = name
        self.kind = kind
        self.size = size
        self.rows = rows
        self.rows_how = rows_how  # 'estimate' (reltuples, statistics) or 'at least' / 'counted' (bounded count)
        self.oid = oid


UNKNOWN = Rel(None)   # Facts without a database: exists, size unknown
VOLATILE_BUILTINS = frozenset(('random', 'random_normal', 'clock_timestamp', 'timeofday', 'gen_random_uuid',
                               'gen_random_bytes', 'uuid_generate_v1', 'uuid_generate_v1mc', 'uuid_generate_v4',
                               'uuidv4', 'uuidv7', 'nextval', 'currval', 'lastval', 'setval', 'setseed'))
STABLE_BUILTINS = frozenset(('now', 'statement_timestamp', 'transaction_timestamp', 'current_setting', 'lower',
                             'upper', 'md5', 'concat', 'to_char', 'to_timestamp', 'date_trunc', 'make_interval',
                             'jsonb_build_object', 'json_build_object', 'jsonb_build_array', 'length', 'abs',
                             'round', 'floor', 'ceil', 'format', 'replace', 'substr', 'left', 'right'))
# Calls that are syntax, not pg_proc functions (or always immutable): never looked up.
_SYNTAX_CALLS = frozenset(('coalesce', 'nullif', 'greatest', 'least', 'cast', 'extract', 'overlay', 'position',
                           'substring', 'trim', 'row', 'array', 'exists', 'in', 'any', 'all', 'some', 'values',
                           'grouping', 'treat', 'normalize', 'collation', 'current_timestamp', 'current_time',
                           'localtime', 'localtimestamp', 'and', 'or', 'not', 'is', 'case', 'when', 'then', 'else',
                           'filter', 'over', 'within', 'xmlelement', 'xmlforest', 'xmlconcat', 'xmlparse', 'xmlpi',
                           'xmlroot', 'xmlserialize', 'json_object', 'json_array', 'interval', 'varchar', 'numeric',
                           'decimal', 'char', 'character', 'timestamp', 'time', 'bit', 'float'))
_UTC_NAMES = frozenset(('utc', 'etc/utc', 'gmt', 'etc/gmt', 'uct', 'etc/uct', 'universal', 'etc/universal',
                        'zulu', 'etc/zulu', 'greenwich', 'etc/greenwich', 'gmt0', 'etc/gmt0', 'gmt+0', 'gmt-0',
                        'etc/gmt+0', 'etc/gmt-0'))


class Facts:
    """Answers without a database: every table exists with an unknown size, built-in functions only."""

    live = False

    def relation(self, parts, search_path=None):
        return UNKNOWN

    def index_table(self, parts, search_path=None):
        """(index Rel, its table's Rel), or None when there is no such index."""
        return UNKNOWN, UNKNOWN

    def column(self, rel, column):
        """(format_type text, NOT NULL proven: attnotnull or a validated CHECK (col IS NOT NULL)), or None."""
        return None

    def volatility(self, names):
        """{name: 'v' | 's' | None (unknown)} for function names."""
        return dict((n, 'v' if n in VOLATILE_BUILTINS else 's' if n in STABLE_BUILTINS else None) for n in names)

    def domain_constraints(self, parts):
        """True when the type is a domain with constraints (directly or through its base), None when unknown."""
        return None

    def utc(self):
        return False

    def scope(self, kind, name=None):
        """Rel summing the tables of a scope: database, system, schema (name), clustered."""
        return UNKNOWN


_REL_BY_NAME = (
    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname = %(name)s AND CASE WHEN %(schema)s IS NULL THEN n.nspname = ANY (%(path)s) "
    "ELSE n.nspname = %(schema)s END "
    "ORDER BY array_position(%(path)s, n.nspname::text) LIMIT 1")
_REL_BY_OID = (
    "SELECT n.nspname, c.relname, c.relkind, "
    "CASE WHEN c.relkind IN ('p', 'I') THEN (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0) "
    "  FROM pg_partition_tree(c.oid) t) ELSE pg_total_relation_size(c.oid) END::bigint, "
    "CASE WHEN c.relkind IN ('p', 'I') THEN (SELECT sum(CASE WHEN k.reltuples >= 0 THEN k.reltuples "
    "  ELSE nullif(s.n_live_tup, 0) END) FROM pg_partition_tree(c.oid) t JOIN pg_class k ON k.oid = t.relid "
    "  LEFT JOIN pg_stat_all_tables s ON s.relid = t.relid WHERE t.isleaf) "
    "WHEN c.reltuples >= 0 THEN c.reltuples "
    "ELSE (SELECT nullif(s.n_live_tup, 0) FROM pg_stat_all_tables s WHERE s.relid = c.oid) END::bigint "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s")
_PATH = "array_replace(coalesce(%s::text[], current_schemas(true)::text[]), '$user', current_user::text)"
_SCOPES = {
    'database': "true",
    'system': "n.nspname = 'pg_catalog'",
    'schema': "n.nspname = %(name)s",
    'clustered': "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisclustered)",
}


class LiveFacts(Facts):
    """Answers from the live database through the run's cursor (read-only catalog queries, remembered)."""

    live = True

    def __init__(self, cur, min_rows=MIN_ROWS):
        self.cur = cur
        self.min_rows = max(1, int(min_rows or 1))
        self.cache = {}

    def _query(self, sql, args=None, default=None):
        """Rows of a read-only query; default when it fails (under a savepoint inside a transaction, so the
        migration's transaction is never broken by a lookup)."""
        conn = self.cur.connection
        inside = not conn.autocommit
        try:
            if inside:
                self.cur.execute('SAVEPOINT pg_migrate_lint')
            self.cur.execute(sql, args)
            rows = self.cur.fetchall()
            if inside:
                self.cur.execute('RELEASE SAVEPOINT pg_migrate_lint')
            return rows
        except Exception:  # noqa: BLE001 - any failure means: not known
            if inside and not conn.closed:
                self.cur.execute('ROLLBACK TO SAVEPOINT pg_migrate_lint')
                self.cur.execute('RELEASE SAVEPOINT pg_migrate_lint')
            return default

    def _cached(self, key, compute):
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def _oid(self, parts, search_path):
        path = _PATH % '%(path_given)s'
        sql = _REL_BY_NAME.replace('%(path)s', path)
        rows = self._query(sql, dict(name=parts[-1], schema=parts[-2] if len(parts) > 1 else None,
                                     path_given=list(search_path) if search_path else None), [])
        return rows[0][0] if rows else None

    def _rel(self, oid):
        def compute():
            rows = self._query(_REL_BY_OID, (oid,), [])
            if not rows:
                return None
            schema, name, kind, size, rows_est = rows[0]
            rel = Rel(display((schema, name)), kind, int(size or 0), rows_est, 'estimate', oid)
            if rows_est is None and kind in ('r', 'p', 'm'):
                # Never analyzed and no statistics yet: count, but never more rows than the threshold asks about.
                counted = self._query('SELECT count(*) FROM (SELECT 1 FROM %s LIMIT %d) s'
                                      % (quoted((schema, name)), self.min_rows), None, [])
                if counted:
                    rel.rows = counted[0][0]
                    rel.rows_how = 'at least' if rel.rows >= self.min_rows else 'counted'
            return rel
        return self._cached(('rel', oid), compute)

    def relation(self, parts, search_path=None):
        def compute():
            oid = self._oid(parts, search_path)
            return self._rel(oid) if oid is not None else None
        return self._cached(('name', parts, tuple(search_path or ())), compute)

    def index_table(self, parts, search_path=None):
        index = self.relation(parts, search_path)
        if index is None or index.kind not in ('i', 'I'):
            return None
        rows = self._query('SELECT indrelid FROM pg_index WHERE indexrelid = %s', (index.oid,), [])
        return index, (self._rel(rows[0][0]) if rows else None)

    def column(self, rel, column):
        if rel is None or rel.oid is None:
            return None

        def compute():
            rows = self._query(
                "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                "array(SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.conrelid = a.attrelid "
                "AND c.contype = 'c' AND c.convalidated AND c.conkey = ARRAY[a.attnum]) "
                "FROM pg_attribute a WHERE a.attrelid = %s AND a.attname = %s AND a.attnum > 0 "
                "AND NOT a.attisdropped", (rel.oid, column), [])
            if not rows:
                return None
            ctype, notnull, checks = rows[0]
            return ctype, bool(notnull) or any(proves_not_null(d, column) for d in checks or [])
        return self._cached(('column', rel.oid, column), compute)

    def volatility(self, names):
        wanted = sorted(n for n in names if ('proc', n) not in self.cache)
        if wanted:
            rows = self._query('SELECT proname, string_agg(DISTINCT provolatile::text, \'\') FROM pg_proc '
                               'WHERE proname = ANY (%s) GROUP BY proname', (wanted,), None)
            if rows is None:
                return Facts.volatility(self, names)
            found = dict(rows)
            for name in wanted:
                letters = found.get(name)
                self.cache[('proc', name)] = None if letters is None else 'v' if 'v' in letters else 's'
        return dict((n, self.cache[('proc', n)]) for n in names)

    def domain_constraints(self, parts):
        def compute():
            rows = self._query(
                "WITH RECURSIVE d(oid) AS (SELECT to_regtype(%s)::oid UNION ALL SELECT t.typbasetype FROM pg_type t "
                "JOIN d ON t.oid = d.oid WHERE t.typtype = 'd') "
                "SELECT EXISTS (SELECT 1 FROM pg_constraint c JOIN d ON c.contypid = d.oid)", (quoted(parts),),
                None)
            return bool(rows[0][0]) if rows else None
        return self._cached(('domain', parts), compute)

    def utc(self):
        def compute():
            rows = self._query("SELECT current_setting('TimeZone')", None, [])
            return bool(rows) and rows[0][0].lower() in _UTC_NAMES
        return self._cached(('utc',), compute)

    def scope(self, kind, name=None):
        def compute():
            rows = self._query(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint, "
                "coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') AND " + _SCOPES[kind].replace(
                    '%(name)s', '%s'), (name,) if '%(name)s' in _SCOPES[kind] else None, [])
            if not rows:
                return UNKNOWN
            return Rel(None, 'scope', int(rows[0][0]), int(rows[0][1]), 'estimate')
        return self._cached(('scope', kind, name), compute)


def proves_not_null(definition, column):
    """True when a CHECK constraint's definition (pg_get_constraintdef) implies column IS NOT NULL."""
    names = '|'.join(re.escape(n) for n in (display((column,)), quoted((column,))))  # "user": a keyword
    found = re.search(r'(?:^|[(\s])(?:%s) IS NOT NULL\b' % names, definition)
    return bool(found) and ' OR ' not in definition.upper()
