#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_pitr
short_description: Point-in-time recovery of a PostgreSQL container with pgBackRest - setup, backups, window, restore
description:
  - Drives pgBackRest inside the database container (C(docker exec)), or in a throwaway container of its image with
    its network and bind mounts when the container is stopped or lost its data. The repositories are the ones
    C(pgbackrest.conf) names (the pitr role writes it) - a directory on the host and, optionally, an encrypted
    one in S3-compatible storage.
  - "Gap it fills: no module of community.postgresql or community.docker sets up WAL archiving repositories, takes
    or verifies physical backups, computes the recovery window or restores a server to a point in time; doing it by
    hand means stopping the right containers in the right order, a restore into a fresh data directory, waiting for
    the recovery and the promotion, and putting everything back when it fails."
  - "O(operation=setup) (each deploy): C(stanza-create) on every repository that has no stanza, C(pgbackrest check)
    after that (a freshly switched WAL segment reaches every repository), a first full backup where a repository
    holds none. Refuses a repository that holds another database cluster's backups (a re-initialised volume): the
    fix is a restore. On a converged host it costs one C(pgbackrest info)."
  - O(operation=backup) takes a O(backup_type) backup on every repository (or O(repo)), expiring by O(retention_full)
    and O(retention_diff); O(operation=verify) runs C(pgbackrest verify) on every repository and fails on a damaged
    file; O(operation=check) runs C(pgbackrest check); O(operation=info) returns the backups and the recovery window
    of every repository, from the end of its oldest backup to the last commit in its archived WAL (read with
    C(pg_waldump)).
  - "O(operation=restore) restores to O(target) (a time with its zone, or V(latest)): it refuses without O(confirm)
    naming the database and for a target outside the recovery window (printing the window); stops the bot; writes a
    commit and stops the server cleanly when it is this cluster (so every finished WAL segment is archived; one that
    cannot be stops the restore); restores into a new Docker volume; moves the current data directory to
    C(<volume>__pre_pitr_<time>) (kept, RV(drop_previous_command) drops it) and the restored one into the database's
    volume; starts PostgreSQL, waits for the recovery to the target and the promotion (a new timeline), removes the
    recovery settings (restarting once when they were of postmaster context, as a target time's are), records the
    restored database with the data-loss guard and starts the bot again."
  - A restore that fails before the volumes change places leaves the live data as it was; a recovery that fails
    after puts the previous data back and starts it and the bot.
version_added: "1.2.0"
author: SoulNear operations contributors (!UNKNOWN)
extends_documentation_fragment:
  - soulnear_connection
  - soulnear_docker_db
  - soulnear_audit
options:
  operation:
    description: What to do (see the description).
    type: str
    choices: [setup, backup, verify, check, info, restore]
    default: info
  container:
    description: The database container pgBackRest runs in (its image, network and bind mounts are reused); a Docker
      container name.
    type: str
    default: soulnear_postgres
  repo_dir:
    description: The local repository's directory on the host, for its free space in RV(repositories); empty, or an
      absolute path of a directory.
    type: path
    default: ''
  backup_type:
    description: The backup O(operation=backup) takes. A V(diff) or V(incr) without a full before it becomes a full.
    type: str
    choices: [full, diff, incr]
    default: diff
  archiving_resumed:
    description: O(operation=setup) - WAL archiving was just turned on again (archive_mode was off, the postgres role
      knows); take a new full backup on every repository that already holds backups, since the archive misses the
      WAL written meanwhile and a restore from the older backups would stop at that gap.
    type: bool
    default: false
  new_history:
    description: O(operation=setup) - the running server is meant to be another cluster than the one the
      repositories know (a clean redeploy re-initialised the volume, or a logical dump was restored onto a new one).
      C(pgbackrest stanza-upgrade) records it, the old backups stay in the repositories as the stanza's prior
      history, and every repository gets a first full backup. Without it such a server is refused.
    type: bool
    default: false
  target:
    description: O(operation=restore) - a time with its zone (C(2026-11-29 14:05:00+00)) or V(latest) (the last
      archived commit).
    type: str
    default: latest
  confirm:
    description: O(operation=restore) - must be the name of the database (O(login_db)); the whole server is replaced.
    type: str
  repo:
    description: Only this repository (1 the local one, 2 the offsite one). Without it a restore takes the first
      repository whose window holds the target (for V(latest) the one whose archive reaches furthest).
      Only with O(operation=backup) and O(operation=restore); one of the repositories C(pgbackrest.conf) configures
      (pgBackRest numbers them 1 to 256).
    type: int
  recovery_timeout:
    description: Seconds to wait for the recovery to the target and the promotion (1 or more).
    type: int
    default: 1800
  space_margin:
    description: A restore needs the backup's database size times this factor free on the disk of the Docker
      volumes (the restored copy sits next to the kept one). From 0 to 1000000; 0 skips the check.
    type: float
    default: 1.2
  data_guard_file:
    description: The data-loss guard's record, updated after a restore (empty disables; else an absolute path of a
      file).
    type: path
    default: /var/lib/soulnear/data-guard.json
  login_user:
    description: The superuser (a restore writes a commit, waits for the promotion and resets settings).
  login_db:
    description: The bot's database; O(confirm) must name it.
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: setup reports what it would create or back up; restore refuses or reports its plan (repository, backup,
      window); backup and verify report what they would do; nothing is changed.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - the docker CLI and psycopg2 on the managed host; pgBackRest, pg_waldump and zstd in the database image
