#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: data_guard
short_description: Refuse to migrate or start the bot over a database that lost its data
description:
  - Keeps a record on the managed host (O(state_file), mode 0600) of the database cluster the deployment runs on
    (its C(system_identifier), which changes when the data volume is re-initialised) and of the fact that data
    existed (row counts of O(required_tables), counted up to 10000 rows each).
  - "Gap it fills: nothing in community.postgresql or community.docker notices that a database came back empty
    after its volume was lost; C(postgresql_db) creates it again and the migrations then build an empty schema
    over the place the data should be restored to. This module is the check a deploy runs B(before) its
    migrations."
  - "O(operation=check) (the deploy): passes on the first deploy to an empty database (nothing to lose) and on
    the recorded database while it holds data, and brings the record up to date. It fails - and raises the
    data-loss flag, which stays raised - when the record says the data existed and the database is now empty or
    another cluster. The failure names the newest verified backup and the command that restores it
    (C(make restore BACKUP=latest CONFIRM=<db>))."
  - While the flag is raised every check fails, C(db_health)'s C(tables) check fails and the host monitor
    repeats its DATA LOSS alert, until a restore completes (the C(pg_restore) module records the restored database
    and lowers the flag) or an operator clears it (O(operation=clear) with O(confirm), C(make guard-clear
    CONFIRM=<db>), or C(soulnear-health guard clear --confirm <db>) on the host).
  - "O(allow_empty_database=true) lets an empty database through (a deliberate clean redeploy, or a first deploy
    onto a volume emptied on purpose): the record starts over and the flag is lowered; the record's events keep
    what was replaced."
  - O(operation=query) only reports the record.
version_added: "1.2.0"
author: SoulNear operations contributors
options:
  operation:
    description: Compare and record (V(check)), accept the current database and lower the flag (V(clear)), or
      only report (V(query)).
    type: str
    choices: [check, clear, query]
    default: check
  state_file:
    description: The guard's record on the managed host (the host monitor and C(db_health) read the same file).
    type: path
    default: /var/lib/soulnear/data-guard.json
  required_tables:
    description: Tables whose rows prove the data existed, optionally schema-qualified. Every one missing or empty
      means the database is empty.
    type: list
    elements: str
    default: [aiogram_states, schema_migrations]
  allow_empty_database:
    description: Let an empty database through even though the record says data existed (clean redeploy). A
      database that holds data but is another cluster is still refused; clear the flag for that.
    type: bool
    default: false
  confirm:
    description: With O(operation=clear), must equal the name of the database being accepted (O(login_db)).
    type: str
  actor:
    description: Who runs the check, for the record's events and the flag (for example C(alice@laptop deploy)).
    type: str
    default: ''
  backup_dir:
    description: Backups directory, to name the newest verified backup of O(login_db) in the refusal.
    type: path
    default: /var/backups/soulnear
  backup_name_pattern:
    description: File name pattern of the backups.
    type: str
    default: backup_%Y%m%d_%H%M%S.dump
  pitr:
    description:
      - Point-in-time recovery is on (C(soulnear_pitr_enabled)). The refusal then names the restore to the latest
        archived commit (C(make restore TIME=latest)) first, the newest dump only as the fallback.
    type: bool
    default: false
  login_user:
    description: Role to connect as; the application's role, which owns the required tables.
  login_db:
    description: The application's database (required).
extends_documentation_fragment:
  - soulnear_connection
attributes:
  check_mode:
    support: full
    details: Decides exactly as for real; neither records nor raises or lowers the flag.
  diff_mode:
    support: none
requirements:
  - psycopg2 on the managed host
notes:
  - "Wire it into a deploy before the migrations, with the app login and the failure idiom of the project
    (block with C(no_log: true), rescue printing C(ansible_failed_result.msg)); run it again after the bot
    started so the record holds the migrated state. See EXAMPLES."
seealso:
  - module: pg_restore
  - module: db_health
'''

EXAMPLES = r'''
- name: Refuse to migrate over lost data (before the migrations)
  module_defaults:
    data_guard: "{{ soulnear_app_login }}"
  block:
    - name: Compare the database with the data-loss guard's record
      data_guard:
        state_file: "{{ soulnear_data_guard_file }}"
        backup_dir: "{{ soulnear_backup_dir }}"
        backup_name_pattern: "{{ soulnear_backup_name_pattern }}"
        allow_empty_database: "{{ app_allow_empty_database | default(false) | bool }}"
        actor: "ansible deploy of {{ inventory_hostname }}"
      no_log: true
  rescue:
    - name: Stop the deploy before anything touches the database
      ansible.builtin.fail:
        msg: "{{ ansible_failed_result.msg }}"

- name: Accept the current database and lower the flag (make guard-clear CONFIRM=soul_bot)
  data_guard:
    operation: clear
    confirm: soul_bot
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot

