# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a migration's text is, and what runs from it (pg_migrate; migrate.py runs it).

- Versions and text: the version key of a name ('001' -> (1,), 'V1_2' -> (1, 2)), the text that runs and the
  text its checksum covers.
- Reading a file before anything runs: the up section, placeholders replaced, split into statements and checked
  (prepare); nothing runs here.

Transactions: every file runs in one transaction, statement by statement. A file whose statements
all refuse a transaction block (CREATE INDEX CONCURRENTLY, VACUUM, ...) runs outside one, as Flyway
does; a file that mixes such a statement with others is refused, naming the directive of its layout
(``-- pg_migrate: no-transaction``, ``-- migrate:up transaction:false``, ...) that runs the whole file
outside a transaction, statement by statement.

Checksums are sha256 of the file decoded as UTF-8 with a BOM removed and line endings normalised to
LF, so a checkout on Windows is not drift. The text executed is the file's own (BOM removed only).

No Ansible imports: the host commands import this file too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import re

from .sql import (Facts, SqlSplitError, begin_modes, dbmate_section, down_marker, goose_section, is_commit,
                  is_rollback, replace_placeholders, scan, sql_migrate_section)


# -- versions and text -----------------------------------------------------------------------------
_VERSION_TEXT = re.compile(r'^[Vv]?(\d+(?:[._]\d+)*)$')
_VERSION_SEP = re.compile(r'[._]')


def parse_version(text):
    """'001' -> (1,), 'V1_2' or '1.2' -> (1, 2); None when text is not a version."""
    if text is None:
        return None
    match = _VERSION_TEXT.match(str(text).strip())
    if not match:
        return None
    digits = match.group(1)
    if digits.isdigit():
        return (int(digits),)
    return tuple(int(part) for part in _VERSION_SEP.split(digits))


def version_text(key):
    return '.'.join(str(part) for part in key)


def read_text(raw):
    """File bytes -> the text that runs: UTF-8 with a BOM removed, nothing else changed."""
    return raw.decode('utf-8-sig')


def normalise(raw_or_text):
    """File bytes (or read_text's result) -> the text the checksum covers: LF line endings."""
    text = read_text(raw_or_text) if isinstance(raw_or_text, bytes) else raw_or_text
    if '\r' in text:
        text = text.replace('\r\n', '\n').replace('\r', '\n')
    return text


def checksum_of(text):
    return hashlib.sha256(normalise(text).encode('utf-8')).hexdigest()


# -- reading a file before anything runs -----------------------------------------------------------
# What runs the whole file outside a transaction, per layout (for the message about a mixed file).
DIRECTIVES = {
    'plain': 'a first line "-- pg_migrate: no-transaction"',
    'flyway': 'a script configuration file %(name)s.conf with executeInTransaction=false (or a first line '
              '"-- pg_migrate: no-transaction")',
    'golang-migrate': 'a first line "-- pg_migrate: no-transaction" (golang-migrate itself has no such directive: '
                      'it sends the file as one multi-statement query, which PostgreSQL refuses for this statement '
                      'unless it is alone in the file)',
    'sqlx': 'a first line "-- no-transaction"',
    'dbmate': '"-- migrate:up transaction:false"',
    'goose': 'a line "-- +goose NO TRANSACTION"',
    'sql-migrate': '"-- +migrate Up notransaction"',
    'prisma': 'a first line "-- pg_migrate: no-transaction" (Prisma has no such directive; it runs a file that '
              'holds only this statement outside a transaction)',
    'diesel': 'run_in_transaction = false in the folder\'s metadata.toml',
}


class Context:
    """What checking a file needs from the run: server version, Flyway placeholders and built-ins."""

    def __init__(self, server_version=150000, placeholders=None, builtins=None):
        self.server_version = server_version
        self.placeholders = dict((str(k).lower(), str(v)) for k, v in (placeholders or {}).items())
        self.builtins = builtins or {}


_SECTIONS = {'dbmate': dbmate_section, 'goose': goose_section, 'sql-migrate': sql_migrate_section}


