#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pg_migrate
short_description: Apply SQL migrations to PostgreSQL (several tools' layouts), tracked, checked and locked
description:
  - Applies the migrations of a directory to a PostgreSQL database in version order, each in its own transaction,
    and records every applied migration in a tracking table (C(schema_migrations) by default) with its version,
    name, sha256 checksum, applied_at, execution time, success and who applied it.
  - "Gap it fills: community.postgresql has C(postgresql_script) and C(postgresql_query), which run SQL but keep no
    record of what ran, take no lock against a concurrent run, and cannot detect a changed file. This module is the
    missing migration runner: ordering, tracking, drift detection, locking, baseline, takeover from another tool
    and failure reporting."
  - "Layouts (O(format), detected when V(auto)): V(plain) C(001_init.sql), C(20251105_add_x.sql) (a number, then
    C(_), C(-) or C(.)) plus Flyway-style C(V1_2__x.sql) and C(R__x.sql); V(flyway) C(V)/C(R) files, C(${name})
    placeholders (O(placeholders)), C(B<version>__x.sql) baseline migrations (used on a fresh database instead of
    the versions up to theirs), C(U<version>__x.sql) undo files (never run), callbacks (C(beforeMigrate.sql),
    C(beforeEachMigrate.sql), C(afterEachMigrate.sql), C(beforeRepeatables.sql), C(afterVersioned.sql),
    C(afterMigrate.sql), C(afterMigrateApplied.sql), C(afterMigrateError.sql)) and C(<script>.conf) settings;
    V(golang-migrate) and V(sqlx) C(N_name.up.sql) runs, C(N_name.down.sql) never runs forward; V(dbmate),
    V(goose), V(sql-migrate) one file with up and down sections, only the up section runs; V(prisma)
    C(<version>_name/migration.sql) and V(diesel) C(<version>_name/up.sql), one folder per migration."
  - "Never a silent success: a wrong O(path), a directory without migrations, a file or subfolder the layout does
    not explain (it would be skipped), a dangling C(*.sql) symlink or a directory named C(*.sql) fail the run and
    are listed. With V(auto), a directory that mixes styles fails and names them. So do a Prisma or Diesel folder
    without its C(migration.sql) / C(up.sql) (Prisma itself stops, P3015), versions that are equal once normalised
    (C(V1__a.sql) and C(V1.0__b.sql), C(001_x.sql) and C(1_y.sql): every file of the version is named) and a file or
    folder that cannot be read. One refusal lists every problem of the directory, each with its fix."
  - "Every pending migration is read and checked before the first one is applied, and all problems are reported
    together with nothing applied (also in check mode): an unparseable file, a psql meta-command (C(\\i),
    C(\\set)), C(COPY ... FROM STDIN), a transaction statement in the middle of a file, a file wrapped in
    C(BEGIN; ... ROLLBACK;), an unresolved placeholder, a down section marker in a file of a layout without
    sections. A first pending file of 4 MB or more is read and checked while it runs, inside its transaction, and
    committed only once all of it is checked (a problem found late rolls it back)."
  - "Transactions: a file wrapped in C(BEGIN; ... COMMIT;) is unwrapped and its options (C(BEGIN ISOLATION LEVEL
    SERIALIZABLE)) are honoured with C(SET TRANSACTION). A file whose statements all refuse a transaction block
    (C(CREATE INDEX CONCURRENTLY), C(VACUUM), C(ALTER SYSTEM), C(CREATE DATABASE) ...) runs outside a transaction,
    as Flyway does; a file that mixes such a statement with others is refused, naming the directive of its layout
    that runs the whole file outside a transaction, statement by statement (C(-- pg_migrate: no-transaction) as
    the first line in every layout). A failed file outside a transaction is recorded as failed; the next run
    refuses until the operator has inspected the database and runs with O(repair=true)."
  - "Locks: each migration statement runs with C(lock_timeout) = O(ddl_lock_timeout), so an C(ALTER TABLE) stuck
    behind a backup or a long transaction does not queue the bot's queries behind it; a lock timeout (55P03) is
    retried O(ddl_lock_retries) times with backoff (0.5 s, 1 s, 2 s ...), then the run fails naming the blocking
    pid and its query. C(CONCURRENTLY) statements wait without that limit (they block nobody).
    O(statement_timeout) limits every statement. The session is reset after every file (role, search_path,
    settings, temporary tables, prepared statements) without releasing the run's advisory lock."
  - "Locking DDL is named before it runs (O(lint)): the plan (check mode, and a real run before anything is applied)
    flags statements that rewrite or scan a table under a lock the bot's queries wait for - ADD COLUMN with a
    volatile default, ALTER COLUMN TYPE (except the changes PostgreSQL makes without a rewrite), SET NOT NULL
    without a validated CHECK, ADD FOREIGN KEY / CHECK without NOT VALID, ADD PRIMARY KEY / UNIQUE without USING
    INDEX, CREATE INDEX / DROP INDEX / REINDEX without CONCURRENTLY, VACUUM FULL, CLUSTER, SET TABLESPACE, SET
    LOGGED, LOCK TABLE, REFRESH MATERIALIZED VIEW, an UPDATE under an ALTER TABLE's lock, RENAME (warning only) -
    with the table's size and estimated rows from the live database, and the safe way. A table created earlier in
    the run is new and not warned about; one below O(lint_min_rows) and O(lint_min_mb) is info. A line
    C(-- pg_migrate: allow <rule>[, <rule>]) in a file allows a known-safe statement. docs/pg_migrate.md (Locking
    DDL) has the rule table."
  - The checksum is the sha256 of the file with a UTF-8 BOM removed and line endings normalised to LF; the text
    executed is the file's own (only the BOM removed).
  - A session-level advisory lock (keyed on the resolved schema-qualified table name) is held for the whole run.
    A second runner waits up to O(lock_timeout) seconds, then fails naming the holder in the same database.
  - Each file runs statement by statement, so a failure names the file, the line of the failing statement and
    PostgreSQL's message; the failing file is rolled back completely (with its tracking row), later files are not
    run and files before it stay applied. RV(changed) is true whenever the database was changed, also when the
    run then failed. The tracking table is created (and a takeover or baseline recorded) in the first migration's
    transaction when it has one, so a run that fails on its first file changes nothing.
  - "Tracking table: a table left by the bot's older runner (only a C(version) or C(filename) column, or
    C(version) and C(applied_at)) is adopted: missing columns are added, old rows kept. A table of another tool is
    never adopted or altered: a C(schema_migrations) with golang-migrate's C(dirty) column, or with dbmate's single
    C(version) column whose values are the versions of the dbmate files in O(path), and the history tables of
    Flyway, goose, sqlx, sql-migrate, Prisma and Diesel, make the run fail naming O(table) and O(takeover)."
  - "Takeover: O(takeover) reads another tool's history (Flyway's C(flyway_schema_history), golang-migrate's or
    dbmate's C(schema_migrations), goose's C(goose_db_version), sql-migrate's C(gorp_migrations), sqlx's
    C(_sqlx_migrations), Prisma's C(_prisma_migrations), Diesel's C(__diesel_schema_migrations), or an older
    pg_migrate table) and records the migrations it applied as applied (kind C(baseline)) without running them,
    in the same transaction that creates pg_migrate's table: a refused takeover (golang-migrate dirty, a failed
    Flyway, sqlx or Prisma migration) changes nothing. It happens once, when pg_migrate's table holds no records;
    later runs refuse when the other tool applied more since. Flyway checksums are not compared (they are CRC32
    of another text); repeatable migrations run once after a takeover. Forgetting O(takeover) is refused: a first
    run (pg_migrate's table records nothing) on a database holding one of those history tables (its default name,
    the tool's columns, in any schema), without O(takeover) or O(baseline), fails before anything runs - check mode
    too - naming the table and the O(takeover) (and O(takeover_table)) to set, instead of applying the whole history
    again."
  - "Every option is checked before the directory is read or the database touched, and one message names each bad
    value with what is allowed (RV(invalid_options) lists them): O(path) an absolute path of an existing, readable
    directory; O(lock_timeout) 0 to ten years; O(ddl_lock_timeout) and O(statement_timeout) 0 to 2147483 s (what
    PostgreSQL keeps); O(ddl_lock_retries) 0 to 100; O(lint_min_rows) 0 to 10^12; O(lint_min_mb) 0 to 33554432;
    O(table) and O(takeover_table) PostgreSQL names (O(takeover_table) only with O(takeover)); O(baseline) and
    O(target) versions; O(applied_by) not empty; O(placeholders) values that are text, numbers or booleans; the
    connection options."
  - Connection-class failures (SQLSTATE class 08 except 08007, 57P01, 57P03, 53300, connection errors without a
    code) are retried O(retries) times with 0.5 s, 1 s, 2 s backoff, also mid-run (the interrupted file was rolled
    back by the server); authentication, permission, syntax and data errors are never retried.
  - Works against any reachable PostgreSQL 12 or later (container, host or managed service). docs/pg_migrate.md
    in the project describes the layouts and the takeover for each tool.
version_added: "1.0.0"
author: SoulNear operations contributors (!UNKNOWN)
options:
  path:
    description: Directory holding the migrations.
    type: path
    required: true
  format:
    description:
      - Layout of O(path). V(auto) detects it and fails when the directory mixes styles.
      - V(plain) numbered files with Flyway-style V and R files; V(flyway) adds placeholders, B, U, callbacks and
        C(.conf) files; V(golang-migrate)/V(sqlx) up/down pairs (sqlx also simple files and C(-- no-transaction));
        V(dbmate)/V(goose)/V(sql-migrate) up/down sections; V(prisma)/V(diesel) one folder per migration.
    type: str
    choices: [auto, plain, flyway, golang-migrate, sqlx, dbmate, goose, sql-migrate, prisma, diesel]
    default: auto
  placeholders:
    description:
      - Values of Flyway C(${name}) placeholders (names match case-insensitively), for O(format=flyway). Built-in
        C(${flyway:defaultSchema}), C(${flyway:user}), C(${flyway:database}), C(${flyway:timestamp}),
        C(${flyway:filename}), C(${flyway:table}) and C(${flyway:workingDirectory}) are filled in.
      - An unresolved placeholder fails the run, named, before anything runs. Changing a value re-applies the
        repeatable migrations that use it.
    type: dict
    default: {}
  table:
    description:
      - Tracking table, optionally schema-qualified (C(ops.schema_migrations)). Used exactly as written (a
        mixed-case name is not folded to lower case).
    type: str
    default: schema_migrations
  takeover:
    description:
      - Record the migrations another tool applied as applied, without running them, when pg_migrate's table holds
        no records yet. V(pg_migrate) reads an older pg_migrate table named by O(takeover_table).
      - Without it (and without O(baseline)), a first run on a database holding one of these tools' history tables is
        refused before anything runs, naming the table and the value to set.
    type: str
    choices: [flyway, golang-migrate, dbmate, goose, sql-migrate, sqlx, prisma, diesel, pg_migrate]
  takeover_table:
    description:
      - The other tool's history table (optionally schema-qualified). Defaults to that tool's default name
        (C(flyway_schema_history), C(schema_migrations), C(goose_db_version), C(gorp_migrations),
        C(_sqlx_migrations), C(_prisma_migrations), C(__diesel_schema_migrations)). It is only read.
    type: str
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
    description: Seconds to wait for another migration run to release the run's advisory lock.
    type: float
    default: 60
  ddl_lock_timeout:
    description:
      - PostgreSQL C(lock_timeout), in seconds, for the statements of every migration (0 waits forever).
        C(CONCURRENTLY) statements are exempt.
    type: float
    default: 5
  ddl_lock_retries:
    description: How many times a migration that hit O(ddl_lock_timeout) (SQLSTATE 55P03) is retried, with backoff.
    type: int
    default: 3
  statement_timeout:
    description:
      - PostgreSQL C(statement_timeout), in seconds, for every migration statement (C(CONCURRENTLY) ones too); 0
        means no limit.
      - A statement that runs longer is cancelled (SQLSTATE 57014) and the run fails naming the file and line; a
        file in a transaction is rolled back whole and stays pending, a file outside one is recorded as failed
        (O(repair) after inspecting the database).
    type: float
    default: 0
  lint:
    description:
      - What to do with locking DDL in the pending migrations (see the description).
      - V(warn) reports each finding as a warning and in RV(lint); V(refuse) fails before anything runs, naming
        every finding at or above the thresholds (RENAME only warns); V(off) reads nothing.
      - With V(refuse) a large first file is read and linted before it runs instead of while it runs.
    type: str
    choices: [warn, refuse, 'off']
    default: warn
  lint_min_rows:
    description:
      - A finding on a table with fewer (estimated) rows than this, and smaller than O(lint_min_mb), is info, not
        a warning (10,000 rows rewrite in well under a second).
    type: int
    default: 10000
  lint_min_mb:
    description:
      - A finding on a table of at least this many megabytes (pg_total_relation_size) is a warning whatever its
        row count.
    type: float
    default: 10
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
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: >-
      Lists the pending files with their checksums and reports the same problems a real run would; creates
      nothing, not even the tracking table, and records no takeover.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Before is the list of applied files, after adds the pending ones.
requirements:
  - psycopg2 on the host that runs the module
notes:
  - Take a backup before migrating a production database (the deploy playbook runs pg_backup first).
seealso:
  - module: community.postgresql.postgresql_script
"""

EXAMPLES = r'''
- name: Apply the bot's migrations
  pg_migrate:
    path: /opt/soulnear/app/current/database/migrations
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot
  no_log: false
  register: migrations

- name: Show what would run (dry run)
  pg_migrate:
    path: /opt/soulnear/app/current/database/migrations
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot
  check_mode: true

- name: Take over an existing database whose schema already has files up to 003
  pg_migrate:
    path: /opt/soulnear/app/current/database/migrations
    login_db: soul_bot
    baseline: "3"

- name: Retry a no-transaction migration after fixing the database by hand
  pg_migrate:
    path: /opt/soulnear/app/current/database/migrations
    login_db: soul_bot
    repair: true

- name: Run a Flyway directory with its placeholders
  pg_migrate:
    path: /opt/app/db/migration
    format: flyway
    placeholders:
      app_role: soulnear
    login_db: soul_bot

- name: Take over a database golang-migrate migrated (its schema_migrations stays as it is)
  pg_migrate:
    path: /opt/app/migrations
    table: pg_schema_migrations
    takeover: golang-migrate
    login_db: soul_bot

- name: Take over a database Flyway migrated
  pg_migrate:
    path: /opt/app/db/migration
    takeover: flyway
    login_db: soul_bot

- name: Refuse locking DDL on tables of 100,000 rows or more, before anything runs
  pg_migrate:
    path: /opt/soulnear/app/current/database/migrations
    login_db: soul_bot
    lint: refuse
    lint_min_rows: 100000
    statement_timeout: 600
'''

RETURN = r'''
changed:
  description:
    - Whether the database was changed (files applied or baselined, a takeover recorded, the tracking table created,
      adopted or updated), also when the run then failed. In check mode, whether a run would change it.
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
  sample: [created table public.schema_migrations]
layout:
  description: The layout the directory was read with (O(format), or what V(auto) detected).
  returned: always
  type: str
  sample: golang-migrate
taken_over:
  description: Migrations recorded as applied from another tool's history (O(takeover)); in check mode, those that
    would be.
  returned: always
  type: list
  elements: str
  sample: [1_init.up.sql, 2_users.up.sql]
callbacks:
  description: Flyway callbacks run by this run, in order.
  returned: always
  type: list
  elements: str
  sample: [beforeMigrate.sql, afterMigrate.sql]
down_files:
  description: Down and undo files recognised in O(path); they never run forward.
  returned: always
  type: list
  elements: str
  sample: [1_init.down.sql]
ignored:
  description: Entries of O(path) that are not migrations (README.md, migration_lock.toml, Flyway callbacks of
    commands pg_migrate does not have).
  returned: always
  type: list
  elements: str
  sample: [README.md]
lint:
  description:
    - Statements of the pending migrations that rewrite or scan a table under a lock (O(lint)), in run order.
    - "C(severity) is V(warning) (at or above the thresholds), V(info) (a new or small table) or V(allowed) (a
      C(-- pg_migrate: allow) line); C(size) is bytes (pg_total_relation_size), C(rows) an estimate
      (C(rows_how) V(estimate), or V(counted) / V(at least) when the table was never analysed)."
  returned: always
  type: list
  elements: dict
  sample: [{file: 002_score.sql, line: 1,
            statement: "ALTER TABLE events ADD COLUMN score int DEFAULT (random()*1000)::int",
            rule: add-column-volatile-default, table: public.orders, size: 150011904, size_pretty: 143 MB,
            rows: 2000000, rows_how: estimate, severity: warning, lock: ACCESS EXCLUSIVE,
            effect: "rewrites the table and all its indexes, computing the default for every row",
            detail: "column score DEFAULT (random()*1000)::int is volatile: random()", note: null,
            fix: "add the column without a default, SET DEFAULT for new rows (no rewrite), then backfill ..."}]
invalid_options:
  description: The options whose values were refused before anything ran (the message names each).
  returned: when an option's value is not allowed
  type: list
  elements: str
  sample: [ddl_lock_timeout, ddl_lock_retries]
duration_ms:
  description: Wall time of the run in milliseconds.
  returned: always
  type: int
  sample: 84
'''

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear import validate
from ansible.module_utils.soulnear.pg import HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, connection_argument_spec
from ansible.module_utils.soulnear.migrate import Migrator, migration_options
from ansible.module_utils.soulnear.migration_files import MigrationError
from ansible.module_utils.soulnear.migration_text import parse_version


def summary(result, check_mode):
    count = len(result['applied'])
    warnings = len([f for f in result.get('lint') or [] if f['severity'] == 'warning'])
    flagged = '; %d locking statement(s) flagged (see lint)' % warnings if warnings else ''
    if check_mode:
        pending = len(result.get('pending', []))
        return 'Would apply %d migration(s)%s' % (pending, flagged) if pending else 'All migrations up to date'
    if count:
        return 'Applied %d new migration(s)%s' % (count, flagged)
    if result.get('baselined'):
        return 'Baselined %d migration(s)' % len(result['baselined'])
    return 'All migrations up to date'


def argument_spec():
    """The module's options (DOCUMENTATION describes exactly these, with the same defaults and choices)."""
    spec = connection_argument_spec()
    spec.update(
        path=dict(type='path', required=True),
        format=dict(type='str', default='auto', choices=['auto', 'plain', 'flyway', 'golang-migrate', 'sqlx',
                                                         'dbmate', 'goose', 'sql-migrate', 'prisma', 'diesel']),
        placeholders=dict(type='dict', default={}),
        table=dict(type='str', default='schema_migrations'),
        takeover=dict(type='str', choices=['flyway', 'golang-migrate', 'dbmate', 'goose', 'sql-migrate', 'sqlx',
                                           'prisma', 'diesel', 'pg_migrate']),
        takeover_table=dict(type='str'),
        drift=dict(type='str', default='fail', choices=['fail', 'warn', 'adopt']),
        baseline=dict(type='str'),
        target=dict(type='str'),
        out_of_order=dict(type='bool', default=False),
        repair=dict(type='bool', default=False),
        lock_timeout=dict(type='float', default=60),
        ddl_lock_timeout=dict(type='float', default=5),
        ddl_lock_retries=dict(type='int', default=3),
        statement_timeout=dict(type='float', default=0),
        lint=dict(type='str', default='warn', choices=['warn', 'refuse', 'off']),
        lint_min_rows=dict(type='int', default=10000),
        lint_min_mb=dict(type='float', default=10),
        applied_by=dict(type='str'),
    )
    return spec


def migrations_directory(value):
    """path: an absolute path of a directory that exists and that the module's user can read."""
    validate.nonempty_path(value, 'directory')
    allowed = 'an absolute path of an existing directory the module can read'
    if not os.path.isdir(value):
        raise validate.Invalid(allowed, why='it does not exist' if not os.path.lexists(value) else 'it is not a '
                               'directory', fix='set path to the directory that holds the migrations')
    if not os.access(value, os.R_OK | os.X_OK):
        raise validate.Invalid(allowed, why='the user the module runs as cannot read it', fix='make it readable by '
                               'that user (chmod o+rx, or the owner), or run the task as a user who can (become)')


def version(value):
    if parse_version(value) is None:
        raise validate.Invalid('a version: digits, parts separated by . or _, optionally after V (5, 20251105, 1.2)')


def check_options(module):
    """Every option checked before the directory is read or the database touched (validate.py); fails naming each
    bad one, nothing changed."""
    p = module.params
    options = validate.Options(p, argument_spec())
    validate.connection(options)
    migration_options(options, p)  # timeouts, retries, lint thresholds, choices, table names
    options.check('path', migrations_directory)
    options.check(('baseline', 'target'), version)
    options.check('applied_by', validate.nonempty)
    for name, value in sorted(p['placeholders'].items(), key=lambda item: str(item[0])):
        if value is None or isinstance(value, (dict, list)):
            options.add('placeholders.%s' % name, value, validate.Invalid(
                'a text, number or boolean (what replaces ${%s})' % name, fix='give placeholders.%s a value, quoted '
                'when it is meant as text' % name))
    if p['takeover_table'] and not p['takeover']:
        options.add('takeover_table', p['takeover_table'], validate.Invalid(
            'left out without takeover', why='takeover is not set, so nothing would read it', fix='set takeover to '
            'the tool whose history table it is, or remove takeover_table'))
    if p['takeover'] == 'pg_migrate':
        options.require('takeover_table', 'the older pg_migrate table to read', why='takeover=pg_migrate reads an '
                        'older pg_migrate table under another name, and it is not set')
    options.fail(module)


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    check_options(module)

    migrator = Migrator(module.params, check_mode=module.check_mode, warn=module.warn)
    try:
        result = migrator.run()
    except MigrationError as exc:
        failure = dict(exc.result)
        failure.pop('applied_before', None)
        failure['changed'] = bool(failure.get('changed'))  # the database changed before the failure
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
