#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: db_health
short_description: One structured health report of a PostgreSQL-backed bot deployment
description:
  - Answers "is it healthy?" for a SoulNear deployment with one report, used by the deploy, the redeploy, the
    C(health.yml) playbook and (through the same Python code in C(module_utils/soulnear/checks.py)) by the health
    monitor on the host.
  - "Gap it fills: C(community.postgresql.postgresql_ping) only proves that a connection can be opened and
    C(community.postgresql.postgresql_info) collects facts without judging them; neither checks that the
    application's tables exist, that migrations are applied and none failed, how close the server is to
    C(max_connections), the state and restart count of the containers, the age of the newest verified backup
    or free disk, and neither fails with the fix an operator needs."
  - "Checks (each reported as C(ok), C(value), C(message); a failed check's message names the likely fix):
    C(database): connect with the retry policy and C(SELECT 1) as the given role (proves login and query, which
    C(pg_isready) does not); C(tables): O(required_tables) exist (none by default) and, with O(data_guard_file), the
    data-loss guard's verdict on the database's own tables; C(migrations): against O(migrations_path),
    none pending, none failed, no drift; C(connections): slots in use against C(max_connections), a warning above
    O(connections_warn_percent); C(db_container) / C(bot_container): running, Docker health status, restart
    count (a warning when it grew; skipped for a database of O(db_external)); C(patroni) with O(patroni_url):
    the cluster's leader, members and lag from Patroni's REST API; C(backup_age): newest verified backup younger than
    O(backup_max_age_hours); C(wal_archiving) and C(physical_backup) with O(pitr_stanza) (point-in-time
    recovery): archive_mode on, the archiver's last attempt succeeded (C(pg_stat_archiver)) and few segments wait,
    and the newest physical backup of every pgBackRest repository younger than O(pitr_backup_max_age_hours), every
    repository answering, room for the next full backup (and C(pgbackrest check) with O(pitr_check)); C(disk): used
    space of O(disk_paths), the backup directory, the pgBackRest repository and the data volume."
  - Checks that need their option (migrations, containers, backups, disk) run only when it is set. When the
    database cannot be reached, the checks that need a connection are listed in RV(skipped).
  - Connection-class failures are retried O(retries) times with 0.5 s, 1 s, 2 s backoff; a wrong password or
    a missing role or database fails at once.
  - The task fails when a check fails, unless O(fail_on_unhealthy=false); warnings never fail it.
