#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_upgrade
short_description: Upgrade the database container's PostgreSQL to a new major version without losing a row
description:
  - Moves the deployment's database container (O(container), its data volume) from the PostgreSQL major version it
    runs (15) to O(to_version) (17) by dump and restore into a NEW volume, keeping the old volume, the old container
    and the old image until O(operation=confirm); O(operation=rollback) puts them back. The whole procedure, its
    safety and the figures are in docs/upgrade.md.
  - "Gap it fills: community.postgresql and community.docker cannot upgrade a major version - changing the image of
    a container whose volume holds another version's data leaves a server that does not start. Doing it by hand means
    a dump while nothing writes, a new volume, the roles and every database copied and checked, the volumes and
    containers switched, pgBackRest moved to the new cluster, and a way back."
  - "O(operation=upgrade): a preflight that changes nothing when it fails (the confirmation, the versions, disk for
    the copy and the logical backup, extensions and settings the new version has, no tablespace, prepared transaction
    or replication slot, the data-loss guard's flag down); the new cluster initialised in a new volume with the
    settings while the bot still serves; a verified logical backup and a fresh physical backup; the bot and the old
    server stopped (nothing writes during the dump); the old cluster started privately, pg_dumpall --globals-only and
    pg_dump | pg_restore of every database with the new version's tools; row counts of every table compared; the
    volumes swapped by renaming their directories (the old data kept as C(<volume>__pre_upgrade_pg<from>_<time>));
    pgBackRest's stanza upgraded; the old container renamed C(<container>__pre_upgrade_pg<from>) and a new one with
    O(image) and its configuration started; the data-loss guard recording the new cluster; the bot started;
    C(vacuumdb --analyze-in-stages); a first full physical backup of the new cluster."
  - Every step is recorded in O(state_file); a run that fails or is killed resumes when run again. A failure before
    the switch leaves the live data untouched; one during the switch, before the new server took a write, puts the
    old cluster back.
  - "O(operation=rollback): the old volume, container and image back (the new data kept as
    C(<volume>__rolled_back_pg<to>_<time>)). Refused, changing nothing, when the new cluster took writes since the
    switch (or they cannot be counted) unless O(confirm_loss) names the database; then every database that changed is
    dumped first (C(rolled_back_pg<to>_<db>_<time>.dump) in O(backup_dir))."
  - O(operation=confirm) drops the old volume and the old container (the image stays). O(operation=status) reads the
    data volume's version and the state; with O(expect_version) it fails when a deploy would start another version's
    server on the data, or an upgrade is half done.
version_added: "1.3.0"
author: SoulNear operations contributors (!UNKNOWN)
extends_documentation_fragment:
  - soulnear_connection
  - soulnear_docker_db
  - soulnear_audit
