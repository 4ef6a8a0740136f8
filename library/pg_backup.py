#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_backup
short_description: Take a verified, checksummed PostgreSQL backup from a database container, with retention
description:
  - Runs C(pg_dump) inside the database container (C(docker exec)), so the client version is the server's own, and
    streams the custom-format archive to O(backup_dir) on the host.
  - "Gap it fills: community.postgresql's C(postgresql_db) with C(state=dump) runs the pg_dump installed where the
    module runs (often a different major version than the server, or none at all on a Docker host), writes straight
    to the final file name, records no checksum, never checks that the archive is readable and keeps no retention.
    This module makes backups that can be trusted and pruned safely."
  - The archive is written to a hidden temporary file, hashed (sha256) while it is written, fsynced and read back
    with C(pg_restore --list). Only then are the sha256 sidecar (C(<name>.sha256), in C(sha256sum -c) format) and the
    final name C(backup_YYYYMMDD_HHMMSS.dump) (O(name_pattern)) written. A failed or interrupted run never leaves a
    file under a final name; a temporary file left by a killed run is removed by the next run.
  - Before writing anything it compares the free space of O(backup_dir) with the database size times
    O(space_margin) and refuses with a clear message when the space is short.
  - "Retention (O(prune)): keeps the newest backup of each of the O(keep_daily) most recent days, O(keep_weekly)
    ISO weeks and O(keep_monthly) months that have a backup, plus the O(keep_last) newest; deletes the other verified
    backups that follow O(name_pattern). Files without a sidecar are reported and never deleted. The newest verified
    backup is never deleted."
  - "Several databases can share O(backup_dir): the sidecar records the database (C(# database: soul_bot), a
    comment line C(sha256sum -c) ignores), and retention only ever prunes backups of O(login_db). Backups written
    before that are attributed by the database name in their archive header."
  - A lock file in O(backup_dir) keeps backups, restores and restore tests from running at the same time. Under it,
    after retention, scratch databases a killed restore left (C(<db>__restore_*) without sessions) are dropped
    and logged (RV(dropped_databases)).
  - O(offsite) copies the verified backup and its sidecar to a second location after verification.
