# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SQL migration logic shared by the pg_migrate and db_health modules.

No Ansible imports: the host commands import this file too. docs/pg_migrate.md is the user-facing description.

Layouts (``layout``/``format``, detected when ``auto``)
- plain: ``<digits>[_-.]description.sql`` plus Flyway-style ``V<version>__x.sql`` / ``R__x.sql``.
- flyway: ``V``/``R`` files, ``${placeholders}``, ``B`` baseline files (used on a fresh database),
  ``U`` undo files (never run), callbacks (``beforeMigrate.sql`` ...), ``<script>.conf`` settings.
- golang-migrate, sqlx: ``N_name.up.sql`` runs, ``N_name.down.sql`` never runs forward.
- dbmate, goose, sql-migrate: one file with up and down sections; only the up section runs.
- prisma, diesel: one folder per migration (``migration.sql``; ``up.sql``/``down.sql``).
Nothing is skipped silently: a file or folder the layout does not explain fails the run, listed.

Transactions: every file runs in one transaction, statement by statement. A file whose statements
all refuse a transaction block (CREATE INDEX CONCURRENTLY, VACUUM, ...) runs outside one, as Flyway
does; a file that mixes such a statement with others is refused, naming the directive of its layout
(``-- pg_migrate: no-transaction``, ``-- migrate:up transaction:false``, ...) that runs the whole file
outside a transaction, statement by statement.

Checksums are sha256 of the file decoded as UTF-8 with a BOM removed and line endings normalised to
LF, so a checkout on Windows is not drift. The text executed is the file's own (BOM removed only).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import getpass
import hashlib
import os
import queue
import re
import socket
import sys
import threading
import time
import zlib

from .ddl_lint import Linter
from .migrate_checks import missing_folder_files, refuse_other_history, same_versions
from . import validate
from .pg import ConnectError, RetryPolicy, connect, describe_error, is_retryable, psycopg2
from .sql import (WATCHED_WORDS, Facts, SqlSplitError, begin_modes, dbmate_section, down_marker, first_word_upper,
                  goose_section, has_atomic_body, is_commit, is_rollback, iter_statements, line_of_position,
                  outside_transaction, placeholders_in, replace_placeholders, scan, sql_migrate_section,
                  waits_by_design)

if psycopg2 is not None:
    from psycopg2 import sql as pgsql
else:  # pragma: no cover
    pgsql = None

LAYOUTS = ('plain', 'flyway', 'golang-migrate', 'sqlx', 'dbmate', 'goose', 'sql-migrate', 'prisma', 'diesel')
FORMATS = ('auto',) + LAYOUTS
TAKEOVER_TOOLS = ('flyway', 'golang-migrate', 'dbmate', 'goose', 'sql-migrate', 'sqlx', 'prisma', 'diesel',
                  'pg_migrate')
TAKEOVER_TABLES = {
    'flyway': 'flyway_schema_history', 'golang-migrate': 'schema_migrations', 'dbmate': 'schema_migrations',
    'goose': 'goose_db_version', 'sql-migrate': 'gorp_migrations', 'sqlx': '_sqlx_migrations',
    'prisma': '_prisma_migrations', 'diesel': '__diesel_schema_migrations',
}
LOCK_CLASS = 0x534E4D47  # 'SNMG': first key of the two-key advisory lock
NAME_COLUMNS = ('name', 'filename', 'file_name', 'script', 'migration')
DRIFT_POLICIES = ('fail', 'warn', 'adopt')

# File and folder names.
_VERSION = r'(?P<version>\d+(?:[._]\d+)*)'
_FLYWAY_V = re.compile(r'^V' + _VERSION + r'__(?P<desc>.+)\.sql$')
_FLYWAY_R = re.compile(r'^R__(?P<desc>.+)\.sql$')
_FLYWAY_U = re.compile(r'^U' + _VERSION + r'__(?P<desc>.+)\.sql$')
_FLYWAY_B = re.compile(r'^B' + _VERSION + r'__(?P<desc>.+)\.sql$')
_CALLBACK = re.compile(r'^(?P<event>[a-z][A-Za-z]+)(?:__(?P<desc>.+))?\.sql$')
_PAIR = re.compile(r'^(?P<version>\d+)_(?P<desc>.*)\.(?P<direction>up|down)\.sql$')
_NUMBERED = re.compile(r'^(?P<version>\d+)(?:[_\-.](?P<desc>.*))?\.sql$')
_LOOSE_NUMBERED = re.compile(r'^(?P<version>\d+)(?P<desc>.*)\.sql$')  # dbmate: ^(\d+).*\.sql$
_PRISMA_DIR = re.compile(r'^(?P<version>\d+)_(?P<desc>.+)$')
_DIESEL_DIR = re.compile(r'^(?P<version>\d[\d-]*)_(?P<desc>.*)$')
_LOOKS_VERSIONED = re.compile(r'^(?:\d+[_\-.]|[VUB]\d+(?:[._]\d+)*__|R__)')
_DIRECTIVE = re.compile(r'^\s*--\s*pg_migrate:\s*(?P<words>.*)$', re.I)
_SQLX_NO_TX = re.compile(r'^--\s*no-transaction\s*$')

# Flyway callbacks: run at their event, ignored (events of commands pg_migrate does not have) or refused.
RUN_CALLBACKS = ('beforeMigrate', 'beforeEachMigrate', 'afterEachMigrate', 'beforeRepeatables', 'afterVersioned',
                 'afterMigrate', 'afterMigrateApplied', 'afterMigrateError')
IDLE_CALLBACKS = frozenset(
    '%s%s' % (when, what) for when in ('before', 'after') for what in (
        'Clean', 'Undo', 'EachUndo', 'EachUndoStatement', 'Info', 'Baseline', 'Repair')) | frozenset(
    ('afterCleanError', 'afterUndoError', 'afterEachUndoError', 'afterEachUndoStatementError', 'afterInfoError',
     'afterBaselineError', 'afterRepairError'))
REFUSED_CALLBACKS = {
    'beforeEachMigrateStatement': 'pg_migrate has no per-statement event; put its SQL into the migrations (or into '
                                  'beforeEachMigrate.sql, which runs in every migration\'s transaction)',
    'afterEachMigrateStatement': 'pg_migrate has no per-statement event; put its SQL into the migrations (or into '
                                 'afterEachMigrate.sql)',
    'afterEachMigrateStatementError': 'pg_migrate has no per-statement event; use afterMigrateError.sql, which runs '
                                      'once after a failed migration',
    'afterEachMigrateError': 'use afterMigrateError.sql, which runs once after a failed migration (the failed file '
                             'is rolled back first)',
    'beforeValidate': 'pg_migrate validates without a callback; put its SQL into beforeMigrate.sql',
    'afterValidate': 'pg_migrate validates without a callback; put its SQL into beforeMigrate.sql',
    'afterValidateError': 'pg_migrate validates without a callback; a validation failure stops the run before '
                          'anything changes',
    'beforeConnect': 'pg_migrate has no connect event; beforeEachMigrate.sql runs at the start of every migration',
    'afterConnect': 'pg_migrate has no connect event; beforeEachMigrate.sql runs at the start of every migration',
    'createSchema': 'pg_migrate creates no schemas; create the schema in the first migration',
    'beforeCreateSchema': 'pg_migrate creates no schemas; create the schema in the first migration',
}
FLYWAY_CONF_KEYS = ('executeInTransaction', 'placeholderReplacement', 'encoding')

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
STYLE_NAMES = {
    'numbered': 'plain numbered files', 'flyway': 'Flyway V/R files', 'flyway-only': 'Flyway-only files',
    'pair': 'golang-migrate/sqlx up/down pairs', 'sqlx': 'sqlx files', 'dbmate': 'dbmate files',
    'goose': 'goose files', 'sql-migrate': 'sql-migrate files', 'prisma': 'Prisma migration folders',
    'diesel': 'Diesel migration folders',
}


class MigrationError(Exception):
    """A failure meant for the operator; the message names the cause and the fix."""

    def __init__(self, message, result=None):
        Exception.__init__(self, message)
        self.result = result or {}


def _listing(items, limit=8):
    items = list(items)
    shown = ', '.join(items[:limit])
    return shown + (' and %d more' % (len(items) - limit) if len(items) > limit else '')


def _numbered_problems(problems, head):
    if len(problems) == 1:
        return '%s: %s' % (head, problems[0])
    return '%s (%d): %s' % (head, len(problems), ' '.join('(%d) %s' % (i + 1, p) for i, p in enumerate(problems)))


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


def lock_key(qualified_name):
    """Second key of the advisory lock: from the resolved schema.table name of the tracking table."""
    return zlib.crc32(qualified_name.encode('utf-8')) & 0x7FFFFFFF


# -- migration files -------------------------------------------------------------------------------
class MigrationFile:
    """One migration (a file, or a Prisma/Diesel folder) as the layout reads it."""

    def __init__(self, path, name, kind, key, text, layout, label=None, version_label=None, no_transaction=None,
                 section=None, conf=None):
        self.path = path
        self.name = name              # recorded in the tracking table (file name; folder name for folders)
        self.kind = kind              # 'versioned' | 'repeatable' | 'baseline-script' | 'callback'
        self.key = key                # version tuple; None for repeatables and callbacks
        self.text = text              # BOM removed, otherwise as on disk
        self.layout = layout
        self.label = label or name    # for messages: the file to look at
        self.version_label = version_label  # the version as written in the name ('0042')
        self.no_transaction = no_transaction  # True when the file's directive says so
        self.section = section        # 'dbmate' | 'goose' | 'sql-migrate' | None
        self.conf = conf or {}        # Flyway script configuration
        self.checksum = checksum_of(text)
        self.prepared = None          # (statements, begin modes, transactional) once checked

    @property
    def version(self):
        return version_text(self.key) if self.key is not None else None

    def summary(self):
        transaction = not self.no_transaction
        if self.prepared is not None:
            transaction = self.prepared[2]
        return dict(version=self.version, name=self.name, checksum=self.checksum,
                    kind='versioned' if self.kind == 'baseline-script' else self.kind, transaction=transaction)