notes:
  - Docker's C(local) volume driver on the managed host (the volumes' directories change places with two renames).
seealso:
  - module: community.postgresql.postgresql_info
  - module: community.docker.docker_container
'''

EXAMPLES = r'''
- name: Set up the repositories (stanza, check, first full backup)
  pg_pitr:
    operation: setup
    login_host: 127.0.0.1
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot
    container: soulnear_postgres
    stanza: soulnear

- name: Show the recovery window
  pg_pitr:
    operation: info
    container: soulnear_postgres
    stanza: soulnear
  register: pitr

- name: Restore soul_bot to a minute before the table was dropped
  pg_pitr:
    operation: restore
    target: "2026-11-29 14:04:00+00"
    confirm: soul_bot
    login_host: 127.0.0.1
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot
    container: soulnear_postgres
    bot_container: soulnear_bot
'''

RETURN = r'''
changed:
  description: True when something was created, backed up or restored.
  returned: always
  type: bool
msg:
  description: One line for people.
  returned: always
  type: str
  sample: "Restored soul_bot to 2026-11-29 14:04:00+00 from repo1 (backup 20261129-011502F) in 41.3 s: ..."
actions:
  description: What setup did (or would do).
  returned: operation=setup
  type: list
  elements: str
  sample: [stanza soulnear created on repo1, pgbackrest check passed, first full backup on repo1]
backups:
  description: The backups taken (repo, duration, backup with label, type, size, repo_size, start, stop).
  returned: operation=backup
  type: list
  elements: dict
repositories:
  description: Every repository (key, status, message, cipher, system_id, archive_max, backups) for info; the keys
    for setup.
  returned: operation=info or operation=setup
  type: raw
window:
  description: Repository -> {start, end} of its recovery window (UTC, C(YYYY-MM-DD HH:MM:SS+00)).
  returned: operation=info or operation=restore
  type: dict
  sample: {"1": {start: "2026-11-22 01:15:40+00", end: "2026-11-29 14:03:12.52+00"}}
lines:
  description: The report of O(operation=info) for people (what C(make backups) prints).
  returned: operation=info
  type: list
  elements: str
target:
  description: The restore's target, normalised to UTC, or latest.
  returned: operation=restore
  type: str
repo:
  description: The repository restored from.
  returned: operation=restore
  type: int
backup:
  description: The label of the backup the restore started from.
  returned: operation=restore
  type: str
recovered_to:
  description: The time of the last transaction the recovery replayed (the newest data in the restored database).
  returned: operation=restore and not check mode
  type: str
recovery_point:
  description:
    - A restore to latest proves its own recovery point. C(ok) is false, and C(msg) starts with "RESTORED, BUT
      COMMITS THAT POINT-IN-TIME RECOVERY PROMISES ARE MISSING", when the recovery stopped before the last commit in
      the repository's archive (C(archive_last_commit)), or when transactions the server had begun more than
      archive_timeout + 15 s before it was last seen are not back (the data-loss guard's record keeps the monitor's
      samples of the server's next transaction id; C(last_seen), C(promised_before), C(expected_next_xid),
      C(next_xid)). C(problems) says which. The restored data stays in place and the bot runs either way.
  returned: operation=restore with target latest, not check mode
  type: dict
