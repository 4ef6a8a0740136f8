# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring a backup (restore_database) and proving one restores (restore_test); pg_restore and the
`soulnear-backup restore-test` host command run them.

Restore: sha256 against the sidecar, `pg_restore --list`, then side by side a
safety backup of the live database and pg_restore into a new database, checks, then one
transaction renames live -> <db>__pre_restore_<ts> and new -> <db> (both or
neither), with the bot stopped only around that swap. Any failure before the
swap drops the new database; the live one is never written to.

Restore test: the same checks on a throwaway database, which is dropped afterwards.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os
import time
from concurrent.futures import ThreadPoolExecutor

from .backup import create_backup
from . import defaults, guard, metrics
from .backup import drop_stale_restore_databases
from .backup_files import (
    FAILURES, SAFETY_NAME_PATTERN, SIDECAR_SUFFIX, BackupError, DirLock, describe_failure, list_backups,
    newest_intact, null_log, read_sidecar)
from .containers import DockerError, container_state, exec_run, inspect
from .containers import start as start_container
from .containers import stop as stop_container
from .files import free_bytes, human, sha256_file
from .pg import describe_error, psycopg2, sqlstate_of
from .pgtools import connect_to, drop_database, feed_archive, owns_server, query, read_toc, require_tools, tool_argv, \
    tool_env, toc_tables, tools_where
from .retention import prune_safety_backups

if psycopg2 is not None:
    from psycopg2 import sql as pgsql
else:  # pragma: no cover - connect() reports the missing library
    pgsql = None

LATEST = 'latest'  # the backup to restore when none is named: the newest verified one


def resolve_backup(settings, backup=LATEST, log=null_log, check_mode=False):
    """Path of the backup to restore: for 'latest' the newest verified backup of the database whose file still
    matches its sidecar (a newer one that does not is skipped, and the log says so), else a name in backup_dir
    or a path."""
    directory = settings['backup_dir']
    database = settings['conn']['login_db']
    if not backup or backup == LATEST:
        good, corrupt = newest_intact(directory, settings['name_pattern'], database, save=not check_mode)
        for bad in corrupt:
            log('the newer backup %s does not match its %s sidecar (corrupt, truncated or changed): skipped'
                % (bad['name'], SIDECAR_SUFFIX))
        if good is None:
            raise BackupError('no verified backup of %s (a %s file with its %s sidecar%s) in %s; take one with '
                              'playbooks/backup.yml or name a file with backup=FILE'
                              % (database, settings['name_pattern'], SIDECAR_SUFFIX,
                                 ' that still matches it: %d do not' % len(corrupt) if corrupt else '', directory))
        if corrupt:
            log('latest: using %s, the newest backup of %s that verifies' % (good['name'], database))
        return good['path']
    path = backup if os.path.isabs(backup) else os.path.join(directory, backup)
    if not os.path.isfile(path):
        available = [b['name'] for b in list_backups(directory, settings['name_pattern'], database)[:5]]
        raise BackupError('backup %s not found; the newest of %s in %s are: %s'
                          % (path, database, directory, ', '.join(available) or 'none'))
    return path


def check_backup(settings, path, log=null_log, database=None):
    """sha256 against the sidecar, then the archive's table of contents and the database it was dumped from (it
    must be `database`, default the settings' database); returns (sha256, toc)."""
    expected = read_sidecar(path)
    if expected is None and settings['require_checksum']:
        raise BackupError('%s has no %s sidecar, so it cannot be shown to be intact; nothing was changed. Use a '
                          'verified backup, or set require_checksum=false to restore it anyway'
                          % (path, SIDECAR_SUFFIX))
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise BackupError('%s is corrupt or truncated: its sha256 is %s but the sidecar recorded %s when it was '
                          'written (size now %s); nothing was changed. Restore another backup (backup=FILE) or a '
                          'good copy of this one from the offsite location'
                          % (path, actual, expected, human(os.path.getsize(path))))
    log('checksum of %s OK (%s)' % (os.path.basename(path), actual if expected else 'no sidecar, not checked'))
    toc, dumped = read_toc(settings, path)
    database = database or settings['conn']['login_db']
    if dumped and dumped != database:
        raise BackupError('%s is a backup of the database %s, not of %s; nothing was changed. Restore a backup of '
                          '%s (the backups directory can hold several databases: soulnear-backup list shows them)'
                          % (path, dumped, database, database))
    log('archive readable: %d entries, %d tables, dumped from %s' % (len(toc), len(toc_tables(toc)),
                                                                     dumped or 'an unnamed database'))
    return actual, toc


