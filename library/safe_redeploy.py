#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: safe_redeploy
short_description: Ship a new bot version with a pre-deploy backup, migrations, a health-checked swap and rollback
description:
  - Puts one version of the bot live as exactly one container, or rolls back to a kept earlier version, or applies
    the pending migrations of the running version. Every step is logged in RV(steps) (name, duration, outcome).
  - "Gap it fills: C(community.docker.docker_container) replaces a container but knows nothing of the migrations
    that must run between stopping the old bot and starting the new one, waits for no success marker, and leaves
    the bot down when the new one crashes; C(community.postgresql.postgresql_script) runs SQL with no backup
    first. This module is the deploy's critical section: preflight, backup, stop -> migrate -> start -> wait
    healthy -> settle, and an automatic rollback to the previous container on any failure."
  - "Preflight (nothing changes when it fails): the image and the release directory exist, the database answers
    C(SELECT 1) (db_health's check), the pending migrations of the release are listed and checked with
    C(pg_migrate)'s own logic (every pending file read and checked before anything runs), and no container of
    O(conflicting_containers) runs."
  - "Nothing to do (same version, image and configuration, nothing pending, the bot runs): C(changed=false) and
    the running bot is not touched."
  - "Backup: with O(backup=when_migrations) (the default) and pending migrations, or O(backup=always), a verified
    backup (C(pg_dump) in O(db_container), checked with C(pg_restore --list), sha256 sidecar) named
    C(pre_deploy_<version>_<time>.dump) is taken in O(backup_dir) before the old bot stops; the newest
    O(backup_keep) such backups are kept."
  - "Swap: the new container is created while the old bot runs; the old bot is stopped (a polling bot must never
    run twice: Telegram answers 409 Conflict) and kept as C(<name>-previous); the pending migrations run (each
    file in its transaction); the new container starts; the module waits until Docker reports it healthy and its
    log shows every O(markers) line, failing within a second when it exits, restarts or turns unhealthy; then it
    watches the log for O(error_patterns) for O(settle_seconds)."
  - "On any failure after the old bot stopped: the new container is removed, the previous one (same image, same
    configuration) starts again and is waited for, and the task fails naming the failed step, with the new
    container's last log lines. A failed migration applied nothing (its transaction rolled back); migrations that
    did apply stay, and the message prints the command that restores the pre-deploy backup."
  - "Only after success: the O(current_link) switches to the release (the host monitor reads its migrations), the
    history is written, and images of O(image_name) and releases beyond the newest O(keep_images) previous versions
    are pruned. One JSON line per run that changed something or failed goes to O(audit_log)."
  - "O(action=rollback) does the same swap to a kept earlier version (O(version), default the previous one in the
    history). O(action=migrate) applies the pending migrations of the current release with the same backup rule
    and does not touch the bot."
  - The deploy lock given by O(lock_path) and O(lock_run_id) is renewed while the module works.
