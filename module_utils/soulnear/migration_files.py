# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migrations of a directory, read with one layout (pg_migrate; migrate.py runs them).

No Ansible imports: the host commands import this file too. docs/pg_migrate.md is the user-facing description.

Layouts (``layout``/``format``, detected when ``auto``)
- plain: ``<digits>[_-.]description.sql`` plus Flyway-style ``V<version>__x.sql`` / ``R__x.sql``.
- flyway: ``V``/``R`` files, ``${placeholders}``, ``B`` baseline files (used on a fresh database),
  ``U`` undo files (never run), callbacks (``beforeMigrate.sql`` ...), ``<script>.conf`` settings.
- golang-migrate, sqlx: ``N_name.up.sql`` runs, ``N_name.down.sql`` never runs forward.
- dbmate, goose, sql-migrate: one file with up and down sections; only the up section runs.
- prisma, diesel: one folder per migration (``migration.sql``; ``up.sql``/``down.sql``).
Nothing is skipped silently: a file or folder the layout does not explain fails the run, listed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import re

from .migrate_checks import missing_folder_files, same_versions
from .migration_text import checksum_of, parse_version, read_text, version_text
from .sql import placeholders_in

LAYOUTS = ('plain', 'flyway', 'golang-migrate', 'sqlx', 'dbmate', 'goose', 'sql-migrate', 'prisma', 'diesel')
FORMATS = ('auto',) + LAYOUTS

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
        up_keys = set(parse_version(v) for v, _unused in ups)
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
