# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Locking DDL named before it runs: pg_migrate's lint of the statements a run would execute.

A statement that rewrites or scans a table under a lock the bot's queries wait for (ALTER TABLE ... ADD COLUMN
with a volatile default, ALTER COLUMN TYPE, SET NOT NULL, CREATE INDEX without CONCURRENTLY ...) is reported with
the size of the table it locks, read from the live database: pg_total_relation_size and an estimated row count.
A table created earlier in the same run (or that does not exist yet) is reported as new, not warned about; a
table below the thresholds (lint_min_rows, lint_min_mb) is reported as info. docs/pg_migrate.md ("Locking DDL")
has the rule table; RULES below is the same list.

Two halves: the rules read SQL text only (tokens of one statement, and what earlier statements of the run did:
tables created, renamed or dropped, columns added, constraints added and validated, functions and domains
created); a Facts object answers what only the database knows (sizes, current column types, function
volatility, validated CHECK constraints). Facts() knows nothing (the unit tests, or text without a server);
LiveFacts(cur) asks the server, read-only, each question once per run, under a savepoint when the cursor is in
a transaction so that a failed lookup never breaks the migration's transaction.

No Ansible imports: migrate.py calls Linter; lint_sql() lints a script's text without a server.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from .sql import first_word_upper, scan

MODES = ('warn', 'refuse', 'off')
MIN_ROWS = 10000   # 10,000 rows rewrite in well under a second; the incident's 2 M rows took 46 s
MIN_MB = 10.0      # 10 MB (wide rows, TOAST) take seconds to copy on a small VPS disk


class Rule:
    def __init__(self, name, catches, lock, effect, fix, refusable=True):
        self.name = name
        self.catches = catches      # what the rule catches (docs)
        self.lock = lock            # the lock the statement holds until its transaction ends
        self.effect = effect        # what the server does meanwhile
        self.fix = fix              # the safe way
        self.refusable = refusable  # lint: refuse refuses it (rename only warns)


RULES = (
    Rule('add-column-volatile-default',
         'ADD COLUMN with a volatile DEFAULT (random(), clock_timestamp(), gen_random_uuid(), nextval() ...), a '
         'serial type or GENERATED ... AS IDENTITY', 'ACCESS EXCLUSIVE',
         'rewrites the table and all its indexes, computing the default for every row',
         'add the column without a default, SET DEFAULT for new rows (no rewrite), then backfill the existing rows '
         'in batches in later migrations'),
    Rule('add-column-rewrite',
         'ADD COLUMN ... GENERATED ALWAYS AS (...) STORED, or of a domain type with constraints',
         'ACCESS EXCLUSIVE', 'rewrites the table and all its indexes',
         'add a plain column (a domain without constraints, the check as a NOT VALID constraint), fill it in '
         'batches and keep it current with a trigger'),
    Rule('alter-column-type',
         'ALTER COLUMN ... TYPE, except the changes PostgreSQL makes without a rewrite (see the list)',
         'ACCESS EXCLUSIVE', 'rewrites the table and rebuilds its indexes',
         'add a column of the new type, fill it (a trigger for new writes, batches for the old rows), switch the bot '
         'to it, drop the old column in a later release'),
    Rule('set-not-null',
         'ALTER COLUMN ... SET NOT NULL without a validated CHECK (col IS NOT NULL)', 'ACCESS EXCLUSIVE',
         'scans the whole table',
         'ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT c in a later migration (SHARE '
         'UPDATE EXCLUSIVE: reads and writes go on); then SET NOT NULL skips the scan; DROP CONSTRAINT c'),
    Rule('add-foreign-key',
         'ADD [CONSTRAINT] FOREIGN KEY without NOT VALID, ADD COLUMN ... REFERENCES with a default, VALIDATE in the '
         'transaction that added it', 'SHARE ROW EXCLUSIVE on both tables',
         'scans the table to validate every row while writes to both tables wait',
         'ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a later migration (SHARE UPDATE '
         'EXCLUSIVE: reads and writes go on)'),
    Rule('add-check',
         'ADD [CONSTRAINT] CHECK without NOT VALID, ADD COLUMN ... CHECK, VALIDATE in the transaction that added it',
         'ACCESS EXCLUSIVE', 'scans the whole table',
         'ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in a later migration (SHARE UPDATE '
         'EXCLUSIVE: reads and writes go on)'),
    Rule('add-unique',
         'ADD PRIMARY KEY / UNIQUE without USING INDEX, ADD EXCLUDE, ADD COLUMN ... PRIMARY KEY / UNIQUE',
         'ACCESS EXCLUSIVE', 'reads and sorts the whole table to build the index',
         'CREATE UNIQUE INDEX CONCURRENTLY in a migration of its own (it runs outside a transaction), then ADD '
         'CONSTRAINT c PRIMARY KEY / UNIQUE USING INDEX idx (instant); an exclusion constraint has no concurrent '
         'way: a maintenance window'),
    Rule('create-index',
         'CREATE [UNIQUE] INDEX without CONCURRENTLY', 'SHARE (writes wait, reads go on)',
         'reads and sorts the whole table',
         'CREATE INDEX CONCURRENTLY in a migration of its own: a file holding only such statements runs outside a '
         'transaction by itself (or mark the file -- pg_migrate: no-transaction)'),
    Rule('drop-index',
         'DROP INDEX without CONCURRENTLY', 'ACCESS EXCLUSIVE on the index\'s table',
         'is quick, but every read and write of the table waits for the lock and then until the file commits',
         'DROP INDEX CONCURRENTLY in a migration of its own (it runs outside a transaction)'),
    Rule('reindex',
         'REINDEX INDEX / TABLE / SCHEMA / DATABASE / SYSTEM without CONCURRENTLY',
         'SHARE on the table, ACCESS EXCLUSIVE on the index', 'rebuilds the indexes from the whole table',
         'REINDEX ... CONCURRENTLY in a migration of its own (it runs outside a transaction)'),
    Rule('vacuum-full',
         'VACUUM FULL (also VACUUM (FULL))', 'ACCESS EXCLUSIVE', 'rewrites the table and its indexes',
         'plain VACUUM (no exclusive lock), or pg_repack / pg_squeeze online; VACUUM FULL only in a maintenance '
         'window'),
    Rule('cluster',
         'CLUSTER', 'ACCESS EXCLUSIVE', 'rewrites the table and its indexes in index order',
         'pg_repack --order-by online, or a maintenance window'),
    Rule('set-tablespace',
         'ALTER TABLE / INDEX / MATERIALIZED VIEW ... SET TABLESPACE (also ALL IN TABLESPACE)', 'ACCESS EXCLUSIVE',
         'copies the relation\'s files to the other tablespace',
         'pg_repack --tablespace online, or a maintenance window'),
    Rule('set-logged',
         'ALTER TABLE ... SET LOGGED / SET UNLOGGED', 'ACCESS EXCLUSIVE', 'rewrites the table',
         'a maintenance window (or create the table the way it must stay)'),
    Rule('set-access-method',
         'ALTER TABLE ... SET ACCESS METHOD', 'ACCESS EXCLUSIVE', 'rewrites the table', 'a maintenance window'),
    Rule('attach-partition',
         'ALTER TABLE ... ATTACH PARTITION', 'ACCESS EXCLUSIVE on the partition (SHARE UPDATE EXCLUSIVE on the '
         'parent)', 'scans the partition to prove its rows fit the bounds, unless a valid CHECK constraint proves it',
         'ADD a CHECK constraint matching the bounds NOT VALID, VALIDATE it in a later migration, then ATTACH '
         'PARTITION skips the scan (drop the CHECK afterwards)'),
    Rule('refresh-materialized-view',
         'REFRESH MATERIALIZED VIEW without CONCURRENTLY', 'ACCESS EXCLUSIVE on the view',
         'runs the view\'s query while every read of the view waits',
         'REFRESH MATERIALIZED VIEW CONCURRENTLY (it needs a unique index on the view) in a migration of its own'),
    Rule('lock-table',
         'LOCK TABLE in a mode that blocks writes: SHARE, SHARE ROW EXCLUSIVE, EXCLUSIVE, ACCESS EXCLUSIVE (the '
         'default; it blocks reads too)', 'the mode named', 'holds it until the file commits',
         'drop the LOCK TABLE (pg_migrate already serialises runs), or take the weakest mode the migration needs and '
         'keep the file short'),
    Rule('backfill-under-lock',
         'UPDATE or DELETE of a table that an earlier ALTER TABLE of the same transaction locked',
         'the ALTER TABLE\'s (ACCESS EXCLUSIVE for most forms)', 'runs the whole UPDATE while the table stays locked',
         'commit the ALTER TABLE first: backfill in a migration of its own, in batches (UPDATE ... WHERE id BETWEEN '
         '...), each committed'),
    Rule('rename',
         'RENAME of a table, view or column; ALTER TABLE ... SET SCHEMA (warning only, never refused)',
         'ACCESS EXCLUSIVE (briefly)', 'breaks the running bot\'s queries that use the old name until the new bot '
         'runs',
         'expand and contract: add the new name next to the old one (a column written by both, or a view with the '
         'old name), release a bot that uses the new name, drop the old name in a later release',
         refusable=False),
)
RULE_NAMES = tuple(r.name for r in RULES)
_RULES = dict((r.name, r) for r in RULES)