options:
  operation:
    description: What to do (see the description).
    type: str
    choices: [status, upgrade, rollback, confirm]
    default: status
  to_version:
    description: O(operation=upgrade) - the major version to upgrade to; one this module knows (16 or 17) and newer
      than the running server's.
    type: int
  image:
    description: O(operation=upgrade) - the image of O(to_version) the new container runs (the postgres role's derived
      image with pgBackRest). A Docker image reference; it must be on the host.
    type: str
    default: ''
  confirm:
    description: O(operation=upgrade), O(operation=rollback) and O(operation=confirm) - must be the name of the
      database (O(login_db)).
    type: str
  confirm_loss:
    description: O(operation=rollback) - the name of the database, to roll back although the new cluster took writes
      since the switch (they are dumped first, and are not in the old data).
    type: str
  expect_version:
    description: O(operation=status) - the major version the inventory says (postgres_major_version); the task fails,
      naming the fix, when the data volume holds another one or an upgrade is half done.
    type: int
  during_upgrade:
    description: O(operation=status) - the upgrade playbook itself asks; an upgrade in progress is then no error.
    type: bool
    default: false
  route:
    description: O(operation=upgrade) - how the data moves. V(auto) and V(dump) are pg_dump and pg_restore (the only
      route kept; docs/upgrade.md says why pg_upgrade is not).
    type: str
    choices: [auto, dump]
    default: auto
  container:
    description: The database container (a Docker container name).
    type: str
    default: soulnear_postgres
  volume:
    description: Its data volume; empty takes the volume mounted at C(/var/lib/postgresql/data).
    type: str
    default: ''
  state_file:
    description: Where the upgrade records its steps (JSON, mode 0600); an absolute path of a file.
    type: path
    default: /var/lib/soulnear/postgres-upgrade.json
  backup_dir:
    description: The backups directory (the logical backup taken first, the dumps a rollback takes); an absolute path.
    type: path
    default: /var/backups/soulnear
  logical_backup:
    description: O(operation=upgrade) - take a verified logical backup of O(login_db) first
      (C(pre_upgrade_pg<to>_<time>.dump)).
    type: bool
    default: true
  physical_backup:
    description: O(operation=upgrade) - the pgBackRest backup taken first (with O(pitr)); V(none) skips it.
    type: str
    choices: [full, diff, incr, none]
    default: diff
  pitr:
    description: Point-in-time recovery is on - pgBackRest runs in the container with the repositories of its
      C(pgbackrest.conf); the stanza follows the new cluster, which gets a first full backup.
    type: bool
    default: true
  repo_dir:
    description: The local pgBackRest repository on the host (for messages); empty, or an absolute path.
    type: path
    default: ''
  start_timeout:
    description: Seconds a new or restarted server gets to accept connections (1 or more).
    type: int
    default: 300
  space_margin:
    description: The new cluster needs the data directory's size times this factor free on the disk of the Docker
      volumes, the logical backup the database's size times it in O(backup_dir). From 0 to 1000000.
    type: float
    default: 1.2
  data_guard_file:
    description: The data-loss guard's record; the new cluster is recorded there (empty disables; else an absolute
      path of a file).
    type: path
    default: /var/lib/soulnear/data-guard.json
  required_tables:
    description: Tables the data-loss guard also observes (soulnear_required_tables).
    type: list
    elements: str
    default: []
  settings:
    description: O(operation=upgrade) - the server settings the postgres role converges (name -> value); the new
      cluster gets them, with every other ALTER SYSTEM setting of the old one, before the switch. A name the new
      version does not have is refused by the preflight.
    type: dict
    default: {}
  login_user:
    description: The superuser (the dump reads every database and role).
  login_db:
    description: The bot's database; O(confirm) must name it.
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: upgrade runs the preflight and reports the plan (or what it would resume); rollback counts the writes
      the new cluster took and reports what it would do or refuses; confirm reports what it would drop; nothing
      changes.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - the docker CLI and psycopg2 on the managed host; Docker's C(local) volume driver (the volumes' directories change
    places by renames)
seealso:
  - module: pg_pitr
  - module: pg_backup
'''

EXAMPLES = r'''
- name: Upgrade the database container to PostgreSQL 17
  pg_upgrade:
    operation: upgrade
    to_version: 17
    image: soulnear/postgres-pitr:17-0123456789ab
    confirm: soul_bot
    login_host: 127.0.0.1
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot
    container: soulnear_postgres
    bot_container: soulnear_bot

- name: Refuse a deploy that would start PostgreSQL 15 on PostgreSQL 17 data
  pg_upgrade:
    operation: status
    expect_version: 15
    container: soulnear_postgres
    volume: soulnear_postgres_data

- name: Roll back, giving up the writes made on 17 (they are dumped first)
  pg_upgrade:
    operation: rollback
    confirm: soul_bot
    confirm_loss: soul_bot
    login_host: 127.0.0.1
    login_password: "{{ vault_postgres_password }}"
    login_db: soul_bot
    bot_container: soulnear_bot
'''

RETURN = r'''
changed:
  description: True when something was (or in check mode would be) upgraded, rolled back or dropped.
  returned: always
  type: bool
msg:
  description: One line for people, with what to do next.
  returned: always
  type: str
  sample: "Upgraded PostgreSQL 15 to 17 in 36.0 s (dump and restore of 111.7 MB, 83305 rows, ...)"
phase:
  description: Where the upgrade stands - copying, switching, switched (in progress), upgraded (not confirmed),
    confirmed, rolled back, failed; null when none was ever started.
  returned: always
  type: str
from_version:
  description: The major version upgraded from.
  returned: operation=upgrade, rollback or confirm
  type: int
to_version:
  description: The major version upgraded to.
  returned: operation=upgrade, rollback or confirm
  type: int
kept_volume:
  description: The volume holding the old data until the upgrade is confirmed.
  returned: operation=upgrade, rollback or confirm
  type: str
old_container:
  description: The old container, kept (stopped) under this name until the upgrade is confirmed.
  returned: operation=upgrade, rollback or confirm
  type: str
old_image:
  description: The image the old container runs.
  returned: operation=upgrade, rollback or confirm
  type: str
new_image:
  description: The image the new container runs.
  returned: operation=upgrade, rollback or confirm
  type: str
system_identifier:
  description: The old cluster's system identifier.
  returned: operation=upgrade, rollback or confirm
  type: str
new_system_identifier:
  description: The new cluster's system identifier.
  returned: operation=upgrade after the switch
  type: str