class Catalog:
    """What a migrations directory holds, read with one layout."""

    def __init__(self, layout):
        self.layout = layout
        self.versioned = []
        self.repeatable = []
        self.baselines = []   # Flyway B files
        self.callbacks = {}   # event -> [MigrationFile]
        self.down = []        # down/undo files: recognised, never run forward
        self.ignored = []     # not migrations at all (README.md, migration_lock.toml, .gitkeep)

    def __iter__(self):  # versioned, repeatable = discover(path)
        return iter((self.versioned, self.repeatable))

    def __getitem__(self, index):
        return (self.versioned, self.repeatable)[index]


class _Entry:
    """A directory entry classified by name (and, for numbered files, by its section markers)."""

    def __init__(self, name, style, kind, path, text=None, match=None, event=None, files=None):
        self.name = name
        self.style = style    # see STYLE_NAMES, or 'conf'
        self.kind = kind      # versioned, repeatable, down, undo, baseline, callback, conf, folder
        self.path = path
        self.text = text
        self.match = match
        self.event = event
        self.files = files or {}


def _read(full, label, problems):
    try:
        with open(full, 'rb') as handle:
            raw = handle.read()
    except OSError as exc:
        problems.append('%s cannot be read: %s; make it readable by the user pg_migrate runs as' % (
            label, exc.strerror or exc))
        return None
    try:
        return read_text(raw)
    except UnicodeDecodeError as exc:
        problems.append('%s is not valid UTF-8 (%s); save it as UTF-8' % (label, exc))
        return None


def _first_line(text):
    end = text.find('\n')
    return (text if end == -1 else text[:end]).rstrip('\r')


_UP_MARKERS = ((re.compile(r'--[ \t]*migrate:up'), 'dbmate'),
               (re.compile(r'(?i)[ \t]*--[ \t]*\+goose[ \t]+up\b'), 'goose'),
               (re.compile(r'(?i)[ \t]*--[ \t]*\+migrate[ \t]+up\b'), 'sql-migrate'))


def _numbered_style(text):
    """Which single-file style a numbered file is written in. dbmate, goose and sql-migrate all refuse statements
    before the up marker, so only the leading comment lines are read (not the whole of a 50 MB file)."""
    pos, size = 0, len(text)
    while pos < size:
        end = text.find('\n', pos)
        end = size if end == -1 else end
        line = text[pos:end]
        stripped = line.strip()
        if stripped and not stripped.startswith('--'):
            break
        for pattern, style in _UP_MARKERS:
            if pattern.match(line):
                return style
        pos = end + 1
    if _SQLX_NO_TX.match(_first_line(text)):
        return 'sqlx'
    return 'numbered'


def _folder_entry(name, full, problems):
    """A subfolder: a Prisma or Diesel migration, or something the run must not skip silently."""
    try:
        inside = sorted(os.listdir(full))
    except OSError as exc:
        problems.append('folder %s cannot be read: %s; make it readable by the user pg_migrate runs as'
                        % (name, exc.strerror or exc))
        return None
    files = dict((f, os.path.join(full, f)) for f in inside if not f.startswith('.'))
    if 'migration.sql' in files and 'up.sql' in files:
        problems.append('folder %s holds both migration.sql (Prisma) and up.sql (Diesel); keep one' % name)
        return None
    if 'migration.sql' in files:
        return _Entry(name, 'prisma', 'folder', full, files=files)
    if 'up.sql' in files:
        return _Entry(name, 'diesel', 'folder', full, files=files)
    if 'down.sql' in files:  # a Diesel migration that lost its up.sql
        problems.extend(missing_folder_files([name + '/'], 'diesel'))
        return None
    sql_inside = []
    for root, dirs, names in os.walk(full):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        sql_inside.extend(os.path.relpath(os.path.join(root, n), os.path.dirname(full))
                          for n in names if n.lower().endswith('.sql'))
    if sql_inside:
        problems.append('subfolder %s holds SQL files pg_migrate would never run (%s): it reads migrations from '
                        'path itself, or from one folder per migration holding migration.sql (Prisma) or up.sql '
                        '(Diesel). Move them, or point path at the folder that holds them'
                        % (name, _listing(sorted(sql_inside), 4)))
        return None
    return _Entry(name, None, 'ignored', full)


def _classify(path):
    """Classify every entry of the directory; returns (entries, ignored names, problems)."""
    if not os.path.isdir(path):
        raise MigrationError('migrations directory %s does not exist or is not a directory; set path to the '
                             'directory holding the migrations' % path)
    entries, ignored, problems = [], [], []
    try:
        with os.scandir(path) as listing:
            listed = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        raise MigrationError('migrations directory %s cannot be read: %s; make it readable by the user pg_migrate '
                             'runs as' % (path, exc.strerror or exc)) from None
    for entry in listed:  # DirEntry answers from the directory listing: no stat per file unless a symlink
        name, full = entry.name, entry.path
        if name.startswith('.'):
            ignored.append(name)
            continue
        is_sql = name.lower().endswith('.sql')
        if entry.is_symlink() and not os.path.exists(full):
            if is_sql or _LOOKS_VERSIONED.match(name):
                problems.append('%s is a symbolic link to %s, which does not exist: the migration would be skipped. '
                                'Restore the target or remove the link' % (name, os.readlink(full)))
            else:
                ignored.append(name)
            continue
        if entry.is_dir():
            if is_sql:
                problems.append('%s is a directory, not a migration file; rename or remove it' % name)
                continue
            entry = _folder_entry(name, full, problems)
            if entry is not None and entry.kind == 'ignored':
                ignored.append(name + '/')
            elif entry is not None:
                entries.append(entry)
            continue
        if not entry.is_file():
            if is_sql:
                problems.append('%s is not a regular file; replace it with one or move it out of path' % name)
            else:
                ignored.append(name)
            continue
        if name.endswith('.sql.conf'):
            entries.append(_Entry(name, 'flyway-only', 'conf', full))
            continue
        if not is_sql:
            if _LOOKS_VERSIONED.match(name):
                problems.append('%s looks like a migration (it starts with a version) but is not a .sql file: '
                                'pg_migrate runs SQL files only (a Go or Java migration cannot run here); '
                                'translate it to SQL or move it out of path' % name)
            else:
                ignored.append(name)
            continue
        entries.append(_classify_file(name, full, problems))
    return [e for e in entries if e is not None], ignored, problems


_FLYWAY_PATTERNS = {'V': (_FLYWAY_V, 'versioned', 'flyway'), 'R': (_FLYWAY_R, 'repeatable', 'flyway'),
                    'U': (_FLYWAY_U, 'undo', 'flyway-only'), 'B': (_FLYWAY_B, 'baseline', 'flyway-only')}


def _classify_file(name, full, problems):
    first = name[0]
    match = _PAIR.match(name) if first.isdigit() else None
    if match:
        text = _read(full, name, problems)
        return None if text is None else _Entry(name, 'pair', match.group('direction'), full, text, match)
    if first in _FLYWAY_PATTERNS:
        pattern, kind, style = _FLYWAY_PATTERNS[first]
        match = pattern.match(name)
        if match:
            text = _read(full, name, problems)
            return None if text is None else _Entry(name, style, kind, full, text, match)
    match = _CALLBACK.match(name) if first.islower() else None
    if match and (match.group('event') in RUN_CALLBACKS or match.group('event') in IDLE_CALLBACKS
                  or match.group('event') in REFUSED_CALLBACKS):
        text = _read(full, name, problems)
        return None if text is None else _Entry(name, 'flyway-only', 'callback', full, text, match,
                                                event=match.group('event'))
    match = _LOOSE_NUMBERED.match(name)
    if match:
        text = _read(full, name, problems)
        if text is None:
            return None
        style = _numbered_style(text)
        strict = _NUMBERED.match(name)
        if strict is None and style != 'dbmate':
            problems.append('%s: a version must be followed by _, - or .; rename it NNN_description.sql' % name)
            return None
        return _Entry(name, style, 'versioned', full, text, strict or match)
    problems.append('%s has no version pg_migrate understands, so it would never run. Expected names: '
                    'NNN_description.sql, V<version>__description.sql, R__description.sql (repeatable), '
                    'N_name.up.sql / N_name.down.sql, or one folder per migration. Rename it, or move it out of '
                    'path' % name)
    return None


