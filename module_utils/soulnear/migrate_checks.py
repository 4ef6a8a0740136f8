# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Refusals pg_migrate makes before anything runs, kept out of migrate.py (issue 23).

- same_versions: versions that are one version once normalised (1 = 1.0 = 01), naming every file of each.
- missing_folder_files: a Prisma or Diesel migration folder without its migration.sql / up.sql (the tool itself
  stops there; pg_migrate skipped it).
- refuse_other_history: a database another tool migrated (its history table, at the tool's default name) while
  pg_migrate has recorded nothing yet: a run without takeover would apply the whole history again.

discover() adds the first two to the one list of a directory's problems; Migrator._plan_and_check calls the third
(check mode too). No Ansible import. docs/pg_migrate.md ("Never a silent success", "Coming from another tool").
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# layout -> (the folder's migration file, what the tool does with a folder without it)
FOLDER_FILES = {'prisma': ('migration.sql', 'Prisma itself stops there, P3015'),
                'diesel': ('up.sql', 'Diesel itself refuses such a folder')}
TOOL_NAMES = {'flyway': 'Flyway', 'golang-migrate': 'golang-migrate', 'dbmate': 'dbmate', 'goose': 'goose',
              'sql-migrate': 'sql-migrate', 'sqlx': 'sqlx', 'prisma': 'Prisma', 'diesel': 'Diesel'}


def _and(items):
    items = list(items)
    return items[0] if len(items) == 1 else '%s and %s' % (', '.join(items[:-1]), items[-1])


def normalised(key):
    """A version key without trailing zero parts: (1, 0) -> (1,), as Flyway compares versions."""
    key = tuple(key)
    while len(key) > 1 and key[-1] == 0:
        key = key[:-1]
    return key


def same_versions(files):
    """One problem per version that more than one migration has once normalised (1, 1.0, 01, 1_0): only one of
    them could be recorded, and which runs first is a guess."""
    groups = {}
    for mfile in files:
        groups.setdefault(normalised(mfile.key), []).append(mfile)
    problems = []
    for key, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        written = sorted(set(f.version_label or f.version for f in group))
        problems.append('migrations %s have the same version %s%s: each version must belong to one migration. Give '
                        'all but one of them a version of their own (above the newest one applied)'
                        % (_and(f.label for f in group), '.'.join(str(p) for p in key),
                           ' (written %s)' % ', '.join(written) if len(written) > 1 else ''))
    return problems


def missing_folder_files(ignored, layout):
    """A subfolder of a Prisma or Diesel directory (listed in ignored as 'name/') is a migration without its file."""
    if layout not in FOLDER_FILES:
        return []
    main, tool = FOLDER_FILES[layout]
    return ['folder %s has no %s, so pg_migrate would skip it and report success (%s). Restore its %s, or delete '
            'the folder' % (name[:-1], main, tool, main) for name in ignored if name.endswith('/')]


_CANDIDATES = ("SELECT n.nspname, c.relname, pg_table_is_visible(c.oid) FROM pg_class c "
               "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = ANY(%s) AND c.relkind IN ('r', 'p') "
               "AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' AND c.oid IS DISTINCT FROM %s::oid "
               "ORDER BY 1, 2")


def refuse_other_history(cur, table, catalog):
    """Raise MigrationError when another tool's history table (its default name, its columns) is in the database
    and pg_migrate's table (not itself among them) records nothing: what the tool applied would run again."""
    from .migration_files import MigrationError
    from .migration_tracking import TAKEOVER_TABLES, TrackingTable, foreign_owner

    cur.execute(_CANDIDATES, (sorted(set(TAKEOVER_TABLES.values())), table.oid))
    tools, found = [], []
    for schema, name, visible in cur.fetchall():
        other = TrackingTable(name)
        other.given_schema = other.schema = schema
        other.display = other.qualified
        other.inspect(cur)
        owner = foreign_owner(other, catalog, cur)
        if owner is None or owner[0] is None or TAKEOVER_TABLES[owner[0]] != name:
            continue  # pg_migrate's own (older) table, or a table of the bot's own script: not a tool's history
        tool, evidence = owner
        cur.execute('SELECT count(*) FROM %s' % other.ident.as_string(cur))
        fix = 'takeover: %s%s' % (tool, '' if visible else ', takeover_table: %s' % other.qualified)
        tools.append(TOOL_NAMES[tool])
        found.append('%s is %s\'s history (%s; %d row(s)): set %s (in a deployment: app_migration_options: {%s})'
                     % (other.qualified, TOOL_NAMES[tool], evidence, cur.fetchone()[0], fix, fix))
    if found:
        raise MigrationError(
            '%s migrated this database, and pg_migrate has recorded nothing in %s yet: a run without takeover would '
            'apply every migration from the start again (a seed\'s rows twice, or "already exists" errors). %s. '
            'takeover records what the tool applied without running it, then applies the rest; nothing was changed'
            % (_and(sorted(set(tools))), table.qualified, '; '.join(found)))