def _ident(name):
    return pgsql.Identifier(name)


def _db_name(base, suffix):
    """<base><suffix> within PostgreSQL's 63-byte name limit."""
    return base.encode('utf-8')[:63 - len(suffix)].decode('utf-8', 'ignore') + suffix


def database_info(conn, db):
    """Owner, encoding, locale and size of a database; None when it does not exist."""
    # to_jsonb(d): the locale columns differ between versions (datlocprovider/daticulocale in 15 and 16,
    # datlocale and the builtin provider in 17, neither before 15).
    rows = query(conn, 'SELECT to_jsonb(d), pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), '
                 'pg_database_size(d.oid) FROM pg_database d WHERE d.datname = %s', (db,))
    if not rows:
        return None
    row, owner, encoding, size = rows[0]
    return dict(oid=row['oid'], owner=owner, encoding=encoding, collate=row['datcollate'], ctype=row['datctype'],
                provider=row.get('datlocprovider', 'c'), icu_locale=row.get('daticulocale') or row.get('datlocale'),
                connlimit=row['datconnlimit'], size=size)


def _create_database(conn, name, owner, like):
    """CREATE DATABASE name with the live database's owner, encoding and locale (template0)."""
    parts = [pgsql.SQL('CREATE DATABASE {} OWNER {} TEMPLATE template0').format(_ident(name), _ident(owner))]
    if like:
        parts.append(pgsql.SQL('ENCODING {} LC_COLLATE {} LC_CTYPE {}').format(
            pgsql.Literal(like['encoding']), pgsql.Literal(like['collate']), pgsql.Literal(like['ctype'])))
        if like['provider'] == 'i':
            parts.append(pgsql.SQL('LOCALE_PROVIDER icu ICU_LOCALE {}').format(pgsql.Literal(like['icu_locale'])))
        elif like['provider'] == 'b':
            parts.append(pgsql.SQL('LOCALE_PROVIDER builtin BUILTIN_LOCALE {}').format(
                pgsql.Literal(like['icu_locale'])))
        if like['connlimit'] != -1:
            parts.append(pgsql.SQL('CONNECTION LIMIT {}').format(pgsql.Literal(like['connlimit'])))
    query(conn, pgsql.SQL(' ').join(parts))


def _copy_database_settings(conn, source, target):
    """Database-level GUCs (ALTER DATABASE/ROLE ... SET) and grants: pg_dump without --create leaves them out."""
    rows = query(conn, 'SELECT s.setrole, r.rolname, s.setconfig FROM pg_db_role_setting s JOIN pg_database d '
                 'ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = %s',
                 (source,))
    for setrole, rolname, config in rows:
        for item in config or []:
            key, _unused, value = item.partition('=')
            values = [v.strip() for v in value.split(',')] if key == 'search_path' else [value]
            value_sql = pgsql.SQL(', ').join(pgsql.Literal(v) for v in values)
            if setrole == 0:
                statement = pgsql.SQL('ALTER DATABASE {} SET {} = {}').format(_ident(target), _ident(key), value_sql)
            else:
                statement = pgsql.SQL('ALTER ROLE {} IN DATABASE {} SET {} = {}').format(
                    _ident(rolname), _ident(target), _ident(key), value_sql)
            query(conn, statement)
    acl = query(conn, "SELECT datacl IS NOT NULL, coalesce((SELECT array_agg(format('%%s:%%s:%%s', "
                "CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
                "a.is_grantable)) FROM aclexplode(datacl) a), '{}') FROM pg_database WHERE datname = %s",
                (source,))
    if acl and acl[0][0]:
        query(conn, pgsql.SQL('REVOKE ALL ON DATABASE {} FROM PUBLIC').format(_ident(target)))
        for entry in acl[0][1]:
            grantee, privilege, grantable = entry.split(':')
            who = _ident(grantee) if grantee else pgsql.SQL('PUBLIC')
            option = pgsql.SQL(' WITH GRANT OPTION') if grantable == 'true' else pgsql.SQL('')
            query(conn, pgsql.SQL('GRANT {} ON DATABASE {} TO {}{}').format(
                pgsql.SQL(privilege), _ident(target), who, option))