version_added: "1.2.0"
author: SoulNear operations contributors (!UNKNOWN)
options:
  action:
    description: Deploy O(version), roll back to a kept version, or only apply the pending migrations.
    type: str
    choices: [deploy, rollback, migrate]
    default: deploy
  name:
    description: Name of the bot container (a Docker container name).
    type: str
    default: soulnear_bot
  image:
    description:
      - Image of the version to deploy (required with O(action=deploy)). When it is not O(image_name)C(:)O(version),
        it is tagged so, so that every kept version is an image of O(image_name). A Docker image reference.
    type: str
  image_name:
    description: Repository of the kept images (default the repository of O(image)), without a tag; required to roll
      back.
    type: str
  version:
    description:
      - The version to deploy (the name of its release directory below O(releases_dir) and the tag of its image),
        or with O(action=rollback) the kept version to roll back to (default V(previous), the one deployed before
        the running one). With O(action=migrate), default the release O(current_link) points at.
      - A Docker tag - a letter, digit or C(_), then letters, digits, C(_), C(.) or C(-), at most 128 characters.
    type: str
  releases_dir:
    description: Directory of the releases on the host, one directory per version holding its source or at least
      its migrations, and the deploy history (C(.history.json)). An absolute path of a directory.
    type: path
    default: /opt/soulnear/app/releases
  current_link:
    description: Symbolic link to the release that runs; switched only after a successful swap. An absolute path
      that is a symbolic link, or nothing yet.
    type: path
    default: /opt/soulnear/app/current
  migrations:
    description:
      - "How the bot's schema is migrated. V(sql) - the release's SQL files (O(migrations_subdir)) with
        C(pg_migrate)'s logic (today's default). V(command) - the bot's own tool (Alembic, its own script);
        O(migration_command) runs in a one-off container of the NEW image (the bot's environment file, network,
        mounts and extra hosts) after the pre-deploy backup and before the new bot starts, with the same failure
        handling (the previous bot is put back). V(none) - the bot has no migrations; nothing runs."
      - "With V(command), whether anything is pending is asked first: O(migration_check_command) exits 0 (up to
        date), 1 (pending) or anything else (unknown: backed up and run). Without it, the command runs whenever
        the image changes. A rollback never runs an older image's migration command (it cannot know the newer
        schema): the bot's start command must not migrate (see O(command))."
    type: str
    choices: [sql, command, none]
    default: sql
  migration_command:
    description: With O(migrations=command), the migration command, e.g. V(alembic upgrade head) (a string is
      split like a shell would; no shell runs it) or a list.
    type: raw
    default: []
  migration_check_command:
    description: With O(migrations=command), the probe that tells whether the migration is pending by its exit
      code (0 up to date, 1 pending), e.g. for Alembic a small script of the bot comparing C(alembic current)
      with C(alembic heads).
    type: raw
    default: []
  migration_timeout:
    description: Seconds O(migration_command) may run; longer, its container is removed and the deploy rolls back
      (1 or more).
    type: int
    default: 3600
  rehearsal:
    description:
      - "Before the old bot stops, restore the fresh pre-deploy backup into a scratch database on the same server,
        apply the pending migrations there with the new release (either O(migrations) mode), and drop it. A
        migration that fails there fails the deploy at step C(rehearse) with the old bot never stopped; the time
        the migrations took is RV(predicted_downtime) (printed and audited)."
      - V(auto) skips it when the database is larger than O(rehearsal_max_mb) (its restore would lengthen the
        deploy) and says so; V(always) rehearses whatever the size; V(never) does not. A copy that cannot be made
        (no room, no CREATEDB) is a warning and the deploy goes on as without it.
    type: str
    choices: [auto, always, never]
    default: auto
  rehearsal_max_mb:
    description: With O(rehearsal=auto), the database size (MB) above which the rehearsal is skipped (0 or more).
    type: int
    default: 1024
  max_migration_seconds:
    description: Refuse the deploy, before the old bot stops, when the rehearsed migrations took longer than this
      (the predicted downtime). V(0) sets no limit (0 or more).
    type: float
    default: 0
  migrations_subdir:
    description: The migrations directory inside a release (O(migrations=sql)), a relative path without C(..).
    type: str
    default: database/migrations
  migrations_table:
    description: The migration tracking table (as C(pg_migrate)'s O(ignore:table)).
    type: str
    default: schema_migrations
  migration_options:
    description:
      - Further C(pg_migrate) options for the migrations of a deploy, by their C(pg_migrate) names - C(format),
        C(placeholders), C(takeover), C(takeover_table), C(drift), C(baseline), C(out_of_order), C(lock_timeout),
        C(ddl_lock_timeout), C(ddl_lock_retries), C(statement_timeout), C(lint), C(lint_min_rows), C(lint_min_mb)
        (see C(ansible-doc -M library pg_migrate)).
      - A team coming from another migration tool sets C(format) and C(takeover) here for its first deploy.
      - C(ddl_lock_timeout) and C(statement_timeout) from 0 to 2147483 seconds (PostgreSQL keeps them as 32-bit
        milliseconds), C(lock_timeout) 0 to ten years, C(ddl_lock_retries) 0 to 100, C(lint_min_rows) 0 to 10^12,
        C(lint_min_mb) 0 to 33554432, C(out_of_order) a boolean (unquoted).
    type: dict
    default: {}
  applied_by:
    description: Recorded as who applied the migrations (default user@host of the module).
    type: str
  env_file:
    description: The bot's environment file on the host, an absolute path of a file; part of the configuration
      compared with the running bot.
    type: path
  network:
    description: Docker network the bot joins (a Docker network name).
    type: str
  restart_policy:
    description: Docker restart policy of the bot container - V(no), V(always), V(unless-stopped) or
      C(on-failure[:N]).
    type: str
    default: unless-stopped
  stop_timeout:
    description: Seconds the bot gets to exit cleanly when it is stopped (1 or more).
    type: int
    default: 30
  labels:
    description: Further labels of the container (the module adds C(soulnear.version) and C(soulnear.config)); names
      without C(=) or white space, values strings or numbers.
    type: dict
    default: {}
  healthy_timeout:
    description: Seconds the new container (and, after a failure, the previous one) gets to become healthy and log
      every marker (1 or more).
    type: int
    default: 120
  rollback_timeout:
    description: Seconds the previous bot gets to become healthy again after a failed deploy (its own wait, at least
      O(healthy_timeout) - a slow but healthy old bot on a loaded host is not a failed rollback); 1 or more.
    type: int
    default: 300
  settle_seconds:
    description: Seconds the new container is watched after it became healthy (still running, no restart, no error
      pattern in its log). V(0) skips it (0 or more).
    type: float
    default: 10.0
  markers:
    description:
      - Regular expressions that must all appear in the new container's log (success markers). None by default,
        so the bot is ready when it runs (and is healthy, when its image or O(healthcheck) has a healthcheck) without
        a restart or an error pattern for O(settle_seconds).
      - Each a Python regular expression that compiles and is not empty.
    type: list
    elements: str
    default: []
  error_patterns:
    description: Regular expressions that fail the deploy when a line of the new container's log matches one (each
      compiles and is not empty - an empty one matches every line).
    type: list
    elements: str
    default: [Traceback, does not exist, FATAL, PANIC, terminated by other getUpdates request]
  conflicting_containers:
    description: Containers of an older setup that must not run next to the bot (Telegram answers 409); Docker
      container names.
    type: list
    elements: str
    default: []
  db_container:
    description: The database container (a Docker container name, or empty); the pre-deploy backup runs C(pg_dump)
      inside it.
    type: str
  backup_client_image:
    description: For a database this host does not own (external, or on the database host of a two-host
      deployment) - the image the pre-deploy backup runs C(pg_dump) in, over the connection's TLS settings (see
      pg_backup's O(pg_backup#module:client_image)). O(db_container) is then not used. A Docker image reference.
    type: str
  mounts:
    description: Host files or directories mounted read-only, at the same path, into the bot's container (the
      database's CA certificate for C(sslmode=verify-full)); absolute paths.
    type: list
    elements: path
    default: []
  volumes:
    description: Volumes of the bot container, C(source:/path/in/container[:ro|rw]), the source a named volume or an
      absolute host path. Also mounted into the migration command's container.
    type: list
    elements: str
    default: []
  published_ports:
    description: Ports of the bot published on the host, C([address:]host_port:container_port); without an address
      they are published on 127.0.0.1 only.
    type: list
    elements: str
    default: []
  extra_hosts:
    description: Extra C(name:address) entries of the container's /etc/hosts (also for the migration command).
    type: list
    elements: str
    default: []
  command:
    description: The bot's start command instead of its image's CMD (a string is split like a shell would, or a
      list). Use it when the image's CMD migrates before starting, so a rollback never runs an older image's
      migrations.
    type: raw
    default: []
  healthcheck:
    description: The container's healthcheck instead of its image's, with C(test) (a shell command, or V(NONE) for
      none), C(interval), C(timeout), C(start_period) (Docker durations, e.g. V(10s)) and C(retries) (0 to 1000).
    type: dict
    default: {}
  backup:
    description: When to take a verified backup before the swap (O(action=migrate) treats V(always) as
      V(when_migrations)).
    type: str
    choices: [always, when_migrations, never]
    default: when_migrations
  backup_dir:
    description: Directory of the backups on the host (an absolute path of a directory).
    type: path
    default: /var/backups/soulnear
  backup_keep:
    description: Pre-deploy backups (C(pre_deploy_*), C(pre_rollback_*), C(pre_migrate_*)) kept; older ones are
      removed (1 or more).
    type: int
    default: 5
  backup_login_user:
    description: Role the backup connects as (a superuser); default O(login_user).
    type: str
  backup_login_password:
    description: Password of O(backup_login_user); passed to C(pg_dump) by environment variable name only.
    type: str
  keep_images:
    description: Previous versions kept (images and release directories) besides the running one (0 or more).
    type: int
    default: 3
  lock_path:
    description: The deploy lock this run holds (deploy_lock's O(ignore:path)); renewed while the module works. An
      absolute path.
    type: path
  lock_run_id:
    description: The run id that holds the lock (deploy_lock's RV(ignore:run_id)).
    type: str
  audit_log:
    description: The audit log on the host (one JSON line per run that changed something or failed); an absolute
      path of a file.
    type: path
  audit_event:
    description: The event written to the audit log (default the action; the clean redeploy passes
      V(clean-redeploy)).
    type: str
  audit_who:
    description: Who runs the deploy, for the audit log (e.g. the deploy lock's holder).
    type: str
  audit_extra:
    description: Further fields of the audit line (the clean redeploy adds the path of its backup).
    type: dict
    default: {}
  standby:
    description:
      - "Several bot hosts, one bot (a polling bot runs once per token): prepare the version on this host without
        starting it. The container is created or replaced and left stopped (a running one is stopped), the release
        and the history switch and old images are pruned; pending migrations run (after the backup) only when no
        host runs the bot - otherwise the active host's swap applies them between stopping and starting its bot."
      - With V(false) (the default) and no O(leader_state_file), the module behaves exactly as without this option.
    type: bool
    default: false
  leader_state_file:
    description:
      - The state file of this host's soulnear-leader (the bot lease's holder runs the bot). The host acts as with
        O(standby=true) unless its leader holds the lease now, and every start of a bot - the new one, the previous
        one after a failure, one left by an interrupted run - happens only while it does (RV(standby_reason) says
        why not). An absolute path.
    type: path
  login_user:
    description: Role the migrations run as (the bot's role, which owns its tables).
  login_db:
    description: The bot's database.
extends_documentation_fragment:
  - soulnear_connection
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Runs the preflight (image, database, pending migrations, checked) and reports what a real run would do;
      changes nothing. A version whose image or release is not on the host yet (the role builds them in check mode
      neither) is reported as a change.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Before and after are the running version, the image and the pending migrations.
requirements:
  - psycopg2 and the docker CLI on the host that runs the module (the Docker host)
notes:
  - Write migrations that the previous version can run with (add, do not drop or rename); after a failed start the
    previous bot runs on the migrated database.
  - The deploy history and the kept releases live in O(releases_dir); rolling back to a version that is not kept
    fails and names the kept ones.
seealso:
  - module: community.docker.docker_container
  - module: community.postgresql.postgresql_script
'''

EXAMPLES = r'''
- name: Ship the bot built as soulnear/bot:3f9c2a1b7d4e
  safe_redeploy:
    name: soulnear_bot
    image: soulnear/bot:3f9c2a1b7d4e
    version: 3f9c2a1b7d4e
    releases_dir: /opt/soulnear/app/releases
    current_link: /opt/soulnear/app/current
    env_file: /etc/soulnear/app.env
    network: soulnear_net
    db_container: soulnear_postgres
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot
    backup_login_user: postgres
    backup_login_password: "{{ vault_postgres_password }}"
  register: redeploy
  no_log: true

- name: Roll back to the version deployed before the running one
  safe_redeploy:
    action: rollback
    image_name: soulnear/bot
    env_file: /etc/soulnear/app.env
    network: soulnear_net
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot

- name: Apply the pending migrations of the running version, with a backup first
  safe_redeploy:
    action: migrate
    db_container: soulnear_postgres
    login_host: 127.0.0.1
    login_user: soulnear
    login_password: "{{ vault_app_db_password }}"
    login_db: soul_bot
    backup_login_user: postgres
    backup_login_password: "{{ vault_postgres_password }}"
'''

RETURN = r'''
msg:
  description: What happened, for people; on failure the failed step, what became of the bot and the new
    container's last log lines.
  returned: always
  type: str
  sample: "Deployed 3f9c2a1b7d4e -> 9a8b7c6d5e4f: applied 004_profiles.sql; downtime 1.4s"
action:
  description: The action run.
  returned: always
  type: str
  sample: deploy
from_version:
  description: The version that ran before.
  returned: always
  type: str
  sample: 3f9c2a1b7d4e
to_version:
  description: The version deployed (rolled back to).
  returned: always
  type: str
  sample: 9a8b7c6d5e4f
image:
  description: The image the bot container runs (O(image_name)C(:)RV(to_version)).
  returned: when a version was resolved
  type: str
  sample: soulnear/bot:9a8b7c6d5e4f
steps:
  description: Every step with its duration in seconds and its outcome.
  returned: always
  type: list
  elements: dict
  sample: [{name: preflight, duration: 0.21, outcome: "ok: 3f9c2a1b7d4e -> 9a8b7c6d5e4f, 1 pending migration(s)"}]
pending:
  description: Migrations that were pending before the run.
  returned: always
  type: list
  elements: str
  sample: [004_profiles.sql]
applied:
  description: Migrations this run applied (also when it then failed).
  returned: always
  type: list
  elements: str
  sample: [004_profiles.sql]
backup:
  description: Path of the pre-deploy backup, or null when none was taken.
  returned: always
  type: str
  sample: /var/backups/soulnear/pre_deploy_9a8b7c6d5e4f_20250105_100000.dump
rolled_back:
  description: True when a failure put the previous bot back.
  returned: always
  type: bool
downtime:
  description: Seconds from stopping the old bot to the new (or, after a failure, the previous) one logging its
    success markers; null when the bot was not restarted.
  returned: always
  type: float
  sample: 1.4
lint:
  description: The locking DDL the preflight found in the pending migrations (pg_migrate's RV(pg_migrate#module:lint) -
    file, line, rule, table, its size and rows, the fix); warned before anything stops, refused with
    C(migration_options.lint=refuse).
  returned: always
  type: list
  elements: dict
predicted_downtime:
  description: Seconds the pending migrations took when rehearsed on a copy of the database (O(rehearsal)); the
    swap's downtime is about this plus the bot's restart. Null without a rehearsal.
  returned: always
  type: float
  sample: 3.2
rehearsal:
  description: The rehearsal - the scratch database, the database size, the seconds of its restore and of the
    migrations on it; null without one.
  returned: always
  type: dict
failed_step:
  description: The step that failed.
  returned: on failure
  type: str
  sample: wait_healthy
log_tail:
  description: The new container's last log lines, after a failure.
  returned: always
  type: list
  elements: str
kept_versions:
  description: Versions kept for rollback after the run (the running one first).
  returned: always
  type: list
  elements: str
pruned_images:
  description: Images removed because they are older than the kept versions.
  returned: always
  type: list
  elements: str
pruned_releases:
  description: Release directories removed with them.
  returned: always
  type: list
  elements: str
duration:
  description: Wall time of the run in seconds.
  returned: always
  type: float
standby:
  description: True when the version was prepared without starting it (O(standby), or a leader that does not hold
    the bot lease).
  returned: always
  type: bool
standby_reason:
  description: Why this host stands by, or why it may start the bot (with O(leader_state_file)); null otherwise.
  returned: always
  type: str
  sample: "this host stands by: the bot lease is held by vps-bot"
'''

import os
import re

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear.containers import DockerError
from ansible.module_utils.soulnear.migrate import migration_options
from ansible.module_utils.soulnear.pg import HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, connection_argument_spec
from ansible.module_utils.soulnear.redeploy import (
    ACTIONS, BACKUP_MODES, DEFAULTS, MIGRATION_MODES, MIGRATION_OPTIONS, PREVIOUS, REHEARSAL_MODES, RedeployError,
    Redeployer)
from ansible.module_utils.soulnear import validate

_TYPES = dict(
    action=dict(type='str', choices=list(ACTIONS)), name=dict(type='str'), image=dict(type='str'),
    image_name=dict(type='str'), version=dict(type='str'), releases_dir=dict(type='path'),
    current_link=dict(type='path'), migrations_subdir=dict(type='str'), migrations_table=dict(type='str'),
    migration_options=dict(type='dict'), migrations=dict(type='str', choices=list(MIGRATION_MODES)),
    migration_command=dict(type='raw'), migration_check_command=dict(type='raw'), migration_timeout=dict(type='int'),
    rehearsal=dict(type='str', choices=list(REHEARSAL_MODES)), rehearsal_max_mb=dict(type='int'),
    max_migration_seconds=dict(type='float'),
    volumes=dict(type='list', elements='str'), published_ports=dict(type='list', elements='str'),
    extra_hosts=dict(type='list', elements='str'), command=dict(type='raw'), healthcheck=dict(type='dict'),
    applied_by=dict(type='str'), env_file=dict(type='path'), network=dict(type='str'),
    restart_policy=dict(type='str'), stop_timeout=dict(type='int'), labels=dict(type='dict'),
    healthy_timeout=dict(type='int'), rollback_timeout=dict(type='int'), settle_seconds=dict(type='float'),
    markers=dict(type='list', elements='str'), error_patterns=dict(type='list', elements='str'),
    conflicting_containers=dict(type='list', elements='str'), db_container=dict(type='str'),
    backup_client_image=dict(type='str'), mounts=dict(type='list', elements='path'),
    backup=dict(type='str', choices=list(BACKUP_MODES)), backup_dir=dict(type='path'), backup_keep=dict(type='int'),
    backup_login_user=dict(type='str'), backup_login_password=dict(type='str', no_log=True),
    keep_images=dict(type='int'), lock_path=dict(type='path'), lock_run_id=dict(type='str'),
    audit_log=dict(type='path'), audit_event=dict(type='str'), audit_who=dict(type='str'),
    audit_extra=dict(type='dict'), standby=dict(type='bool'), leader_state_file=dict(type='path'),
)


def argument_spec():
    """The connection options plus the module's own, with redeploy.DEFAULTS as their defaults."""
    spec = connection_argument_spec()
    for name, option in _TYPES.items():
        option = dict(option)
        default = DEFAULTS[name]
        if default is not None:
            option['default'] = list(default) if isinstance(default, list) else (
                dict(default) if isinstance(default, dict) else default)
        spec[name] = option
    return spec


RESTART_POLICY = re.compile(r'^(?:no|always|unless-stopped|on-failure(?::[0-9]+)?)$')
DURATION = re.compile(r'^(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|ms|s|m|h))+$')


def _link(value):
    """current_link: an absolute path that is a symbolic link when it exists (the switch replaces only a link,
    after the new bot runs)."""
    validate.nonempty_path(value)
    if os.path.lexists(value) and not os.path.islink(value):
        raise validate.Invalid('an absolute path that is a symbolic link, or nothing yet', why='it exists and is not '
                               'a symbolic link', fix='move it away (the releases live in releases_dir)')


def _subdir(value):
    parts = str(value).split('/')
    if not value or os.path.isabs(value) or '..' in parts:
        raise validate.Invalid('a relative path inside the release, without ".." (for example database/migrations)')


def _command(value):
    if not isinstance(value, (str, list)) or (isinstance(value, list) and any(
            isinstance(v, (dict, list)) for v in value)):
        raise validate.Invalid('a command: a string (split like a shell would) or a list of words')


def _pattern(value, pattern, allowed):
    if not pattern.match(str(value)):
        raise validate.Invalid(allowed)


def _labels(value):
    for key, item in value.items():
        if not key or '=' in key or any(c.isspace() for c in key) or isinstance(item, (dict, list)):
            raise validate.Invalid('a dict of label -> value: names without "=" or white space, values strings or '
                                   'numbers', why='label %s does not follow that' % validate.show(key))


def check_options(module):
    """Every option checked before the preflight starts (validate.py); fails naming each bad one. volumes,
    published_ports, extra_hosts and healthcheck's keys are read by redeploy.container_options when the Redeployer is
    made, before anything either."""
    p = module.params
    options = validate.Options(p, argument_spec())
    validate.connection(options, database=True)
    options.check('name', validate.name, 'container')
    options.check('image', validate.name, 'image')
    options.check('image_name', validate.name, 'repository')
    if p['version'] != PREVIOUS or p['action'] != 'rollback':
        options.check('version', validate.name, 'tag')
    options.check(('releases_dir', 'backup_dir', 'lock_path'), validate.nonempty_path, 'directory')
    options.check('current_link', _link)
    options.check(('env_file', 'audit_log', 'leader_state_file'), validate.nonempty_path, 'file')
    options.each('mounts', validate.nonempty_path)
    options.check('migrations_subdir', _subdir)
    options.check('migrations_table', validate.pg_name, 'table')
    unknown = sorted(set(p['migration_options']) - set(MIGRATION_OPTIONS))
    if unknown:
        options.add('migration_options', p['migration_options'], validate.Invalid(
            'a dict of the options a deploy can pass to pg_migrate: %s' % ', '.join(MIGRATION_OPTIONS),
            why='it has unknown option(s) %s' % ', '.join(unknown)))
    migration_options(options, p['migration_options'], 'migration_options.')
    options.check(('migration_command', 'migration_check_command', 'command'), _command)
    if p['migrations'] == 'command' and not p['migration_command']:
        options.require('migration_command', 'the bot\'s own migration command (for example alembic upgrade head), '
                        'run in a one-off container of the new image', why='migrations=command needs it')
    options.check(('migration_timeout', 'stop_timeout', 'healthy_timeout', 'rollback_timeout'), validate.seconds)
    options.check(('settle_seconds', 'max_migration_seconds'), validate.seconds, zero=True)
    options.check('rehearsal_max_mb', validate.in_range, 0)
    options.check('backup_keep', validate.in_range, 1)
    options.check('keep_images', validate.in_range, 0)
    options.check(('markers', 'error_patterns'), validate.regexes)
    options.check('network', validate.name, 'network')
    options.each('conflicting_containers', validate.name, 'container')
    options.check('db_container', validate.name, 'container', empty=True)
    options.check('backup_client_image', validate.name, 'image', empty=True)
    options.check('backup_login_user', validate.pg_name, 'role')
    options.check('restart_policy', _pattern, RESTART_POLICY, 'a Docker restart policy: no, always, unless-stopped '
                  'or on-failure[:N]')
    options.check('labels', _labels)
    health = p['healthcheck'] or {}
    for key in ('interval', 'timeout', 'start_period'):
        if health.get(key):
            options.value('healthcheck.%s' % key, health[key], _pattern, DURATION, 'a Docker duration such as 10s, '
                          '1m30s or 500ms')
    if health.get('retries') is not None:
        options.value('healthcheck.retries', health['retries'], validate.in_range, 0, 1000)
    options.check('lock_run_id', validate.nonempty, 'the run id deploy_lock returned')
    options.fail(module)


def describe(result):
    return ''.join('version: %s\nimage: %s\n' % (result.get('version'), result.get('image'))
                   + ''.join('pending: %s\n' % name for name in result.get('pending', [])))


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_if=[('action', 'deploy', ('image', 'version'))])
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    check_options(module)
    try:
        redeployer = Redeployer(module.params, check_mode=module.check_mode, warn=module.warn)
        result = redeployer.run()
    except RedeployError as exc:
        module.fail_json(msg=str(exc), **dict(exc.result, changed=bool(exc.result.get('changed'))))
    except DockerError as exc:
        module.fail_json(msg='safe_redeploy: %s' % exc)
    if module._diff and result['changed']:
        result['diff'] = dict(
            before=describe(dict(version=result['from_version'])),
            after=describe(dict(version=result['to_version'], image=result.get('image'), pending=result['pending'])),
            before_header='running bot', after_header='running bot')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
