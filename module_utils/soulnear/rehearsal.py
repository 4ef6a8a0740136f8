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
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import time

from .backup import drop_stale_restore_databases
from .pgtools import connect_to, drop_database
from .restore import _create_database, _db_name, database_info, restore_into

SUFFIX = '__restore_rehearsal_'


def scratch_name(live):
    return _db_name(live, SUFFIX + time.strftime('%H%M%S'))


def rehearse(settings, backup_path, apply, log=lambda _m: None):
    """Restore backup_path into a scratch database owned like the live one, call apply(scratch name) (the pending
    migrations against it), drop it. Returns dict(database, size, restore_seconds, migrate_seconds). Errors of
    apply propagate (after the drop); restore errors raise BackupError."""
    live = settings['conn']['login_db']
    scratch = scratch_name(live)
    drop_stale_restore_databases(settings, live, log)
    admin = connect_to(settings, settings['maintenance_db'])
    try:
        info = database_info(admin, live)
        owner = info['owner']
        _create_database(admin, scratch, owner, info)
        try:
            began = time.time()
            restore_into(dict(settings, owner=owner), backup_path, scratch, log)
            restored = time.time() - began
            began = time.time()
            apply(scratch)
            migrated = time.time() - began
        finally:
            drop_database(admin, scratch)
            log('dropped the rehearsal database %s' % scratch)
    finally:
        admin.close()
    return dict(database=scratch, size=info['size'], restore_seconds=round(restored, 3),
                migrate_seconds=round(migrated, 3))


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