def _resolve_layout(entries):
    """The layout of a directory read with format: auto; raises when it mixes styles ambiguously."""
    by_style = {}
    for entry in entries:
        if entry.kind != 'conf':
            by_style.setdefault(entry.style, []).append(entry.name)
    styles = set(by_style)
    if not styles:
        return None

    def ambiguous(why):
        groups = '; '.join('%s: %s' % (STYLE_NAMES[s], _listing(by_style[s], 4)) for s in sorted(by_style))
        raise MigrationError('path mixes migration styles, so format: auto cannot tell which tool the files were '
                             'written for (%s): %s. Set format to that tool (%s), or move the other files out of '
                             'path' % (why, groups, ', '.join(LAYOUTS)))

    folders = styles & {'prisma', 'diesel'}
    sections = styles & {'dbmate', 'goose', 'sql-migrate'}
    if folders:
        if len(folders) > 1 or styles - folders:
            ambiguous('migration folders next to other migrations')
        return folders.pop()
    if 'pair' in styles:
        if styles - {'pair'}:
            ambiguous('up/down pairs next to files that are not')
        pair_files = [e for e in entries if e.style == 'pair']
        return 'sqlx' if any(_SQLX_NO_TX.match(_first_line(e.text)) for e in pair_files) else 'golang-migrate'
    if sections:
        if len(sections) > 1 or styles - sections:
            ambiguous('files with up/down sections next to files of another style')
        return sections.pop()
    if 'sqlx' in styles:
        if styles - {'sqlx', 'numbered'}:
            ambiguous('sqlx files next to files of another style')
        return 'sqlx'
    if 'flyway-only' in styles:
        if 'numbered' in styles:
            ambiguous('Flyway callbacks, undo or baseline files next to plain numbered files')
        return 'flyway'
    if styles == {'flyway'}:
        return 'flyway'
    return 'plain'


_ACCEPTS = {
    'plain': {'numbered', 'flyway'},
    'flyway': {'flyway', 'flyway-only'},
    'golang-migrate': {'pair'},
    'sqlx': {'pair', 'numbered', 'sqlx'},
    'dbmate': {'dbmate'},
    'goose': {'goose'},
    'sql-migrate': {'sql-migrate'},
    'prisma': {'prisma'},
    'diesel': {'diesel'},
}


def _refusal(entry, layout):
    """Why an entry does not belong to the layout, with advice that is right for that kind of file."""
    name = entry.name
    if entry.kind == 'undo':
        return ('%s is a Flyway undo migration: it must never run forward. format: flyway recognises it and leaves '
                'it alone' % name)
    if entry.kind == 'baseline':
        return ('%s is a Flyway baseline migration (it replaces the versions up to its own on a fresh database); '
                'format: flyway uses it that way' % name)
    if entry.kind == 'callback':
        return '%s is a Flyway callback (it runs at its event, not as a migration); format: flyway handles it' % name
    if entry.kind == 'conf':
        return '%s is a Flyway script configuration file; format: flyway reads it' % name
    if entry.style == 'pair':
        return ('%s is half of a golang-migrate/sqlx up/down pair; format: golang-migrate (or sqlx) runs the up file '
                'and never runs the down file forward' % name)
    if entry.style in ('dbmate', 'goose', 'sql-migrate'):
        return ('%s has %s up/down sections; format: %s runs only its up section' % (name, entry.style, entry.style))
    if entry.style in ('prisma', 'diesel'):
        return '%s/ is a %s migration folder; format: %s reads it' % (name, entry.style.capitalize(), entry.style)
    if entry.style == 'flyway':
        return '%s is a Flyway migration; format: flyway (or plain) runs it' % name
    if layout == 'flyway':
        return ('%s is not a Flyway migration name (V<version>__<description>.sql), so Flyway would never run it; '
                'format: plain runs numbered and V files together' % name)
    if layout in ('golang-migrate', 'sqlx'):
        return ('%s is not an up/down file (N_name.up.sql), so %s would never run it; rename it N_name.up.sql, or '
                'move it out of path' % (name, layout))
    if layout in ('dbmate', 'goose', 'sql-migrate'):
        return ('%s has no %s up section, so %s would refuse it; add the section marker, or move it out of path'
                % (name, layout, layout))
    return '%s is not a %s migration; move it into a migration folder, or out of path' % (name, layout)


def discover(path, layout='auto', placeholders=None):
    """The migrations of a directory, read with a layout (auto: detected); raises MigrationError listing every
    problem of the directory at once, each with its fix (a file or folder that would be skipped or misread, a file
    of another layout, a duplicate version, an unreadable file ...). `placeholders` (Flyway) enter the checksum of
    the repeatable migrations that use them, so a changed value re-applies them (as Flyway does)."""
    if layout not in FORMATS:
        raise MigrationError('format must be one of %s, not %r' % (', '.join(FORMATS), layout))
    entries, ignored, problems = _classify(path)
    chosen = layout
    if layout == 'auto':
        try:
            chosen = _resolve_layout(entries)
        except MigrationError as exc:  # mixed styles: one more problem, the others are listed with it
            chosen = None
            problems.append(str(exc))
        if chosen is None and 'migration_lock.toml' in ignored and any(n.endswith('/') for n in ignored):
            chosen = 'prisma'  # Prisma folders, none with its migration.sql
    if chosen is None and not problems:
        raise MigrationError('migrations directory %s holds no migration pg_migrate understands%s, so a run would '
                             'apply nothing and report success. Point path at the directory with the migrations '
                             '(NNN_description.sql, V1__x.sql, N_name.up.sql, or one folder per migration)'
                             % (path, ' (ignored: %s)' % _listing(ignored) if ignored else ''))
    catalog = Catalog(chosen)
    catalog.ignored = ignored
    if chosen in _ACCEPTS:
        problems.extend(_refusal(e, chosen) for e in entries if e.style not in _ACCEPTS[chosen])
        problems.extend(_BUILDERS[chosen](catalog, [e for e in entries if e.style in _ACCEPTS[chosen]]))
        problems.extend(missing_folder_files(ignored, chosen) + same_versions(catalog.versioned)
                        + same_versions(catalog.baselines))
    if problems:
        raise MigrationError(_numbered_problems(problems, 'migrations in %s%s that pg_migrate would skip, misread or '
                                                          'cannot run as they are, each with its fix; nothing was '
                                                          'applied' % (path, ' (format: %s)' % chosen if chosen
                                                                       else '')))
    if not catalog.versioned and not catalog.repeatable and not catalog.baselines:
        raise MigrationError('migrations directory %s holds no migration that runs forward (%s only), so a run would '
                             'apply nothing and report success' % (path, _listing(catalog.down or catalog.ignored)))
    catalog.versioned.sort(key=lambda f: f.key)
    catalog.repeatable.sort(key=lambda f: f.name)
    if chosen == 'flyway':
        values = dict((str(k).lower(), str(v)) for k, v in (placeholders or {}).items())
        for mfile in catalog.repeatable:
            used = sorted(set(n.lower() for n in placeholders_in(mfile.text) if not n.lower().startswith('flyway:')))
            if used and values:
                state = '\0'.join('%s=%s' % (n, values.get(n)) for n in used)
                mfile.checksum += '+' + hashlib.sha256(state.encode('utf-8')).hexdigest()[:16]
    catalog.baselines.sort(key=lambda f: f.key)
    return catalog


def _directive_off(text):
    """True when the first line is '-- pg_migrate: no-transaction' (any layout)."""
    match = _DIRECTIVE.match(_first_line(text))
    return bool(match and 'no-transaction' in match.group('words').lower().replace(',', ' ').split())


def _build_plain(catalog, entries):
    for e in entries:
        if e.kind == 'repeatable':
            catalog.repeatable.append(MigrationFile(e.path, e.name, 'repeatable', None, e.text, 'plain',
                                                    no_transaction=_directive_off(e.text)))
        else:
            catalog.versioned.append(MigrationFile(e.path, e.name, 'versioned', parse_version(e.match.group('version')),
                                                   e.text, 'plain', version_label=e.match.group('version'),
                                                   no_transaction=_directive_off(e.text)))
    return []


def _read_conf(path, name, problems):
    conf = {}
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append('%s cannot be read: %s; make it readable (UTF-8) by the user pg_migrate runs as' % (name, exc))
        return conf
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        key, sep, value = line.partition('=')
        key, value = key.strip(), value.strip().lower()
        if not sep or key not in FLYWAY_CONF_KEYS:
            problems.append('%s line %d: %r is not a script setting pg_migrate knows (%s); remove it or run the file '
                            'with Flyway' % (name, number, line, ', '.join(FLYWAY_CONF_KEYS)))
        elif key == 'encoding' and value.replace('-', '') not in ('utf8',):
            problems.append('%s: encoding %s is not supported; save the script as UTF-8' % (name, value))
        elif key != 'encoding':
            if value not in ('true', 'false'):
                problems.append('%s line %d: %s must be true or false' % (name, number, key))
            conf[key] = value == 'true'
    return conf


def _build_flyway(catalog, entries):
    problems = []
    confs = dict((e.name[:-len('.conf')], e) for e in entries if e.kind == 'conf')
    scripts = set(e.name for e in entries if e.kind != 'conf')
    for script in sorted(set(confs) - scripts):
        problems.append('%s configures %s, which is not in path; restore the script, or remove the .conf'
                        % (confs[script].name, script))
    for e in entries:
        if e.kind == 'conf':
            continue
        conf = _read_conf(confs[e.name].path, confs[e.name].name, problems) if e.name in confs else {}
        no_tx = _directive_off(e.text) or conf.get('executeInTransaction') is False
        if e.kind == 'versioned':
            catalog.versioned.append(MigrationFile(e.path, e.name, 'versioned', parse_version(e.match.group('version')),
                                                   e.text, 'flyway', version_label=e.match.group('version'),
                                                   no_transaction=no_tx, conf=conf))
        elif e.kind == 'repeatable':
            catalog.repeatable.append(MigrationFile(e.path, e.name, 'repeatable', None, e.text, 'flyway',
                                                    no_transaction=no_tx, conf=conf))
        elif e.kind == 'baseline':
            catalog.baselines.append(MigrationFile(e.path, e.name, 'baseline-script',
                                                   parse_version(e.match.group('version')), e.text, 'flyway',
                                                   version_label=e.match.group('version'), no_transaction=no_tx,
                                                   conf=conf))
        elif e.kind == 'undo':
            catalog.down.append(e.name)
        elif e.kind == 'callback':
            if e.event in REFUSED_CALLBACKS:
                problems.append('%s is a Flyway %s callback: %s' % (e.name, e.event, REFUSED_CALLBACKS[e.event]))
            elif e.event in IDLE_CALLBACKS:
                catalog.ignored.append(e.name)  # an event of a command pg_migrate does not have: never due
            else:
                catalog.callbacks.setdefault(e.event, []).append(
                    MigrationFile(e.path, e.name, 'callback', None, e.text, 'flyway', no_transaction=no_tx,
                                  conf=conf))
    for files in catalog.callbacks.values():
        files.sort(key=lambda f: f.name)
    return problems