def prepare(mfile, context):
    """Read and check a migration: returns (statements, problems) and sets mfile.prepared.

    statements: [(line, text)] as they run; problems: [(line, message)]. Nothing runs here.
    """
    body, first_line, no_tx, problems = body_of(mfile, context)
    try:
        script = scan(body, first_line)
    except SqlSplitError as exc:
        problems.append((exc.line, '%s; the file cannot be split into statements' % exc.message))
        mfile.prepared = ([], None, True)
        return [], problems
    problems.extend(script.problems)
    statements = check_statements(mfile, body, first_line, no_tx, script.statements, problems, context)
    return statements, problems


def body_of(mfile, context):
    """The text that runs forward (the up section, placeholders replaced): (body, first line, outside a
    transaction by directive, problems)."""
    problems = []
    text = mfile.text
    start, end, first_line = 0, len(text), 1
    no_tx = mfile.no_transaction
    if mfile.section:
        section = _SECTIONS[mfile.section](text)
        problems.extend(section.problems)
        start, end, first_line = section.start, section.end, section.line
        if not section.transaction:
            no_tx = True
    body = text[start:end] if (start, end) != (0, len(text)) else text
    if mfile.layout == 'flyway' and mfile.conf.get('placeholderReplacement', True):
        values = dict(context.builtins)
        values['flyway:filename'] = mfile.name
        values.update(context.placeholders)
        body, missing = replace_placeholders(body, values)
        for name in missing:
            at = body.find('${%s}' % name)
            problems.append((first_line + body.count('\n', 0, max(at, 0)),
                             'placeholder ${%s} has no value: set it in placeholders (placeholders: {%s: ...}); Flyway '
                             'would refuse the file too' % (name, name.lower())))
    return body, first_line, no_tx, problems


def check_statements(mfile, body, first_line, no_tx, statements, problems, context):
    """Check the statements of a file (appending to problems); sets mfile.prepared to (statements as they run,
    BEGIN options, in a transaction) and returns those statements."""
    if not mfile.section:
        marker = down_marker(body)
        if marker is not None:
            line, words = marker
            line += first_line - 1
            if any(st_line > line for st_line, _unused in statements):
                problems.append((line, 'a down section marker (%r): pg_migrate would run what follows it forward. If '
                                       'the file was written for a tool with up/down sections, set format to that '
                                       'tool; otherwise delete the down part' % words))
    modes = None
    transactional = not no_tx
    if not no_tx and statements and begin_modes(statements[0][1]) is not None:
        last = statements[-1][1] if len(statements) > 1 else ''
        if is_commit(last):
            modes = (statements[0][0], begin_modes(statements[0][1]))
            statements = statements[1:-1]
        elif is_rollback(last):
            problems.append((statements[-1][0], 'the file is wrapped in BEGIN ... %s: it undoes itself, so recording '
                                                'it as applied would be a lie. End it with COMMIT if it is meant to '
                                                'apply, or move it out of path' % last.split()[0]))
            statements = statements[1:-1]
    facts = Facts(statements, context.server_version)
    for line in facts.discard_all:
        problems.append((line, 'DISCARD ALL would release pg_migrate\'s lock in the middle of the run; pg_migrate '
                               'already resets the session after every file'))
    if not no_tx:
        for line, statement in facts.control:
            problems.append((line, '%r controls the transaction itself; pg_migrate runs each file in one transaction '
                                   '(a whole-file BEGIN ... COMMIT is fine). Remove it, or run the file outside a '
                                   'transaction with %s' % (statement.split('\n')[0][:60], _directive(mfile))))
        if facts.outside:
            line, what = facts.outside[0]
            if modes is not None:
                problems.append((line, '%s cannot run inside a transaction block, and the file wraps it in BEGIN ... '
                                       'COMMIT: PostgreSQL would refuse it. Remove the BEGIN and COMMIT lines' % what))
            elif facts.others:
                other_line, other = facts.others[0]
                problems.append((line, '%s cannot run inside a transaction block, and the file also has statements '
                                       'that need one (line %d: %s). Put it in a migration of its own (such a file '
                                       'runs outside a transaction), or run the whole file outside a transaction, '
                                       'statement by statement, with %s'
                                 % (what, other_line, ' '.join(other.split())[:60], _directive(mfile))))
            else:
                transactional = False
    mfile.prepared = (statements, modes, transactional)
    return statements


def _directive(mfile):
    return DIRECTIVES[mfile.layout] % dict(name=mfile.name)
