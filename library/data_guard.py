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
  - Keeps a record on the managed host (O(state_file), mode 0600) with one entry per database name, holding the
    database cluster it lives in (its C(system_identifier), which changes when the data volume is re-initialised)
    and which of its tables held rows. It observes the database's own tables, whatever the bot calls them (every
    ordinary table outside C(pg_catalog), C(information_schema) and C(pg_toast), in any schema the login may read,
    without extension and unlogged tables), counting rows up to 10000 per table, at most the 100 largest tables plus
    those that held rows when last recorded and O(required_tables). The tracking table of the migrations
    (O(migrations_table), and the known tools' ones such as C(alembic_version) or C(flyway_schema_history)) is
    recorded, but its rows are not data, so a freshly migrated schema has held no data yet.
  - A database name without an entry is recorded afresh (nothing to lose there yet), even when the host has
    entries of other databases. A record of an older version (one database) is read as the entry of its database
    and rewritten in the current form.
  - "Gap it fills: nothing in community.postgresql or community.docker notices that a database came back empty
    after its volume was lost; C(postgresql_db) creates it again and the migrations then build an empty schema
    over the place the data should be restored to. This module is the check a deploy runs B(before) its
    migrations."
  - "O(operation=check) (the deploy): passes on the first deploy to an empty database (nothing to lose) and on
    the recorded database while it holds data, and brings the record up to date. It fails - and raises the
    data-loss flag of that database, which stays raised - when the record says the data existed and the database is
    now another cluster, or empty: the tables that held rows when last recorded are missing or empty and no other
    table holds rows (a table dropped on purpose while others hold rows is not data loss), or every one of
    O(required_tables) is missing or empty. The refusal lists those tables, names the newest verified backup and
    the command that restores it (C(make restore BACKUP=latest CONFIRM=<db>))."
  - While the flag is raised every check fails, C(db_health)'s C(tables) check fails and the host monitor
    repeats its DATA LOSS alert, until a restore completes (the C(pg_restore) module records the restored database
    and lowers the flag) or an operator clears it (O(operation=clear) with O(confirm), C(make guard-clear
    CONFIRM=<db>), or C(soulnear-health guard clear --confirm <db>) on the host).
  - "O(allow_empty_database=true) lets an empty database through (a deliberate clean redeploy, or a first deploy
    onto a volume emptied on purpose): the record starts over and the flag is lowered; the record's events keep
    what was replaced."
  - O(operation=query) only reports the entry of O(login_db).