def _build_pairs(layout):
    def build(catalog, entries):
        problems = []
        # A list, not a dict by version: two up files of one version are both named (same_versions), not one lost.
        ups = [(e.match.group('version'), e) for e in entries if e.style == 'pair' and e.kind == 'up']
        downs = [e for e in entries if e.style == 'pair' and e.kind == 'down']
        simple = [e for e in entries if e.style != 'pair']
        up_keys = set(parse_version(v) for v, _ in ups)
        for e in downs:
            if parse_version(e.match.group('version')) not in up_keys:
                problems.append('%s has no matching up file (%s_*.up.sql); a down file never runs forward, so this '
                                'version would do nothing. Restore its up file, or remove it'
                                % (e.name, e.match.group('version')))
            catalog.down.append(e.name)
        if ups and simple:
            problems.append('sqlx does not mix reversible (up/down) and simple migrations: %s' %
                            _listing(e.name for e in simple))
        for version, e in ups:
            no_tx = _directive_off(e.text) or (layout == 'sqlx' and bool(_SQLX_NO_TX.match(_first_line(e.text))))
            catalog.versioned.append(MigrationFile(e.path, e.name, 'versioned', parse_version(version), e.text,
                                                   layout, version_label=version, no_transaction=no_tx))
        for e in simple:
            no_tx = _directive_off(e.text) or bool(_SQLX_NO_TX.match(_first_line(e.text)))
            catalog.versioned.append(MigrationFile(e.path, e.name, 'versioned', parse_version(e.match.group('version')),
                                                   e.text, layout, version_label=e.match.group('version'),
                                                   no_transaction=no_tx))
        return problems
    return build


def _build_sections(layout):
    def build(catalog, entries):
        for e in entries:
            catalog.versioned.append(MigrationFile(e.path, e.name, 'versioned', parse_version(e.match.group('version')),
                                                   e.text, layout, version_label=e.match.group('version'),
                                                   no_transaction=_directive_off(e.text) or None, section=layout))
        return []
    return build


def _build_folders(layout):
    def build(catalog, entries):
        problems = []
        pattern = _PRISMA_DIR if layout == 'prisma' else _DIESEL_DIR
        main = 'migration.sql' if layout == 'prisma' else 'up.sql'
        known = {'migration.sql'} if layout == 'prisma' else {'up.sql', 'down.sql', 'metadata.toml'}
        for e in entries:
            match = pattern.match(e.name)
            if match is None:
                problems.append('folder %s has no version in its name, so its order is unknown; rename it %s'
                                % (e.name, '<timestamp>_<name>' if layout == 'prisma' else
                                   '<version>_<name>, e.g. 2024-01-31-120000_create_users'))
                continue
            extra = sorted(f for f in e.files if f.lower().endswith('.sql') and f not in known)
            if extra:
                problems.append('folder %s holds SQL files %s would never run (%s); only %s runs. Merge them into it, '
                                'or move them out of path' % (e.name, layout.capitalize(), _listing(extra), main))
            label = '%s/%s' % (e.name, main)
            text = _read(e.files[main], label, problems)
            if text is None:
                continue
            no_tx = _directive_off(text)
            if layout == 'diesel' and 'metadata.toml' in e.files:
                meta = _read(e.files['metadata.toml'], e.name + '/metadata.toml', problems) or ''
                if re.search(r'(?m)^\s*run_in_transaction\s*=\s*false\s*$', meta):
                    no_tx = True
            if layout == 'diesel' and 'down.sql' in e.files:
                catalog.down.append('%s/down.sql' % e.name)
            version = match.group('version').replace('-', '')
            catalog.versioned.append(MigrationFile(e.files[main], e.name, 'versioned', parse_version(version), text,
                                                   layout, label=label, version_label=version,
                                                   no_transaction=no_tx))
        return problems
    return build


_BUILDERS = {
    'plain': _build_plain, 'flyway': _build_flyway, 'golang-migrate': _build_pairs('golang-migrate'),
    'sqlx': _build_pairs('sqlx'), 'dbmate': _build_sections('dbmate'), 'goose': _build_sections('goose'),
    'sql-migrate': _build_sections('sql-migrate'), 'prisma': _build_folders('prisma'),
    'diesel': _build_folders('diesel'),
}


# -- reading a file before anything runs -----------------------------------------------------------
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
            if any(st_line > line for st_line, _ in statements):
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


# -- tracking table ----------------------------------------------------------------------------------
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
        had_version = 'version' not in [c for c, _ in missing]
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
                % (self.qualified, ', '.join(c for c, _ in missing))]

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
    known = set(c for c, _ in TrackingTable.COLUMNS) | set(NAME_COLUMNS) | {'id'}
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


def read_history(tool, source, cur):
    """The other tool's history from its table (never written to)."""
    history = History(tool, source.qualified)
    ident = source.ident
    if tool == 'flyway':
        failed = {}
        for version, typ, success, installed_on in _rows(
                cur, 'SELECT version, type, success, installed_on FROM {} ORDER BY installed_rank', ident):
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
    elif tool == 'golang-migrate':
        rows = _rows(cur, 'SELECT version, dirty FROM {} ORDER BY version DESC', ident)
        if rows:
            version, dirty = rows[0]
            if dirty:
                history.problems.append(
                    '%s marks version %s dirty: golang-migrate stopped in the middle of that migration. Inspect the '
                    'database, finish or undo version %s by hand, then run "migrate force %s" (finished) or "migrate '
                    'force <previous version>" (undone) and run again' % (source.qualified, version, version, version))
            history.floor = (int(version),) if version is not None and int(version) >= 0 else None
    elif tool == 'dbmate':
        for (version,) in _rows(cur, 'SELECT version::text FROM {}', ident):
            history.labels[version] = None
    elif tool == 'goose':
        state = {}
        for version_id, is_applied, tstamp in _rows(
                cur, 'SELECT version_id, is_applied, tstamp FROM {} ORDER BY id', ident):
            if version_id:
                state[(int(version_id),)] = tstamp if is_applied else False
        history.keys = dict((k, v) for k, v in state.items() if v is not False)
    elif tool == 'sql-migrate':
        for name, applied_at in _rows(cur, 'SELECT id, applied_at FROM {}', ident):
            history.names[name] = applied_at
    elif tool == 'sqlx':
        failed = []
        for version, success, installed_on in _rows(cur, 'SELECT version, success, installed_on FROM {}', ident):
            if success:
                history.keys[(int(version),)] = installed_on
            else:
                failed.append(str(version))
        if failed:
            history.problems.append(
                '%s records version(s) %s as failed (success = false; sqlx calls it dirty and refuses to migrate). '
                'Inspect the database, finish or undo that migration, delete its row, then run again'
                % (source.qualified, ', '.join(failed)))
    elif tool == 'prisma':
        state = {}
        for name, finished_at, rolled_back_at in _rows(
                cur, 'SELECT migration_name, finished_at, rolled_back_at FROM {} ORDER BY started_at', ident):
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
    elif tool == 'diesel':
        for version, run_on in _rows(cur, 'SELECT version::text, run_on FROM {}', ident):
            key = parse_version(version.replace('-', ''))
            if key is not None:
                history.keys[key] = run_on
    elif tool == 'pg_migrate':
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
    return history


# -- plan ----------------------------------------------------------------------------------------------
class Plan:
    """What a run would do, computed from the files and the tracking table."""

    def __init__(self, catalog, records, baseline=None, target=None, out_of_order=False, text_only=False):
        versioned, repeatable, bfiles = catalog.versioned, catalog.repeatable, catalog.baselines
        by_key = {}
        self.repeat_records = {}
        for record in records:
            if record.kind == 'repeatable':
                self.repeat_records[record.name] = record
            elif record.key is not None:
                by_key[record.key] = record
        self.records = by_key
        self.failed = [r for r in records if not r.success]
        # A Flyway B file that ran on a fresh database stands for every version up to its own.
        b_keys = [k for k, r in by_key.items() if r.success and r.is_b_script]
        self.b_floor = max(b_keys) if b_keys else None
        file_keys = set(f.key for f in versioned) | set(f.key for f in bfiles)
        self.missing = sorted((r.name or r.version) for k, r in by_key.items() if k not in file_keys)
        self.drift = []
        for mfile in versioned + bfiles:
            record = by_key.get(mfile.key)
            if record is None or not record.checksum or not record.success:
                continue
            if record.is_b_script != (mfile.kind == 'baseline-script'):
                continue  # a B record covers the V file of its version, and the other way round
            if record.checksum != mfile.checksum:
                self.drift.append(mfile)
        self.unchecksummed = [f for f in versioned if f.key in by_key and not by_key[f.key].checksum]
        covered = self.b_floor
        pending = [f for f in versioned if f.key not in by_key and not (covered is not None and f.key <= covered)]
        applied_keys = [k for k, r in by_key.items() if r.success]
        self.current = max(applied_keys) if applied_keys else None
        self.baseline = []
        if baseline is not None:
            limit = parse_version(baseline)
            if limit is None:
                raise MigrationError('baseline %r is not a version (expected e.g. 5, 20251105 or 1.2)' % baseline)
            self.baseline = [f for f in pending if f.key <= limit]
            pending = [f for f in pending if f.key > limit]
        limit = None
        if target is not None:
            limit = parse_version(target)
            if limit is None:
                raise MigrationError('target %r is not a version' % target)
            pending = [f for f in pending if f.key <= limit]
        self.b_start = None
        if not by_key and bfiles and baseline is None:
            usable = [b for b in bfiles if limit is None or b.key <= limit]
            if usable:
                self.b_start = usable[-1]
                pending = [self.b_start] + [f for f in pending if f.key > self.b_start.key]
        self.out_of_order = [f for f in pending if self.current is not None and f.key < self.current]
        if self.out_of_order and not out_of_order:
            raise MigrationError(
                'migration(s) %s are older than the newest applied version %s but were never applied (added out of '
                'order). Give them a version above %s, or set out_of_order: true to apply them anyway'
                % (', '.join(f.name for f in self.out_of_order), version_text(self.current),
                   version_text(self.current)))
        self.pending = pending
        self.repeat_due = []
        if target is None:
            for mfile in repeatable:
                record = self.repeat_records.get(mfile.name)
                recorded, current = (record.checksum or '') if record else '', mfile.checksum
                if text_only:  # without the placeholder values (the health check does not know them)
                    recorded, current = recorded.split('+')[0], current.split('+')[0]
                if record is None or recorded != current or not record.success:
                    self.repeat_due.append(mfile)

    def todo(self):
        return self.pending + self.repeat_due

    def applied_names(self):
        names = [r.name or r.version for k, r in sorted(self.records.items()) if r.success]
        return names + sorted(self.repeat_records)