timeline:
  description: The restored server's timeline after the promotion.
  returned: operation=restore and not check mode
  type: int
kept_volume:
  description: The volume holding the data directory from before the restore; null when there was none.
  returned: operation=restore
  type: str
drop_previous_command:
  description: The command that drops RV(kept_volume) once the restored data is confirmed good.
  returned: operation=restore and a volume was kept
  type: str
steps:
  description: Seconds per step of a restore (stop_bot, stop_database, restore_files, swap, recovery).
  returned: operation=restore
  type: dict
duration:
  description: Wall time in seconds.
  returned: success
  type: float
bot:
  description: What happened to O(bot_container) (was_running, stopped, started, downtime).
  returned: operation=restore
  type: dict
data_guard:
  description: What the data-loss guard recorded after the restore.
  returned: operation=restore and not check mode
  type: dict
log:
  description: What the module did, step by step.
  returned: always
  type: list
  elements: str
'''

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear import audit
from ansible.module_utils.soulnear.guard import DEFAULT_STATE_FILE as DATA_GUARD_FILE
from ansible.module_utils.soulnear.pg import HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, connection_argument_spec
from ansible.module_utils.soulnear import pitr
from ansible.module_utils.soulnear.pitr_restore import restore
from ansible.module_utils.soulnear import validate

OPERATIONS = ('setup', 'backup', 'verify', 'check', 'info', 'restore')
SETTINGS = ('container', 'stanza', 'repo_dir', 'retention_full', 'retention_diff', 'bot_container',
            'bot_stop_timeout', 'bot_healthy_timeout', 'db_stop_timeout', 'recovery_timeout', 'space_margin',
            'data_guard_file')


def argument_spec():
    spec = connection_argument_spec()
    defaults = pitr.DEFAULTS
    spec.update(
        operation=dict(type='str', choices=list(OPERATIONS), default='info'),
        container=dict(type='str', default=defaults['container']),
        stanza=dict(type='str', default=defaults['stanza']),
        repo_dir=dict(type='path', default=defaults['repo_dir']),
        backup_type=dict(type='str', choices=list(pitr.BACKUP_TYPES), default='diff'),
        archiving_resumed=dict(type='bool', default=False),
        new_history=dict(type='bool', default=False),
        retention_full=dict(type='int', default=defaults['retention_full']),
        retention_diff=dict(type='int', default=defaults['retention_diff']),
        target=dict(type='str', default=pitr.LATEST),
        confirm=dict(type='str'),
        repo=dict(type='int'),
        bot_container=dict(type='str', default=defaults['bot_container']),
        bot_stop_timeout=dict(type='int', default=defaults['bot_stop_timeout']),
        bot_healthy_timeout=dict(type='int', default=defaults['bot_healthy_timeout']),
        db_stop_timeout=dict(type='int', default=defaults['db_stop_timeout']),
        recovery_timeout=dict(type='int', default=defaults['recovery_timeout']),
        space_margin=dict(type='float', default=defaults['space_margin']),
        data_guard_file=dict(type='path', default=DATA_GUARD_FILE),
        audit_log=dict(type='path'),
        audit_who=dict(type='str'),
    )
    return spec


REPO_OPERATIONS = ('backup', 'restore')


def _target(value):
    try:
        pitr.parse_target(value)
    except pitr.PitrError as exc:
        raise validate.Invalid('latest, or a time with its zone such as 2026-11-29 14:05:00+00', why=str(exc)) from None


def _configured(repo, settings):
    """repo is one of the repositories pgbackrest.conf configures (asked of pgBackRest in the container: it only
    reads); None when pgBackRest cannot tell, which the operation itself then reports."""
    try:
        configured = sorted(pitr.repositories(pitr.info(settings, pitr.Runner(settings['container']))))
    except pitr.FAILURES:
        return
    if configured and repo not in configured:
        raise validate.Invalid('one of the repositories pgbackrest.conf configures: %s' % ', '.join(
            str(k) for k in configured), why='repo%d is not configured' % repo)


def check_options(module, settings):
    """Every option checked before anything runs (validate.py); fails naming each bad one."""
    p = module.params
    options = validate.Options(p, argument_spec())
    validate.connection(options, database=p['operation'] == 'restore')
    options.check('container', validate.name, 'container')
    options.check('bot_container', validate.name, 'container', empty=True)
    options.check('stanza', validate.name, 'stanza')
    options.check('repo_dir', validate.nonempty_path, 'directory', empty=True)
    options.check(('data_guard_file', 'audit_log'), validate.nonempty_path, 'file', empty=True)
    options.check(('retention_full', 'retention_diff'), validate.in_range, 1, 9999999)
    options.check(('bot_stop_timeout', 'bot_healthy_timeout', 'db_stop_timeout', 'recovery_timeout'), validate.seconds)
    options.check('space_margin', validate.in_range, 0, validate.MAX_SPACE_MARGIN)
    if p['operation'] == 'restore':
        options.check('target', _target)
    if p['repo'] is not None and p['operation'] not in REPO_OPERATIONS:
        options.add('repo', p['repo'], validate.Invalid(
            'left out with operation=%s, which works on every repository' % p['operation'],
            why='only operation=backup and operation=restore take one repository', fix='leave repo out'))
    elif options.check('repo', validate.in_range, 1, 256) and not options.problems:
        options.check('repo', _configured, settings)
    options.fail(module)


def _jsonable_windows(windows):
    return dict((str(k), None if w is None else dict(start=pitr.show(w['start']), end=pitr.show(w['end']),
                                                     newest_backup=w['newest_backup']['label']))
                for k, w in windows.items())


def run(module, settings, log):
    p = module.params
    operation = p['operation']
    if operation == 'setup':
        return pitr.setup(settings, check_mode=module.check_mode, log=log, archiving_resumed=p['archiving_resumed'],
                          new_history=p['new_history'])
    if operation == 'info':
        described = pitr.describe(settings)
        return dict(changed=False, lines=described['lines'], repositories=described['repositories'],
                    window=_jsonable_windows(described['windows']), msg='\n'.join(described['lines']))
    if operation == 'restore':
        result = restore(settings, p['target'], p['confirm'], repo=p['repo'], check_mode=module.check_mode, log=log)
        result['window'] = dict((str(k), v) for k, v in result['window'].items())
        return result
    if module.check_mode:
        return dict(changed=operation == 'backup', msg='Would run pgbackrest %s' % (
            '%s backup' % p['backup_type'] if operation == 'backup' else operation))
    if operation == 'backup':
        return pitr.backup(settings, p['backup_type'], repo=p['repo'], log=log)
    if operation == 'verify':
        return pitr.verify(settings, log=log)
    pitr.check(settings)
    return dict(changed=False, msg='pgbackrest check passed: the configuration is valid and WAL reaches every '
                'repository')


def audit_line(module, result, started, failed=False):
    """The audit line of a restore that ran (not of a check-mode run, not of the other operations)."""
    p = module.params
    if module.check_mode or p['operation'] != 'restore':
        return
    audit.module_run(p['audit_log'], 'restore', p['audit_who'], module.warn, started, result.get('changed'), failed,
                     duration=result.get('duration'), downtime=(result.get('bot') or {}).get('downtime'),
                     kind='pitr', target=p['target'],
                     repo=result.get('repo'), backup=result.get('backup'), recovered_to=result.get('recovered_to'),
                     kept_volume=result.get('kept_volume'),
                     recovery_point_ok=(result.get('recovery_point') or {}).get('ok'))


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    steps = []
    conn = dict((k, module.params[k]) for k in connection_argument_spec())
    settings = pitr.make_settings(conn, **dict((k, module.params[k]) for k in SETTINGS))
    check_options(module, settings)
    started = time.time()
    try:
        result = run(module, settings, steps.append)
    except pitr.FAILURES as exc:
        failure = dict(getattr(exc, 'result', None) or {})
        failure.pop('msg', None)
        failure['changed'] = bool(failure.get('kept_volume') or failure.get('restored_volume'))
        audit_line(module, failure, started, failed=True)
        module.fail_json(msg=pitr.describe_failure(exc), log=steps, **failure)
    audit_line(module, result, started)
    result['log'] = steps
    module.exit_json(**result)


if __name__ == '__main__':
    main()