version_added: "1.0.0"
author: SoulNear operations contributors (!UNKNOWN)
options:
  required_tables:
    description:
      - Tables that must exist, optionally schema-qualified. A missing one on a database that held data means the
        volume was probably re-initialised (suspected data loss).
      - None by default; the data-loss guard (O(data_guard_file)) watches the database's own tables, whatever the
        bot calls them. With O(data_guard_file), every one of them missing or empty also counts as an empty database.
      - Each a PostgreSQL table name of at most 63 bytes (per part of C(schema.table)).
    type: list
    elements: str
    default: []
  migrations_path:
    description: Directory of the C(*.sql) migrations on the managed host (an absolute path, not a file). When set,
      the C(migrations) check compares it with the tracking table, with the same rules as the C(pg_migrate) module.
    type: path
  migrations_mode:
    description:
      - How the bot migrates (the deploy's C(app_migrations)). V(sql) checks O(migrations_path) as above. V(command)
        runs O(migrations_probe) - the bot's own probe in a throwaway container of the running bot's image, exit 0
        up to date, 1 pending - or says why it is not checked. V(none) says the check is skipped, the bot having
        no migrations.
    type: str
    choices: [sql, command, none]
    default: sql
  migrations_probe:
    description: With O(migrations_mode=command), the probe - C(command) (the deploy's app_migration_check_command),
      C(container) (the bot's container, whose image it runs in), C(env_file), C(network), C(mounts) (absolute
      paths); no other key.
    type: dict
  migrations_table:
    description: Migration tracking table (pg_migrate's O(migrations_table); the deploy's C(soulnear_migrations_table)).
    type: str
    default: schema_migrations
  migrations_format:
    description: Layout of the migrations directory, as pg_migrate's C(format) (the deploy's
      C(app_migration_options.format)); V(auto) detects it.
    type: str
    choices: [auto, plain, flyway, golang-migrate, sqlx, dbmate, goose, sql-migrate, prisma, diesel]
    default: auto
  connections_warn_percent:
    description: Warn when the client connections in use reach this share of the slots a non-superuser can use
      (C(max_connections) minus the reserved ones); 0 to 100.
    type: int
    default: 80
  db_container:
    description: Name of the database container to check (running, health status, restart count), a Docker
      container name. Needs the docker CLI on the managed host.
    type: str
  db_external:
    description:
      - The address of a database this deployment does not own (an external or managed server, a Patroni cluster,
        the database host of a two-host deployment), for the report, e.g. V(db.example.com:5432).
      - When set, no database container is checked (RV(skipped) says why, even with O(db_container)), and an
        unreachable server's fix points at the network path and the provider instead of a container.
    type: str
  patroni_url:
    description:
      - Patroni's REST API of any member of the cluster (e.g. V(http://10.0.0.5:8008)). When set, the C(patroni)
        check reads C(/cluster) and reports the leader, the members, their state and replication lag; it fails with
        no leader, a member that is not running or streaming, or the REST API not answering, and warns in
        maintenance mode (paused).
      - An C(http) or C(https) URL with a host (no other scheme); an C(https) one is verified with
        O(patroni_ca_cert).
    type: str
  patroni_ca_cert:
    description: CA certificate (a file on the managed host) that signed the certificate of Patroni's REST API, for
      an C(https) O(patroni_url); the system's CAs when not set.
    type: path
  patroni_max_lag_bytes:
    description: Replication lag of a replica, in bytes, above which the C(patroni) check reports it (0 or more).
    type: int
    default: 16777216
  bot_container:
    description: Name of the bot container to check, like O(db_container).
    type: str
  state_file:
    description:
      - JSON file on the managed host that remembers the containers' restart counts between runs, so a count
        that grew since the last run is reported as a warning. Without it, any restart count above 0 is a
        warning (Docker resets the count when a container is started by hand).
      - Not written in check mode. An absolute path of a file, not a directory.
    type: path
  backup_dir:
    description:
      - Backups directory of the backup command (C(backup_YYYYMMDD_HHMMSS.dump) files with a C(.sha256) sidecar
        written after verification). Enables the C(backup_age) check and adds the directory to the disk check.
      - Only the backups of O(login_db) count (the sidecar or the archive names the database). The newest one's
        sha256 is compared with its sidecar; the file's checksum is computed once and cached in the directory
        (C(.soulnear-checksums.json)), so later runs cost a stat. Not written in check mode.
      - An absolute path of a directory.
    type: path
  backup_name_pattern:
    description: File name pattern of the backups (the backup role's C(backup_name_pattern)); the age comes from
      the time in the name, which the backup command writes in the host's local time.
    type: str
    default: backup_%Y%m%d_%H%M%S.dump
  backup_max_age_hours:
    description: The C(backup_age) check fails when the newest verified backup is older than this (above 0, at most
      87600 - ten years).
    type: float
    default: 26
  require_backup:
    description: Fail the C(backup_age) check when no backup exists yet (by default that is reported as
      C(no backups yet) and passes).
    type: bool
    default: false
  disk_paths:
    description: Paths whose file system must not be fuller than O(disk_max_used_percent); absolute paths.
    type: list
    elements: path
    default: []
  db_volume:
    description: Docker volume of the database (a Docker volume name); its mount point on the host is added to the
      disk check.
    type: str
  disk_max_used_percent:
    description: The C(disk) check fails above this used share of a file system (0 to 100).
    type: int
    default: 90
  pitr_stanza:
    description:
      - pgBackRest's stanza of point-in-time recovery. Enables the C(wal_archiving) check (needs the database
        connection; the segments waiting are counted in O(db_volume)'s C(pg_wal/archive_status)) and the
        C(physical_backup) check (C(pgbackrest info) in O(db_container)).
      - Letters, digits, C(_), C(.) and C(-), starting with a letter or digit.
    type: str
  pitr_repo_dir:
    description: The local pgBackRest repository on the host (an absolute path of a directory). Its free space is
      checked against the newest full backup, and it joins the disk check.
    type: path
  pitr_backup_max_age_hours:
    description: The C(physical_backup) check fails when the newest physical backup of a repository is older (above
      0, at most 87600 - ten years).
    type: float
    default: 26
  pitr_archive_ready_max:
    description: The C(wal_archiving) check fails when more finished WAL segments than this wait to be archived (0 or
      more).
    type: int
    default: 8
  pitr_archive_slack_seconds:
    description:
      - The C(wal_archiving) check fails when the oldest commit not yet archived (read with pg_waldump in the
        database container) is older than archive_timeout plus this many seconds - the recovery point is stalled,
        whatever the archiver's statistics say (PostgreSQL not switching segments, archive-push hanging). 0 or more.
    type: float
    default: 15
  pitr_check:
    description: Also run C(pgbackrest check) (a WAL switch that must reach every repository) in C(physical_backup).
    type: bool
    default: false
  data_guard_file:
    description:
      - The data-loss guard's record on the managed host (see the C(data_guard) module). When it exists, the
        C(tables) check fails while its flag is raised or when the database does not match it. Empty disables;
        else an absolute path of a file.
    type: path
    default: /var/lib/soulnear/data-guard.json
  fail_on_unhealthy:
    description: Fail the task when a check fails. With V(false) the report is returned with RV(ok=false) and the
      play goes on.
    type: bool
    default: true
  login_user:
    description: Role to connect as. Use the application's role, so the check proves that the bot can log in.
  login_db:
    description: Database to check.
extends_documentation_fragment:
  - soulnear_connection
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Every check is read-only and runs in check mode too; only the O(state_file) and the checksum cache of
      O(backup_dir) are not updated.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - psycopg2 on the managed host
  - the docker CLI on the managed host for the container checks and O(db_volume)
notes:
  - The same checks run every 60 s on the host through the C(soulnear-health) command of the monitoring role,
    which adds recovery (container restarts) and alerts.
seealso:
  - module: community.postgresql.postgresql_ping
  - module: community.postgresql.postgresql_info
'''

EXAMPLES = r'''
- name: Check the deployment's health as the bot's role
  db_health:
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot
    migrations_path: /opt/soulnear/app/current/database/migrations
    db_container: soulnear_postgres
    bot_container: soulnear_bot
    backup_dir: /var/backups/soulnear
    db_volume: soulnear_postgres_data
  register: health

- name: Collect the report without failing, then print it
  db_health:
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot
    required_tables: [subscriptions, customers, orders]
    fail_on_unhealthy: false
  register: health

- name: Show the failing checks
  ansible.builtin.debug:
    msg: "{{ health.failed_checks | map('extract', health.checks) | map(attribute='message') | list }}"
  when: not health.ok
'''

RETURN = r'''
ok:
  description: True when no check failed (warnings allowed).
  returned: always
  type: bool
  sample: true
msg:
  description: One-line summary; when unhealthy, every failing check with its message and fix.
  returned: always
  type: str
  sample: "healthy: 7 check(s) passed"
checks:
  description:
    - Check name -> result, in the order database, tables, migrations, connections, db_container, bot_container,
      backup_age, wal_archiving, physical_backup, disk. Only configured checks appear.
    - Each result has C(ok) (bool), C(value) (what was measured), C(message) (for people; on failure it names
      the fix) and, when something deserves attention without failing, C(warning).
  returned: always
  type: dict
  sample:
    database: {ok: true, message: "SELECT 1 as soulnear on soul_bot answered in 0.4 ms",
               value: {user: soulnear, database: soul_bot, server_version: 150010, latency_ms: 0.4,
                       system_identifier: "7313214194725303163"}}
    tables: {ok: false, message: "required table(s) missing: subscriptions. DATA LOSS SUSPECTED ...",
             value: {missing: [subscriptions], required: [subscriptions, schema_migrations]}}
    connections: {ok: true, message: "5 of 197 usable connection slots in use (3%; max_connections 200)",
                  value: {used: 5, max_connections: 200, reserved: 3, usable: 197, percent: 2.5}}
failed_checks:
  description: Names of the failed checks (empty when healthy). Named C(failed) in the report itself; returned
    under this name because Ansible reserves C(failed) for the task status.
  returned: always
  type: list
  elements: str
  sample: [tables, migrations]
check_warnings:
  description: "C(check: warning) for every check that passed with a warning (also shown as task warnings)."
  returned: always
  type: list
  elements: str
  sample: ["connections: 170 of 197 usable connection slots in use (86%; ...)"]
skipped:
  description: Checks that could not run (no database connection) -> why.
  returned: always
  type: dict
  sample: {tables: "not checked: no database connection"}
restart_counts:
  description: Container name -> Docker restart count seen by this run.
  returned: always
  type: dict
  sample: {soulnear_postgres: 0, soulnear_bot: 1}
report_lines:
  description: The report for people, one line per check (name, ok/FAIL/skip, message, warning).
  returned: always
  type: list
  elements: str
  sample: ["database      ok   SELECT 1 as soulnear on soul_bot answered in 0.4 ms",
           "tables        FAIL required table(s) missing: subscriptions. DATA LOSS SUSPECTED ..."]
duration_ms:
  description: Wall time of all checks in milliseconds.
  returned: always
  type: int
  sample: 41
'''

import json

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear.pg import HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, connection_argument_spec
from ansible.module_utils.soulnear.checks import DEFAULTS, report_lines, run_checks
from ansible.module_utils.soulnear.files import write_private
from ansible.module_utils.soulnear.guard import DEFAULT_STATE_FILE as DATA_GUARD_FILE
from ansible.module_utils.soulnear.migration_files import FORMATS
from ansible.module_utils.soulnear import validate

PROBE_KEYS = ('command', 'container', 'env_file', 'network', 'mounts')


def read_state(path):
    try:
        with open(path) as handle:
            return json.load(handle).get('restart_counts') or {}
    except (OSError, ValueError, AttributeError):
        return {}


def write_state(path, restart_counts):
    write_private(path, json.dumps(dict(restart_counts=restart_counts), sort_keys=True))


def _probe(options, probe):
    """migrations_probe: the keys the probe takes, each checked."""
    unknown = sorted(set(probe) - set(PROBE_KEYS))
    if unknown:
        options.add('migrations_probe', probe, validate.Invalid('a dict of %s' % ', '.join(PROBE_KEYS),
                                                                why='it has %s' % ', '.join(unknown)))
    if not isinstance(probe.get('command') or [], (str, list)):
        options.add('migrations_probe.command', probe['command'], 'a command: a string or a list')
    for key, check, args in (('container', validate.name, ('container',)), ('network', validate.name, ('network',)),
                             ('env_file', validate.nonempty_path, ('file',))):
        if probe.get(key):
            options.value('migrations_probe.%s' % key, probe[key], check, *args)
    for index, path in enumerate(probe.get('mounts') or []):
        options.value('migrations_probe.mounts[%d]' % index, path, validate.nonempty_path)


def check_options(module):
    """Every option checked before a check runs (validate.py); fails naming each bad one."""
    p = module.params
    options = validate.Options(p, argument_spec())
    validate.connection(options)
    options.each('required_tables', validate.pg_name, 'table')
    options.check('migrations_table', validate.pg_name, 'table')
    options.check('migrations_path', validate.nonempty_path, 'directory')
    if p['migrations_probe']:
        _probe(options, p['migrations_probe'])
    options.check(('connections_warn_percent', 'disk_max_used_percent'), validate.percent)
    options.check(('db_container', 'bot_container'), validate.name, 'container')
    options.check('db_volume', validate.name, 'volume')
    options.check('patroni_url', validate.url)
    options.check('patroni_ca_cert', validate.nonempty_path, 'file')
    options.check('patroni_max_lag_bytes', validate.in_range, 0)
    options.check('state_file', validate.nonempty_path, 'file')
    options.check(('backup_dir', 'pitr_repo_dir'), validate.nonempty_path, 'directory')
    options.each('disk_paths', validate.nonempty_path)
    options.check('backup_name_pattern', validate.file_pattern)
    options.check(('backup_max_age_hours', 'pitr_backup_max_age_hours'), validate.positive, 87600, 'hours')
    options.check('pitr_stanza', validate.name, 'stanza')
    options.check('pitr_archive_ready_max', validate.in_range, 0)
    options.check('pitr_archive_slack_seconds', validate.seconds, zero=True)
    options.check('data_guard_file', validate.nonempty_path, 'file', empty=True)
    options.fail(module)


def argument_spec():
    """The connection options and the checks' options, with the checks' DEFAULTS (the soulnear-health command's)."""
    spec = connection_argument_spec()
    spec.update(
        required_tables=dict(type='list', elements='str', default=list(DEFAULTS['required_tables'])),
        migrations_path=dict(type='path'),
        migrations_mode=dict(type='str', default='sql', choices=['sql', 'command', 'none']),
        migrations_probe=dict(type='dict'),
        migrations_table=dict(type='str', default=DEFAULTS['migrations_table']),
        migrations_format=dict(type='str', default=DEFAULTS['migrations_format'], choices=list(FORMATS)),
        connections_warn_percent=dict(type='int', default=DEFAULTS['connections_warn_percent']),
        db_container=dict(type='str'),
        db_external=dict(type='str'),
        patroni_url=dict(type='str'),
        patroni_ca_cert=dict(type='path'),
        patroni_max_lag_bytes=dict(type='int', default=DEFAULTS['patroni_max_lag_bytes']),
        bot_container=dict(type='str'),
        state_file=dict(type='path'),
        backup_dir=dict(type='path'),
        backup_name_pattern=dict(type='str', default=DEFAULTS['backup_name_pattern']),
        backup_max_age_hours=dict(type='float', default=DEFAULTS['backup_max_age_hours']),
        require_backup=dict(type='bool', default=DEFAULTS['require_backup']),
        disk_paths=dict(type='list', elements='path', default=list(DEFAULTS['disk_paths'])),
        db_volume=dict(type='str'),
        disk_max_used_percent=dict(type='int', default=DEFAULTS['disk_max_used_percent']),
        pitr_stanza=dict(type='str'),
        pitr_repo_dir=dict(type='path'),
        pitr_backup_max_age_hours=dict(type='float', default=DEFAULTS['pitr_backup_max_age_hours']),
        pitr_archive_ready_max=dict(type='int', default=DEFAULTS['pitr_archive_ready_max']),
        pitr_archive_slack_seconds=dict(type='float', default=DEFAULTS['pitr_archive_slack_seconds']),
        pitr_check=dict(type='bool', default=DEFAULTS['pitr_check']),
        data_guard_file=dict(type='path', default=DATA_GUARD_FILE),
        fail_on_unhealthy=dict(type='bool', default=True),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    check_options(module)

    params = dict(module.params)
    state_file = params.pop('state_file')
    if state_file:
        params['restart_counts'] = read_state(state_file)
    params['read_only'] = module.check_mode
    try:
        report = run_checks(params)
    except Exception as exc:  # noqa: BLE001 - the operator gets one message, never a traceback
        module.fail_json(msg='db_health could not finish its checks: %s: %s. This is a bug in db_health; run '
                         'soulnear-health report on the host for the same checks' % (exc.__class__.__name__, exc))
    if state_file and not module.check_mode:
        try:
            write_state(state_file, report['restart_counts'])
        except OSError as exc:
            module.warn('could not update the state file %s: %s' % (state_file, exc))

    for warning in report['warnings']:
        module.warn(warning)
    result = dict(changed=False, ok=report['ok'], msg=report['msg'], checks=report['checks'],
                  failed_checks=report['failed'], check_warnings=report['warnings'], skipped=report['skipped'],
                  restart_counts=report['restart_counts'], report_lines=report_lines(report),
                  duration_ms=report['duration_ms'])
    if not report['ok'] and module.params['fail_on_unhealthy']:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
