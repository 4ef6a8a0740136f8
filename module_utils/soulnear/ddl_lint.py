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

Two halves: the rules (ddl_analyzer.py) read SQL text only (tokens of one statement, ddl_tokens.py, and what
earlier statements of the run did: tables created, renamed or dropped, columns added, constraints added and
validated, functions and domains created); a Facts object (ddl_facts.py) answers what only the database knows
(sizes, current column types, function volatility, validated CHECK constraints). Facts() knows nothing (the unit
tests, or text without a server); LiveFacts(cur) asks the server, read-only, each question once per run, under a
savepoint when the cursor is in a transaction so that a failed lookup never breaks the migration's transaction.

No Ansible imports: migrate.py calls Linter; lint_sql() lints a script's text without a server.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from .ddl_analyzer import _INITIALS, LINT_WORDS, Analyzer, FileState
from .ddl_facts import MIN_MB, MIN_ROWS, Facts, LiveFacts
from .ddl_tokens import display
from .sql import first_word_upper, scan

MODES = ('warn', 'refuse', 'off')


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
        """Lint every statement the run would execute (files prepared by migration_text.prepare), in run order;
        warns, and with lint: refuse raises before anything runs."""
        self.findings = []
        self.streaming = None
        if self.mode == 'off' or not files:
            return []
        analyzer = Analyzer(LiveFacts(cur, self.min_rows) if cur is not None else Facts())
        for mfile in files:
            statements, _unused, transactional = mfile.prepared
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
        _unused, analyzer, fstate, allowed = self.streaming
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