- name: Show the record
  data_guard:
    operation: query
    login_db: soul_bot
  register: guard
'''

RETURN = r'''
ok:
  description: False when the database was refused (the task then fails) or the flag is raised (query).
  returned: always
  type: bool
  sample: true
status:
  description: What the check decided, or C(cleared) / C(query).
  returned: always
  type: str
  choices: [recorded, updated, accepted empty, refused, cleared, query]
  sample: updated
problem:
  description: Why it was refused; null when it passed.
  returned: always
  type: str
  choices: [flag, identity, empty]
  sample: identity
msg:
  description: One line for people; on a refusal the reason, the newest verified backup and the restore command.
  returned: always
  type: str
  sample: "DATA LOSS SUSPECTED: the database server is another cluster than the one recorded ... make restore
    BACKUP=latest CONFIRM=soul_bot ..."
observed:
  description: The database now (database, system_identifier, database_oid, tables with row counts, empty).
  returned: unless operation is query
  type: dict
  sample: {database: soul_bot, system_identifier: "7313214194725303163", tables: {aiogram_states: 12,
           schema_migrations: 3}, empty: false}
record:
  description: The record after the call (with C(flag) when raised, and C(events)).
  returned: always
  type: dict
flag:
  description: The raised flag (raised_at, by, reason, problem); null when not raised.
  returned: always
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear import guard
from ansible.module_utils.soulnear.backup_files import DEFAULT_NAME_PATTERN
from ansible.module_utils.soulnear.backup_settings import DEFAULTS as BACKUP_DEFAULTS
from ansible.module_utils.soulnear.checks import DEFAULTS as CHECK_DEFAULTS
from ansible.module_utils.soulnear.pg import (
    HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, ConnectError, connect, connection_argument_spec)


def argument_spec():
    spec = connection_argument_spec()
    spec.update(
        operation=dict(type='str', choices=list(guard.OPERATIONS), default='check'),
        state_file=dict(type='path', default=guard.DEFAULT_STATE_FILE),
        required_tables=dict(type='list', elements='str', default=list(CHECK_DEFAULTS['required_tables'])),
        allow_empty_database=dict(type='bool', default=False),
        confirm=dict(type='str'),
        actor=dict(type='str', default=''),
        backup_dir=dict(type='path', default=BACKUP_DEFAULTS['backup_dir']),
        backup_name_pattern=dict(type='str', default=DEFAULT_NAME_PATTERN),
        pitr=dict(type='bool', default=False),
    )
    return spec


def observe(module, params):
    try:
        conn = connect(params, application_name='soulnear data_guard')
    except ConnectError as exc:
        module.fail_json(msg='the data-loss guard could not connect: %s' % exc, ok=False, status='refused',
                         problem=None)
    try:
        return guard.observe(conn, params['required_tables'])
    finally:
        conn.close()


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    params = module.params
    path = params['state_file']
    actor = params['actor'] or guard.default_actor()
    if not params['login_db']:
        module.fail_json(msg='login_db is required: the application database the guard watches (e.g. soul_bot)')
    try:
        if params['operation'] == 'query':
            found = guard.status(path)
            module.exit_json(changed=False, ok=not found['flag'], status='query', problem=(found['flag'] or {}).get(
                'problem'), msg=found['message'], record=found['record'], flag=found['flag'])
        if params['operation'] == 'clear':
            if params['confirm'] != params['login_db']:
                module.fail_json(msg='clearing the data-loss flag accepts the current %s as the real data; confirm it '
                                 'with confirm=%s (make guard-clear CONFIRM=%s). Nothing was changed'
                                 % (params['login_db'], params['login_db'], params['login_db']),
                                 ok=False, status='refused', problem=None)
            observed = observe(module, params)
            done = guard.accept(path, observed, by=actor, reason='accepted by %s (data_guard clear)' % actor,
                                check_mode=module.check_mode)
            module.exit_json(changed=True, ok=True, status='cleared', problem=None, msg=done['msg'],
                             observed=observed, record=done['record'], flag=None)
        observed = observe(module, params)
        result = guard.check(path, observed, allow_empty=params['allow_empty_database'], by=actor,
                             check_mode=module.check_mode,
                             advice=lambda: guard.restore_advice(params['login_db'], params['backup_dir'],
                                                                 params['backup_name_pattern'], params['pitr']))
    except guard.GuardError as exc:
        module.fail_json(msg=str(exc), ok=False, status='refused', problem=None)
    record = result['record'] or {}
    output = dict(changed=result['changed'], ok=result['ok'], status=result['status'], problem=result['problem'],
                  msg=result['msg'], observed=observed, record=record, flag=record.get('flag'))
    if result['status'] == 'accepted empty':
        module.warn(result['msg'])
    if not result['ok']:
        module.fail_json(**output)
    module.exit_json(**output)


if __name__ == '__main__':
    main()