# -- waiting for locks --------------------------------------------------------------------------------
class BlockerWatch:
    """Watch, from a second connection, which sessions block our backend while a statement waits for a lock."""

    QUERY = ("SELECT a.pid, a.usename, a.application_name, a.state, "
             "left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200), "
             "extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::int "
             "FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids(%s)) ORDER BY a.pid")

    def __init__(self, params, pid):
        self.params = params
        self.pid = pid
        self.blockers = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name='pg_migrate lock watch', daemon=True)
        self.thread.start()

    def _run(self):
        try:
            conn = connect(self.params, policy=RetryPolicy(retries=0), application_name='pg_migrate lock watch')
        except ConnectError:
            return
        try:
            with conn.cursor() as cur:
                while not self.stopped.is_set():
                    cur.execute(self.QUERY, (self.pid,))
                    rows = cur.fetchall()
                    if rows:
                        self.blockers = rows
                    self.stopped.wait(0.05)
        except psycopg2.Error:
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopped.set()
        self.thread.join(5)

    def describe(self):
        if not self.blockers:
            return ('the blocking session could not be identified (it ended, or this role may not see it in '
                    'pg_stat_activity)')
        return '; '.join('pid %s (user %s, application_name %r, state %s, in its transaction for %ss, query: %s)'
                         % row for row in self.blockers)


def _interval_ms(seconds):
    return '%dms' % int(round(float(seconds or 0) * 1000))


