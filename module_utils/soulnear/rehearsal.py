# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rehearse a deploy's migrations on a copy before any downtime (issue 22).

A migration that fails at its third statement used to cost a full bot stop and start for a deploy that changed
nothing, and one that rewrites a big table held its lock for as long as it ran, without warning. The safe redeploy
now restores its fresh, verified pre-deploy backup into a scratch database on the same server
(<db>__restore_rehearsal_<time>), applies the pending migrations there with the new release, drops it, and only
then stops the old bot:

- a migration that fails fails here, naming the file, line and error, and the old bot never stopped;
- the time the migrations took on the copy is the predicted downtime of the swap (printed, audited, and refused
  when it exceeds max_seconds).

The scratch database is dropped also on failure; one a killed run left is dropped by the next restore or
rehearsal (backup.stale_restore_databases knows the name). The restore code is restore.py's own.

A login that may not create databases (the app role of a bot host whose database lives on another host: no
superuser, no CREATEDB) rehearses in the database the database host keeps for it, <db>__rehearsal, owned by the app
role (the postgres role creates it when the host serves bot hosts): emptied, restored into, emptied again. Without it
the rehearsal is skipped with a warning, as when the copy cannot be made for want of space.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import time

from .backup import drop_stale_restore_databases
from .backup_files import BackupError
from .pgtools import connect_to, drop_database, may_create_databases, query
from .restore import _create_database, _db_name, database_info, pgsql, restore_into

SUFFIX = '__restore_rehearsal_'


def scratch_name(live):
    return _db_name(live, SUFFIX + time.strftime('%H%M%S'))


KEPT_SUFFIX = '__rehearsal'


def kept_name(live):
    """The database a database host keeps for the rehearsals of its bot hosts' app role (no CREATEDB)."""
    return _db_name(live, KEPT_SUFFIX)


def empty_database(settings, db):
    """Drop every schema the login owns in db (public too, made again), and its large objects: what a restore put
    there. Objects of other roles (an extension a superuser made) make it fail, which the caller reports."""
    conn = connect_to(settings, db)
    try:
        schemas = [row[0] for row in query(
            conn, "SELECT nspname FROM pg_namespace WHERE (pg_has_role(nspowner, 'USAGE') OR nspname = 'public') "
                  "AND nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_%'")]
        for schema in schemas:
            query(conn, pgsql.SQL('DROP SCHEMA {} CASCADE').format(pgsql.Identifier(schema)))
        query(conn, 'CREATE SCHEMA public')
        query(conn, 'SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE pg_has_role(lomowner, \'USAGE\')')
    finally:
        conn.close()


def rehearse(settings, backup_path, apply, log=lambda _m: None):
    """Restore backup_path into a scratch database owned like the live one, call apply(scratch name) (the pending
    migrations against it), drop it. Returns dict(database, size, restore_seconds, settle_seconds, migrate_seconds)
    (settle: see settle()). Errors of apply propagate (after the drop); restore errors raise BackupError. A login
    without CREATEDB uses the kept <db>__rehearsal (emptied before and after) instead of a new database."""
    live = settings['conn']['login_db']
    admin = connect_to(settings, settings['maintenance_db'])
    try:
        info = database_info(admin, live)
        owner = info['owner']
        if may_create_databases(admin):
            # Only a login that makes scratch databases clears the ones a killed run left: a bot host's app role
            # (which owns them too) would drop one the database host is restoring into at this very moment - the
            # lock that makes a scratch database without a session a leftover is per host.
            drop_stale_restore_databases(settings, live, log)
            scratch = scratch_name(live)
            _create_database(admin, scratch, owner, info)

            def clean():
                drop_database(admin, scratch)
                log('dropped the rehearsal database %s' % scratch)
        else:
            scratch = kept_name(live)
            kept = database_info(admin, scratch)
            if kept is None or kept['owner'] != owner:
                raise BackupError(
                    'the login %s may not create databases (no CREATEDB), and the database host keeps no %s owned by '
                    '%s for the rehearsals of bot hosts (%s). Fix: deploy the database host (its postgres role makes '
                    'it when it serves bot hosts)' % (settings['conn']['login_user'], scratch, owner,
                                                      'it is owned by %s' % kept['owner'] if kept else 'none found'))
            empty_database(settings, scratch)

            def clean():
                empty_database(settings, scratch)
                log('emptied the rehearsal database %s' % scratch)
        try:
            began = time.time()
            restore_into(dict(settings, owner=owner), backup_path, scratch, log)
            restored = time.time() - began
            began = time.time()
            settle(settings, scratch)
            settled = time.time() - began
            began = time.time()
            apply(scratch)
            migrated = time.time() - began
        finally:
            clean()
    finally:
        admin.close()
    return dict(database=scratch, size=info['size'], restore_seconds=round(restored, 3),
                settle_seconds=round(settled, 3), migrate_seconds=round(migrated, 3))


def settle(settings, db):
    """Make the fresh copy look like the live database before the migrations are timed on it: VACUUM ANALYZE
    (a restored table has no hint bits or visibility map yet, so the migration's first scan would also write every
    page, and no statistics), then a CHECKPOINT where the login may (superuser, pg_checkpoint), so the restore's
    dirty pages are not written during the timed migration. Measured: the 5 M row copy predicted 98.8 s for a
    61.2 s migration without it (docs/operations.md)."""
    conn = connect_to(settings, db)
    try:
        query(conn, 'VACUUM ANALYZE')
        if query(conn, "SELECT rolsuper OR pg_has_role(current_user, 'pg_checkpoint', 'USAGE') FROM pg_roles "
                       "WHERE rolname = current_user")[0][0]:
            query(conn, 'CHECKPOINT')
    finally:
        conn.close()


def retarget_env(text, live, scratch):
    """The bot's environment file with its database switched from live to scratch, for its own migration command
    against the copy: values equal to the database's name (PGDATABASE, POSTGRES_DB, DB_NAME, ...) and the path of
    connection URLs (DATABASE_URL, postgresql+asyncpg://...) change; nothing else does."""
    url = re.compile(r'^([a-z][a-z0-9+.-]*://[^/?#]*/)%s(?=$|\?)' % re.escape(live))
    lines = []
    for line in text.splitlines():
        key, sep, value = line.partition('=')
        if sep and not key.startswith('#'):
            if value == live:
                value = scratch
            else:
                value = url.sub(lambda m: m.group(1) + scratch, value)
            line = key + sep + value
        lines.append(line)
    return '\n'.join(lines) + '\n'


def write_private_copy(path, text):
    """A 0600 file next to path (it holds the password), removed by the caller."""
    copy = '%s.rehearsal-%d' % (path, os.getpid())
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as handle:
        handle.write(text)
    return copy