downtime:
  description: Seconds from stopping the bot to the bot healthy again.
  returned: operation=upgrade, when the bot ran
  type: float
write_downtime:
  description: Seconds from stopping the old server to the new one accepting connections (writes are refused
    meanwhile).
  returned: operation=upgrade
  type: float
logical_backup:
  description: The verified logical backup taken first (path, size, sha256).
  returned: operation=upgrade
  type: dict
physical_backup:
  description: The physical backups taken first (repo, label).
  returned: operation=upgrade with pitr
  type: list
  elements: dict
counts:
  description: Database -> table -> rows, counted on both clusters and equal.
  returned: operation=upgrade
  type: dict
steps:
  description: Seconds per step of the upgrade (staging, backups, stop, source, copy, verify, baseline, close, swap,
    stanza, container, guard, bot, analyze, pitr).
  returned: operation=upgrade
  type: dict
data_size:
  description: Bytes in the old data directory.
  returned: operation=upgrade
  type: int
plan:
  description: The preflight's facts (versions, databases and sizes, extensions, settings, free space).
  returned: operation=upgrade in check mode, or a refused upgrade
  type: dict
problems:
  description: Why the preflight refused, each with its fix.
  returned: a refused upgrade
  type: list
  elements: str
writes:
  description: What the new cluster took since the switch (count, databases, summary); count is null when it cannot
    be told.
  returned: operation=rollback
  type: dict
rollback_dumps:
  description: The dumps of the databases that changed on the new version, taken before rolling back.
  returned: operation=rollback
  type: list
  elements: str
rolled_back_volume:
  description: The volume keeping the new version's data after a rollback.
  returned: operation=rollback
  type: str
ok:
  description: O(operation=status) - false when a deploy must not go on (another version's data, an upgrade half
    done).
  returned: operation=status
  type: bool
data_version:
  description: O(operation=status) - the major version of the data in the volume (PG_VERSION); null without data.
  returned: operation=status
  type: int
state:
  description: O(operation=status) - the state file's content.
  returned: operation=status
  type: dict
duration:
  description: Wall time in seconds.
  returned: operation=upgrade, rollback or confirm
  type: float
log:
  description: What the module did, step by step.
  returned: always
  type: list
  elements: str