# -- the runner ----------------------------------------------------------------------------------------
class Migrator:
    """Apply pending migrations under a session-level advisory lock.

    STREAM_BYTES: a first pending file at least this large is read and checked while it runs (see
    _apply_streamed); every other file is checked before anything runs.

    params: connection parameters (pg.connection_argument_spec) plus path, format, placeholders, table,
    takeover, takeover_table, drift, baseline, target, out_of_order, repair, lock_timeout, ddl_lock_timeout,
    ddl_lock_retries, statement_timeout, applied_by, lint, lint_min_rows, lint_min_mb (ddl_lint.py).
    """

    STREAM_BYTES = 4 * 1024 * 1024

    def __init__(self, params, check_mode=False, warn=None, sleep=time.sleep, log=None):
        self.params = params
        self.stream_bytes = self.STREAM_BYTES
        self.check_mode = check_mode
        self.warn = warn or (lambda msg: None)
        self.log = log or (lambda msg: None)
        self.sleep = sleep
        checked = validate.Options(params)  # a library caller (the rehearsal, a bench) skips the module's checks
        validate.migration_options(checked, params)
        if checked.problems:
            raise MigrationError(' '.join(problem['msg'] for problem in checked.problems))
        self.layout = params.get('format') or 'auto'
        if self.layout not in FORMATS:
            raise MigrationError('format must be one of %s' % ', '.join(FORMATS))
        self.table = TrackingTable(params.get('table') or 'schema_migrations')
        self.takeover = params.get('takeover') or None
        if self.takeover is not None and self.takeover not in TAKEOVER_TOOLS:
            raise MigrationError('takeover must be one of %s' % ', '.join(TAKEOVER_TOOLS))
        takeover_table = params.get('takeover_table') or TAKEOVER_TABLES.get(self.takeover)
        if self.takeover == 'pg_migrate' and not params.get('takeover_table'):
            raise MigrationError('takeover: pg_migrate reads an older pg_migrate table under another name: set '
                                 'takeover_table to it')
        self.source = TrackingTable(takeover_table) if self.takeover else None
        self.applied_by = params.get('applied_by') or default_applied_by()
        self.drift_policy = params.get('drift') or 'fail'
        if self.drift_policy not in DRIFT_POLICIES:
            raise MigrationError('drift must be one of %s' % ', '.join(DRIFT_POLICIES))
        self.ddl_lock_timeout = float(params.get('ddl_lock_timeout', 5) or 0)
        self.ddl_lock_retries = max(0, int(params.get('ddl_lock_retries', 3) or 0))
        self.statement_timeout = float(params.get('statement_timeout', 0) or 0)
        self.placeholders = params.get('placeholders') or {}
        self.lint = Linter(params, warn=self.warn, log=self.log, error=MigrationError)  # locking DDL, named
        self.catalog = None
        self.context = None
        self.streamed = None
        self._reset_run()
        self.policy = RetryPolicy(retries=params.get('retries', 3), sleep=sleep,
                                  on_retry=lambda n, wait, exc: self.log(
                                      'retry %d in %.1fs after: %s' % (n, wait, describe_error(exc))))

    def _reset_run(self):
        self.applied = []
        self.baselined = []
        self.taken_over = []
        self.callbacks_run = []
        self.notes = []
        self.db_changed = False
        self._blockers = None
        self.current = None  # the file being applied, for messages about a lost connection

    # -- entry point -----------------------------------------------------
    def run(self):
        started = time.time()
        try:
            self.catalog = discover(self.params['path'], self.layout, self.placeholders)
        except MigrationError as exc:
            exc.result = self._result(None, started)
            raise
        attempt = 0
        while True:
            try:
                conn = connect(self.params, policy=self.policy, application_name=self._app_name())
            except ConnectError as exc:
                raise MigrationError(str(exc), self._result(None, started)) from None
            try:
                plan = self._run_on(conn)
                return self._result(plan, started)
            except psycopg2.Error as exc:
                # The connection died between files or mid-file: the server rolled the open
                # transaction back, so reconnecting and planning again is safe.
                retryable = is_retryable(exc, conn)
                if not retryable or attempt >= self.policy.retries:
                    where = ''
                    if self.current is not None:
                        where = (' while applying %s (the server rolled its transaction back; nothing of it was '
                                 'applied)' % self.current.label)
                    fix = 'run again once the server is reachable' if retryable else 'fix the cause and run again'
                    raise MigrationError('migration run failed%s: %s. Nothing is half-applied; %s%s'
                                         % (where, describe_error(exc), fix, self._applied_note()),
                                         self._result(None, started)) from None
                self.log('connection lost (%s); reconnecting' % describe_error(exc))
                self.sleep(self.policy.delay(attempt))
                attempt += 1
            except MigrationError as exc:
                exc.result = self._result(None, started)
                raise
            finally:
                if not conn.closed:
                    conn.close()

    def _app_name(self):
        return ('pg_migrate %s' % self.applied_by)[:63]

    # -- one connected attempt ---------------------------------------------
    def _run_on(self, conn):
        conn.autocommit = True
        with conn.cursor() as cur:
            self.table.resolve(cur)
            if self.check_mode:
                return self._plan_and_check(conn, cur)
            self._lock(cur)
            try:
                conn.autocommit = False
                plan = self._plan_and_check(conn, cur)
                todo = plan.todo()
                first = todo[0] if todo else None
                # The bookkeeping joins the first migration's transaction when it has one: a run that fails on
                # its first file then changes nothing at all.
                joined = first is not None and (first is self.streamed or first.prepared[2])
                conn.commit()  # ends the reading transaction
                prelude = (lambda cursor: self._bookkeeping(cursor, plan)) if joined else None
                if not joined:
                    with conn.cursor() as book:
                        self._bookkeeping(book, plan)
                    conn.commit()
                    self._booked()
                if todo:
                    self._apply_all(conn, plan, todo, prelude)
                conn.autocommit = True
                if not (self.applied or self.baselined or self.taken_over or self.notes):
                    return plan
                self.table.inspect(cur)
                return Plan(self.catalog, self.table.read(cur), None, self.params.get('target'), True)
            finally:
                if not conn.closed:
                    try:
                        conn.rollback()
                        conn.autocommit = True
                        cur.execute('SELECT pg_advisory_unlock(%s, %s)', (LOCK_CLASS, self.table.lock_key()))
                    except psycopg2.Error as exc:
                        # The server drops session-level advisory locks with the connection anyway.
                        self.log('could not release the lock explicitly: %s' % describe_error(exc))

    def _plan_and_check(self, conn, cur):
        """Everything that can fail before the first change: the tracking table, a takeover, the plan and
        every pending file. Check mode stops here."""
        self.notes, self.planned_takeover, self.streamed = [], [], None
        exists = self.table.inspect(cur)
        if exists:
            owner = foreign_owner(self.table, self.catalog, cur)
            if owner is not None:
                raise _refuse_foreign(self.table, *owner)
        records = self.table.read(cur) if exists else []
        if not records and not self.takeover and self.params.get('baseline') is None:
            refuse_other_history(cur, self.table, self.catalog)  # a first run must not repeat another tool's work
        if self.check_mode:
            if not exists:
                self.notes.append('would create table %s' % self.table.qualified)
            elif self.table.missing_columns():
                self.notes.append('would adopt table %s left by an older runner' % self.table.qualified)
        if self.params.get('repair'):
            records = [r for r in records if r.success]
        self.takeover_rows = []
        if self.takeover:
            records = records + self._takeover(cur, records)
        plan = Plan(self.catalog, records, self.params.get('baseline'), self.params.get('target'),
                    self.params.get('out_of_order'))
        self._check_plan(plan)
        self._preflight(cur, plan)
        if self.check_mode:
            self.baselined = [f.name for f in plan.baseline]
            self.taken_over = list(self.planned_takeover)
            if plan.unchecksummed or (plan.drift and self.drift_policy == 'adopt'):
                self.notes.append('would record the checksums of %d file(s)'
                                  % (len(plan.unchecksummed) + len(plan.drift)))
        return plan

    def _takeover(self, cur, records):
        """Records for the files the other tool applied (nothing is written here)."""
        source = self.source
        exists = source.inspect(cur)
        if exists and source.qualified == self.table.qualified:
            raise MigrationError(
                'takeover: %s reads %s, which is also the table pg_migrate would record in (table: %s). pg_migrate '
                'never alters another tool\'s table: give it a table of its own, e.g. table: pg_schema_migrations'
                % (self.takeover, source.qualified, self.table.display))
        ours = [r for r in records if r.success]
        if not exists:
            if ours:
                return []  # taken over on an earlier run; the other tool's table is gone since
            raise MigrationError(
                'takeover: %s reads the table %s, which does not exist in this database, and pg_migrate has '
                'recorded nothing yet: running every migration from the start could repeat what is already there. '
                'Set takeover_table to the table %s keeps its history in (schema-qualified if needed), or remove '
                'takeover for a database %s never migrated' % (self.takeover, source.display, self.takeover,
                                                              self.takeover))
        if not _looks_like(self.takeover, source):
            raise MigrationError('takeover_table %s does not look like %s\'s history table (its columns: %s); set '
                                 'takeover_table to the table %s keeps its history in'
                                 % (source.qualified, self.takeover, ', '.join(sorted(source.columns)),
                                    self.takeover))
        history = read_history(self.takeover, source, cur)
        if history.problems:
            raise MigrationError(_numbered_problems(history.problems, 'takeover: %s\'s history is not in a state to '
                                                                      'take over; nothing was changed'
                                                    % self.takeover))
        found, unknown = history.applied_files(self.catalog)
        if ours:
            recorded = set(r.key for r in ours if r.key is not None)
            later = [f.name for f, _ in found if f.key not in recorded]
            if later:
                raise MigrationError(
                    '%s records migration(s) %s as applied, but pg_migrate has not recorded them: %s ran after the '
                    'takeover. Let one tool migrate this database: record them by hand in %s (kind baseline) if '
                    'their changes are there, then run again' % (source.qualified, _listing(later), self.takeover,
                                                                 self.table.qualified))
            return []
        if unknown:
            self.warn('%s records version(s) %s that have no migration in path; they are not recorded in %s'
                      % (source.qualified, _listing(unknown), self.table.qualified))
        self.takeover_rows = found
        self.planned_takeover = [f.name for f, _ in found]
        return [Record((version_text(f.key), f.name, 'baseline', f.checksum, True, None)) for f, _ in found]

    def _check_plan(self, plan):
        if plan.failed and not self.params.get('repair'):
            record = plan.failed[0]
            raise MigrationError(
                'migration %s failed outside a transaction on an earlier run, so part of it may be applied: %s. '
                'Inspect the database and finish or undo that work by hand, then run again with repair: true '
                '(or DELETE FROM %s WHERE NOT success) to retry the file'
                % (record.name or record.version, record.error or 'no error recorded', self.table.qualified))
        if plan.drift:
            names = ', '.join(f.name for f in plan.drift)
            if self.drift_policy == 'fail':
                raise MigrationError(
                    'applied migration(s) changed on disk since they ran (checksum drift): %s. Restore the original '
                    'file and put the change in a new migration, or set drift: adopt to accept the files as they are '
                    'now' % names)
            if self.drift_policy == 'warn':
                self.warn('applied migration(s) changed on disk since they ran (checksum drift): %s' % names)
        if plan.missing:
            self.warn('recorded migration(s) have no file any more: %s' % ', '.join(plan.missing))
        return plan

    def _context(self, cur):
        cur.execute("SELECT current_user, current_database(), current_schema(), to_char(now(), "
                    "'YYYY-MM-DD HH24:MI:SS'), current_setting('server_version_num')::int")
        user, database, schema, stamp, version = cur.fetchone()
        builtins = {'flyway:user': user, 'flyway:database': database, 'flyway:defaultschema': schema or '',
                    'flyway:timestamp': stamp, 'flyway:table': self.table.table,
                    'flyway:workingdirectory': os.getcwd()}
        return Context(version, self.placeholders, builtins)

    def _preflight(self, cur, plan):
        """Read and check every file the run would execute; report every problem together."""
        todo = plan.todo()
        if not todo:
            return
        self.context = context = self._context(cur)
        problems = []
        files = list(todo)
        first = todo[0]
        if not self.check_mode and first.kind == 'versioned' and len(first.text) >= self.stream_bytes \
                and not first.no_transaction and not any(self.catalog.callbacks.values()) \
                and not has_atomic_body(first.text) and self.lint.streams():
            self.streamed = files.pop(0)  # a large first file is checked while it runs (_apply_streamed)
        for event in RUN_CALLBACKS:
            files.extend(self.catalog.callbacks.get(event, []))
        for mfile in files:
            _, found = prepare(mfile, context)
            problems.extend('%s line %d: %s' % (mfile.label, line, message) for line, message in found)
        if problems and self.streamed is not None:  # report its problems too, all together
            _, found = prepare(self.streamed, context)
            problems[:0] = ['%s line %d: %s' % (self.streamed.label, line, message) for line, message in found]
            self.streamed = None
        for event in ('beforeEachMigrate', 'afterEachMigrate'):
            for callback in self.catalog.callbacks.get(event, []):
                if callback.prepared and not callback.prepared[2]:
                    problems.append('%s: a %s callback runs inside every migration\'s transaction, so it cannot hold '
                                    'statements that refuse one' % (callback.label, event))
        if plan.repeat_due and self.table.columns.get('version', ('', False))[1]:
            problems.append('table %s requires a version on every row (an older runner\'s primary key), so the '
                            'repeatable migration(s) %s cannot be recorded; run ALTER TABLE %s DROP CONSTRAINT '
                            '<its primary key>, ALTER COLUMN version DROP NOT NULL, or give them a version'
                            % (self.table.qualified, _listing(f.name for f in plan.repeat_due),
                               self.table.qualified))
        if problems:
            raise MigrationError(_numbered_problems(problems, 'pending migration(s) that cannot run as written; '
                                                              'nothing was applied'))
        self.lint.check(cur, files)  # warns; with lint: refuse, raises before anything runs

    def _bookkeeping(self, cur, plan):
        """Create or adopt the tracking table, remove repaired failures, record a takeover, a baseline and
        checksums, in the caller's transaction (its own, or the first migration's): a failure changes nothing.
        _booked() makes it count once that transaction committed."""
        self.table.inspect(cur)  # again: a rolled-back attempt may have created it in this session's view
        done = []
        done.extend(self.table.ensure(cur))
        if self.params.get('repair'):
            removed = self.table.delete_failed(cur)
            if removed:
                done.append('removed %d failed record(s) so they run again (repair)' % removed)
        origin = '%s (takeover from %s %s)' % (self.applied_by, self.takeover, self.source.qualified) \
            if self.takeover else None
        for mfile, applied_at in self.takeover_rows:
            self.table.insert(cur, mfile, 'baseline', mfile.checksum, 0, True, origin, applied_at=applied_at)
        for mfile in plan.baseline:
            self.table.insert(cur, mfile, 'baseline', mfile.checksum, 0, True, self.applied_by)
        adopt = list(plan.unchecksummed)
        if self.drift_policy == 'adopt':
            adopt += plan.drift
        for mfile in adopt:
            self.table.update_checksum(cur, mfile.key, mfile.name, mfile.checksum)
            done.append('recorded checksum of %s' % mfile.name)
        self._book = (done, [f.name for f in plan.baseline], list(self.planned_takeover),
                      bool(done or self.takeover_rows or plan.baseline))

    def _booked(self):
        done, baselined, taken_over, changed = self._book
        self.notes = list(done)
        self.baselined = baselined
        self.taken_over = taken_over
        if changed:
            self.db_changed = True

    def _lock(self, cur):
        key = self.table.lock_key()
        timeout = float(self.params.get('lock_timeout', 60))
        deadline = time.time() + timeout
        waited = False
        while True:
            cur.execute('SELECT pg_try_advisory_lock(%s, %s)', (LOCK_CLASS, key))
            if cur.fetchone()[0]:
                return
            if not waited:
                self.log('waiting for the migration lock on %s (another run holds it)' % self.table.qualified)
                waited = True
            if time.time() >= deadline:
                break
            self.sleep(min(0.2, max(0.0, deadline - time.time())))
        cur.execute("SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start::text, a.state "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::int::oid "
                    "AND l.objid = %s::int::oid AND l.objsubid = 2 "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    (LOCK_CLASS, key))
        holder = cur.fetchone()
        if holder:
            who = 'pid %s, application_name %r, client %s, connected since %s, state %s' % holder
            fix = 'wait for it to finish, or stop it with SELECT pg_terminate_backend(%s)' % holder[0]
        else:
            who, fix = 'a session that has just released it', 'run again'
        raise MigrationError('another migration run holds the lock on %s (%s); gave up after %ss. %s'
                             % (self.table.qualified, who, int(timeout), fix))

    # -- applying ---------------------------------------------------------
    def _apply_all(self, conn, plan, todo, prelude=None):
        callbacks = self.catalog.callbacks
        versioned_left = len(plan.pending)
        try:
            self._callback(conn, 'beforeMigrate')
            for mfile in todo:
                if mfile.kind == 'repeatable' and versioned_left == 0 and mfile is plan.repeat_due[0]:
                    self._callback(conn, 'beforeRepeatables')
                self._apply(conn, mfile, callbacks.get('beforeEachMigrate', []),
                            callbacks.get('afterEachMigrate', []), prelude if mfile is todo[0] else None)
                if mfile.kind != 'repeatable':
                    versioned_left -= 1
                    if versioned_left == 0:
                        self._callback(conn, 'afterVersioned')
            self._callback(conn, 'afterMigrate')
            self._callback(conn, 'afterMigrateApplied')
        except MigrationError:
            if callbacks.get('afterMigrateError') and not conn.closed:
                try:
                    conn.rollback()
                    self._callback(conn, 'afterMigrateError')
                except (MigrationError, psycopg2.Error) as exc:
                    self.warn('afterMigrateError callback failed: %s' % exc)
            raise

    def _reset_session(self, conn):
        """Back to a fresh session between files, keeping the advisory lock (DISCARD ALL would drop it)."""
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute('CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; '
                        'DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES; '
                        "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false), "
                        "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                        'AND classid = %s::int::oid AND objid = %s::int::oid AND objsubid = 2)',
                        (_interval_ms(self.ddl_lock_timeout), _interval_ms(self.statement_timeout), LOCK_CLASS,
                         self.table.lock_key()))
            if not cur.fetchone()[2]:
                raise MigrationError('pg_migrate lost its advisory lock on %s (a migration ran '
                                     'pg_advisory_unlock_all() or similar), so another run could start; stopped%s'
                                     % (self.table.qualified, self._applied_note()))

    def _callback(self, conn, event):
        for callback in self.catalog.callbacks.get(event, []):
            statements, modes, transactional = callback.prepared
            self.log('running callback %s' % callback.name)
            self._reset_session(conn)
            if transactional:
                self._run_transaction(conn, callback, [(callback, statements)], modes, record=False)
            else:
                self._run_outside(conn, callback, [(callback, statements)], record=False)
            self.callbacks_run.append(callback.name)

    def _apply(self, conn, mfile, before_each=(), after_each=(), prelude=None):
        self.current = mfile
        if mfile is self.streamed:
            self.streamed = None
            self.log('applying %s (read and checked while it runs; committed only when all of it is checked)'
                     % mfile.label)
            self._apply_streamed(conn, mfile, prelude)
        else:
            self.log('applying %s' % mfile.label)
            self._apply_prepared(conn, mfile, before_each, after_each, prelude)
        self.applied.append(mfile.name)
        self.callbacks_run.extend(c.name for c in list(before_each) + list(after_each))
        self.current = None

    def _apply_prepared(self, conn, mfile, before_each=(), after_each=(), prelude=None, attempt=0):
        statements, modes, transactional = mfile.prepared
        self._reset_session(conn)
        parts = [(c, c.prepared[0]) for c in before_each] + [(mfile, statements)] + \
            [(c, c.prepared[0]) for c in after_each]
        if transactional:
            self._run_transaction(conn, mfile, parts, modes, prelude=prelude, attempt=attempt)
            return
        if prelude is not None:  # the bookkeeping needs a transaction of its own here
            conn.autocommit = False
            with conn.cursor() as cur:
                prelude(cur)
            conn.commit()
            self._booked()
            self._reset_session(conn)
        self._run_outside(conn, mfile, parts)

    def _apply_streamed(self, conn, mfile, prelude):
        """Apply one large file while it is still being read and checked: a thread scans it (the regular
        expressions hold the interpreter while the statements wait for the server), the statements run as they
        come, inside the file's transaction, and nothing is committed before the whole file is checked. A
        problem found late rolls everything back, the bookkeeping included: nothing applied, as for the others."""
        body, first_line, no_tx, problems = body_of(mfile, self.context)
        if no_tx:
            self._prepare_or_raise(mfile)
            self._apply_prepared(conn, mfile, prelude=prelude)
            return
        self._reset_session(conn)
        # Statements go over in batches and the queue never blocks the reader: it finishes its scan quickly
        # (the statements are kept anyway) instead of competing for the interpreter for the whole run.
        found, outcome, batches, cancel = [], {}, queue.Queue(), threading.Event()

        def produce():
            batch, size = [], 0
            try:
                for item in iter_statements(body, first_line, found):
                    batch.append(item)
                    size += len(item[1])
                    if len(batch) >= 512 or size >= 1 << 20:
                        if cancel.is_set():
                            return
                        batches.put(batch)
                        batch, size = [], 0
            except SqlSplitError as exc:
                outcome['split'] = exc
            except Exception as exc:  # noqa: BLE001 - handed to the applying thread
                outcome['crash'] = exc
            batches.put(batch)
            batches.put(None)

        def statements_as_read():
            while True:
                batch = batches.get()
                if batch is None:
                    return
                yield from batch

        reader = threading.Thread(target=produce, name='pg_migrate scan', daemon=True)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.0005))  # a statement back from the server waits less for the reader
        reader.start()
        raw, begin, done, stop, error = [], None, 0, False, None
        started = time.time()
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
                for item in statements_as_read():
                    raw.append(item)
                    if stop or found:
                        stop = True
                        continue
                    if len(raw) == 1:
                        modes = begin_modes(item[1])
                        try:
                            if modes is not None:  # a wrapper's BEGIN: its options first, then the bookkeeping
                                begin, done = item, 1
                                if modes:
                                    cur.execute('SET TRANSACTION ' + modes)
                            if prelude is not None:
                                prelude(cur)
                        except psycopg2.Error as exc:
                            if is_retryable(exc, conn):
                                raise
                            stop, error = True, (item if modes else (0, ''), exc)
                        if begin is not None or stop:
                            continue
                    if first_word_upper(item[1]) in WATCHED_WORDS:
                        facts = Facts([item], self.context.server_version)
                        if facts.control or facts.outside or facts.discard_all:
                            stop = True  # decided once the whole file is read
                            continue
                    self.lint.check_streamed(cur, mfile, *item)  # before it runs
                    try:
                        cur.execute(item[1])
                        done += 1
                    except psycopg2.Error as exc:
                        if is_retryable(exc, conn):
                            raise
                        stop, error = True, (item, exc)
                reader.join()
                if 'crash' in outcome:
                    raise outcome['crash']
                if 'split' in outcome:
                    exc = outcome['split']
                    problems.append((exc.line, '%s; the file cannot be split into statements' % exc.message))
                problems.extend(found)
                statements, modes, transactional = [], None, True
                if 'split' not in outcome:
                    statements = check_statements(mfile, body, first_line, no_tx, raw, problems, self.context)
                    _, modes, transactional = mfile.prepared
                if problems:
                    conn.rollback()
                    raise MigrationError(_numbered_problems(
                        ['%s line %d: %s' % (mfile.label, line, message) for line, message in problems],
                        'pending migration(s) that cannot run as written; nothing was applied'))
                if error is not None and getattr(error[1], 'pgcode', None) != '55P03':
                    conn.rollback()
                    (line, statement), exc = error
                    raise self._failure(mfile, mfile if statement else None, line, statement, exc, None, 0) from None
                if error is not None or not transactional:
                    # A lock timeout (retried with backoff and named), or a file that runs outside a transaction.
                    conn.rollback()
                    if error is not None:
                        self.log('%s: lock not available within %ss (attempt 1); retrying in %.1fs'
                                 % (mfile.label, self.ddl_lock_timeout, self._backoff(0)))
                        self.sleep(self._backoff(0))
                    self._apply_prepared(conn, mfile, prelude=prelude, attempt=1 if error is not None else 0)
                    return
                if prelude is not None and not raw:
                    prelude(cur)
                offset = 1 if begin is not None and modes is not None else 0
                line, statement = 0, ''
                try:
                    for line, statement in statements[max(0, done - offset):]:  # noqa: B007 - names a failure
                        cur.execute(statement)
                    line, statement = 0, ''
                    cur.execute('SET SESSION AUTHORIZATION DEFAULT')
                    self.table.insert(cur, mfile, 'versioned', mfile.checksum, (time.time() - started) * 1000, True,
                                      self.applied_by)
                except psycopg2.Error as exc:
                    if is_retryable(exc, conn):
                        raise
                    conn.rollback()
                    raise self._failure(mfile, mfile if statement else None, line, statement, exc, None, 0) from None
            conn.commit()
            self.db_changed = True
            if prelude is not None:
                self._booked()
        finally:
            cancel.set()
            reader.join(5)
            sys.setswitchinterval(switch)

    def _prepare_or_raise(self, mfile):
        _, found = prepare(mfile, self.context)
        if found:
            raise MigrationError(_numbered_problems(
                ['%s line %d: %s' % (mfile.label, line, message) for line, message in found],
                'pending migration(s) that cannot run as written; nothing was applied'))

    def _backoff(self, attempt):
        return min(0.5 * (2 ** attempt), 8.0)

    def _watch(self, conn, attempt):
        if self.ddl_lock_timeout <= 0 or (attempt == 0 and self.ddl_lock_retries > 0):
            return None
        return BlockerWatch(self.params, conn.get_backend_pid())

    def _run_transaction(self, conn, mfile, parts, modes, record=True, prelude=None, attempt=0):
        """Run the parts in one transaction with the tracking row (and the bookkeeping, as prelude, for the first
        file); retry a lock timeout (55P03) with backoff."""
        while True:
            started = time.time()
            watch = self._watch(conn, attempt)
            source, line, statement = mfile, 0, ''
            conn.autocommit = False
            try:
                with conn.cursor() as cur:
                    if modes and modes[1]:
                        line, statement = modes[0], 'SET TRANSACTION ' + modes[1]
                        cur.execute(statement)
                    if prelude is not None:
                        source, line, statement = None, 0, ''
                        prelude(cur)
                        source = mfile
                    for source, statements in parts:  # noqa: B007 - source names the failing part
                        for line, statement in statements:  # noqa: B007 - line names the failing statement
                            cur.execute(statement)
                    source, line, statement = None, 0, ''
                    if record:
                        cur.execute('SET SESSION AUTHORIZATION DEFAULT')
                        self.table.insert(cur, mfile, mfile.kind if mfile.kind == 'repeatable' else 'versioned',
                                          mfile.checksum, (time.time() - started) * 1000, True, self.applied_by)
                conn.commit()
                self.db_changed = True
                if prelude is not None:
                    self._booked()
                return
            except psycopg2.Error as exc:
                if is_retryable(exc, conn):
                    raise
                conn.rollback()
                if getattr(exc, 'pgcode', None) == '55P03' and attempt < self.ddl_lock_retries:
                    wait = self._backoff(attempt)
                    self.log('%s: lock not available within %ss (attempt %d); retrying in %.1fs'
                             % (mfile.label, self.ddl_lock_timeout, attempt + 1, wait))
                    self.sleep(wait)
                    attempt += 1
                    continue
                raise self._failure(mfile, source, line, statement, exc, watch, attempt) from None
            finally:
                if watch is not None:
                    watch.stop()

    def _failure(self, mfile, source, line, statement, exc, watch, attempt):
        where = line_of_position(statement, line, getattr(exc.diag, 'statement_position', None))
        place = '%s failed at line %d' % (mfile.label, where)
        if source is None:
            place = '%s: recording it in %s failed' % (mfile.label, self.table.qualified)
        elif source is not mfile:
            place = '%s failed in callback %s at line %d' % (mfile.label, source.label, where)
        rolled = 'Its transaction was rolled back: nothing of this file was applied%s, and later files were not run' \
            % self._applied_note()
        if getattr(exc, 'pgcode', None) == '55P03':
            blockers = watch.describe() if watch is not None else 'the blocking session was not identified'
            return MigrationError(
                'migration %s: it waited for a lock longer than ddl_lock_timeout (%ss) %d time(s) (SQLSTATE 55P03), '
                'so it gave up instead of making the bot\'s queries queue behind it. Blocked by %s. %s. Run again when '
                'that session is done (a backup, a long transaction), or end it with SELECT pg_terminate_backend(pid)'
                % (place, self.ddl_lock_timeout, attempt + 1, blockers, rolled))
        return MigrationError('migration %s: %s. %s. Fix the file and run again'
                              % (place, describe_error(exc), rolled))

    def _applied_note(self):
        if not self.applied:
            return ''
        return '; the %d file(s) applied before it in this run stay applied (%s)' % (
            len(self.applied), ', '.join(self.applied))

    def _run_outside(self, conn, mfile, parts, record=True):
        """Run statement by statement outside a transaction; a failure is recorded and needs repair."""
        started = time.time()
        conn.autocommit = True
        line, statement = 0, ''
        with conn.cursor() as cur:
            try:
                for _, statements in parts:
                    for line, statement in statements:  # noqa: B007 - line names the failing statement
                        self._execute_outside(conn, cur, mfile, statement)
                        self.db_changed = True
                if record:
                    self.table.insert(cur, mfile, mfile.kind if mfile.kind == 'repeatable' else 'versioned',
                                      mfile.checksum, (time.time() - started) * 1000, True, self.applied_by)
                return
            except psycopg2.Error as exc:
                where = line_of_position(statement, line, getattr(exc.diag, 'statement_position', None))
                error = 'line %d: %s (statement: %s)' % (where, describe_error(exc),
                                                         ' '.join(statement.split())[:200])
                if getattr(exc, 'pgcode', None) == '55P03':
                    error += '; waited for a lock longer than ddl_lock_timeout %d time(s); blocked by %s' % (
                        self.ddl_lock_retries + 1, self._blockers or 'a session that could not be identified')
        if not record:
            raise MigrationError('callback %s (outside a transaction) failed at %s' % (mfile.label, error))
        self._record_failure(conn, mfile, started, error)
        raise MigrationError(
            'migration %s (outside a transaction) failed at %s. Statements before it in this file may already be '
            'applied and were recorded as a failed migration; later files were not run. Inspect the database, then '
            'run again with repair: true to retry the file%s' % (mfile.label, error, self._applied_note()))

    def _execute_outside(self, conn, cur, mfile, statement):
        """One autocommit statement; a lock timeout is retried with backoff (statements before it stay applied)."""
        patient = waits_by_design(statement) and outside_transaction(statement)
        if patient:
            cur.execute("SELECT set_config('lock_timeout', '0', false)")
        attempt = 0
        try:
            while True:
                watch = None if patient else self._watch(conn, attempt)
                try:
                    cur.execute(statement)
                    return
                except psycopg2.Error as exc:
                    if getattr(exc, 'pgcode', None) == '55P03' and not patient:
                        if attempt < self.ddl_lock_retries:
                            wait = self._backoff(attempt)
                            self.log('%s: lock not available (attempt %d); retrying in %.1fs'
                                     % (mfile.label, attempt + 1, wait))
                            self.sleep(wait)
                            attempt += 1
                            continue
                        self._blockers = watch.describe() if watch is not None else None
                    raise
                finally:
                    if watch is not None:
                        watch.stop()
        finally:
            if patient and not conn.closed:
                cur.execute("SELECT set_config('lock_timeout', %s, false)", (_interval_ms(self.ddl_lock_timeout),))

    def _record_failure(self, conn, mfile, started, error):
        """Record a failed no-transaction file, on a new connection when the old one died."""
        elapsed = (time.time() - started) * 1000
        target = conn
        try:
            if conn.closed:
                target = connect(self.params, policy=self.policy, application_name=self._app_name())
            target.autocommit = True
            with target.cursor() as cur:
                cur.execute('SET SESSION AUTHORIZATION DEFAULT')
                self.table.insert(cur, mfile, 'versioned' if mfile.kind != 'repeatable' else 'repeatable',
                                  mfile.checksum, elapsed, False, self.applied_by, error)
            self.db_changed = True
        except (psycopg2.Error, ConnectError) as exc:
            self.warn('could not record the failure of %s: %s' % (mfile.name, exc))
        finally:
            if target is not conn:
                target.close()

    # -- results ---------------------------------------------------------
    def _result(self, plan, started):
        catalog = self.catalog
        result = dict(applied=list(self.applied), baselined=list(self.baselined), notes=list(self.notes),
                      taken_over=list(self.taken_over), callbacks=list(self.callbacks_run),
                      layout=catalog.layout if catalog else None,
                      down_files=list(catalog.down) if catalog else [],
                      ignored=list(catalog.ignored) if catalog else [],
                      duration_ms=int((time.time() - started) * 1000), lint=self.lint.report())
        if self.check_mode:  # what a run would change; a run that would fail changes nothing
            result['changed'] = plan is not None and bool(self.notes or self.baselined or self.taken_over
                                                          or plan.todo())
        else:
            result['changed'] = bool(self.db_changed)
        if plan is not None:
            result.update(
                pending=[f.summary() for f in plan.todo()],
                current_version=version_text(plan.current) if plan.current else None,
                drift=[f.name for f in plan.drift],
                missing=plan.missing,
                failed=[r.name or r.version for r in plan.failed],
                applied_before=plan.applied_names(),
            )
        return result


def status(params, path, table='schema_migrations', layout='auto'):
    """Read-only migration status for health checks: pending, failed, drift, current version."""
    catalog = discover(path, layout)
    conn = connect(params, application_name='soulnear health')
    try:
        with conn.cursor() as cur:
            tracking = TrackingTable(table)
            exists = tracking.inspect(cur)
            if exists:
                owner = foreign_owner(tracking, catalog, cur)
                if owner is not None:
                    raise _refuse_foreign(tracking, *owner)
            records = tracking.read(cur) if exists else []
            if not records:
                # Another tool migrated this database and pg_migrate recorded nothing: the health check says what a
                # deploy would refuse, instead of listing the tool's whole history as pending.
                refuse_other_history(cur, tracking, catalog)
        plan = Plan(catalog, records, out_of_order=True, text_only=True)
        return dict(exists=bool(tracking.columns), pending=[f.name for f in plan.todo()],
                    failed=[r.name or r.version for r in plan.failed], drift=[f.name for f in plan.drift],
                    missing=plan.missing, layout=catalog.layout,
                    current_version=version_text(plan.current) if plan.current else None)
    finally:
        conn.close()
