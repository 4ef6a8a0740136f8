# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tokens of one SQL statement and the types they name, for pg_migrate's lint of locking DDL (ddl_lint.py).

Text only: nothing here asks the database. No Ansible imports: the host commands import this file too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re


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