'''

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear import audit, upgrade, validate
from ansible.module_utils.soulnear.guard import DEFAULT_STATE_FILE as DATA_GUARD_FILE
from ansible.module_utils.soulnear.pg import HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, connection_argument_spec

OPERATIONS = ('status', 'upgrade', 'rollback', 'confirm')
SETTINGS = ('container', 'volume', 'image', 'to_version', 'route', 'state_file', 'backup_dir', 'logical_backup',
            'physical_backup', 'pitr', 'stanza', 'repo_dir', 'retention_full', 'retention_diff', 'bot_container',
            'bot_stop_timeout', 'bot_healthy_timeout', 'db_stop_timeout', 'start_timeout', 'space_margin',
            'data_guard_file', 'required_tables', 'settings')


def argument_spec():
    spec = connection_argument_spec()
    d = upgrade.DEFAULTS
    spec.update(
        operation=dict(type='str', choices=list(OPERATIONS), default='status'),
        to_version=dict(type='int'),
        image=dict(type='str', default=''),
        confirm=dict(type='str'),
        confirm_loss=dict(type='str'),
        expect_version=dict(type='int'),
        during_upgrade=dict(type='bool', default=False),
        route=dict(type='str', choices=list(upgrade.ROUTES), default=d['route']),
        container=dict(type='str', default=d['container']),
        volume=dict(type='str', default=''),
        state_file=dict(type='path', default=d['state_file']),
        backup_dir=dict(type='path', default=d['backup_dir']),
        logical_backup=dict(type='bool', default=d['logical_backup']),
        physical_backup=dict(type='str', choices=['full', 'diff', 'incr', 'none'], default=d['physical_backup']),
        pitr=dict(type='bool', default=d['pitr']),
        stanza=dict(type='str', default=d['stanza']),
        repo_dir=dict(type='path', default=''),
        retention_full=dict(type='int', default=d['retention_full']),
        retention_diff=dict(type='int', default=d['retention_diff']),
        bot_container=dict(type='str', default=''),
        bot_stop_timeout=dict(type='int', default=d['bot_stop_timeout']),
        bot_healthy_timeout=dict(type='int', default=d['bot_healthy_timeout']),
        db_stop_timeout=dict(type='int', default=d['db_stop_timeout']),
        start_timeout=dict(type='int', default=d['start_timeout']),
        space_margin=dict(type='float', default=d['space_margin']),
        data_guard_file=dict(type='path', default=DATA_GUARD_FILE),
        required_tables=dict(type='list', elements='str', default=[]),
        settings=dict(type='dict', default={}),
        audit_log=dict(type='path'),
        audit_who=dict(type='str'),
    )
    return spec


def _version(value):
    if value not in upgrade.KNOWN_TARGETS:
        raise validate.Invalid('one of %s (the versions this upgrade knows)' % ', '.join(
            str(v) for v in upgrade.KNOWN_TARGETS), why='PostgreSQL %s is not one' % value)


def _major(value):
    validate.in_range(value, upgrade.OLDEST_SOURCE, 99)


def _setting(value):
    validate.name(value, 'setting')


def check_options(module):
    """Every option checked before anything runs (validate.py); fails naming each bad one."""
    p = module.params
    options = validate.Options(p, argument_spec())
    operation = p['operation']
    validate.connection(options, database=operation != 'status')
    options.check('container', validate.name, 'container')
    options.check('volume', validate.name, 'volume', empty=True)
    options.check('bot_container', validate.name, 'container', empty=True)
    options.check('image', validate.name, 'image', empty=True)
    options.check('stanza', validate.name, 'stanza')
    options.check('state_file', validate.nonempty_path, 'file')
    options.check('backup_dir', validate.nonempty_path, 'directory')
    options.check('repo_dir', validate.nonempty_path, 'directory', empty=True)
    options.check(('data_guard_file', 'audit_log'), validate.nonempty_path, 'file', empty=True)
    options.check(('retention_full', 'retention_diff'), validate.in_range, 1, 9999999)
    options.check(('bot_stop_timeout', 'bot_healthy_timeout', 'db_stop_timeout', 'start_timeout'), validate.seconds)
    options.check('space_margin', validate.in_range, 0, validate.MAX_SPACE_MARGIN)
    options.check('expect_version', _major)
    options.each('required_tables', validate.pg_name, 'table')
    for name in sorted(p['settings'] or {}):
        options.value('settings', name, _setting)
    if operation == 'upgrade':
        if p['to_version'] is None:
            options.require('to_version', 'the major version to upgrade to (VERSION=17)')
        else:
            options.check('to_version', _version)
        if not p['image']:
            options.require('image', 'the image of the new version (postgres_image)')
    options.fail(module)


def run(module, settings, log):
    p = module.params
    operation = p['operation']
    if operation == 'status':
        return upgrade.status(settings, expect_version=p['expect_version'], upgrade_running=p['during_upgrade'])
    if operation == 'upgrade':
        return upgrade.upgrade(settings, p['confirm'], check_mode=module.check_mode, log=log)
    if operation == 'rollback':
        return upgrade.rollback(settings, p['confirm'], confirm_loss=p['confirm_loss'], check_mode=module.check_mode,
                                log=log)
    return upgrade.confirm_upgrade(settings, p['confirm'], check_mode=module.check_mode, log=log)


def audit_line(module, result, started, failed=False):
    """The audit line (event upgrade-postgres) of an upgrade, a rollback or a confirm that ran, not of a check-mode
    run or a status. A successful one is recorded also when it changed nothing (a confirm done before)."""
    p = module.params
    if module.check_mode or p['operation'] == 'status':
        return
    audit.module_run(p['audit_log'], 'upgrade-postgres', p['audit_who'], module.warn, started,
                     result.get('changed') or not failed, failed, duration=result.get('duration'),
                     from_version=result.get('from_version'), to_version=result.get('to_version') or p['to_version'],
                     downtime=result.get('downtime'),
                     operation=p['operation'], phase=result.get('phase'), kept_volume=result.get('kept_volume'),
                     write_downtime=result.get('write_downtime'), rollback_dumps=result.get('rollback_dumps') or [])


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    # status connects to nothing: a deploy's version check runs before the docker_host role installed psycopg2 (a
    # dry run on a bare host).
    if not HAS_PSYCOPG2 and module.params['operation'] != 'status':
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    check_options(module)
    steps = []
    conn = dict((k, module.params[k]) for k in connection_argument_spec())
    settings = upgrade.make_settings(conn, **dict((k, module.params[k]) for k in SETTINGS))
    started = time.time()
    try:
        result = run(module, settings, steps.append)
    except upgrade.FAILURES as exc:
        failure = dict(getattr(exc, 'result', None) or {})
        failure.pop('msg', None)
        failure.setdefault('changed', False)
        audit_line(module, failure, started, failed=True)
        module.fail_json(msg=upgrade.describe_failure(exc), log=steps, **failure)
    audit_line(module, result, started)
    result['log'] = steps
    if module.params['operation'] == 'status' and not result['ok']:
        result.pop('state', None)  # the message says what to do; make upgrade-postgres-status shows the state
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