def largest_tables(conn, limit):
    rows = query(conn, "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                 "AND n.nspname NOT LIKE 'pg\\_toast%%' ORDER BY pg_total_relation_size(c.oid) DESC, 1, 2 "
                 "LIMIT %s", (int(limit),))
    return [tuple(row) for row in rows]


def row_counts(conn, tables):
    """Exact row counts of (schema, table) pairs; None for a table that does not exist there."""
    counts = {}
    present = set(tuple(r) for r in query(conn, "SELECT schemaname, tablename FROM pg_tables"))
    for schema, table in tables:
        key = '%s.%s' % (schema, table)
        if (schema, table) in present:
            counts[key] = query(conn, pgsql.SQL('SELECT count(*) FROM {}.{}').format(
                _ident(schema), _ident(table)))[0][0]
        else:
            counts[key] = None
    return counts


def _container_free(settings, conn):
    """Free bytes where the server keeps its data: statvfs of the volume's host path, else df in the container;
    None for a server this deployment does not own (its disk is the provider's to watch)."""
    if not owns_server(settings):
        return None
    data_dir = query(conn, 'SHOW data_directory')[0][0]
    mounts = [m for m in (inspect(settings['container']) or {}).get('Mounts') or []
              if data_dir == m.get('Destination') or data_dir.startswith(m.get('Destination', '') + '/')]
    if mounts:
        source = max(mounts, key=lambda m: len(m['Destination'])).get('Source')
        if source and os.path.isdir(source):
            return free_bytes(source)
    code, out, err = exec_run(settings['container'], ['df', '-Pk', data_dir], user=settings['exec_user'], timeout=30)
    if code != 0:
        raise BackupError('df %s in %s failed: %s' % (data_dir, settings['container'],
                                                      err.decode('utf-8', 'replace').strip()))
    return int(out.decode().splitlines()[-1].split()[3]) * 1024


def restore_into(settings, path, db, log=null_log):
    """pg_restore the archive at path (on the host) into the existing database db, streamed into the container."""
    options = ['--exit-on-error']
    if settings['no_owner']:
        options += ['--no-owner', '--role=' + settings['owner']] if settings.get('owner') else ['--no-owner']
    argv = tool_argv('pg_restore', settings, db, *options)
    env = tool_env(settings)
    # Session settings for a database nobody uses yet: index builds sort in memory instead of on disk
    # (the largest win), and commits do not wait for the WAL flush (a crash fails the restore anyway).
    env['PGOPTIONS'] = '-c synchronous_commit=off'
    if settings.get('maintenance_work_mem'):
        env['PGOPTIONS'] += ' -c maintenance_work_mem=%s' % settings['maintenance_work_mem']
    log('restoring %s into database %s (pg_restore in %s)' % (os.path.basename(path), db, tools_where(settings)))
    code, _out, err = feed_archive(settings, argv, path, env=env)
    if code != 0:
        raise BackupError('pg_restore of %s into %s failed (exit %d): %s' % (os.path.basename(path), db, code, err))


def check_restored(settings, db, toc, log=null_log):
    """Checks on a freshly restored database: every dumped table is there and readable, migrations not failed."""
    conn = connect_to(settings, db)
    try:
        if settings['analyze']:
            query(conn, 'ANALYZE')
        present = set('%s %s' % r for r in query(conn, "SELECT schemaname, tablename FROM pg_tables WHERE "
                                                 "schemaname NOT IN ('pg_catalog', 'information_schema')"))
        missing = [t.replace(' ', '.', 1) for t in toc_tables(toc) if t not in present]
        if missing:
            raise BackupError('the restored database %s lacks tables that are in the backup: %s'
                              % (db, ', '.join(missing)))
        checks = dict(tables=len(present), missing_tables=missing)
        if 'public schema_migrations' in present:
            columns = set(r[0] for r in query(conn, "SELECT column_name FROM information_schema.columns WHERE "
                                              "table_schema = 'public' AND table_name = 'schema_migrations'"))
            failed = query(conn, 'SELECT count(*) FROM schema_migrations WHERE NOT success')[0][0] \
                if 'success' in columns else 0
            checks['failed_migrations'] = failed
            if failed:
                log('note: the backup records %d failed migration(s) in schema_migrations' % failed)
        return checks
    finally:
        conn.close()


