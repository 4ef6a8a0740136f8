# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deployment's defaults that more than one piece of code needs, in one place.

The DEFAULTS dicts of the modules and host commands (backup_settings, checks, monitor, leader, pitr, upgrade,
redeploy) take these values from here instead of restating them, and a module that needs one default imports this
file (no imports of its own) instead of a whole DEFAULTS dict and everything behind it. ROLE_DEFAULTS names the role
variables that restate a value for the playbooks; tests/unit/module_utils/test_defaults.py checks that
they agree.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

NAME = 'soulnear'                      # soulnear_name: the prefix of the containers, volume and stanza
DB_CONTAINER = NAME + '_postgres'      # the database container
BOT_CONTAINER = NAME + '_bot'          # the bot container
DB_EXEC_USER = 'postgres'              # the operating-system user the tools run as inside the database container
MAINTENANCE_DB = 'postgres'            # the database a superuser connects to for CREATE/DROP DATABASE
BACKUP_DIR = '/var/backups/soulnear'   # the logical backups
PITR_STANZA = NAME                     # pgBackRest's name for the cluster
MIGRATIONS_TABLE = 'schema_migrations'  # pg_migrate's tracking table
REQUIRED_TABLES = ()                   # tables a health check requires: none (the data-loss guard watches them all)
BOT_STOP_TIMEOUT = 30                  # seconds docker stop gives the bot
BOT_HEALTHY_TIMEOUT = 120              # seconds a (re)started bot gets to become ready
DB_STOP_TIMEOUT = 60                   # seconds docker stop gives PostgreSQL (a clean shutdown checkpoints)
SPACE_MARGIN = 1.2                     # free space needed: this factor times the database (or data directory)
COMPRESSION = 'auto'                   # pg_dump's compression: zstd on PostgreSQL 16+, gzip before
KEEP_SAFETY_BACKUPS = 3                # the safety backups a restore takes first, newest kept
RECOVERY_TIMEOUT = 1800                # seconds a point-in-time restore waits for the replay and the promotion
BACKUP_MAX_AGE_HOURS = 26.0            # a daily backup plus slack
ARCHIVE_READY_MAX = 8                  # WAL segments waiting to be archived before archiving counts as stalled
ARCHIVE_SLACK_SECONDS = 15             # archive_timeout plus this: the oldest unarchived commit is overdue
CONNECTIONS_WARN_PERCENT = 80
DISK_MAX_USED_PERCENT = 90

# Role variable -> the value above it restates (role defaults/main.yml); "{{ soulnear_name }}" stands for NAME.
ROLE_DEFAULTS = {
    ('soulnear', 'soulnear_name'): NAME,
    ('soulnear', 'soulnear_db_container'): DB_CONTAINER,
    ('soulnear', 'soulnear_bot_container'): BOT_CONTAINER,
    ('soulnear', 'soulnear_backup_dir'): BACKUP_DIR,
    ('soulnear', 'soulnear_pitr_stanza'): PITR_STANZA,
    ('soulnear', 'soulnear_migrations_table'): MIGRATIONS_TABLE,
    ('soulnear', 'soulnear_bot_stop_timeout'): BOT_STOP_TIMEOUT,
    ('soulnear', 'soulnear_db_stop_timeout'): DB_STOP_TIMEOUT,
    ('app', 'app_healthy_timeout'): BOT_HEALTHY_TIMEOUT,
    ('backup', 'backup_space_margin'): SPACE_MARGIN,
    ('backup', 'backup_compression'): COMPRESSION,
    ('backup', 'backup_keep_safety_backups'): KEEP_SAFETY_BACKUPS,
    ('restore', 'restore_recovery_timeout'): RECOVERY_TIMEOUT,
    ('monitoring', 'monitoring_backup_max_age_hours'): BACKUP_MAX_AGE_HOURS,
    ('monitoring', 'monitoring_pitr_backup_max_age_hours'): BACKUP_MAX_AGE_HOURS,
    ('monitoring', 'monitoring_pitr_archive_ready_max'): ARCHIVE_READY_MAX,
    ('monitoring', 'monitoring_pitr_archive_slack_seconds'): ARCHIVE_SLACK_SECONDS,
    ('monitoring', 'monitoring_connections_warn_percent'): CONNECTIONS_WARN_PERCENT,
    ('monitoring', 'monitoring_disk_max_used_percent'): DISK_MAX_USED_PERCENT,
}
