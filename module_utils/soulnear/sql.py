# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SQL text as pg_migrate reads it: statements, what each statement needs, sections and placeholders.

scan() splits a script into top-level statements, remembering the line each
starts on, the way psql does: '...' strings (with '' escapes), E'...' strings
(backslash escapes), "quoted identifiers", $tag$ dollar quoting $tag$, --
comments, nested /* */ comments, parentheses in CREATE RULE (DO (a; b) is one
statement; anywhere else the text before a semicolon inside parentheses is a
syntax error whichever way it is split) and SQL-standard bodies (BEGIN ATOMIC
... END). It is linear: a regular expression consumes whole statements (strings
and comments included) in C and stops only where a decision is needed, so a
50 MB data migration is scanned in C, not character by character in Python.

What psql would do that a server cannot (meta-commands such as \\i or \\set,
COPY ... FROM STDIN followed by data lines) is reported as a problem, with its
line, instead of being sent to the server.

The executed text is the file's own text: statements are slices of it, so
string literals keep their line endings.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re


class _Lazy:
    """A regular expression compiled on first use: importing this file stays cheap for a run that scans nothing
    (a no-op deploy), while a scan binds the compiled methods once."""

    def __init__(self, pattern, flags=0):
        self._source = (pattern, flags)

    def __getattr__(self, name):
        pattern, flags = self._source
        compiled = pattern() if callable(pattern) else re.compile(pattern, flags)
        for attr in ('match', 'search', 'finditer', 'sub', 'pattern', 'flags'):
            setattr(self, attr, getattr(compiled, attr))
        return getattr(compiled, name)


_DOLLAR_TAG = re.compile(r'\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$')
_WORD = re.compile(r'[A-Za-z_][A-Za-z0-9_$]*')
_NONSPACE = re.compile(r'\S')
_E_STRING = _Lazy(r"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", re.S)
# One search per interesting thing: a complete '...' or "..." (the common case, matched in C),
# a -- comment, or one of the characters that need a decision.
_TOKEN_SOURCE = r"""'[^']*(?:''[^']*)*'|"[^"]*(?:""[^"]*)*"|--[^\n]*|/\*|[;()$\\'"]"""
_TOKEN = _Lazy(_TOKEN_SOURCE)
# The same plus the words that open and close a BEGIN ATOMIC body (only for scripts that have one).
_TOKEN_ATOMIC = _Lazy(_TOKEN_SOURCE + r"|(?i:\b(?:begin\s+atomic|case|end)\b)")
_HAS_ATOMIC = _Lazy(r'(?i)\bbegin\s+atomic\b')
_COPY_STDIN = _Lazy(r'(?is)^copy\b.*\bfrom\s+stdin\b')
_IDENT_CHARS = frozenset('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$')


class SqlSplitError(Exception):
    def __init__(self, message, line):
        Exception.__init__(self, '%s (line %d)' % (message, line))
        self.message = message
        self.line = line


def _is_ident_char(ch):
    return ch in _IDENT_CHARS or ch > '\x7f'


class Script:
    """A scanned script: statements [(line, text)] and problems [(line, message)] psql-only syntax raised."""

    def __init__(self, statements, problems):
        self.statements = statements
        self.problems = problems


def _block_comment_end(sql, i, line):
    """Index after the nested /* ... */ comment starting at i."""
    depth = 0
    n = len(sql)
    while i < n:
        opening = sql.find('/*', i)
        closing = sql.find('*/', i)
        if closing == -1:
            break
        if opening != -1 and opening < closing:
            depth += 1
            i = opening + 2
            continue
        depth -= 1
        i = closing + 2
        if depth == 0:
            return i
    raise SqlSplitError('unterminated /* comment', line)


class _Lines:
    """Line numbers of positions, counted incrementally (positions mostly grow)."""

    def __init__(self, sql, first_line):
        self.sql = sql
        self.no = first_line
        self.pos = 0

    def of(self, pos):
        if pos < self.pos:
            return self.no - self.sql.count('\n', pos, self.pos)
        self.no += self.sql.count('\n', self.pos, pos)
        self.pos = pos
        return self.no