version_added: "1.0.0"
author: SoulNear operations contributors (!UNKNOWN)
options:
  backup_dir:
    description: Directory on the host for the backups, an absolute path (not a file); created with mode 0700 when
      missing. Files are mode 0600.
    type: path
    required: true
  container:
    description: Name of the running database container C(pg_dump) runs in (a Docker container name).
    type: str
    default: soulnear_postgres
  exec_user:
    description: Operating-system user inside the container that runs C(pg_dump) (C(docker exec -u) - a user or uid,
      optionally C(:group)).
    type: str
    default: postgres
  name_pattern:
    description:
      - File name of a backup, with C(%Y %m %d) (required) and C(%H %M %S) (optional) replaced by the local time.
      - Retention parses the date back from the name, so only files following this pattern are pruned.
      - A plain file name - no C(/), not hidden, not ending in C(.sha256).
    type: str
    default: backup_%Y%m%d_%H%M%S.dump
  compression:
    description:
      - Compression of the custom-format archive. V(auto) is V(zstd) where the server's C(pg_dump) supports it
        (PostgreSQL 16 and later) and V(gzip) before that. V(zstd) and V(lz4) fail on PostgreSQL 15 and older.
    type: str
    choices: [auto, gzip, zstd, lz4, none]
    default: auto
  compression_level:
    description:
      - Compression level (gzip 0-9, zstd 1-22, lz4 1-12; with V(auto), 1-9, valid whichever it picks; none with
        V(none)). Default is pg_dump's own.
    type: int
  verify:
    description:
      - V(list) reads the archive's table of contents back with C(pg_restore --list) (cheap).
      - V(full) also decompresses every data block (C(pg_restore -f /dev/null)); slower, catches corrupt data too.
    type: str
    choices: [list, full]
    default: list
  space_margin:
    description:
      - The backup is refused unless O(backup_dir) has at least the database size (C(pg_database_size)) times this
        factor free. Dumps are usually much smaller than the database; the margin protects the disk the database
        may share with the backups.
      - From 0 to 1000000; 0 skips the check.
    type: float
    default: 1.2
  prune:
    description: Apply the retention policy after a successful backup.
    type: bool
    default: true
  keep_daily:
    description: Number of most recent days whose newest backup is kept (0 or more).
    type: int
    default: 7
  keep_weekly:
    description: Number of most recent ISO weeks whose newest backup is kept (0 or more).
    type: int
    default: 4
  keep_monthly:
    description: Number of most recent months whose newest backup is kept (0 or more).
    type: int
    default: 6
  keep_last:
    description: Number of newest verified backups always kept, whatever the other rules say (at least 1).
    type: int
    default: 2
  keep_safety_backups:
    description: Safety backups a restore takes (C(pre_restore_*.dump)) are pruned too; the newest this many of
      O(login_db) are kept (at least 1).
    type: int
    default: 3
  offsite:
    description:
      - Second location for a copy of each verified backup and its sidecar. A directory path (for example a mounted
        disk; the same retention is applied there) or an rsync target (C(user@host:/path/) or C(rsync://...); no
        retention is applied there). Empty disables it. A path must be absolute.
      - A failed copy is a warning and C(offsite.ok=false) in the result; the local backup is still good.
    type: str
    default: ''
  login_user:
    description: Role C(pg_dump) and the size query connect as; a superuser or the owner of every object.
  login_password:
    description:
      - Password of O(login_user). Passed to C(pg_dump) as the PGPASSWORD environment variable of C(docker exec),
        by name only, so it never shows in a process list.
  login_host:
    description: Host the module connects to for the size query (the port published on the Docker host).
  login_db:
    description: Database to back up (required).
extends_documentation_fragment:
  - soulnear_connection
  - soulnear_connection.client_image
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Connects, measures the database and the free space and fails where a real run would refuse; reports the file
        name it would write and what retention would prune. Writes nothing, not even the directory or the lock file.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Before and after are the lists of backups in O(backup_dir).
requirements:
  - psycopg2 and the docker CLI on the host that runs the module (the database host)
notes:
  - Restore with the pg_restore module, which checks the sidecar before touching anything.
  - The backup role installs the same logic as the C(soulnear-backup) command and runs it from cron.
seealso:
  - module: community.postgresql.postgresql_db
'''

EXAMPLES = r'''
- name: Back up the bot's database now
  pg_backup:
    backup_dir: /var/backups/soulnear
    container: soulnear_postgres
    login_host: 127.0.0.1
    login_user: postgres
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot
  register: backup

- name: Show what a backup would do and prune (dry run)
  pg_backup:
    backup_dir: /var/backups/soulnear
    login_host: 127.0.0.1
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot
  check_mode: true

- name: Back up with zstd (PostgreSQL 16+), a full read-back and a copy to a mounted disk
  pg_backup:
    backup_dir: /var/backups/soulnear
    login_host: 127.0.0.1
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot
    compression: zstd
    compression_level: 5
    verify: full
    offsite: /mnt/backup-disk/soulnear
'''

RETURN = r'''
changed:
  description: True when a backup was written (in check mode, would be).
  returned: always
  type: bool
  sample: true
msg:
  description: Summary in the operators' words.
  returned: always
  type: str
  sample: Backed up soul_bot to /var/backups/soulnear/backup_20250105_020001.dump (12.4 MB) in 3.1 s; pruned 1
path:
  description: Final path of the backup (in check mode, the path it would have).
  returned: success
  type: str
  sample: /var/backups/soulnear/backup_20250105_020001.dump
size:
  description: Size of the archive in bytes; null in check mode.
  returned: success
  type: int
  sample: 13002311
sha256:
  description: sha256 of the archive, also written to the C(.sha256) sidecar; null in check mode.
  returned: success
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
duration:
  description: Wall time in seconds (dump, fsync, verification, retention, offsite copy).
  returned: success
  type: float
  sample: 3.14
pruned:
  description: Backups deleted by retention (in check mode, those that would be).
  returned: success
  type: list
  elements: str
  sample: [backup_20241201_020001.dump]
kept:
  description: Verified backups kept, each with the rules that keep it (last, daily, weekly, monthly).
  returned: success
  type: list
  elements: dict
  sample: [{name: backup_20250105_020001.dump, reasons: [last, daily, weekly, monthly]}]
unverified:
  description: Files following O(name_pattern) without a sidecar; left alone.
  returned: success
  type: list
  elements: str
  sample: []
database:
  description: Database backed up.
  returned: success
  type: str
  sample: soul_bot
database_size:
  description: C(pg_database_size) of the database in bytes.
  returned: success
  type: int
  sample: 52133427
estimated_size:
  description: Space required before starting (database size times O(space_margin)), in bytes.
  returned: always
  type: int
  sample: 62560112
free_before:
  description: Free bytes in O(backup_dir) before the backup.
  returned: always
  type: int
  sample: 81861992448
compression:
  description: Compression used, as passed to pg_dump (V(gzip) means pg_dump's default level).
  returned: success
  type: str
  sample: gzip
tables:
  description: Number of tables with data in the archive (from C(pg_restore --list)).
  returned: success and not check mode
  type: int
  sample: 7
verified:
  description: True once the archive was read back (C(pg_restore --list), and fully with O(verify=full)).
  returned: success and not check mode
  type: bool
  sample: true
toc_entries:
  description: Number of entries in the archive's table of contents.
  returned: success and not check mode
  type: int
  sample: 24
created_dir:
  description: Whether O(backup_dir) was (in check mode, would be) created.
  returned: success
  type: bool
  sample: false
offsite:
  description: Result of the offsite copy (target, ok, kind, pruned or error); null when O(offsite) is empty.
  returned: success
  type: dict
  sample: {target: /mnt/backup-disk/soulnear, ok: true, kind: path, pruned: []}
pruned_safety:
  description: Safety backups (C(pre_restore_*)) deleted beyond O(keep_safety_backups).
  returned: success and not check mode
  type: list
  elements: str
  sample: [pre_restore_20241201_101500.dump]
dropped_databases:
  description: Scratch databases of an interrupted restore that were dropped.
  returned: success and not check mode
  type: list
  elements: str
  sample: [soul_bot__restore_20250105_101500]
stale_removed:
  description: Temporary files of an interrupted earlier run that were removed.
  returned: success
  type: list
  elements: str
  sample: []
steps:
  description: What the module did, step by step.
  returned: always
  type: list
  elements: str
  sample: [dumping soul_bot (49.7 MB) with pg_dump in soulnear_postgres, compression gzip]
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear.backup import create_backup
from ansible.module_utils.soulnear.backup_files import FAILURES, describe_failure, list_backups
from ansible.module_utils.soulnear.backup_settings import settings_argument_spec, settings_from_params
from ansible.module_utils.soulnear.files import human
from ansible.module_utils.soulnear.pg import HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, connection_argument_spec
from ansible.module_utils.soulnear import validate

# The backup settings this module takes; types, defaults and choices come from backup_settings.
SETTINGS = ('backup_dir', 'container', 'exec_user', 'client_image', 'name_pattern', 'compression', 'compression_level',
            'verify', 'space_margin', 'prune', 'keep_daily', 'keep_weekly', 'keep_monthly', 'keep_last',
            'keep_safety_backups', 'offsite')


def argument_spec():
    spec = connection_argument_spec()
    spec.update(settings_argument_spec(SETTINGS))
    return spec


def check_options(module):
    """Every option checked before anything is written (validate.py); fails naming each bad one."""
    options = validate.Options(module.params, argument_spec())
    validate.connection(options, database=True)
    validate.backup_settings(options, SETTINGS)
    options.fail(module)


def summary(result, check_mode):
    pruned = len(result['pruned'])
    if check_mode:
        return 'Would back up %s (%s) to %s; would prune %d' % (result['database'], human(result['database_size']),
                                                                result['path'], pruned)
    return 'Backed up %s to %s (%s) in %.1f s; pruned %d' % (result['database'], result['path'],
                                                             human(result['size']), result['duration'], pruned)


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    check_options(module)

    steps = []
    try:
        settings = settings_from_params(module.params, SETTINGS)
        before = [b['name'] for b in list_backups(settings['backup_dir'], settings['name_pattern'])]
        result = create_backup(settings, check_mode=module.check_mode, log=steps.append)
    except FAILURES as exc:
        # A failed backup leaves nothing behind: its temporary file is removed.
        module.fail_json(msg=describe_failure(exc), steps=steps, **dict(getattr(exc, 'result', {}), changed=False))

    offsite = result.get('offsite')
    if offsite and not offsite['ok']:
        module.warn('the backup is good, but the offsite copy to %s failed: %s' % (offsite['target'], offsite['error']))
    result['msg'] = summary(result, module.check_mode)
    result['steps'] = steps
    if module._diff:
        new = [] if result['path'] is None else [result['path'].rsplit('/', 1)[-1]]
        after = sorted(set(before + new) - set(result['pruned']), reverse=True)
        result['diff'] = dict(before='\n'.join(before) + '\n', after='\n'.join(after) + '\n',
                              before_header=settings['backup_dir'], after_header=settings['backup_dir'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
