#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_migrate
short_description: Apply versioned SQL migration files to PostgreSQL, tracked and locked
description:
  - Applies the C(*.sql) files of a directory to a PostgreSQL database in version order, each file in its own
    transaction, and records every applied file in a tracking table (C(schema_migrations) by default) with its
    version, name, sha256 checksum, applied_at, execution time, success and who applied it.
  - "Gap it fills: community.postgresql has C(postgresql_script) and C(postgresql_query), which run SQL but keep no
    record of what ran, take no lock against a concurrent run, and cannot detect a changed file. This module is the
    missing migration runner: ordering, tracking, drift detection, locking, baseline and failure reporting."
  - "File names and ordering: C(001_init.sql), C(20251105_add_x.sql) (a number, then C(_), C(-) or C(.) and a
    description) or Flyway style C(V1_2__description.sql) / C(V1.2__description.sql). Versions are compared
    numerically part by part (2 < 10 < 10.1 < 20251105). C(R__description.sql) files are repeatable: they are
    (re)applied after the versioned files whenever their checksum changes. Any other C(.sql) file fails the run
    (it would otherwise never be applied). Files not ending in C(.sql) are ignored."
  - The checksum is the sha256 of the file with a UTF-8 BOM removed and line endings normalised to LF.
  - A session-level advisory lock is held for the whole run. A second runner waits up to O(lock_timeout) seconds,
    then fails naming the holder (pid, application_name, client).
  - Each file runs statement by statement inside one transaction, so a failure names the file, the line of the
    failing statement and PostgreSQL's message; the failing file is rolled back completely, later files are not
    run and files before it stay applied. A file wrapped in its own C(BEGIN;) ... C(COMMIT;) is accepted (our
    transaction replaces its own); other transaction control statements are refused.
  - "A first line C(-- pg_migrate: no-transaction) runs the file outside a transaction, one statement at a time (for
    C(CREATE INDEX CONCURRENTLY) and the like). If such a file fails, it is recorded as failed with the statement
    and the error, and later runs refuse to continue until the operator has inspected the database and runs with
    O(repair=true)."
  - A table left by an older runner (for example only a C(version) or C(filename) column) is adopted, not broken.
    The missing columns are added; the old rows are kept and matched to the files by version.
  - Connection-class failures (SQLSTATE class 08 except 08007, 57P01, 57P03, 53300, connection errors without a
    code) are retried O(retries) times with 0.5 s, 1 s, 2 s backoff, also mid-run (the interrupted file was rolled
    back by the server); authentication, permission, syntax and data errors are never retried.
  - Works against any reachable PostgreSQL 12 or later (container, host or managed service).
version_added: "1.0.0"
author: SoulNear operations contributors
options:
  path:
    description: Directory holding the migration files.
    type: path
    required: true
  table:
    description: Tracking table, optionally schema-qualified (C(ops.schema_migrations)).
    type: str
    default: schema_migrations
  drift:
    description:
      - What to do when an applied file's checksum changed.
      - V(fail) stops before applying anything and names the files; V(warn) warns and continues; V(adopt) records
        the current checksums (use after an intentional whitespace or comment change).
    type: str
    choices: [fail, warn, adopt]
    default: fail
  baseline:
    description:
      - Mark every not yet applied file with a version up to and including this one as applied without running it
        (kind C(baseline)). Use once when taking over a database whose schema was created by other means.
    type: str
  target:
    description: Apply only files up to and including this version (repeatable files are then not applied).
    type: str
  out_of_order:
    description: Apply files whose version is below the newest applied version. Without it such files fail the run.
    type: bool
    default: false
  repair:
    description:
      - Remove records of failed (no-transaction) migrations before planning, so the files run again. Only after
        the database was inspected and the partial work finished or undone.
    type: bool
    default: false
  lock_timeout:
    description: Seconds to wait for another migration run to release the lock.
    type: float
    default: 60
  applied_by:
    description: Recorded in the C(applied_by) column. Defaults to C(user@host) of the process running the module.
    type: str
  login_user:
    description: Role to connect as. Migrations create objects owned by this role.
  login_db:
    description: Database to migrate.
extends_documentation_fragment:
  - soulnear_connection
attributes:
  check_mode:
    support: full
    details: Lists the pending files with their checksums; creates nothing, not even the tracking table.
  diff_mode:
    support: full
    details: Before is the list of applied files, after adds the pending ones.