_COPY_PROBLEM = ('COPY ... FROM STDIN: the data lines after it are for psql, which sends them itself; pg_migrate '
                 'runs SQL statements only. Turn the data into INSERT statements (or COPY from a file the server '
                 'can read)')


def _end_statement(sql, start, j, lines, problems):
    """The statement sql[start:j] as (line, text), and where scanning goes on (after COPY data, if any)."""
    text = sql[start:j].rstrip()
    line = lines.of(start)
    if text[:4].lower() == 'copy' and _COPY_STDIN.match(text):
        problems.append((line, _COPY_PROBLEM))
        data_end = sql.find('\n\\.', j)
        return (len(sql) if data_end == -1 else data_end + 3), (line, text)
    return j + 1, (line, text)


def _meta_command(sql, j, lines, problems):
    """Report the psql meta-command at j; returns the end of its line."""
    line_end = sql.find('\n', j)
    line_end = len(sql) if line_end == -1 else line_end
    words = sql[j:line_end].split()
    command = (words[0] if words else '\\')[:20]
    problems.append((lines.of(j), 'psql meta-command %s is not SQL: pg_migrate runs plain SQL files (psql would '
                                  'run it itself). Remove it, or put its effect in SQL' % command))
    return line_end


def _dollar_end(sql, j, lines):
    """End of the $tag$...$tag$ literal at j, or j + 1 when the $ starts none ($1, a$b)."""
    if j and _is_ident_char(sql[j - 1]):
        return j + 1
    tag_match = _DOLLAR_TAG.match(sql, j)
    if tag_match is None:
        return j + 1
    tag = tag_match.group(0)
    end = sql.find(tag, tag_match.end())
    if end == -1:
        raise SqlSplitError('unterminated dollar-quoted string %s' % tag, lines.of(j))
    return end + len(tag)


def _quoted_end(sql, j, lines):
    """End of the string or quoted identifier at j (E'...' when an E precedes it); raises when unterminated."""
    ch = sql[j]
    if ch in 'eE':
        match = _E_STRING.match(sql, j + 1)
    elif ch == "'":
        if j and sql[j - 1] in 'eE' and (j < 2 or not _is_ident_char(sql[j - 2])):
            match = _E_STRING.match(sql, j)
        else:
            match = _STRING.match(sql, j)
    else:
        match = _IDENT.match(sql, j)
    if match is None:
        raise SqlSplitError('unterminated quoted %s' % ('identifier' if ch == '"' else 'string'), lines.of(j))
    return match.end()


def _fast_pattern():
    """A run of text that cannot end a statement, matched in C: everything but ; ( ) $ \\ /* and unterminated
    quotes, with strings, identifiers, -- comments and parentheses nested two deep (without those) inside.

    Every alternative starts differently and a plain run is always maximal, so a parenthesis that does not
    close inside the run costs a linear backtrack, never an exponential one (no atomic groups before 3.11).
    """
    other = r"[^;'\"$()\\/\-]"
    ident = r'[\w$\x80-\U0010ffff]'
    pieces = (
        r'%s+(?!%s)' % (other, other),                                  # a maximal plain run
        r"(?:(?<![eE])|(?<=%s[eE]))'[^']*(?:''[^']*)*'" % ident,        # '...' (not an E'...')
        r"(?<=[eE])(?<!%s[eE])'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'" % ident,  # E'...' with backslash escapes
        r'"[^"]*(?:""[^"]*)*"',                                         # "identifier"
        r'--[^\n]*', r'/(?!\*)', r'-(?!-)',
    )
    flat = '(?:%s)' % '|'.join(pieces)
    inner = r'\((?:%s)*\)' % flat
    nested = r'\((?:%s|%s)*\)' % (flat, inner)
    return re.compile('(?:%s|%s)*' % (flat, nested))


def _flat_pattern():
    """The same without parentheses (they are plain text): one match per statement in the common case."""
    other = r"[^;'\"$\\/\-]"
    ident = r'\w$\x80-\U0010ffff'
    string = r"'[^']*(?:''[^']*)*'"
    pieces = (other + '+', r"(?<![eE])" + string,
              r"(?<=[^%s][eE])'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'" % ident,  # E'...' (an E after no identifier)
              r"(?<=[%s][eE])" % ident + string,                           # name'...' is a plain string
              r'"[^"]*(?:""[^"]*)*"', r'--[^\n]*', r'/(?!\*)', r'-(?!-)')
    return re.compile('(?:%s)*' % '|'.join(pieces))