# The ALTER COLUMN TYPE changes accepted without a rewrite (docs/pg_migrate.md lists them; test_pg_migrate_lint
# proves each on a real server by its relfilenode).
ACCEPTED_TYPE_CHANGES = (
    'varchar(n) to varchar(m) with m >= n, or to varchar without a limit, or to text',
    'text to varchar without a limit',
    'numeric(p,s) to numeric(q,s) with q >= p (same scale), or to numeric without a limit',
    'varbit(n) to varbit(m) with m >= n, or to varbit',
    'timestamp, timestamptz, time, interval: a higher precision (or none)',
    'timestamp to timestamptz and back, when the server\'s TimeZone is UTC',
    'cidr to inet',
    'the same type (only COLLATE changes), and USING that is the bare column',
)


# -- tokens ------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<block>/\*)
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
  | (?P<string>(?:[bBxXnN]|[uU]&)?'[^']*(?:''[^']*)*')
  | (?P<ident>(?:[uU]&)?"[^"]*(?:""[^"]*)*")
  | (?P<dollar>\$(?:[A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$)
  | (?P<param>\$\d+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<word>[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*)
  | (?P<op>::|[^\s])
""", re.X | re.S)


class Tok:
    __slots__ = ('kind', 'value', 'text', 'start', 'end')

    def __init__(self, kind, value, text, start=0, end=0):
        self.kind = kind    # w (word, value lower-cased), i (quoted identifier), s (string), n, p, o (operator)
        self.value = value
        self.text = text
        self.start = start  # position in the statement
        self.end = end

    def __repr__(self):
        return '%s:%s' % (self.kind, self.value)


def tokens(statement):
    """The tokens of one statement (comments dropped); the statement was already split, so quotes close."""
    out = []
    pos, size = 0, len(statement)
    while pos < size:
        match = _TOKEN.match(statement, pos)
        if match is None:  # pragma: no cover - every character matches some alternative
            break
        kind = match.lastgroup
        end = match.end()
        if kind == 'block':
            depth, i = 1, end
            while depth and i < size:
                opening, closing = statement.find('/*', i), statement.find('*/', i)
                if closing == -1:
                    i = size
                    break
                if opening != -1 and opening < closing:
                    depth, i = depth + 1, opening + 2
                else:
                    depth, i = depth - 1, closing + 2
            end = i
        elif kind == 'dollar':
            close = statement.find(match.group(0), end)
            end = size if close == -1 else close + len(match.group(0))
            out.append(Tok('s', statement[match.start():end], statement[match.start():end], match.start(), end))
        elif kind == 'word':
            out.append(Tok('w', match.group(0).lower(), match.group(0), match.start(), end))
        elif kind == 'ident':
            text = match.group(0)
            out.append(Tok('i', text[text.index('"') + 1:-1].replace('""', '"'), text, match.start(), end))
        elif kind in ('string', 'estring'):
            out.append(Tok('s', match.group(0), match.group(0), match.start(), end))
        elif kind in ('number', 'param', 'op'):
            out.append(Tok(kind[0], match.group(0), match.group(0), match.start(), end))
        pos = end
    return out


def _text(toks, statement=None, limit=60):
    """The statement's own text of a token run (one line, shortened)."""
    if not toks:
        return ''
    text = statement[toks[0].start:toks[-1].end] if statement else ' '.join(t.text for t in toks)
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _split_top(toks, separator=','):
    """Split tokens at top-level separators (outside parentheses and brackets)."""
    parts, current, depth = [], [], 0
    for tok in toks:
        if tok.kind == 'o':
            if tok.value in '([':
                depth += 1
            elif tok.value in ')]':
                depth -= 1
            elif tok.value == separator and depth == 0:
                parts.append(current)
                current = []
                continue
        current.append(tok)
    if current:
        parts.append(current)
    return parts


class _Reader:
    """A cursor over the tokens of one statement or clause."""

    def __init__(self, toks):
        self.toks = toks
        self.i = 0

    def peek(self, ahead=0):
        i = self.i + ahead
        return self.toks[i] if i < len(self.toks) else None

    def word(self, ahead=0):
        tok = self.peek(ahead)
        return tok.value if tok is not None and tok.kind == 'w' else None

    def accept(self, *words):
        """Consume the words when they come next (in that order); True when they did."""
        for k, word in enumerate(words):
            if self.word(k) != word:
                return False
        self.i += len(words)
        return True

    def op(self, value):
        tok = self.peek()
        if tok is not None and tok.kind == 'o' and tok.value == value:
            self.i += 1
            return True
        return False

    def name(self):
        """A possibly qualified name as a tuple of parts (unquoted parts lower-cased), or None."""
        parts = []
        while True:
            tok = self.peek()
            if tok is None or tok.kind not in ('w', 'i'):
                break
            parts.append(tok.value)
            self.i += 1
            if not self.op('.'):
                break
        return tuple(parts) or None

    def skip_group(self):
        """Skip a parenthesised group starting here; True when there was one."""
        if not self.op('('):
            return False
        depth = 1
        while depth and self.i < len(self.toks):
            tok = self.toks[self.i]
            if tok.kind == 'o' and tok.value == '(':
                depth += 1
            elif tok.kind == 'o' and tok.value == ')':
                depth -= 1
            self.i += 1
        return True

    def rest(self):
        return self.toks[self.i:]


def _top_words(toks):
    """The words of a token list outside parentheses."""
    depth, words = 0, []
    for tok in toks:
        if tok.kind == 'o' and tok.value == '(':
            depth += 1
        elif tok.kind == 'o' and tok.value == ')':
            depth -= 1
        elif depth == 0 and tok.kind == 'w':
            words.append(tok.value)
    return words


def _ends_not_valid(toks):
    words = _top_words(toks)
    return len(words) >= 2 and words[-2:] == ['not', 'valid']


def display(parts):
    """A name for messages (quoted only where needed)."""
    return '.'.join(p if re.match(r'^[a-z_][a-z0-9_$]*$', p) else '"%s"' % p.replace('"', '""') for p in parts)


def quoted(parts):
    """A name for SQL (every part quoted: a table named like a keyword too)."""
    return '.'.join('"%s"' % p.replace('"', '""') for p in parts)


# -- types ---------------------------------------------------------------------------------------------------
_TYPE_ALIASES = {
    'int': 'integer', 'int4': 'integer', 'int8': 'bigint', 'int2': 'smallint', 'float8': 'double precision',
    'float4': 'real', 'bool': 'boolean', 'varchar': 'character varying', 'char': 'character',
    'bpchar': 'character', 'decimal': 'numeric', 'varbit': 'bit varying', 'timestamptz': 'timestamp with time zone',
    'timetz': 'time with time zone',
}
_SERIAL = frozenset(('serial', 'bigserial', 'smallserial', 'serial2', 'serial4', 'serial8'))
_BUILTIN_TYPES = frozenset(('integer', 'bigint', 'smallint', 'double precision', 'real', 'boolean', 'text',
                            'character varying', 'character', 'numeric', 'bit varying', 'bit', 'bytea', 'date',
                            'timestamp with time zone', 'timestamp without time zone', 'time with time zone',
                            'time without time zone', 'interval', 'uuid', 'json', 'jsonb', 'inet', 'cidr',
                            'macaddr', 'money', 'xml', 'tsvector', 'oid', 'point', 'citext')) | _SERIAL


class SqlType:
    """A type as written (or as format_type prints it): base name, modifiers, array."""

    def __init__(self, base, mods=(), array=False, fields=False):
        self.base = base
        self.mods = mods
        self.array = array
        self.fields = fields  # interval YEAR TO MONTH and the like

    def __repr__(self):
        return '%s%s%s' % (self.base, '(%s)' % ','.join(str(m) for m in self.mods) if self.mods else '',
                           '[]' if self.array else '')


def parse_type(toks):
    """SqlType of a type's tokens ('character varying(20)', 'timestamp(3) with time zone', 'int[]')."""
    if isinstance(toks, str):
        toks = tokens(toks)
    words, mods, array, depth, names = [], [], False, 0, []
    for k, tok in enumerate(toks):
        if tok.kind == 'o' and tok.value == '(':
            depth += 1
        elif tok.kind == 'o' and tok.value == ')':
            depth -= 1
        elif tok.kind == 'o' and tok.value == '[':
            array = True
        elif depth > 0 and tok.kind == 'n':
            mods.append(int(float(tok.value)))
        elif depth == 0 and tok.kind in ('w', 'i'):
            if k + 1 < len(toks) and toks[k + 1].kind == 'o' and toks[k + 1].value == '.':
                if tok.value != 'pg_catalog':
                    names.append(tok.value)
                continue
            if tok.kind == 'w' and tok.value == 'array':
                array = True
            elif tok.kind == 'i':
                names.append(tok.value)
            else:
                words.append(tok.value)
    fields = False
    if words and words[0] in ('timestamp', 'time'):
        base = '%s %s time zone' % (words[0], 'with' if 'with' in words else 'without')
    elif words[:2] in (['character', 'varying'], ['char', 'varying']):
        base = 'character varying'
    elif words[:2] == ['bit', 'varying']:
        base = 'bit varying'
    elif words[:2] == ['double', 'precision']:
        base = 'double precision'
    elif words and words[0] == 'interval':
        base, fields = 'interval', len(words) > 1
    else:
        base = ' '.join(names + words)
        base = _TYPE_ALIASES.get(base, base)
    return SqlType(base, tuple(mods), array, fields)


_PRECISION_TYPES = ('timestamp with time zone', 'timestamp without time zone', 'time without time zone',
                    'time with time zone', 'interval')


def type_change_rewrites(old, new, utc=False):
    """(rewrites, why) for ALTER COLUMN TYPE old -> new: False only for ACCEPTED_TYPE_CHANGES."""
    if old.array or new.array or old.fields or new.fields:
        if (old.base, old.mods, old.array, old.fields) == (new.base, new.mods, new.array, new.fields):
            return False, 'the type does not change'
        return True, '%s to %s is not one of the changes PostgreSQL makes without a rewrite' % (old, new)
    pair = (old.base, new.base)
    if old.base == new.base:
        if old.mods == new.mods:
            return False, 'the type does not change'
        if old.base in ('character varying', 'bit varying'):
            if not new.mods or (old.mods and new.mods[0] >= old.mods[0]):
                return False, 'a longer limit (or none) is checked, not rewritten'
            return True, '%s to %s shortens the limit: every row is checked and rewritten' % (old, new)
        if old.base == 'numeric':
            if not new.mods:
                return False, 'numeric without a limit takes every value as it is'
            old_scale = old.mods[1] if len(old.mods) > 1 else 0
            new_scale = new.mods[1] if len(new.mods) > 1 else 0
            if old.mods and new.mods[0] >= old.mods[0] and new_scale == old_scale:
                return False, 'a higher precision with the same scale'
            return True, '%s to %s changes the scale or lowers the precision' % (old, new)
        if old.base in _PRECISION_TYPES:
            if (new.mods[0] if new.mods else 6) >= (old.mods[0] if old.mods else 6):
                return False, 'a higher precision (or none)'
            return True, '%s to %s lowers the precision' % (old, new)
        return True, '%s to %s changes the type modifier' % (old, new)
    if pair in (('character varying', 'text'), ('cidr', 'inet')) or (pair == ('text', 'character varying')
                                                                      and not new.mods):
        return False, '%s to %s is binary coercible' % (old.base, new.base)
    if set(pair) == {'timestamp with time zone', 'timestamp without time zone'}:
        if not utc:
            return True, ('%s to %s is rewritten unless the server\'s TimeZone is UTC' % pair)
        if (new.mods[0] if new.mods else 6) >= (old.mods[0] if old.mods else 6):
            return False, 'timestamp and timestamptz are the same bytes when the TimeZone is UTC'
        return True, '%s to %s lowers the precision' % (old, new)
    return True, '%s to %s is not one of the changes PostgreSQL makes without a rewrite' % (old, new)


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


# -- what earlier statements of the run did ---------------------------------------------------------------------
class RunState:
    """What the statements linted so far did, by bare (unqualified) name: a table created earlier in the run is
    new, a renamed one is the old table under its new name."""

    def __init__(self):
        self.created = {}        # table -> file that created it
        self.maybe_created = {}  # CREATE TABLE IF NOT EXISTS: new only when the database does not have it
        self.dropped = set()
        self.renamed = {}        # new name -> old parts
        self.indexes = {}        # index -> table parts (created in this run)
        self.columns = {}        # (table, column) -> type tokens (added in this run)
        self.not_null = set()    # (table, column) with a validated CHECK (col IS NOT NULL) from this run
        self.constraints = {}    # constraint -> (table, rule, column or None, validated)
        self.functions = {}      # function -> 'v' | 's'
        self.domains = {}        # domain -> has constraints


class FileState:
    def __init__(self, label, transactional):
        self.label = label
        self.transactional = transactional
        self.search_path = None
        self.not_valid = set()   # constraints added NOT VALID by this file
        self.locked = {}         # table -> line of the ALTER TABLE that locked it (in this transaction)


class Hit:
    """A statement a rule catches, before sizes: the target it locks and what about it."""

    def __init__(self, rule, target, detail='', only_parent=False, index=None, lock=None):
        self.rule = rule
        self.lock = lock          # when the statement takes another lock than the rule's usual one
        self.target = target      # ('table', parts) | ('index', parts) | ('scope', kind, name)
        self.detail = detail
        self.only_parent = only_parent
        self.index = index


# -- the rules ----------------------------------------------------------------------------------------------------
LINT_WORDS = frozenset(('ALTER', 'CREATE', 'DROP', 'VACUUM', 'CLUSTER', 'REINDEX', 'LOCK', 'REFRESH', 'SET',
                        'UPDATE', 'DELETE'))
_INITIALS = frozenset(w[0] for w in LINT_WORDS) | frozenset(w[0].lower() for w in LINT_WORDS)  # INSERT: no
_COLUMN_STOP = frozenset(('constraint', 'not', 'null', 'check', 'default', 'generated', 'unique', 'primary',
                          'references', 'collate', 'compression', 'storage', 'deferrable', 'initially'))
_WRITE_BLOCKING = ('share', 'share row exclusive', 'exclusive', 'access exclusive')


def _blocks_writes(action):
    """True when an ALTER TABLE action takes SHARE ROW EXCLUSIVE or stronger, held until the transaction ends (so a
    later UPDATE of the table runs while the bot's writes wait). VALIDATE, SET STATISTICS, SET/RESET (storage
    parameters), CLUSTER ON, SET WITHOUT CLUSTER and ATTACH PARTITION (on the parent) take less."""
    words = [t.value for t in action[:6] if t.kind == 'w']
    first = words[0] if words else ''
    if first in ('validate', 'cluster', 'attach'):
        return False
    if first in ('set', 'reset') and ((len(action) > 1 and action[1].kind == 'o' and action[1].value == '(')
                                      or words[1:3] == ['without', 'cluster']):
        return False
    return not (first == 'alter' and 'statistics' in words)


class Analyzer:
    """Applies the rules to statements in run order, keeping the RunState."""

    def __init__(self, facts=None, state=None):
        self.facts = facts or Facts()
        self.state = state or RunState()

    # -- entry ------------------------------------------------------------------------
    def statement(self, statement, fstate, word=None):
        word = word or first_word_upper(statement)
        if word not in LINT_WORDS:
            return []
        if word in ('UPDATE', 'DELETE') and not fstate.locked:
            return []
        toks = tokens(statement)
        self.source = statement
        reader = _Reader(toks)
        reader.i = 1
        handler = getattr(self, '_' + word.lower())
        return handler(reader, fstate) or []

    # -- helpers ------------------------------------------------------------------------
    def _forget(self, bare):
        self.state.created.pop(bare, None)
        self.state.maybe_created.pop(bare, None)
        self.state.renamed.pop(bare, None)

    def _volatile_calls(self, toks):
        """(volatile names, unknown names) of the functions an expression calls."""
        calls = []
        for k, tok in enumerate(toks[:-1]):
            nxt = toks[k + 1]
            if tok.kind in ('w', 'i') and nxt.kind == 'o' and nxt.value == '(':
                before = toks[k - 1] if k else None
                if before is not None and before.value in ('::', 'as') and before.kind in ('o', 'w'):
                    continue  # a type: x::numeric(10,2), CAST(x AS varchar(5))
                if tok.kind == 'w' and tok.value in _SYNTAX_CALLS:
                    continue
                calls.append(tok.value)
        if not calls:
            return [], []
        known = dict((n, self.state.functions[n]) for n in calls if n in self.state.functions)
        asked = self.facts.volatility(sorted(set(calls) - set(known)))
        asked.update(known)
        volatile = sorted(set(n for n in calls if asked.get(n) == 'v'))
        unknown = sorted(set(n for n in calls if asked.get(n) is None))
        return volatile, unknown

    # -- SET search_path ------------------------------------------------------------------
    def _set(self, reader, fstate):
        reader.accept('session') or reader.accept('local')
        if not reader.accept('search_path'):
            return []
        reader.accept('to') or reader.op('=')
        values = []
        for part in _split_top(reader.rest()):
            if len(part) == 1 and part[0].kind == 'w' and part[0].value == 'default':
                fstate.search_path = None
                return []
            if len(part) == 1:
                tok = part[0]
                value = tok.value[1:-1].replace("''", "'") if tok.kind == 's' else tok.value
                values.extend(v.strip().strip('"') for v in value.split(',') if v.strip())
        fstate.search_path = values or None
        return []

    # -- CREATE ---------------------------------------------------------------------------
    def _create(self, reader, fstate):
        reader.accept('or', 'replace')
        unique = reader.accept('unique')
        if reader.accept('index'):
            return self._create_index(reader, fstate, unique)
        for word in ('global', 'local', 'temp', 'temporary', 'unlogged'):
            reader.accept(word)
        if reader.accept('table') or reader.accept('materialized', 'view'):
            maybe = reader.accept('if', 'not', 'exists')
            parts = reader.name()
            if parts:
                bare = parts[-1]
                self.state.dropped.discard(bare)
                self.state.renamed.pop(bare, None)
                if maybe:
                    self.state.maybe_created[bare] = fstate.label
                else:
                    self.state.created[bare] = fstate.label
        elif reader.accept('function') or reader.accept('procedure'):
            parts = reader.name()
            if parts:
                reader.skip_group()
                words = _top_words(reader.rest())
                volatility = 'v'
                for word in words:
                    if word in ('immutable', 'stable'):
                        volatility = 's'
                    elif word == 'volatile':
                        volatility = 'v'
                self.state.functions[parts[-1]] = volatility
        elif reader.accept('domain'):
            parts = reader.name()
            if parts:
                words = _top_words(reader.rest())
                self.state.domains[parts[-1]] = 'check' in words or ('not' in words and 'null' in words)
        return []

    def _create_index(self, reader, fstate, unique):
        concurrently = reader.accept('concurrently')
        maybe = reader.accept('if', 'not', 'exists')
        name = None
        if reader.word() != 'on':
            name = reader.name()
        if not reader.accept('on'):
            return []
        only = reader.accept('only')
        table = reader.name()
        if not table:
            return []
        if name:
            if maybe and name[-1] not in self.state.indexes and self.facts.live \
                    and self.facts.relation(name, fstate.search_path) is not None:
                return []  # IF NOT EXISTS of an index that exists: nothing is built
            self.state.indexes[name[-1]] = table
        if concurrently:
            return []
        return [Hit('create-index', ('table', table), '%sindex%s' % ('unique ' if unique else '',
                                                                     ' ' + display(name) if name else ''),
                    only_parent=only)]

    # -- DROP -----------------------------------------------------------------------------
    def _drop(self, reader, fstate):
        if reader.accept('index'):
            concurrently = reader.accept('concurrently')
            reader.accept('if', 'exists')
            hits = []
            for part in _split_top(reader.rest()):
                sub = _Reader(part)
                parts = sub.name()
                if not parts:
                    continue
                table = self.state.indexes.pop(parts[-1], None)
                if not concurrently:
                    target = ('table', table) if table else ('index', parts)
                    hits.append(Hit('drop-index', target, 'index %s' % display(parts), index=parts))
            return hits
        if reader.accept('table') or reader.accept('materialized', 'view') or reader.accept('view'):
            reader.accept('if', 'exists')
            for part in _split_top(reader.rest()):
                parts = _Reader(part).name()
                if parts:
                    self._forget(parts[-1])
                    self.state.dropped.add(parts[-1])
        return []

    # -- VACUUM, CLUSTER, REINDEX, LOCK, REFRESH ------------------------------------------------
    def _vacuum(self, reader, fstate):
        full = False
        if reader.peek() is not None and reader.peek().kind == 'o' and reader.peek().value == '(':
            start = reader.i
            reader.skip_group()
            for option in _split_top(reader.toks[start + 1:reader.i - 1]):
                words = [t.value for t in option if t.kind in ('w', 'n')]
                if words and words[0] == 'full':
                    full = len(words) == 1 or words[1] in ('true', 'on', '1')
        else:
            while reader.word() in ('full', 'freeze', 'verbose', 'analyze', 'analyse'):
                full = full or reader.word() == 'full'
                reader.i += 1
        if not full:
            return []
        tables = [_Reader(p).name() for p in _split_top(reader.rest())]
        tables = [t for t in tables if t]
        if not tables:
            return [Hit('vacuum-full', ('scope', 'database', None), 'every table of the database')]
        return [Hit('vacuum-full', ('table', t)) for t in tables]

    def _cluster(self, reader, fstate):
        if reader.peek() is not None and reader.peek().kind == 'o' and reader.peek().value == '(':
            reader.skip_group()
        reader.accept('verbose')
        first = reader.name()
        if not first:
            return [Hit('cluster', ('scope', 'clustered', None), 'every table clustered before')]
        if reader.accept('on'):  # CLUSTER index ON table (the old syntax)
            table = reader.name()
            return [Hit('cluster', ('table', table))] if table else []
        return [Hit('cluster', ('table', first))]

    def _reindex(self, reader, fstate):
        concurrently = False
        if reader.peek() is not None and reader.peek().kind == 'o' and reader.peek().value == '(':
            start = reader.i
            reader.skip_group()
            for option in _split_top(reader.toks[start + 1:reader.i - 1]):
                words = [t.value for t in option if t.kind in ('w', 'n')]
                if words and words[0] == 'concurrently':
                    concurrently = len(words) == 1 or words[1] in ('true', 'on', '1')
        kind = reader.word()
        if kind not in ('index', 'table', 'schema', 'database', 'system'):
            return []
        reader.i += 1
        concurrently = reader.accept('concurrently') or concurrently
        if concurrently:
            return []
        name = reader.name()
        if kind == 'index' and name:
            table = self.state.indexes.get(name[-1])
            target = ('table', table) if table else ('index', name)
            return [Hit('reindex', target, 'index %s' % display(name), index=name)]
        if kind == 'table' and name:
            return [Hit('reindex', ('table', name), 'every index of the table')]
        if kind == 'schema' and name:
            return [Hit('reindex', ('scope', 'schema', name[-1]), 'every index of schema %s' % display(name))]
        return [Hit('reindex', ('scope', 'system' if kind == 'system' else 'database', None),
                    'every index of the %s' % ('system catalogs' if kind == 'system' else 'database'))]

    def _lock(self, reader, fstate):
        reader.accept('table')
        reader.accept('only')
        rest = reader.rest()
        words = _top_words(rest)
        mode = 'access exclusive'
        if 'in' in words and 'mode' in words:
            mode = ' '.join(words[words.index('in') + 1:words.index('mode')])
        if mode not in _WRITE_BLOCKING:
            return []
        cut = next((k for k, t in enumerate(rest) if t.kind == 'w' and t.value in ('in', 'nowait')), len(rest))
        hits = []
        for part in _split_top(rest[:cut]):
            parts = _Reader(part).name()
            if parts:
                hits.append(Hit('lock-table', ('table', parts), 'in %s mode' % mode.upper()))
                fstate.locked.setdefault(parts[-1], 'LOCK TABLE')
        return hits

    def _refresh(self, reader, fstate):
        if not reader.accept('materialized', 'view') or reader.accept('concurrently'):
            return []
        name = reader.name()
        if not name or 'no' in _top_words(reader.rest()):  # WITH NO DATA empties it: no query runs
            return []
        return [Hit('refresh-materialized-view', ('table', name))]

    def _update(self, reader, fstate):
        reader.accept('only')
        name = reader.name()
        return self._backfill(name, fstate, 'UPDATE')

    def _delete(self, reader, fstate):
        if not reader.accept('from'):
            return []
        reader.accept('only')
        return self._backfill(reader.name(), fstate, 'DELETE')

    def _backfill(self, name, fstate, what):
        if not name or name[-1] not in fstate.locked or not fstate.transactional:
            return []
        return [Hit('backfill-under-lock', ('table', name), '%s after %s of the same table in this transaction'
                    % (what, fstate.locked[name[-1]]))]

    # -- ALTER ----------------------------------------------------------------------------
    def _alter(self, reader, fstate):
        if reader.accept('table'):
            if reader.accept('all', 'in', 'tablespace'):
                return [Hit('set-tablespace', ('scope', 'database', None), 'every table of a tablespace')] \
                    if 'set' in _top_words(reader.rest()) else []
            reader.accept('if', 'exists')
            reader.accept('only')
            table = reader.name()
            if not table:
                return []
            reader.op('*')
            return self._alter_table(table, reader.rest(), fstate)
        if reader.accept('index'):
            if reader.accept('all', 'in', 'tablespace'):
                return [Hit('set-tablespace', ('scope', 'database', None), 'every index of a tablespace')]
            reader.accept('if', 'exists')
            name = reader.name()
            if name and reader.accept('set', 'tablespace'):
                table = self.state.indexes.get(name[-1])
                return [Hit('set-tablespace', ('table', table) if table else ('index', name),
                            'index %s' % display(name), index=name)]
            if name and reader.accept('rename', 'to'):
                new = reader.name()
                if new and name[-1] in self.state.indexes:
                    self.state.indexes[new[-1]] = self.state.indexes.pop(name[-1])
            return []
        if reader.accept('materialized', 'view') or reader.accept('view'):
            reader.accept('if', 'exists')
            name = reader.name()
            if not name:
                return []
            if reader.accept('set', 'tablespace'):
                return [Hit('set-tablespace', ('table', name))]
            return self._rename(name, reader, fstate)
        return []

    def _rename(self, table, reader, fstate):
        if not reader.accept('rename'):
            return []
        bare = table[-1]
        if reader.accept('constraint'):
            return []
        if reader.accept('to'):
            new = reader.name()
            if not new:
                return []
            hits = [Hit('rename', ('table', new), 'renamed to %s' % display(new))]
            if bare in self.state.created:
                self.state.created[new[-1]] = self.state.created.pop(bare)
            else:
                self.state.renamed[new[-1]] = self.state.renamed.pop(bare, table)
                self.state.dropped.add(bare)
            self.state.dropped.discard(new[-1])
            if bare in fstate.locked:
                fstate.locked[new[-1]] = fstate.locked.pop(bare)
            for key in [k for k in self.state.columns if k[0] == bare]:
                self.state.columns[(new[-1], key[1])] = self.state.columns.pop(key)
            return hits
        reader.accept('column')
        old = reader.name()
        if not old or not reader.accept('to'):
            return []
        new = reader.name()
        if (bare, old[-1]) in self.state.columns:  # added by this run: the running bot does not use it
            self.state.columns[(bare, new[-1] if new else old[-1])] = self.state.columns.pop((bare, old[-1]))
            return [Hit('rename', ('new-column', table), 'column %s (added by this run) renamed' % display(old))]
        return [Hit('rename', ('table', table), 'column %s renamed to %s' % (display(old),
                                                                              display(new) if new else '?'))]

    def _alter_table(self, table, toks, fstate):
        reader = _Reader(toks)
        if reader.word() == 'rename':
            return self._rename(table, reader, fstate)
        hits = []
        bare = table[-1]
        for action in _split_top(toks):
            if fstate.transactional and _blocks_writes(action):
                fstate.locked.setdefault(bare, 'ALTER TABLE')
            hits.extend(self._action(table, action, fstate))
        return hits

    def _action(self, table, action, fstate):
        reader = _Reader(action)
        bare = table[-1]
        if reader.accept('add'):
            if reader.word() in ('constraint', 'check', 'unique', 'primary', 'foreign', 'exclude'):
                return self._add_constraint(table, reader, fstate)
            reader.accept('column')
            maybe = reader.accept('if', 'not', 'exists')
            return self._add_column(table, reader, fstate, maybe)
        if reader.accept('alter'):
            reader.accept('column')
            column = reader.name()
            if not column:
                return []
            column = column[-1]
            if reader.accept('type') or reader.accept('set', 'data', 'type'):
                return self._alter_type(table, column, reader.rest(), fstate)
            if reader.accept('set', 'not', 'null'):
                return self._set_not_null(table, column, fstate)
            if reader.accept('set', 'expression'):
                return [Hit('add-column-rewrite', ('table', table), 'SET EXPRESSION of the generated column %s '
                            'recomputes every row' % display((column,)))]
            return []
        if reader.accept('validate', 'constraint'):
            name = reader.name()
            if not name:
                return []
            known = self.state.constraints.get(name[-1])
            if known is not None:
                self.state.constraints[name[-1]] = known[:3] + (True,)
                if known[2] is not None and known[1] == 'add-check':
                    self.state.not_null.add((bare, known[2]))
                if name[-1] in fstate.not_valid and fstate.transactional:
                    return [Hit(known[1], ('table', table), 'VALIDATE CONSTRAINT %s in the transaction that added it '
                                'NOT VALID: the scan runs under the ADD\'s lock' % display(name))]
            return []
        if reader.accept('set'):
            if reader.accept('tablespace'):
                return [Hit('set-tablespace', ('table', table))]
            if reader.word() in ('logged', 'unlogged'):
                return [Hit('set-logged', ('table', table), 'SET %s' % reader.word().upper())]
            if reader.accept('access', 'method'):
                return [Hit('set-access-method', ('table', table))]
            if reader.accept('schema'):
                schema = reader.name()
                return [Hit('rename', ('table', table), 'moved to schema %s' % (display(schema) if schema else '?'))]
            return []
        if reader.accept('attach', 'partition'):
            partition = reader.name()
            return [Hit('attach-partition', ('table', partition), 'attached to %s' % display(table))] \
                if partition else []
        if reader.accept('drop'):
            reader.accept('column')
            reader.accept('if', 'exists')
            column = reader.name()
            if column:
                self.state.columns.pop((bare, column[-1]), None)
                self.state.not_null.discard((bare, column[-1]))
        return []

    def _add_column(self, table, reader, fstate, maybe):
        bare = table[-1]
        column = reader.name()
        if not column:
            return []
        column = column[-1]
        rest = reader.rest()
        cut = len(rest)
        depth = 0
        for k, tok in enumerate(rest):
            if tok.kind == 'o' and tok.value in '([':
                depth += 1
            elif tok.kind == 'o' and tok.value in ')]':
                depth -= 1
            elif depth == 0 and tok.kind == 'w' and tok.value in _COLUMN_STOP:
                cut = k
                break
        type_toks, constraints = rest[:cut], rest[cut:]
        if maybe and bare not in self.state.created and self.facts.live:
            rel = self._rel(table, fstate)[0]
            if rel is not None and rel.oid is not None and self.facts.column(rel, column) is not None:
                return []  # ADD COLUMN IF NOT EXISTS of a column that exists: nothing happens
        self.state.columns[(bare, column)] = type_toks
        ctype = parse_type(type_toks)
        name = display((column,))
        hits = []
        if ctype.base in _SERIAL:
            hits.append(Hit('add-column-volatile-default', ('table', table), 'column %s %s: every row gets nextval() '
                            'of its sequence' % (name, ctype.base)))
        words = _top_words(constraints)
        default = self._default_expr(constraints)
        if 'generated' in words:
            at = words.index('generated')
            if 'identity' in words[at:]:
                hits.append(Hit('add-column-volatile-default', ('table', table), 'identity column %s: every row gets '
                                'a value of its sequence' % name))
            elif 'stored' in words[at:]:
                hits.append(Hit('add-column-rewrite', ('table', table), 'stored generated column %s is computed '
                                'for every row' % name))
        if default:
            volatile, unknown = self._volatile_calls(default)
            if volatile or unknown:
                why = 'volatile: %s()' % '(), '.join(volatile) if volatile else \
                    'calls %s(), whose volatility is not known: assumed volatile' % '(), '.join(unknown)
                hits.append(Hit('add-column-volatile-default', ('table', table), 'column %s DEFAULT %s is %s'
                                % (name, _text(default, self.source), why)))
        if ctype.base not in _BUILTIN_TYPES and type_toks and not ctype.array:
            parts = tuple(t.value for t in type_toks if t.kind in ('w', 'i'))
            constrained = self.state.domains.get(parts[-1]) if parts and parts[-1] in self.state.domains \
                else self.facts.domain_constraints(parts) if parts else None
            if constrained:
                hits.append(Hit('add-column-rewrite', ('table', table), 'column %s of domain %s, which has '
                                'constraints: every row is checked and rewritten' % (name, display(parts))))
        if 'primary' in words or 'unique' in words:
            hits.append(Hit('add-unique', ('table', table), 'column %s %s builds an index' % (
                name, 'PRIMARY KEY' if 'primary' in words else 'UNIQUE')))
        if 'check' in words:
            hits.append(Hit('add-check', ('table', table), 'column %s CHECK is verified on every row' % name))
        if 'references' in words and default and not (len(default) == 1 and default[0].value == 'null'):
            hits.append(Hit('add-foreign-key', ('table', table), 'column %s REFERENCES with a DEFAULT: every row '
                            'is validated' % name, lock='ACCESS EXCLUSIVE (ADD COLUMN)'))
        return hits

    def _default_expr(self, constraints):
        depth, start = 0, None
        for k, tok in enumerate(constraints):
            if tok.kind == 'o' and tok.value in '([':
                depth += 1
            elif tok.kind == 'o' and tok.value in ')]':
                depth -= 1
            elif depth == 0 and tok.kind == 'w':
                if start is None and tok.value == 'default':
                    start = k + 1
                elif start is not None and k > start and tok.value in _COLUMN_STOP:
                    return constraints[start:k]
        return constraints[start:] if start is not None else []

    def _add_constraint(self, table, reader, fstate):
        bare = table[-1]
        name = None
        if reader.accept('constraint'):
            name = reader.name()
        kind = reader.word()
        rest = reader.rest()
        not_valid = _ends_not_valid(rest)
        label = 'constraint %s' % display(name) if name else ''
        if kind == 'check':
            column = None
            inner = rest[1:]
            if inner and inner[0].kind == 'o' and inner[0].value == '(':
                body = [t for t in inner if not (t.kind == 'o' and t.value in '()')]
                values = [t.value for t in body[:4]]
                if len(body) >= 4 and body[0].kind in ('w', 'i') and values[1:4] == ['is', 'not', 'null'] \
                        and not any(t.kind == 'w' and t.value == 'or' for t in body):
                    column = body[0].value
            if name:
                self.state.constraints[name[-1]] = (bare, 'add-check', column, not not_valid)
            if not_valid:
                if name:
                    fstate.not_valid.add(name[-1])
                return []
            if column is not None:
                self.state.not_null.add((bare, column))
            return [Hit('add-check', ('table', table), '%s without NOT VALID' % (label or 'CHECK'))]
        if kind == 'foreign':
            if name:
                self.state.constraints[name[-1]] = (bare, 'add-foreign-key', None, not not_valid)
            if not_valid:
                if name:
                    fstate.not_valid.add(name[-1])
                return []
            words = [t.value for t in rest if t.kind in ('w', 'i')]
            referenced = ''
            if 'references' in words:
                ref = _Reader(rest[[t.value for t in rest].index('references') + 1:]).name()
                referenced = ' (references %s)' % display(ref) if ref else ''
            return [Hit('add-foreign-key', ('table', table), '%s without NOT VALID%s'
                        % (label or 'FOREIGN KEY', referenced))]
        if kind in ('unique', 'primary'):
            values = [t.value for t in rest if t.kind == 'w']
            for k in range(len(values) - 2):
                if values[k:k + 2] == ['using', 'index'] and values[k + 2] != 'tablespace':
                    return []
            if len(values) >= 2 and values[-2:] == ['using', 'index']:
                return []
            return [Hit('add-unique', ('table', table), ('%s %s without USING INDEX' % (
                'PRIMARY KEY' if kind == 'primary' else 'UNIQUE', label)).replace('  ', ' '))]
        if kind == 'exclude':
            return [Hit('add-unique', ('table', table), 'exclusion constraint %sbuilds an index (it cannot be '
                        'built concurrently)' % (display(name) + ' ' if name else ''))]
        return []

    def _alter_type(self, table, column, toks, fstate):
        bare = table[-1]
        cut = len(toks)
        using = None
        for k, tok in enumerate(toks):
            if tok.kind == 'w' and tok.value in ('collate', 'using'):
                cut = min(cut, k)
                if tok.value == 'using':
                    using = toks[k + 1:]
                    break
        new = parse_type(toks[:cut])
        if using is not None and not (len(using) == 1 and using[0].kind in ('w', 'i') and using[0].value == column):
            return [Hit('alter-column-type', ('table', table), 'column %s TYPE %s USING %s recomputes every row'
                        % (display((column,)), new, _text(using, self.source)))]
        old_toks = self.state.columns.get((bare, column))
        if old_toks is not None:
            old = parse_type(old_toks)
            self.state.columns[(bare, column)] = toks[:cut]
        else:
            rel = self._rel(table, fstate)[0]
            known = self.facts.column(rel, column) if rel is not None else None
            if known is None:
                return [Hit('alter-column-type', ('table', table), 'column %s TYPE %s (its current type is not '
                            'known here: assumed a rewrite)' % (display((column,)), new))]
            old = parse_type(known[0])
        rewrites, why = type_change_rewrites(old, new, self.facts.utc())
        if not rewrites:
            return []
        return [Hit('alter-column-type', ('table', table), 'column %s: %s' % (display((column,)), why))]

    def _set_not_null(self, table, column, fstate):
        bare = table[-1]
        if (bare, column) in self.state.not_null:
            return []
        if (bare, column) not in self.state.columns:
            rel = self._rel(table, fstate)[0]
            known = self.facts.column(rel, column) if rel is not None else None
            if known is not None and known[1]:
                return []
        return [Hit('set-not-null', ('table', table), 'column %s has no validated CHECK (%s IS NOT NULL)'
                    % (display((column,)), display((column,))))]

    # -- the table a hit locks ---------------------------------------------------------------------
    def _rel(self, parts, fstate):
        """(Rel or None, why it is new or missing) for a table name, given what this run did before."""
        bare = parts[-1]
        state = self.state
        if bare in state.created:
            return None, 'new: created by %s in this run' % state.created[bare]
        if bare in state.renamed:  # the table of the old name (a chain of renames is collapsed to it)
            rel = self.facts.relation(state.renamed[bare], fstate.search_path)
            return rel, None if rel is not None else 'does not exist yet'
        if bare in state.dropped:
            return None, 'dropped earlier in this run'
        rel = self.facts.relation(parts, fstate.search_path)
        if rel is None:
            if bare in state.maybe_created:
                return None, 'new: created by %s in this run' % state.maybe_created[bare]
            return None, 'does not exist yet'
        return rel, None

    def resolve(self, hit, fstate):
        """(Rel or None, note, index display) of what a hit locks."""
        kind = hit.target[0]
        if kind == 'scope':
            return self.facts.scope(hit.target[1], hit.target[2]), None, None
        if kind == 'new-column':
            rel, note = self._rel(hit.target[1], fstate)
            return None, note or 'new: the column was added by this run', None
        if kind == 'index':
            found = self.facts.index_table(hit.target[1], fstate.search_path)
            if found is None:
                return None, 'does not exist yet', None
            return found[1], None, display(hit.target[1])
        rel, note = self._rel(hit.target[1], fstate)
        return rel, note, None


# -- findings -------------------------------------------------------------------------------------------------
def pretty_size(size):
    if size is None:
        return None
    value, unit = float(size), 'bytes'
    for unit in ('bytes', 'kB', 'MB', 'GB', 'TB'):
        if value < 1024 or unit == 'TB':
            break
        value /= 1024.0
    if unit == 'bytes':
        return '%d bytes' % size
    return ('%.1f %s' % (value, unit)) if value < 10 else ('%d %s' % (round(value), unit))


_DIRECTIVE_LINE = re.compile(r'(?im)^[ \t]*--[ \t]*pg_migrate:[ \t]*(?P<words>[^\n]*)$')


def allowed_rules(text):
    """(rules allowed by '-- pg_migrate: allow <rule>[, <rule>]' lines, unknown names) of a file's text."""
    allowed, unknown = set(), []
    if 'pg_migrate:' not in text:
        return allowed, unknown
    for match in _DIRECTIVE_LINE.finditer(text):
        words = [w for w in re.split(r'[\s,]+', match.group('words').strip().lower()) if w]
        if 'allow' not in words:
            continue
        for word in words[words.index('allow') + 1:]:
            if word == 'no-transaction':
                continue
            if word in _RULES:
                allowed.add(word)
            elif word not in unknown:
                unknown.append(word)
    return allowed, unknown


class Finding(dict):
    """One flagged statement (a dict, as the result returns it)."""

    def message(self):
        """One line for the operator: where, what, on which table of which size, why it locks, the fix."""
        where = self['table'] or 'the tables'
        if self['size'] is not None:
            rows = '' if self['rows'] is None else ', %s%s rows' % (
                '~' if self['rows_how'] == 'estimate' else '>= ' if self['rows_how'] == 'at least' else '',
                '{:,}'.format(self['rows']))
            where += ' (%s%s)' % (self['size_pretty'], rows)
        text = '%s line %d: %s - %s on %s: %s, under %s' % (
            self['file'], self['line'], self['statement'], self['rule'], where, self['effect'], self['lock'])
        if self['detail']:
            text += ' (%s)' % self['detail']
        if self['note']:
            text += '; %s' % self['note']
        return text + '. Fix: %s. A known-safe statement: a line "-- pg_migrate: allow %s" in its file' % (
            self['fix'], self['rule'])


class Linter:
    """pg_migrate's lint for one Migrator: options, the findings of the last check, warnings given once."""

    def __init__(self, params, warn=None, log=None, error=ValueError):
        self.mode = params.get('lint') or 'warn'
        self.error = error
        if self.mode not in MODES:
            raise error('lint must be one of %s' % ', '.join(MODES))
        rows, megabytes = params.get('lint_min_rows'), params.get('lint_min_mb')
        try:
            self.min_rows = int(MIN_ROWS if rows is None else rows)
            self.min_bytes = int(float(MIN_MB if megabytes is None else megabytes) * 1024 * 1024)
        except (TypeError, ValueError):
            raise error('lint_min_rows must be a whole number and lint_min_mb a number') from None
        if self.min_rows < 0 or self.min_bytes < 0:
            raise error('lint_min_rows and lint_min_mb cannot be negative')
        self.warn = warn or (lambda msg: None)
        self.log = log or (lambda msg: None)
        self.findings = []
        self.warned = set()
        self.streaming = None

    def streams(self):
        """Whether a large first file may be applied while it is read: not when lint refuses (every statement is
        read and linted before anything runs)."""
        return self.mode != 'refuse'

    def report(self):
        return [dict(f) for f in self.findings]

    def check(self, cur, files):
        """Lint every statement the run would execute (files prepared by migrate.prepare), in run order;
        warns, and with lint: refuse raises before anything runs."""
        self.findings = []
        self.streaming = None
        if self.mode == 'off' or not files:
            return []
        analyzer = Analyzer(LiveFacts(cur, self.min_rows) if cur is not None else Facts())
        for mfile in files:
            statements, _, transactional = mfile.prepared
            self.findings.extend(self.lint_file(analyzer, mfile.label, mfile.text, statements, transactional))
        refused = [f for f in self.findings if f['severity'] == 'warning' and _RULES[f['rule']].refusable]
        if refused and self.mode == 'refuse':
            self._emit([f for f in self.findings if f not in refused])
            head = 'lint: refuse - %d statement(s) would lock a table the bot uses for long (docs/pg_migrate.md, ' \
                   'Locking DDL); nothing was applied' % len(refused)
            raise self.error('%s: %s' % (head, ' '.join('(%d) %s' % (k + 1, f.message())
                                                         for k, f in enumerate(refused))))
        self._emit()
        return self.findings

    def lint_file(self, analyzer, label, text, statements, transactional=True):
        allowed, unknown = allowed_rules(text)
        for name in unknown:
            self._warn_once('%s: "-- pg_migrate: allow %s" names no lint rule (rules: %s)'
                            % (label, name, ', '.join(RULE_NAMES)))
        fstate = FileState(label, transactional)
        found = []
        for line, statement in statements:
            if statement[:1] not in _INITIALS:
                continue
            word = first_word_upper(statement)
            if word in LINT_WORDS:
                found.extend(self._findings(analyzer, fstate, allowed, line, statement, word))
        return found

    def check_streamed(self, cur, mfile, line, statement):
        """A statement of a file applied while it is read (lint: warn only): linted before it runs. A data load's
        INSERTs are passed on their first character."""
        if statement[:1] not in _INITIALS or self.mode == 'off':
            return
        word = first_word_upper(statement)
        if word not in LINT_WORDS:
            return
        if self.streaming is None or self.streaming[0] is not mfile:
            self.streaming = (mfile, Analyzer(LiveFacts(cur, self.min_rows)), FileState(mfile.label, True),
                              allowed_rules(mfile.text)[0])
        _, analyzer, fstate, allowed = self.streaming
        found = self._findings(analyzer, fstate, allowed, line, statement, word)
        self.findings.extend(found)
        self._emit(found)

    def _findings(self, analyzer, fstate, allowed, line, statement, word):
        out = []
        for hit in analyzer.statement(statement, fstate, word):
            rel, note, index = analyzer.resolve(hit, fstate)
            if hit.only_parent and rel is not None and rel.kind == 'p':
                continue  # CREATE INDEX ON ONLY a partitioned table: the parent's index only, nothing is built
            out.append(self._finding(hit, rel, note, index, fstate.label, line, statement, allowed))
        return out

    def _finding(self, hit, rel, note, index, label, line, statement, allowed):
        rule = _RULES[hit.rule]
        size = rel.size if rel is not None else None
        rows = rel.rows if rel is not None else None
        if rel is None:
            severity = 'info'
        elif size is None or not rule.refusable:
            severity = 'warning'   # size unknown (no database), or a rename: the bot breaks whatever the size
        elif (rows is not None and rows >= self.min_rows) or size >= self.min_bytes:
            severity = 'warning'
        else:
            severity = 'info'
            note = 'small: below lint_min_rows (%d) and lint_min_mb (%s)' % (
                self.min_rows, pretty_size(self.min_bytes))
        if hit.rule in allowed:
            note = 'allowed by "-- pg_migrate: allow %s"%s' % (hit.rule, ' (%s)' % note if note else '')
            severity = 'allowed'
        fix = rule.fix
        if hit.rule == 'create-index' and rel is not None and rel.kind == 'p':
            fix = ('a partitioned table cannot be indexed CONCURRENTLY: CREATE INDEX ... ON ONLY the parent, CREATE '
                   'INDEX CONCURRENTLY on each partition (migrations of their own), then ALTER INDEX parent_idx '
                   'ATTACH PARTITION each')
        target = rel.name if rel is not None and rel.name else (
            display(hit.target[1]) if hit.target[0] in ('table', 'index', 'new-column') and hit.target[1] else None)
        if index and hit.target[0] == 'index':
            hit.detail = hit.detail or 'index %s' % index
        first = statement.split('\n', 1)[0].strip()
        return Finding(
            file=label, line=line, statement=first[:120] + (' ...' if len(first) > 120 or '\n' in statement else ''),
            rule=hit.rule, table=target, size=size, size_pretty=pretty_size(size), rows=rows,
            rows_how=rel.rows_how if rel is not None else None, severity=severity, lock=hit.lock or rule.lock,
            effect=rule.effect, detail=hit.detail, note=note, fix=fix)

    def _warn_once(self, message):
        if message not in self.warned:
            self.warned.add(message)
            self.warn(message)

    def _emit(self, findings=None):
        for finding in self.findings if findings is None else findings:
            if finding['severity'] == 'warning':
                self._warn_once(finding.message())
            else:
                self.log('lint %s: %s' % (finding['severity'], finding.message()))


def lint_sql(sql, facts=None, label='migration.sql', transactional=True, min_rows=MIN_ROWS, min_mb=MIN_MB,
             state=None):
    """Findings of a script's text (no server unless facts are LiveFacts): for tests and tools."""
    linter = Linter(dict(lint='warn', lint_min_rows=min_rows, lint_min_mb=min_mb))
    analyzer = Analyzer(facts or Facts(), state)
    return linter.lint_file(analyzer, label, sql, scan(sql).statements, transactional)