version_added: "1.2.0"
author: SoulNear operations contributors (!UNKNOWN)
options:
  operation:
    description: Compare and record (V(check)), accept the current database and lower the flag (V(clear)), or
      only report (V(query)).
    type: str
    choices: [check, clear, query]
    default: check
  state_file:
    description: The guard's record on the managed host (the host monitor and C(db_health) read the same file); an
      absolute path of a file, not a directory.
    type: path
    default: /var/lib/soulnear/data-guard.json
  required_tables:
    description:
      - Optional tables to observe in addition to the database's own (optionally schema-qualified), observed even
        when missing. When set, every one of them missing or empty also means the database is empty.
      - None by default; the tables the bot uses are found without naming them.
      - Each a PostgreSQL table name of at most 63 bytes (per part of C(schema.table)).
    type: list
    elements: str
    default: []
  migrations_table:
    description: The migration tracking table (the deploy's C(soulnear_migrations_table)); its rows do not count as
      data.
    type: str
    default: schema_migrations
  allow_empty_database:
    description: Let an empty database through even though the record says data existed (clean redeploy). A
      database that holds data but is another cluster is still refused; clear the flag for that.
    type: bool
    default: false
  confirm:
    description: With O(operation=clear), must equal the name of the database being accepted (O(login_db)); only
      its entry and flag change.
    type: str
  actor:
    description: Who runs the check, for the record's events and the flag (for example C(alice@laptop deploy)).
    type: str
    default: ''
  backup_dir:
    description: Backups directory, to name the newest verified backup of O(login_db) in the refusal (an absolute
      path of a directory).
    type: path
    default: /var/backups/soulnear
  backup_name_pattern:
    description: File name pattern of the backups.
    type: str
    default: backup_%Y%m%d_%H%M%S.dump
  db_container:
    description:
      - The database container, where C(pg_restore) reads a backup. With no record of the database on this host and
        the database empty, the newest verified backup of it in O(backup_dir) is read (until its first row); when it
        holds data, the database is refused like any other data loss (a rebuilt host pointed at the old backup
        disk). Not used with O(client_image). A Docker container name.
    type: str
    default: soulnear_postgres
  client_image:
    description: For a database this host does not own, the image C(pg_restore) runs in (see pg_backup's
      O(pg_backup#module:client_image)); a Docker image reference.
    type: str
  pitr:
    description:
      - Point-in-time recovery is on (C(soulnear_pitr_enabled)). The refusal then names the restore to the latest
        archived commit (C(make restore TIME=latest)) first, the newest dump only as the fallback.
    type: bool
    default: false
  login_user:
    description: Role to connect as; the application's role, which owns the application's tables.
  login_db:
    description: The application's database (required); the record's entry of this name is compared and updated.
extends_documentation_fragment:
  - soulnear_connection
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Decides exactly as for real; neither records nor raises or lowers the flag.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
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
        migrations_table: "{{ soulnear_migrations_table }}"
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
  description: The database now (database, system_identifier, database_oid, tables with row counts up to 10000,
    holding (the tables whose rows are data), bookkeeping (tracking tables), required, empty, tables_total).
  returned: unless operation is query
  type: dict
  sample: {database: soul_bot, system_identifier: "7313214194725303163", tables: {public.customers: 12,
           public.orders: 40, public.schema_migrations: 3}, holding: [public.orders, public.customers],
           bookkeeping: [public.schema_migrations], required: [], empty: false, tables_total: 3}
record:
  description: The record's entry of O(login_db) after the call (database, system_identifier, tables, held,
    had_data, recorded_at, progress, C(flag) when raised, and the C(events) of this database); null when there is
    none (query).
  returned: always
  type: dict
  sample: {database: soul_bot, system_identifier: "7313214194725303163", held: [public.orders, public.customers],
           had_data: true, flag: null}
databases:
  description: The database names the record has entries of.
  returned: when operation is query
  type: list
  elements: str
  sample: [soul_bot]
flag:
  description: The raised flag of O(login_db) (raised_at, by, reason, problem); null when not raised.
  returned: always
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear import guard
from ansible.module_utils.soulnear.backup_files import DEFAULT_NAME_PATTERN
from ansible.module_utils.soulnear.backup_settings import DEFAULTS as BACKUP_DEFAULTS
from ansible.module_utils.soulnear.backup_settings import make_settings
from ansible.module_utils.soulnear import defaults
from ansible.module_utils.soulnear.pg import (
    HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, ConnectError, connect, connection_argument_spec)
from ansible.module_utils.soulnear import validate


def argument_spec():
    spec = connection_argument_spec()
    spec.update(
        operation=dict(type='str', choices=list(guard.OPERATIONS), default='check'),
        state_file=dict(type='path', default=guard.DEFAULT_STATE_FILE),
        required_tables=dict(type='list', elements='str', default=list(defaults.REQUIRED_TABLES)),
        migrations_table=dict(type='str', default=defaults.MIGRATIONS_TABLE),
        allow_empty_database=dict(type='bool', default=False),
        confirm=dict(type='str'),
        actor=dict(type='str', default=''),
        backup_dir=dict(type='path', default=BACKUP_DEFAULTS['backup_dir']),
        backup_name_pattern=dict(type='str', default=DEFAULT_NAME_PATTERN),
        pitr=dict(type='bool', default=False),
        db_container=dict(type='str', default=BACKUP_DEFAULTS['container']),
        client_image=dict(type='str'),
    )
    return spec


def check_options(module):
    """Every option checked before the record is read or written (validate.py); fails naming each bad one."""
    options = validate.Options(module.params, argument_spec())
    validate.connection(options, database=True)
    options.check('state_file', validate.nonempty_path, 'file')
    options.each('required_tables', validate.pg_name, 'table')
    options.check('migrations_table', validate.pg_name, 'table')
    options.check('backup_dir', validate.nonempty_path, 'directory')
    options.check('backup_name_pattern', validate.file_pattern)
    if not module.params['client_image']:
        options.check('db_container', validate.name, 'container')
    options.check('client_image', validate.name, 'image', empty=True)
    options.fail(module)


def observe(module, params):
    try:
        conn = connect(params, application_name='soulnear data_guard')
    except ConnectError as exc:
        module.fail_json(msg='the data-loss guard could not connect: %s' % exc, ok=False, status='refused',
                         problem=None)
    try:
        return guard.observe(conn, params['required_tables'], state_file=params['state_file'],
                             migrations_table=params['migrations_table'])
    finally:
        conn.close()


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    check_options(module)
    params = module.params
    path = params['state_file']
    actor = params['actor'] or guard.default_actor()
    try:
        if params['operation'] == 'query':
            found = guard.status(path, params['login_db'])
            module.exit_json(changed=False, ok=not found['flag'], status='query', problem=(found['flag'] or {}).get(
                'problem'), msg=found['message'], record=found['record'], flag=found['flag'],
                databases=found['databases'])
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

        def evidence():
            settings = make_settings(dict((k, params[k]) for k in connection_argument_spec()),
                                     container=params['db_container'], client_image=params['client_image'] or '',
                                     backup_dir=params['backup_dir'])
            return guard.backup_evidence(settings, params['login_db'], params['backup_dir'],
                                         params['backup_name_pattern'], skip=[params['migrations_table']])
        result = guard.check(path, observed, allow_empty=params['allow_empty_database'], by=actor,
                             check_mode=module.check_mode, evidence=evidence,
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