_FAST = _Lazy(_fast_pattern)
_FLAT = _Lazy(_flat_pattern)
# The one statement where a semicolon inside parentheses is valid SQL (CREATE RULE ... DO (a; b)). Anywhere else
# the text before such a semicolon has an unclosed parenthesis, so splitting there only changes which syntax
# error the server reports.
_RULE = _Lazy(r'(?i)create\s+(?:or\s+replace\s+)?rule\b')
_STRING = _Lazy(r"'[^']*(?:''[^']*)*'")
_IDENT = _Lazy(r'"[^"]*(?:""[^"]*)*"')
_LEAD = _Lazy(r'(?:\s+|--[^\n]*)*')


def has_atomic_body(sql):
    """True when the script may hold a BEGIN ATOMIC body (the substring test first: the regex is slow)."""
    return 'atomic' in sql.lower() and bool(_HAS_ATOMIC.search(sql))


def scan(sql, first_line=1):
    """Scan a script; raises SqlSplitError for an unterminated string, identifier or comment."""
    if has_atomic_body(sql):
        return _scan_tokens(sql, first_line)
    return _scan_fast(sql, first_line)


def _scan_fast(sql, first_line=1):
    problems = []
    return Script(list(iter_statements(sql, first_line, problems)), problems)


def iter_statements(sql, first_line=1, problems=None):
    """Statements of a script without BEGIN ATOMIC bodies, one at a time as (line, text), with C-speed runs
    between the few decisions; psql-only syntax is appended to `problems`. Raises SqlSplitError."""
    problems = [] if problems is None else problems
    lines = _Lines(sql, first_line)
    flat, nested, lead, rule = _FLAT.match, _FAST.match, _LEAD.match, _RULE.match
    n = len(sql)
    i, start, depth, fast = 0, -1, 0, flat
    while i < n:
        if start < 0:
            i = lead(sql, i).end()
            if i >= n:
                break
            ch = sql[i]
            if ch == '/' and sql.startswith('/*', i):
                i = _block_comment_end(sql, i, lines.of(i))
                continue
            if ch == ';':
                i += 1
                continue
            if ch == '\\':
                i = _meta_command(sql, i, lines, problems)
                continue
            start, depth = i, 0
            fast = nested if ch in 'cC' and rule(sql, i) else flat  # parentheses count only in CREATE RULE
        i = fast(sql, i).end()
        if i >= n:
            break
        ch = sql[i]
        if ch == ';':
            if depth > 0:
                i += 1
                continue
            i, statement = _end_statement(sql, start, i, lines, problems)
            yield statement
            start = -1
        elif ch == '(':
            depth += 1
            i += 1
        elif ch == ')':
            depth -= 1
            i += 1
        elif ch == '$':
            i = _dollar_end(sql, i, lines)
        elif ch == '\\':
            i = _meta_command(sql, i, lines, problems)
        elif ch == '/':
            i = _block_comment_end(sql, i, lines.of(i))
        else:  # a quote or E' the fast pattern could not close
            i = _quoted_end(sql, i, lines)
    if start >= 0:
        text = sql[start:].rstrip()
        if text:
            yield lines.of(start), text


