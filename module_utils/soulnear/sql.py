# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Split a SQL script into top-level statements, remembering the line each starts on.

pg_migrate runs a migration file statement by statement inside one
transaction so that a failure can name the line of the failing statement,
and so that files marked no-transaction (CREATE INDEX CONCURRENTLY cannot run
inside a multi-statement query) work at all.

Understood: '...' strings (with '' escapes), E'...' strings (backslash
escapes), "quoted identifiers", $tag$ dollar quoting $tag$, -- comments,
nested /* */ comments, and SQL-standard function bodies (BEGIN ATOMIC ... END)
whose inner semicolons do not end the statement. psql meta-commands are
rejected: a migration is plain SQL.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

_DOLLAR_TAG = re.compile(r'\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$')
_WORD = re.compile(r'[A-Za-z_][A-Za-z0-9_$]*')
_BEGIN_ATOMIC = re.compile(r'\bBEGIN\s+ATOMIC\b', re.I)


class SqlSplitError(Exception):
    def __init__(self, message, line):
        Exception.__init__(self, '%s (line %d)' % (message, line))
        self.line = line


def _is_ident_char(ch):
    return ch.isalnum() or ch in '_$'


class _Scanner:
    def __init__(self, sql):
        self.sql = sql
        self.n = len(sql)
        self.i = 0
        self.line = 1

    def advance_to(self, j):
        """Move to index j, counting the newlines passed."""
        self.line += self.sql.count('\n', self.i, j)
        self.i = j

    def skip_line_comment(self):
        j = self.sql.find('\n', self.i)
        self.advance_to(self.n if j == -1 else j)

    def skip_block_comment(self):
        start_line = self.line
        depth = 0
        j = self.i
        while j < self.n:
            if self.sql.startswith('/*', j):
                depth += 1
                j += 2
            elif self.sql.startswith('*/', j):
                depth -= 1
                j += 2
                if depth == 0:
                    self.advance_to(j)
                    return
            else:
                j += 1
        raise SqlSplitError('unterminated /* comment', start_line)

    def skip_quoted(self, quote, backslash_escapes=False):
        start_line = self.line
        j = self.i + 1
        while j < self.n:
            ch = self.sql[j]
            if backslash_escapes and ch == '\\':
                j += 2
                continue
            if ch == quote:
                if j + 1 < self.n and self.sql[j + 1] == quote:
                    j += 2
                    continue
                self.advance_to(j + 1)
                return
            j += 1
        what = 'identifier' if quote == '"' else 'string'
        raise SqlSplitError('unterminated quoted %s' % what, start_line)

    def try_skip_dollar(self):
        """Skip a $tag$...$tag$ literal at the cursor; False when it is not one ($1 and the like)."""
        if self.i > 0 and _is_ident_char(self.sql[self.i - 1]):
            return False
        match = _DOLLAR_TAG.match(self.sql, self.i)
        if not match:
            return False
        tag = match.group(0)
        end = self.sql.find(tag, match.end())
        if end == -1:
            raise SqlSplitError('unterminated dollar-quoted string %s' % tag, self.line)
        self.advance_to(end + len(tag))
        return True


def split_statements(sql):
    """Return [(line, statement_text)] for every non-empty top-level statement."""
    sc = _Scanner(sql)
    statements = []
    start = None
    start_line = 0
    atomic_depth = 0  # > 0 inside BEGIN ATOMIC ... END (counting CASE ... END inside it)
    while sc.i < sc.n:
        ch = sql[sc.i]
        if ch.isspace():
            sc.advance_to(sc.i + 1)
            continue
        if sql.startswith('--', sc.i):
            sc.skip_line_comment()
            continue
        if sql.startswith('/*', sc.i):
            sc.skip_block_comment()
            continue
        if start is None:
            if ch == ';':
                sc.advance_to(sc.i + 1)
                continue
            if ch == '\\':
                raise SqlSplitError('psql meta-command %r is not SQL; pg_migrate runs plain SQL files'
                                    % sql[sc.i:sc.i + 10].split()[0], sc.line)
            start, start_line = sc.i, sc.line
        if ch == ';' and atomic_depth == 0:
            statements.append((start_line, sql[start:sc.i].strip()))
            start = None
            sc.advance_to(sc.i + 1)
            continue
        if ch == "'":
            escaped = sc.i > 0 and sql[sc.i - 1] in 'eE' and (sc.i < 2 or not _is_ident_char(sql[sc.i - 2]))
            sc.skip_quoted("'", backslash_escapes=escaped)
            continue
        if ch == '"':
            sc.skip_quoted('"')
            continue
        if ch == '$' and sc.try_skip_dollar():
            continue
        if ch.isalpha() or ch == '_':
            match = _WORD.match(sql, sc.i)
            word = match.group(0).upper()
            if word == 'BEGIN' and _BEGIN_ATOMIC.match(sql, sc.i):
                atomic_depth += 1
            elif atomic_depth and word == 'CASE':
                atomic_depth += 1
            elif atomic_depth and word == 'END':
                atomic_depth -= 1
            sc.advance_to(match.end())
            continue
        sc.advance_to(sc.i + 1)
    if start is not None:
        tail = sql[start:].strip()
        if tail:
            statements.append((start_line, tail))
    return statements


def first_word(statement):
    match = _WORD.match(statement)
    return match.group(0).upper() if match else ''


_TX_CONTROL = frozenset(('BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT'))


def is_transaction_control(statement):
    """True for BEGIN/START TRANSACTION/COMMIT/END/ROLLBACK/ABORT (not SAVEPOINT)."""
    word = first_word(statement)
    if word == 'START':
        return bool(re.match(r'START\s+TRANSACTION\b', statement, re.I))
    if word == 'ROLLBACK':
        return not re.match(r'ROLLBACK\s+TO\b', statement, re.I)
    return word in _TX_CONTROL


def line_of_position(statement, statement_line, position):
    """Line in the file of a 1-based character position inside a statement (PostgreSQL's errpos)."""
    if not position:
        return statement_line
    return statement_line + statement[:max(0, int(position) - 1)].count('\n')
