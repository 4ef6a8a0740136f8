# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the modules that replace the database under a Docker container - pg_pitr (a restore to a point in
time) and pg_upgrade (a major upgrade): pgBackRest's stanza and retention, and how the bot and the server are
stopped and started around the switch. Their defaults are pitr.DEFAULTS in module_utils/soulnear/pitr.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    DOCUMENTATION = r'''
options:
  stanza:
    description: pgBackRest's stanza of the cluster - letters, digits, C(_), C(.) and C(-), starting with a letter or
      digit (it is a directory of the repository and a section of C(pgbackrest.conf)).
    type: str
    default: soulnear
  retention_full:
    description: Full physical backups kept per repository after a backup this module takes (1 to 9999999, as
      pgBackRest allows).
    type: int
    default: 2
  retention_diff:
    description: Differential physical backups kept per repository after a backup this module takes (1 to 9999999,
      as pgBackRest allows).
    type: int
    default: 7
  bot_container:
    description: The bot's container, stopped while the database is replaced and started again after it; empty for
      none.
    type: str
    default: ''
  bot_stop_timeout:
    description: Seconds C(docker stop) gives the bot (1 or more).
    type: int
    default: 30
  bot_healthy_timeout:
    description: Seconds the restarted bot gets to become healthy (1 or more).
    type: int
    default: 120
  db_stop_timeout:
    description: Seconds C(docker stop) gives PostgreSQL for its clean stop (which archives its last WAL); 1 or more.
    type: int
    default: 60
'''