def _scan_tokens(sql, first_line=1):
    """Statements of any script, token by token (used for scripts with BEGIN ATOMIC bodies)."""
    statements, problems = [], []
    lines = _Lines(sql, first_line)
    search, nonspace = _TOKEN_ATOMIC.search, _NONSPACE.search
    i = 0
    start = -1     # start of the statement being read; -1 between statements
    depth = 0      # parentheses
    atomic = 0     # > 0 inside BEGIN ATOMIC ... END (CASE ... END counted inside it)
    while True:
        match = search(sql, i)
        if match is None:
            break
        j = match.start()
        ch = sql[j]
        if start < 0:
            gap = nonspace(sql, i, j)
            if gap is None and ch in '-/':  # a comment between statements
                i = match.end() if ch == '-' else _block_comment_end(sql, j, lines.of(j))
                continue
            if gap is None and ch == ';':  # an empty statement
                i = j + 1
                continue
            if gap is None and ch == '\\':
                i = _meta_command(sql, j, lines, problems)
                continue
            start = gap.start() if gap is not None else j
            depth = atomic = 0
        if ch == "'" or ch == '"':
            escaped = ch == "'" and j and sql[j - 1] in 'eE' and (j < 2 or not _is_ident_char(sql[j - 2]))
            i = match.end() if match.end() > j + 1 and not escaped else _quoted_end(sql, j, lines)
        elif ch == '(':
            depth += 1
            i = j + 1
        elif ch == ')':
            depth -= 1
            i = j + 1
        elif ch == ';':
            if depth > 0 or atomic > 0:
                i = j + 1
                continue
            i, statement = _end_statement(sql, start, j, lines, problems)
            statements.append(statement)
            start = -1
        elif ch == '-':
            i = match.end()
        elif ch == '/':
            i = _block_comment_end(sql, j, lines.of(j))
        elif ch == '$':
            i = _dollar_end(sql, j, lines)
        elif ch == '\\':
            i = _meta_command(sql, j, lines, problems)
        else:  # a word of a BEGIN ATOMIC body
            word = match.group(0)[:3].lower()
            if word == 'beg':
                atomic += 1
            elif atomic and word == 'cas':
                atomic += 1
            elif atomic and word == 'end':
                atomic -= 1
            i = match.end()
    if start < 0:
        gap = nonspace(sql, i)
        start = gap.start() if gap is not None else -1
    if start >= 0:
        text = sql[start:].rstrip()
        if text:
            statements.append((lines.of(start), text))
    return Script(statements, problems)


def split_statements(sql):
    """Return [(line, statement_text)] for every non-empty top-level statement; psql-only syntax raises."""
    script = scan(sql)
    if script.problems:
        line, message = script.problems[0]
        raise SqlSplitError(message, line)
    return script.statements


def first_word(statement):
    match = _WORD.match(statement)
    return match.group(0).upper() if match else ''


# -- what a statement needs from the transaction around it ---------------------------------------
_BEGIN = _Lazy(r'(?is)^(?:begin|start\s+transaction)(?:\s+(?:work|transaction)\b)?\s*(?P<modes>.*)$')
_COMMIT = _Lazy(r'(?is)^(?:commit|end)(?:\s+(?:work|transaction))?$')
_ROLLBACK = _Lazy(r'(?is)^(?:rollback|abort)(?:\s+(?:work|transaction))?$')


def is_transaction_control(statement):
    """True for BEGIN/START TRANSACTION/COMMIT/END/ROLLBACK/ABORT/PREPARE TRANSACTION (not SAVEPOINT)."""
    word = first_word(statement)
    if word == 'START':
        return bool(re.match(r'START\s+TRANSACTION\b', statement, re.I))
    if word in ('ROLLBACK', 'COMMIT'):
        return not re.match(r'\w+\s+(?:TO\b|PREPARED\b|WORK\s+TO\b|TRANSACTION\s+TO\b)', statement, re.I)
    if word == 'PREPARE':
        return bool(re.match(r'PREPARE\s+TRANSACTION\b', statement, re.I))
    return word in ('BEGIN', 'END', 'ABORT')


def begin_modes(statement):
    """The transaction modes of a BEGIN/START TRANSACTION ('' when none); None when it is not one."""
    if first_word(statement) not in ('BEGIN', 'START'):
        return None
    match = _BEGIN.match(statement)
    return match.group('modes').strip() if match else None


def is_commit(statement):
    return bool(_COMMIT.match(statement))


def is_rollback(statement):
    return bool(_ROLLBACK.match(statement))