def _swap(settings, live, new, old, log):
    """Rename live -> old and new -> live in ONE transaction (both or neither), retrying while sessions linger."""
    conn = connect_to(settings, settings['maintenance_db'])
    try:
        for attempt in range(10):
            query(conn, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN (%s, %s) '
                  'AND pid <> pg_backend_pid()', (live, new))
            conn.autocommit = False
            try:
                with conn.cursor() as cur:
                    if old:
                        cur.execute(pgsql.SQL('ALTER DATABASE {} RENAME TO {}').format(_ident(live), _ident(old)))
                    cur.execute(pgsql.SQL('ALTER DATABASE {} RENAME TO {}').format(_ident(new), _ident(live)))
                conn.commit()
                return
            except psycopg2.Error as exc:
                conn.rollback()
                # 55006: a session reconnected between the terminate and the rename; the transaction
                # rolled back both renames, so try again.
                if sqlstate_of(exc) != '55006' or attempt == 9:
                    raise BackupError('swapping %s and %s failed, nothing was renamed: %s'
                                      % (live, new, describe_error(exc))) from None
                log('sessions still connected to %s; retrying the swap' % live)
                time.sleep(0.3)
            finally:
                conn.autocommit = True
    finally:
        conn.close()


def restore_database(settings, backup=LATEST, confirm=None, check_mode=False, log=null_log):
    """Replace the live database with a backup (see the module docstring for the order of steps)."""
    started = time.time()
    live = settings['conn']['login_db']
    if confirm != live:
        raise BackupError('restoring replaces the database %s; confirm it by passing confirm=%s (you passed %s). '
                          'Nothing was changed' % (live, live, 'nothing' if confirm in (None, '') else repr(confirm)))
    path = resolve_backup(settings, backup, log, check_mode)
    require_tools(settings)
    digest, toc = check_backup(settings, path, log)
    stamp = datetime.datetime.now().strftime('%Y%m%d_%H%M%S')
    new, old = _db_name(live, '__restore_' + stamp), _db_name(live, '__pre_restore_' + stamp)
    result = dict(changed=not check_mode, database=live, restored_from=path, sha256=digest,
                  size=os.path.getsize(path), safety_backup=None, previous_database=None, swapped=False,
                  row_counts=dict(before={}, after=None),
                  bot=dict(container=settings['bot_container'] or None, was_running=False, stopped=False,
                           started=False))
    admin = connect_to(settings, settings['maintenance_db'])
    try:
        info = database_info(admin, live)
        owner = settings.get('owner') or (info['owner'] if info else settings['conn'].get('login_user') or 'postgres')
        result['owner'] = owner
        when = datetime.datetime.now()
        while database_info(admin, old) or database_info(admin, new):  # a second restore within the same second
            when += datetime.timedelta(seconds=1)
            stamp = when.strftime('%Y%m%d_%H%M%S')
            new, old = _db_name(live, '__restore_' + stamp), _db_name(live, '__pre_restore_' + stamp)
        if info:
            estimate = int(info['size'] * float(settings['space_margin']))
            free = _container_free(settings, admin)
            if free is None:
                log('free space on the external server is not checked (about %s needed for a second copy of %s); '
                    'its provider watches its disk' % (human(estimate), live))
            elif free < estimate:
                raise BackupError('not enough free space for the database server to hold a second copy of %s while '
                                  'restoring: %s free in %s, about %s needed (database size x space_margin); nothing '
                                  'was changed. Free space on the disk of the Docker volume'
                                  % (live, human(free), settings['container'], human(estimate)), result)
        else:
            log('database %s does not exist: it will be created from the backup' % live)
        if check_mode:
            if info:
                result['row_counts']['before'] = _counts_of(settings, live, _largest(settings, live))
            result.update(msg='Would restore %s from %s (%s)%s' % (
                live, os.path.basename(path), human(result['size']),
                ', keeping the current database as %s' % old if info else ''), duration=round(time.time() - started, 3))
            return result

        with DirLock(settings['backup_dir'], 'restore of %s' % live):
            result['dropped_databases'] = drop_stale_restore_databases(settings, live, log)
            _restore_and_swap(settings, admin, path, toc, info, owner, new, old, result, log)
            if result['safety_backup']:
                result['pruned_safety'] = prune_safety_backups(settings['backup_dir'], settings, log=log)
    finally:
        admin.close()
    if info:
        result['previous_database'] = old
        if owns_server(settings):
            result['drop_previous_command'] = 'docker exec -u %s %s dropdb --username %s "%s"' % (
                settings['exec_user'], settings['container'], settings['conn'].get('login_user') or 'postgres', old)
        else:
            result['drop_previous_command'] = 'DROP DATABASE "%s"; (as %s on %s, e.g. with psql)' % (
                old, settings['conn'].get('login_user') or 'postgres', settings['conn'].get('login_host'))
    result['data_guard'] = record_restored(settings, live, path, log)
    result['duration'] = round(time.time() - started, 3)
    result['msg'] = 'Restored %s from %s (%s) in %.1f s' % (live, os.path.basename(path), human(result['size']),
                                                            result['duration'])
    if result['data_guard'] and result['data_guard'].get('previous_flag'):
        result['msg'] += '; the data-loss flag is lowered'
    if info:
        result['msg'] += ('; the previous database is kept as %s (drop it once the restored data is confirmed good: '
                          '%s)' % (old, result['drop_previous_command']))
    return result


