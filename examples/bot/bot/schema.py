"""Startup checks: the tables the bot needs exist, and every migration it ships was applied.

The bot never creates or alters tables. If the database came back empty after a
crash, creating an empty schema here would hide the data loss; failing loudly
makes an operator run the migrations (pg_migrate) or restore a backup.
"""

import glob
import logging
import os
import re

log = logging.getLogger(__name__)

# Table -> the columns the bot reads or writes (from database/migrations).
REQUIRED_TABLES = {
    'users': ('id', 'username', 'first_seen_at', 'last_seen_at'),
    'aiogram_states': ('key', 'chat_id', 'user_id', 'state', 'data', 'updated_at'),
    'events': ('update_id', 'user_id', 'chat_id', 'kind', 'payload', 'created_at'),
}
MIGRATIONS_TABLE = 'schema_migrations'


class StartupCheckFailed(Exception):
    """The database is not in a state the bot can run on; the message says why and what to do."""


def _columns(cur, table):
    # to_regclass() gives NULL for a missing table, so a missing table yields no columns.
    cur.execute('SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) '
                'AND attnum > 0 AND NOT attisdropped', (table,))
    return {row[0] for row in cur.fetchall()}


def verify_tables(db):
    """Raise StartupCheckFailed when a required table or column is missing."""
    found = db.run(lambda cur: {t: _columns(cur, t) for t in REQUIRED_TABLES}, what='table check')
    missing = [t for t in REQUIRED_TABLES if not found[t]]
    if missing:
        tables = f"tables {', '.join(missing)} are" if len(missing) > 1 else f'table {missing[0]} is'
        raise StartupCheckFailed(f'Required {tables} missing - the database may have been re-initialised; '
                                 'run the migrations (pg_migrate) or restore a backup')
    for table, wanted in REQUIRED_TABLES.items():
        absent = [c for c in wanted if c not in found[table]]
        if absent:
            raise StartupCheckFailed(f"Table {table} lacks column(s) {', '.join(absent)} - the schema is older "
                                     'than this bot; run the migrations (pg_migrate)')


def migration_files(directory):
    if not os.path.isdir(directory):
        raise StartupCheckFailed(f'Migrations directory {directory} does not exist (BOT_MIGRATIONS_DIR)')
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, '*.sql')))


# File name -> version, as pg_migrate reads it: 001_init.sql -> (1,), V1_2__x.sql -> (1, 2).
_FILE_VERSION = (re.compile(r'^V(\d+(?:[._]\d+)*)__.+\.sql$'), re.compile(r'^(\d+)(?:[_\-.].*)?\.sql$'))


_ROW_VERSION = (re.compile(r'^V?(\d+(?:[._]\d+)*)$'),)


def _version(text, patterns=_ROW_VERSION):
    for pattern in patterns:
        match = pattern.match(str(text or ''))
        if match:
            return tuple(int(part) for part in re.split(r'[._]', match.group(1)))
    return None


def check_migrations(db, directory):
    """Compare schema_migrations (filled by pg_migrate) with the shipped *.sql files.

    A file counts as applied when a successful row has its file name, or its version
    ('1' for 001_init.sql): pg_migrate itself matches on the version, so a renamed file
    must not look pending to the bot while the runner sees nothing to do.
    Returns the number of applied migrations; raises StartupCheckFailed when one
    is pending or recorded as failed. The bot does not apply migrations itself.
    """
    files = migration_files(directory)

    def read(cur):
        columns = _columns(cur, MIGRATIONS_TABLE)
        if not columns:
            return None
        version = 'version::text' if 'version' in columns else 'NULL'
        name = 'name' if 'name' in columns else 'NULL'
        success = 'success' if 'success' in columns else 'true'
        cur.execute(f'SELECT {version}, {name}, {success} FROM {MIGRATIONS_TABLE}')
        return cur.fetchall()

    rows = db.run(read, what='migration check')
    if rows is None:
        raise StartupCheckFailed(f'Table {MIGRATIONS_TABLE} is missing - no migration was ever recorded; run the '
                                 'migrations (pg_migrate), or baseline a database whose tables predate it')

    def rows_of(filename):
        key = _version(filename, _FILE_VERSION)
        return [ok for version, name, ok in rows if name == filename or (key and _version(version) == key)]

    failed = [f for f in files if rows_of(f) and not any(rows_of(f))]
    pending = [f for f in files if not rows_of(f)]
    if failed:
        raise StartupCheckFailed(f"Migration(s) recorded as failed: {', '.join(failed)} - fix the cause and "
                                 're-run the migrations (pg_migrate) before starting the bot')
    if pending:
        raise StartupCheckFailed(f"Pending migration(s) not applied: {', '.join(pending)} - run the migrations "
                                 '(pg_migrate) before starting the bot')
    keys = {_version(f, _FILE_VERSION) for f in files} - {None}
    unknown = sorted({name or version for version, name, _ in rows
                      if (name or version) and name not in files and _version(version) not in keys})
    if unknown:
        # A rollback to the previous image meets a database migrated by the newer one;
        # migrations are additive, so the old bot can still run. Say so, do not fail.
        log.warning('Database has migration(s) this bot does not ship: %s (newer bot version?)', ', '.join(unknown))
    return len(files)