# Statements PostgreSQL refuses inside a transaction block (as of PostgreSQL 12; ALTER TYPE ... ADD VALUE
# only before 12). Checked by first word so that the common INSERT/CREATE TABLE costs one dict lookup.
_OUTSIDE = {
    'CREATE': (
        (_Lazy(r'(?is)^create\s+(?:unique\s+)?index\s+concurrently\b'), 'CREATE INDEX CONCURRENTLY'),
        (_Lazy(r'(?is)^create\s+database\b'), 'CREATE DATABASE'),
        (_Lazy(r'(?is)^create\s+tablespace\b'), 'CREATE TABLESPACE'),
        (_Lazy(r'(?is)^create\s+subscription\b(?!.*\bcreate_slot\s*=\s*(?:false|off|0)\b)'),
         'CREATE SUBSCRIPTION (with create_slot)'),
    ),
    'DROP': (
        (_Lazy(r'(?is)^drop\s+index\s+concurrently\b'), 'DROP INDEX CONCURRENTLY'),
        (_Lazy(r'(?is)^drop\s+database\b'), 'DROP DATABASE'),
        (_Lazy(r'(?is)^drop\s+tablespace\b'), 'DROP TABLESPACE'),
        (_Lazy(r'(?is)^drop\s+subscription\b'), 'DROP SUBSCRIPTION'),
    ),
    'REINDEX': (
        (_Lazy(r'(?is)^reindex\b.*\bconcurrently\b'), 'REINDEX ... CONCURRENTLY'),
        (_Lazy(r'(?is)^reindex\b(?:\s*\([^)]*\))?\s+(?:database|system)\b'), 'REINDEX DATABASE/SYSTEM'),
    ),
    'ALTER': (
        (_Lazy(r'(?is)^alter\s+system\b'), 'ALTER SYSTEM'),
        (_Lazy(r'(?is)^alter\s+database\s+\S+\s+set\s+tablespace\b'), 'ALTER DATABASE ... SET TABLESPACE'),
        (_Lazy(r'(?is)^alter\s+table\b.*\bdetach\s+partition\b.*\bconcurrently\b'),
         'ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY'),
    ),
    'VACUUM': ((_Lazy(r'(?is)^vacuum\b'), 'VACUUM'),),
    'CLUSTER': ((_Lazy(r'(?is)^cluster(?:\s+verbose)?\s*$'), 'CLUSTER (all tables)'),),
    'COMMIT': ((_Lazy(r'(?is)^commit\s+prepared\b'), 'COMMIT PREPARED'),),
    'ROLLBACK': ((_Lazy(r'(?is)^rollback\s+prepared\b'), 'ROLLBACK PREPARED'),),
}
_ENUM_ADD_VALUE = _Lazy(r'(?is)^alter\s+type\b.*\badd\s+value\b')
_CONCURRENTLY = _Lazy(r'(?is)\bconcurrently\b')
# Neither needs nor breaks a transaction: allowed next to statements that must run outside one.
NEUTRAL = frozenset(('SET', 'RESET', 'SHOW'))


def outside_transaction(statement, server_version=120000):
    """Name of what makes PostgreSQL refuse this statement inside a transaction block, or None."""
    word = first_word(statement)
    for pattern, name in _OUTSIDE.get(word, ()):
        if pattern.match(statement):
            return name
    if word == 'ALTER' and server_version < 120000 and _ENUM_ADD_VALUE.match(statement):
        return 'ALTER TYPE ... ADD VALUE (before PostgreSQL 12)'
    return None


_CONTROL_WORDS = frozenset(('BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT', 'PREPARE'))
_DISCARD_ALL = _Lazy(r'(?is)^discard\s+all\b')


def first_word_upper(statement, _match=_WORD.match):
    match = _match(statement)
    return match.group(0).upper() if match else ''


# First words after which a statement may control the transaction, refuse one, or be DISCARD ALL (Facts looks
# closer); a data load's INSERTs are passed with one match and a set lookup.
WATCHED_WORDS = frozenset(('BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT', 'PREPARE', 'CREATE', 'DROP',
                           'REINDEX', 'ALTER', 'VACUUM', 'CLUSTER', 'DISCARD'))


