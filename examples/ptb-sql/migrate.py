"""Apply migrations/NNN_name.sql in order, each once, each in its own transaction.

    python3 migrate.py           apply what is pending; exit 0
    python3 migrate.py --check   print the pending files; exit 0 when none is pending, 1 when some are

Applied files are recorded in this bot's own table, schema_migrations (filename, applied). Exit 2 on errors (the
database cannot be reached, a file fails, or a schema_migrations table that is not ours is in the way).
"""

import argparse
import asyncio
import os
import sys

import asyncpg
from settings import db_options

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS = os.path.join(HERE, 'migrations')
LOCK_KEY = 7263514002     # pg_advisory_lock key: one migrate.py at a time per database


def migration_files():
    names = sorted(n for n in os.listdir(MIGRATIONS) if n.endswith('.sql') and n[:3].isdigit())
    numbers = [n[:3] for n in names]
    duplicates = sorted({x for x in numbers if numbers.count(x) > 1})
    if duplicates:
        raise SystemExit('migrations: two files share the number(s) %s' % ', '.join(duplicates))
    return names


async def applied_files(conn):
    """The recorded file names, or None when the table does not exist yet."""
    columns = {r['column_name'] for r in await conn.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'schema_migrations'")}
    if not columns:
        return None
    if not {'filename', 'applied'} <= columns:
        raise RuntimeError('a table schema_migrations exists with other columns (%s): it is not this bot\'s '
                           'migration table' % ', '.join(sorted(columns)))
    return {r['filename'] for r in await conn.fetch('SELECT filename FROM schema_migrations')}


async def run(check):
    conn = await asyncpg.connect(**db_options())
    try:
        if check:
            done = await applied_files(conn) or set()
            pending = [n for n in migration_files() if n not in done]
            for name in pending:
                print('pending: %s' % name)
            print('%d pending migration(s)' % len(pending) if pending else 'up to date')
            return 1 if pending else 0
        await conn.execute('SELECT pg_advisory_lock($1)', LOCK_KEY)
        try:
            if await applied_files(conn) is None:
                await conn.execute('CREATE TABLE schema_migrations ('
                                   'filename text PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())')
            done = await applied_files(conn)
            count = 0
            for name in migration_files():
                if name in done:
                    continue
                with open(os.path.join(MIGRATIONS, name)) as handle:
                    sql = handle.read()
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute('INSERT INTO schema_migrations (filename) VALUES ($1)', name)
                print('applied %s' % name)
                count += 1
            print('%d migration(s) applied' % count if count else 'up to date')
            return 0
        finally:
            await conn.execute('SELECT pg_advisory_unlock($1)', LOCK_KEY)
    finally:
        await conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='only report pending files (exit 1 when any)')
    args = parser.parse_args()
    try:
        return asyncio.run(run(args.check))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RuntimeError) as exc:
        print('migrate: %s: %s' % (type(exc).__name__, exc), file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