requirements:
  - psycopg2 on the host that runs the module
notes:
  - Take a backup before migrating a production database (the deploy playbook runs pg_backup first).
seealso:
  - module: community.postgresql.postgresql_script
'''

EXAMPLES = r'''
- name: Apply the bot's migrations
  pg_migrate:
    path: /opt/soulnear/app/src/database/migrations
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot
  no_log: false
  register: migrations

- name: Show what would run (dry run)
  pg_migrate:
    path: /opt/soulnear/app/src/database/migrations
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot
  check_mode: true

- name: Take over an existing database whose schema already has files up to 003
  pg_migrate:
    path: /opt/soulnear/app/src/database/migrations
    login_db: soul_bot
    baseline: "3"

- name: Retry a no-transaction migration after fixing the database by hand
  pg_migrate:
    path: /opt/soulnear/app/src/database/migrations
    login_db: soul_bot
    repair: true
'''

RETURN = r'''
changed:
  description: Whether files were applied or baselined, or the tracking table was created, adopted or updated.
  returned: always
  type: bool
  sample: true
msg:
  description: Summary in the operators' words.
  returned: always
  type: str
  sample: Applied 2 new migration(s)
applied:
  description: Files applied by this run, in order (versioned, then repeatable).
  returned: always
  type: list
  elements: str
  sample: [002_events.sql, 003_index.sql]
baselined:
  description: Files marked as applied without running them (O(baseline)); in check mode, those that would be.
  returned: always
  type: list
  elements: str
  sample: []
pending:
  description: Files still to apply (in check mode, what a real run would apply) with version and checksum.
  returned: success
  type: list
  elements: dict
  sample: [{version: "3", name: 003_index.sql, checksum: 9f86d08...,  kind: versioned, transaction: true}]
current_version:
  description: Highest applied version after the run (before it, in check mode); null when none.
  returned: success
  type: str
  sample: "3"
drift:
  description: Applied files whose checksum differs from the recorded one.
  returned: success
  type: list
  elements: str
  sample: []
missing:
  description: Recorded migrations whose file is not in O(path) any more.
  returned: success
  type: list
  elements: str
  sample: []
failed:
  description: Recorded failed (no-transaction) migrations.
  returned: success
  type: list
  elements: str
  sample: []
notes:
  description: Other changes made (table created or adopted, checksums recorded, failed records removed).
  returned: always
  type: list
  elements: str
  sample: [created table schema_migrations]
duration_ms:
  description: Wall time of the run in milliseconds.
  returned: always
  type: int
  sample: 84
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear.pg import HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, connection_argument_spec
from ansible.module_utils.soulnear.migrate import MigrationError, Migrator


def summary(result, check_mode):
    count = len(result['applied'])
    if check_mode:
        pending = len(result.get('pending', []))
        return 'Would apply %d migration(s)' % pending if pending else 'All migrations up to date'
    if count:
        return 'Applied %d new migration(s)' % count
    if result.get('baselined'):
        return 'Baselined %d migration(s)' % len(result['baselined'])
    return 'All migrations up to date'


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(
        path=dict(type='path', required=True),
        table=dict(type='str', default='schema_migrations'),
        drift=dict(type='str', default='fail', choices=['fail', 'warn', 'adopt']),
        baseline=dict(type='str'),
        target=dict(type='str'),
        out_of_order=dict(type='bool', default=False),
        repair=dict(type='bool', default=False),
        lock_timeout=dict(type='float', default=60),
        applied_by=dict(type='str'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))

    migrator = Migrator(module.params, check_mode=module.check_mode, warn=module.warn)
    try:
        result = migrator.run()
    except MigrationError as exc:
        failure = dict(exc.result)
        failure.pop('applied_before', None)
        failure['changed'] = bool(failure.get('applied') or failure.get('baselined'))
        module.fail_json(msg=str(exc), **failure)

    result['msg'] = summary(result, module.check_mode)
    if module._diff:
        before = result.get('applied_before', [])
        after = before + [p['name'] for p in result.get('pending', [])] if module.check_mode else before
        if not module.check_mode:
            before = [n for n in before if n not in result['applied']]
        result['diff'] = dict(before='\n'.join(before) + '\n', after='\n'.join(after) + '\n',
                              before_header='applied migrations', after_header='applied migrations')
    result.pop('applied_before', None)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