class Facts:
    """What the statements of a file need, from one pass over them (the first word decides what to look at)."""

    def __init__(self, statements, server_version=120000):
        self.control = []   # (line, statement): transaction control
        self.outside = []   # (line, what): refuses a transaction block
        self.others = []    # (line, statement): needs neither (and is not SET/RESET/SHOW)
        self.discard_all = []  # lines of DISCARD ALL
        for line, statement in statements:
            match = _WORD.match(statement)
            word = match.group(0).upper() if match else ''
            if word in _CONTROL_WORDS and is_transaction_control(statement):
                self.control.append((line, statement))
                continue
            what = outside_transaction(statement, server_version) if (word in _OUTSIDE or word == 'ALTER') else None
            if what:
                self.outside.append((line, what))
                continue
            if word == 'DISCARD' and _DISCARD_ALL.match(statement):
                self.discard_all.append(line)
            if word not in NEUTRAL:
                self.others.append((line, statement))


def waits_by_design(statement):
    """CONCURRENTLY statements wait for other transactions by design and block nobody while they do."""
    return bool(_CONCURRENTLY.search(statement[:300]))


def line_of_position(statement, statement_line, position):
    """Line in the file of a 1-based character position inside a statement (PostgreSQL's errpos)."""
    if not position:
        return statement_line
    return statement_line + statement[:max(0, int(position) - 1)].count('\n')


# -- sections of single-file up/down styles --------------------------------------------------------
class Section:
    """The part of a file that runs forward: text[start:end], its first line, and the style's options."""

    def __init__(self, start, end, line, transaction=True, problems=None, down_line=None):
        self.start = start
        self.end = end
        self.line = line
        self.transaction = transaction
        self.problems = problems or []
        self.down_line = down_line


def _line_at(text, pos):
    return text.count('\n', 0, pos) + 1


def _sql_before(text, end):
    """True when the text before `end` holds anything but comments and blank lines."""
    for raw in text[:end].split('\n'):
        stripped = raw.strip()
        if stripped and not stripped.startswith('--'):
            return True
    return False


_DBMATE_UP = _Lazy(r'(?m)^--[ \t]*migrate:up(?P<opts>[^\n]*)$')
_DBMATE_DOWN = _Lazy(r'(?m)^--[ \t]*migrate:down\b[^\n]*$')
_GOOSE = _Lazy(r'(?mi)^[ \t]*--[ \t]*\+goose[ \t]+(?P<cmd>[^\n]*?)[ \t]*$')
_SQL_MIGRATE = _Lazy(r'(?mi)^[ \t]*--[ \t]*\+migrate[ \t]+(?P<cmd>[^\n]*?)[ \t]*$')


def dbmate_section(text):
    """dbmate: -- migrate:up [transaction:false] ... -- migrate:down ..."""
    ups = list(_DBMATE_UP.finditer(text))
    down = _DBMATE_DOWN.search(text)
    problems = []
    if not ups:
        return Section(0, 0, 1, problems=[(1, "no '-- migrate:up' section: dbmate refuses such a file and "
                                           'pg_migrate cannot tell what runs forward')])
    up = ups[0]
    if len(ups) > 1:
        problems.append((_line_at(text, ups[1].start()), "a second '-- migrate:up' section; keep one up section "
                                                         'per file'))
    if down is not None and down.start() < up.start():
        problems.append((_line_at(text, down.start()), "'-- migrate:down' comes before '-- migrate:up' (dbmate "
                                                       'refuses this order)'))
    if _sql_before(text, up.start()):
        problems.append((1, "statements before '-- migrate:up' (dbmate refuses them; they would belong to no "
                            'section)'))
    transaction = True
    for option in up.group('opts').split():
        key, _unused, value = option.partition(':')
        if key == 'transaction' and value in ('false', 'true'):
            transaction = value == 'true'
        else:
            problems.append((_line_at(text, up.start()), 'unknown dbmate option %r' % option))
    end = down.start() if down is not None and down.start() > up.start() else len(text)
    return Section(up.start(), end, _line_at(text, up.start()), transaction, problems,
                   _line_at(text, down.start()) if down is not None else None)