def record_restored(settings, live, path, log=null_log):
    """After a completed restore: the data-loss guard records the restored database (its cluster and rows) and
    lowers its flag. Returns guard.accept()'s result, None without a guard file; a failure here is logged, never
    raised (the restore itself succeeded)."""
    return guard.accept_restored(settings.get('data_guard_file'), lambda: connect_to(settings, live), live,
                                 list(defaults.REQUIRED_TABLES), 'pg_restore',
                                 'restore of %s into %s completed' % (os.path.basename(path), live), log,
                                 errors=(BackupError,))


def _safety_backup(settings, live, log):
    log('taking a safety backup of %s' % live)
    try:
        return create_backup(settings, log=log, pattern=SAFETY_NAME_PATTERN, retention=False, offsite=False,
                             lock=False)['path']
    except FAILURES as exc:
        raise BackupError('the safety backup of %s failed: %s' % (live, describe_failure(exc))) from None


def _restore_and_swap(settings, admin, path, toc, info, owner, new, old, result, log):
    """Restore into the new database, check it, swap it in; on any failure before the swap, drop it."""
    live = settings['conn']['login_db']
    pool = ThreadPoolExecutor(2)
    # While the restore writes the new database, the safety backup and the row counts read the live
    # one, side by side; the swap waits for all of them.
    safety = pool.submit(_safety_backup, settings, live, log) if info and settings['safety_backup'] else None
    before = pool.submit(_largest_counted, settings, live) if info else None
    created = False
    try:
        _create_database(admin, new, owner, info)
        created = True
        if info:
            _copy_database_settings(admin, live, new)
        restore_into(dict(settings, owner=owner), path, new, log)
        if safety:
            result['safety_backup'] = safety.result()
        result['checks'] = check_restored(settings, new, toc, log)
        live_tables, counts_before = before.result() if before else ([], {})
        tables = _largest(settings, new)
        if info and [t for t in tables if t not in live_tables]:
            counts_before.update(_counts_of(settings, live, [t for t in tables if t not in live_tables]))
        tables += [t for t in live_tables if t not in tables]
        result['row_counts'] = dict(before=counts_before, after=loaded_rows(settings, new, tables))
        _swap_with_bot_stopped(settings, live, new, old if info else None, result, log)
    except BaseException as exc:
        if result['swapped']:
            raise
        if created:
            drop_database(admin, new)
            log('dropped %s; %s was not touched' % (new, live))
        if isinstance(exc, FAILURES):
            raise BackupError('%s. The live database %s was not changed%s'
                              % (describe_failure(exc).rstrip('.'), live,
                                 '; the partial copy %s was dropped' % new if created else ''), result) from None
        raise
    finally:
        pool.shutdown(wait=True)
        if safety and not result['safety_backup'] and safety.exception() is None:
            result['safety_backup'] = safety.result()


