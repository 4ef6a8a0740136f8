#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_restore
short_description: Restore a PostgreSQL database from a verified backup without risking the live data
description:
  - Restores the newest verified backup in O(backup_dir), or a named one, over the database O(login_db), with
    C(pg_restore) run inside the database container (client version = server version).
  - "Gap it fills: community.postgresql's C(postgresql_db) with C(state=restore) restores straight into the target
    database, so a failure half-way leaves it half-restored, and it checks neither the file nor what it replaces. This
    module never writes to the live database: it restores into a new one and swaps the names only when the restore
    succeeded."
  - "Order of steps: the confirmation value (O(confirm) must equal O(login_db)); the sha256 of the file against its
    sidecar (a corrupt or truncated file is refused before anything is touched); C(pg_restore --list); free space
    for a second copy in the database container; then, side by side, a safety backup of the live database
    (C(pre_restore_*.dump) in O(backup_dir)) and C(CREATE DATABASE <db>__restore_<ts>) with the live database's
    owner, encoding, locale, database-level settings and grants, C(pg_restore --exit-on-error) into it; checks
    (every table of the archive is there) and exact row counts of the largest tables in both databases;
    then the bot (O(bot_container)) is stopped, remaining sessions are terminated and ONE transaction renames
    C(<db>) to C(<db>__pre_restore_<ts>) and the new database to C(<db>) (both renames or neither); the bot is
    started again."
  - Any failure before the swap (the safety backup's included) drops the new database and leaves the live one as it
    was; the bot is not stopped until the restored copy is complete and checked.
  - The previous database is kept as C(<db>__pre_restore_<ts>) (not dropped) so nothing is lost if the backup was
    the wrong one; RV(drop_previous_command) drops it once the restored data is confirmed good. It uses as much disk
    as the old database.
  - Objects keep the owners recorded in the archive (the roles must exist, which they do on the same server); with
    O(no_owner=true) they are created as O(owner) instead.
  - V(latest) is the newest backup of O(login_db) (the sidecar or the archive names its database, so several
    databases can share O(backup_dir)) whose file still matches its sidecar; newer ones that do not are skipped
    and RV(steps) says so. A named backup that fails its checksum is refused. An archive dumped from another
    database than O(login_db) is refused.
  - Scratch databases a killed restore left behind (C(<db>__restore_*) without sessions) are dropped first, under
    the backups directory's lock, and logged in RV(steps).
  - O(test_only=true) is the restore test - restore into a throwaway database, run the checks, count the rows of
    every table, drop it. It needs no confirmation and touches neither the live database nor the bot.
version_added: "1.0.0"
author: SoulNear operations contributors (!UNKNOWN)
options:
  backup:
    description: V(latest) (the newest backup with a sidecar), a file name in O(backup_dir), or an absolute path; a
      file, not a directory.
    type: str
    default: latest
  confirm:
    description:
      - Must equal O(login_db), the database that will be replaced. Without it nothing is done.
      - Not needed with O(test_only=true).
    type: str
  test_only:
    description: Restore into a throwaway database, check it and drop it (the restore test); the live database is not
      touched.
    type: bool
    default: false
  backup_dir:
    description: Directory holding the backups (and where the safety backup is written), an absolute path.
    type: path
    required: true
  name_pattern:
    description: File name pattern of the backups, used to find V(latest) (see the pg_backup module).
    type: str
    default: backup_%Y%m%d_%H%M%S.dump
  container:
    description: Name of the running database container C(pg_restore) runs in.
    type: str
    default: soulnear_postgres
  exec_user:
    description: Operating-system user inside the container that runs C(pg_restore) and C(pg_dump).
    type: str
    default: postgres
  bot_container:
    description: Container of the application, stopped for the swap and started after it (only if it was running).
      Empty means no container is stopped.
    type: str
    default: ''
  bot_stop_timeout:
    description: Seconds C(docker stop) gives the bot to exit cleanly (1 or more).
    type: int
    default: 30
  safety_backup:
    description: Take a backup of the live database (C(pre_restore_%Y%m%d_%H%M%S.dump)) before restoring. The newest
      O(keep_safety_backups) are kept.
    type: bool
    default: true
  owner:
    description: Owner of the restored database. Default is the owner of the live database (or O(login_user) when
      there is none).
    type: str
    default: ''
  no_owner:
    description: Restore with C(--no-owner --role=OWNER), so every object belongs to O(owner) instead of the
      roles recorded in the archive (for a backup from another server whose roles do not exist here).
    type: bool
    default: false
  require_checksum:
    description: Refuse a backup without a C(.sha256) sidecar. Set to false only for a legacy backup you trust.
    type: bool
    default: true
  space_margin:
    description: The database container must have the live database size times this factor free for the second
      copy; the safety backup needs the same in O(backup_dir). From 0 to 1000000; 0 skips the check.
    type: float
    default: 1.2
  compression:
    description: Compression of the safety backup (see the pg_backup module).
    type: str
    choices: [auto, gzip, zstd, lz4, none]
    default: auto
  largest_tables:
    description: Number of largest tables whose exact row counts are reported before and after (0 to 1000).
    type: int
    default: 5
  analyze:
    description:
      - Run C(ANALYZE) on the restored database before the swap. pg_restore does not restore planner statistics;
        without this, autovacuum analyzes the restored tables within about a minute (autovacuum_naptime). On a
        large database it adds a few percent to the restore.
    type: bool
    default: false
  maintenance_work_mem:
    description:
      - maintenance_work_mem of the pg_restore session (with synchronous_commit=off), so index builds sort in memory.
        The restored database is not in use yet, so neither setting affects the live one. Empty keeps the server's
        setting; lower it on a host with little memory. A PostgreSQL size (a whole number with B, kB, MB, GB or TB).
    type: str
    default: 256MB
  maintenance_db:
    description: Database the module connects to for CREATE, DROP and RENAME DATABASE.
    type: str
    default: postgres
  keep_safety_backups:
    description: The newest this many C(pre_restore_*) safety backups of O(login_db) are kept; older ones are
      deleted after a restore took a new one (and by every backup run's retention). At least 1.
    type: int
    default: 3
  data_guard_file:
    description:
      - The data-loss guard's record (see the C(data_guard) module). After a completed restore the restored
        database is recorded there as the real one and the guard's flag is lowered. Empty disables it; else an
        absolute path of a file.
      - Not touched by O(test_only) or in check mode.
    type: path
    default: /var/lib/soulnear/data-guard.json
  login_user:
    description: Superuser the module and the tools in the container connect as.
  login_password:
    description: Password of O(login_user); passed to the tools in the container by environment variable name only.
  login_host:
    description: Host the module connects to (the port published on the Docker host).
  login_db:
    description: The database to replace (required), for example C(soul_bot).
extends_documentation_fragment:
  - soulnear_connection
  - soulnear_connection.client_image
  - soulnear_audit
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Requires the confirmation like a real run, checks the sidecar and the archive, the free space, and reports the
        live row counts and what would be replaced. Creates, stops and writes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - psycopg2 and the docker CLI on the host that runs the module (the database host)
seealso:
  - module: community.postgresql.postgresql_db
'''

EXAMPLES = r'''
- name: Restore the newest backup over soul_bot
  pg_restore:
    backup: latest
    confirm: soul_bot
    backup_dir: /var/backups/soulnear
    bot_container: soulnear_bot
    login_host: 127.0.0.1
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot
  register: restored

- name: Restore a named backup
  pg_restore:
    backup: backup_20250105_020001.dump
    confirm: soul_bot
    backup_dir: /var/backups/soulnear
    bot_container: soulnear_bot
    login_host: 127.0.0.1
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot

- name: Prove the newest backup restores (throwaway database, dropped afterwards)
  pg_restore:
    test_only: true
    backup_dir: /var/backups/soulnear
    login_host: 127.0.0.1
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot
'''

RETURN = r'''
changed:
  description: True when the live database was replaced (false in check mode and for O(test_only)).
  returned: always
  type: bool
  sample: true
msg:
  description: Summary, with the name of the kept previous database and how to drop it.
  returned: always
  type: str
  sample: Restored soul_bot from backup_20250105_020001.dump (12.4 MB) in 9.3 s; the previous database is kept as ...
database:
  description: The database restored (for O(test_only), the throwaway database that was dropped).
  returned: success
  type: str
  sample: soul_bot
restored_from:
  description: Path of the backup restored.
  returned: success
  type: str
  sample: /var/backups/soulnear/backup_20250105_020001.dump
sha256:
  description: sha256 of the backup, checked against its sidecar.
  returned: success
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
size:
  description: Size of the backup in bytes.
  returned: success
  type: int
  sample: 13002311
duration:
  description: Wall time in seconds, from the checksum check to the bot's start.
  returned: success
  type: float
  sample: 9.27
data_guard:
  description: What the data-loss guard recorded after the restore (system_identifier, tables, previous_flag), or
    an error; null without O(data_guard_file).
  returned: success and not O(test_only)
  type: dict
  sample: {system_identifier: "7313214194725303163", tables: {subscriptions: 50}, previous_flag: null}
dropped_databases:
  description: Scratch databases of an interrupted earlier restore that were dropped.
  returned: success
  type: list
  elements: str
  sample: [soul_bot__restore_20250105_101500]
safety_backup:
  description: Path of the backup of the live database taken first; null when there was none.
  returned: success
  type: str
  sample: /var/backups/soulnear/pre_restore_20250105_101500.dump
swapped:
  description: Whether the restored database was swapped in (on failure, tells whether the live database changed).
  returned: always
  type: bool
  sample: true
previous_database:
  description: Name under which the replaced database is kept; null when there was none.
  returned: success
  type: str
  sample: soul_bot__pre_restore_20250105_101500
drop_previous_command:
  description: Command that drops the previous database once the restored data is confirmed good.
  returned: when a previous database was kept
  type: str
  sample: docker exec -u postgres soulnear_postgres dropdb --username postgres "soul_bot__pre_restore_20250105_101500"
row_counts:
  description:
    - Exact row counts of the largest tables, C(before) in the live database (counted while the restore runs) and
      C(after) in the restored one (the rows pg_restore loaded, from the server's statistics counters, which are
      exact for a database nobody else wrote to; count(*) when track_counts is off). A table missing on one side
      is null.
  returned: success
  type: dict
  sample: {before: {public.orders: 120331, public.customers: 5120},
           after: {public.orders: 119872, public.customers: 5101}}
checks:
  description: Checks on the restored database (tables, missing_tables, failed_migrations; rows for O(test_only)).
  returned: success and not check mode
  type: dict
  sample: {tables: 4, missing_tables: [], failed_migrations: 0}
bot:
  description: What happened to O(bot_container) (container, was_running, stopped, started).
  returned: success
  type: dict
  sample: {container: soulnear_bot, was_running: true, stopped: true, started: true}
owner:
  description: Owner of the restored database.
  returned: success and not O(test_only)
  type: str
  sample: soulnear
steps:
  description: What the module did, step by step.
  returned: always
  type: list
  elements: str
  sample: [checksum of backup_20250105_020001.dump OK (9f86...), taking a safety backup of soul_bot]
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear.backup_files import FAILURES, describe_failure
from ansible.module_utils.soulnear.backup_settings import settings_argument_spec, settings_from_params
from ansible.module_utils.soulnear.guard import DEFAULT_STATE_FILE as DATA_GUARD_FILE
from ansible.module_utils.soulnear.restore import LATEST, restore_database, restore_test
from ansible.module_utils.soulnear.pg import HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, connection_argument_spec
from ansible.module_utils.soulnear import audit, validate

# The backup settings this module takes; types, defaults and choices come from backup_settings.
SETTINGS = ('backup_dir', 'name_pattern', 'container', 'exec_user', 'client_image', 'bot_container', 'bot_stop_timeout',
            'safety_backup', 'owner', 'no_owner', 'require_checksum', 'space_margin', 'compression', 'largest_tables',
            'analyze', 'maintenance_work_mem', 'maintenance_db', 'keep_safety_backups', 'data_guard_file')


def argument_spec():
    spec = connection_argument_spec()
    spec.update(settings_argument_spec(SETTINGS))
    # The module keeps the host's guard record by default; library callers (and the tests) opt in.
    spec['data_guard_file']['default'] = DATA_GUARD_FILE
    spec.update(
        backup=dict(type='str', default=LATEST),
        confirm=dict(type='str'),
        test_only=dict(type='bool', default=False),
        audit_log=dict(type='path'),
        audit_who=dict(type='str'),
    )
    return spec


def _backup(value, directory):
    """latest, or a file: a name (or path) in backup_dir or an absolute path - never a directory."""
    if value in ('', LATEST):
        return
    path = os.path.join(directory or '', value)
    if os.path.isdir(path):
        raise validate.Invalid('latest, a file name in backup_dir or an absolute path of a file',
                               why='%s is a directory' % path)


def check_options(module):
    """Every option checked before anything is touched (validate.py); fails naming each bad one."""
    options = validate.Options(module.params, argument_spec())
    validate.connection(options, database=True)
    validate.backup_settings(options, SETTINGS)
    options.check('backup', _backup, module.params['backup_dir'])
    options.check('audit_log', validate.nonempty_path, 'file', empty=True)
    options.fail(module)


def audit_line(module, result, started, failed=False):
    """The audit line of a restore that ran (not of a check-mode run or a restore test)."""
    p = module.params
    if module.check_mode or p['test_only']:
        return
    audit.module_run(p['audit_log'], 'restore', p['audit_who'], module.warn, started, result.get('changed'), failed,
                     duration=result.get('duration'), backup=result.get('restored_from') or p['backup'],
                     safety_backup=result.get('safety_backup'))


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    check_options(module)

    steps = []
    started = time.time()
    try:
        settings = settings_from_params(module.params, SETTINGS)
        if module.params['test_only']:
            if module.check_mode:
                module.exit_json(changed=False, msg='Would restore %s into a throwaway database, check it and drop it'
                                 % module.params['backup'], steps=steps)
            result = restore_test(settings, module.params['backup'], log=steps.append)
        else:
            result = restore_database(settings, module.params['backup'], module.params['confirm'],
                                      check_mode=module.check_mode, log=steps.append)
    except FAILURES as exc:
        failure = dict(getattr(exc, 'result', {}))
        failure['changed'] = bool(failure.get('swapped') or failure.get('safety_backup'))
        audit_line(module, failure, started, failed=True)
        module.fail_json(msg=describe_failure(exc), steps=steps, **failure)
    audit_line(module, result, started)
    result['steps'] = steps
    module.exit_json(**result)


if __name__ == '__main__':
    main()
