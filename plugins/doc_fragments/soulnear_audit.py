# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the modules that write their own line to the audit log (module_utils/soulnear/audit.py): pg_restore and
pg_pitr (event restore), pg_upgrade (event upgrade-postgres). The line is written by the module, from its options
and its result, not assembled by a playbook."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    DOCUMENTATION = r'''
options:
  audit_log:
    description: The audit log on the host; one JSON line (event C(restore), or C(upgrade-postgres)) per run that
      changed something, failed or was refused - not for a check-mode run, a restore test or a status. Empty for
      none; an absolute path of a file. A log that cannot be written is a warning, never the run's outcome.
    type: path
  audit_who:
    description: Who runs the operation, for the audit line (e.g. the deploy lock's holder).
    type: str
'''