def loaded_rows(settings, db, tables):
    """Rows pg_restore loaded into the fresh database db, per table, from the server's statistics.

    Exact here (nobody else wrote to db, and a backend flushes its counters before it leaves
    pg_stat_activity), and free, where count(*) would read - and set hint bits on - every page just
    written. With track_counts off, count(*) it is.
    """
    conn = connect_to(settings, db)
    try:
        if query(conn, 'SHOW track_counts')[0][0] != 'on':
            return row_counts(conn, tables)
        for _unused in range(200):
            if not query(conn, 'SELECT 1 FROM pg_stat_activity WHERE datname = current_database() '
                         'AND pid <> pg_backend_pid()'):
                break
            time.sleep(0.05)
        loaded = dict(((s, t), n) for s, t, n in query(
            conn, 'SELECT schemaname, relname, n_tup_ins - n_tup_del FROM pg_stat_user_tables'))
        return dict(('%s.%s' % t, loaded.get(t)) for t in tables)
    finally:
        conn.close()


def _largest(settings, db):
    conn = connect_to(settings, db)
    try:
        return largest_tables(conn, settings['largest_tables'])
    finally:
        conn.close()


def _largest_counted(settings, db):
    tables = _largest(settings, db)
    return tables, _counts_of(settings, db, tables)


def _counts_of(settings, db, tables):
    """{schema.table: exact rows} in db."""
    conn = connect_to(settings, db)
    try:
        return row_counts(conn, tables)
    finally:
        conn.close()


def _swap_with_bot_stopped(settings, live, new, old, result, log):
    bot = settings.get('bot_container')
    state = container_state(bot) if bot else None
    was_running = bool(state and state['running'])
    result['bot']['was_running'] = was_running
    if bot and not was_running:
        log('the bot (%s) is not running (%s); it is left stopped' % (bot, state['status']))
    if was_running:
        log('stopping the bot (%s) for the swap' % bot)
        stop_container(bot, timeout=settings['bot_stop_timeout'])
        result['bot']['stopped'] = True
    try:
        _swap(settings, live, new, old, log)
        result['swapped'] = True
        log('swapped: %s is now the restored database%s' % (live, (', the previous one is %s' % old) if old else ''))
    finally:
        if was_running:
            log('starting the bot (%s)' % bot)
            try:
                start_container(bot)
            except DockerError as exc:
                raise BackupError('%s; the bot (%s) did not start again: %s. Start it: docker start %s'
                                  % ('the restore itself succeeded' if result['swapped'] else
                                     'the swap failed and the live database was not changed', bot, exc, bot)) \
                    from None
            result['bot']['started'] = True


@metrics.restore_test_run
def restore_test(settings, backup=LATEST, log=null_log):
    """Restore a backup into a throwaway database, check it, drop it; returns a report (raises on failure)."""
    started = time.time()
    path = resolve_backup(settings, backup, log)
    require_tools(settings)
    with DirLock(settings['backup_dir'], 'restore-test'):
        drop_stale_restore_databases(settings, settings['conn']['login_db'], log)
        digest, toc = check_backup(settings, path, log)
        scratch = _db_name(settings['conn']['login_db'], '__restore_test_' + datetime.datetime.now().strftime('%H%M%S'))
        admin = connect_to(settings, settings['maintenance_db'])
        try:
            info = database_info(admin, settings['conn']['login_db'])
            owner = settings.get('owner') or (info['owner'] if info else settings['conn'].get('login_user') or
                                              'postgres')
            _create_database(admin, scratch, owner, info)
            try:
                restore_into(dict(settings, owner=owner), path, scratch, log)
                checks = check_restored(settings, scratch, toc, log)
                conn = connect_to(settings, scratch)
                try:
                    # count(*) of every table reads every heap page: unreadable data fails here.
                    counts = row_counts(conn, [tuple(row) for row in query(
                        conn, "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
                              "('pg_catalog', 'information_schema') ORDER BY 1, 2")])
                finally:
                    conn.close()
            finally:
                drop_database(admin, scratch)
                log('dropped the throwaway database %s' % scratch)
        finally:
            admin.close()
    checks['rows'] = sum(v for v in counts.values() if v)
    largest = dict(sorted(counts.items(), key=lambda kv: -(kv[1] or 0))[:settings['largest_tables']])
    duration = round(time.time() - started, 3)
    return dict(changed=False, restored_from=path, sha256=digest, size=os.path.getsize(path), database=scratch,
                checks=checks, row_counts=dict(before=None, after=largest), duration=duration,
                msg='Restore test of %s passed: %d tables, %d rows, %.1f s' % (os.path.basename(path),
                                                                               checks['tables'], checks['rows'],
                                                                               duration))