def _annotated_section(text, pattern, tool):
    """goose (-- +goose Up/Down/NO TRANSACTION/StatementBegin/End) and sql-migrate (-- +migrate Up [notransaction])."""
    up = down = None
    transaction = True
    problems = []
    for match in pattern.finditer(text):
        words = match.group('cmd').split()
        command = ' '.join(words).lower()
        line = _line_at(text, match.start())
        if not words:
            continue
        if words[0].lower() == 'up':
            if up is not None:
                problems.append((line, "a second '-- +%s Up' annotation" % tool))
                continue
            up = match
            rest = [w.lower() for w in words[1:]]
            if rest == ['notransaction'] and tool == 'migrate':
                transaction = False
            elif rest:
                problems.append((line, 'unknown option(s) %s after -- +%s Up' % (' '.join(words[1:]), tool)))
        elif words[0].lower() == 'down':
            if down is None:
                down = match
        elif command in ('statementbegin', 'statementend'):
            continue  # the scanner already keeps such blocks whole
        elif tool == 'goose' and command == 'no transaction':
            transaction = False
        elif tool == 'goose' and command.startswith('envsub'):
            if command == 'envsub on':
                problems.append((line, '-- +goose ENVSUB ON substitutes environment variables; pg_migrate does not '
                                       'read the environment of the machine running it. Put the values in the file'))
        else:
            problems.append((line, 'unknown annotation -- +%s %s' % (tool, match.group('cmd'))))
    if up is None:
        return Section(0, 0, 1, problems=[(1, "no '-- +%s Up' annotation: %s refuses such a file and pg_migrate "
                                           'cannot tell what runs forward' % (tool, tool))])
    if down is not None and down.start() < up.start():
        problems.append((_line_at(text, down.start()), "'-- +%s Down' comes before '-- +%s Up'" % (tool, tool)))
        down = None
    if _sql_before(text, up.start()):
        problems.append((1, "statements before '-- +%s Up' (they would belong to no section)" % tool))
    end = down.start() if down is not None else len(text)
    return Section(up.start(), end, _line_at(text, up.start()), transaction, problems,
                   _line_at(text, down.start()) if down is not None else None)


def goose_section(text):
    return _annotated_section(text, _GOOSE, 'goose')


def sql_migrate_section(text):
    return _annotated_section(text, _SQL_MIGRATE, 'migrate')


# Down/undo markers of styles pg_migrate knows, and of some it does not (Play evolutions, MyBatis). Searched
# from a newline (fast) plus a match at the very start: a (?m)^ pattern tries every position of a 50 MB file.
_DOWN_WORDS = (r'[ \t]*--[ \t]*(?m:(?:migrate:down\b|\+goose[ \t]+down\b|\+migrate[ \t]+down\b|!downs\b'
               r'|//[ \t]*@undo\b|\+?down(?:[ \t]+migration)?[ \t]*:?[ \t]*$|@down\b|rollback[ \t]*$)[^\n]*$)')
_DOWN_FIRST = _Lazy(r'(?i)' + _DOWN_WORDS)
_DOWN_LATER = _Lazy(r'(?i)\n' + _DOWN_WORDS)


def down_marker(text):
    """(line, marker) of the first down/undo section marker, or None."""
    match = _DOWN_FIRST.match(text)
    if match is not None:
        return 1, match.group(0).strip()
    match = _DOWN_LATER.search(text)
    if match is None:
        return None
    return _line_at(text, match.start() + 1), match.group(0).strip()


# -- Flyway placeholders ----------------------------------------------------------------------------
_PLACEHOLDER = _Lazy(r'\$\{([^{}\n]+)\}')


def placeholders_in(text):
    """Names of the ${name} placeholders of a text, in order of appearance, each once (as written)."""
    seen = []
    for match in _PLACEHOLDER.finditer(text):
        if match.group(1) not in seen:
            seen.append(match.group(1))
    return seen


def replace_placeholders(text, values):
    """Replace ${name} by values[name.lower()] (Flyway matches names case-insensitively).

    Returns (text, unresolved names). `values` must have lower-case keys.
    """
    if '${' not in text:
        return text, []
    missing = []

    def repl(match):
        name = match.group(1)
        value = values.get(name.lower())
        if value is None:
            if name not in missing:
                missing.append(name)
            return match.group(0)
        return value
    return _PLACEHOLDER.sub(repl, text), missing
