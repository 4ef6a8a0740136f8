# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit log: one JSON line per deploy, rollback, migrate, restore and clean redeploy on the host.

`<soulnear_log_dir>/audit.log`, rotated by the monitoring role's logrotate configuration. Each line is one
self-contained JSON object (written with a single append, so concurrent writers never interleave a line):

    {"time": "2025-01-05T10:00:00+00:00", "event": "deploy", "who": "alice@laptop", "host": "vps",
     "from_version": "3f9c2a1b7d4e", "to_version": "9a8b7c6d5e4f", "result": "success", "failed_step": null,
     "duration": 14.2, "downtime": 1.3, ...}

Writers: the safe_redeploy module (deploy, rollback, migrate, and the bot step of a clean redeploy), pg_restore and
pg_pitr (restore) and pg_upgrade (upgrade-postgres), each through its audit_log option and module_run(), and
deploy_lock, whose release records a run that failed where none of them did (a clean redeploy before its bot step).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import time
from datetime import datetime, timezone

from . import metrics

# upgrade-postgres: playbooks/upgrade-postgres.yml (a major upgrade of PostgreSQL, its rollback or confirm).
EVENTS = ('deploy', 'rollback', 'migrate', 'restore', 'clean-redeploy', 'upgrade-postgres')
RESULTS = ('success', 'failed', 'rolled back', 'rollback failed', 'refused')
FIELDS = ('time', 'event', 'who', 'host', 'from_version', 'to_version', 'result', 'failed_step', 'duration',
          'downtime')


def entry(event, who=None, from_version=None, to_version=None, result='success', failed_step=None, duration=None,
          downtime=None, now=None, **extra):
    """The audit record: the common fields first (always present, null when unknown), then the extra ones."""
    now = now or datetime.now(timezone.utc)
    record = dict(time=now.isoformat(timespec='seconds'), event=event, who=who or 'unknown',
                  host=socket.gethostname(), from_version=from_version, to_version=to_version, result=result,
                  failed_step=failed_step,
                  duration=None if duration is None else round(float(duration), 3),
                  downtime=None if downtime is None else round(float(downtime), 3))
    record.update((key, value) for key, value in extra.items() if key not in record)
    return record


@metrics.audit_written
def write(path, record):
    """Append one record as one line (the directory is created when missing; the file is 0640)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    line = (json.dumps(record, sort_keys=False, default=str) + '\n').encode('utf-8')
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)  # one write on an O_APPEND file: a line is never interleaved with another writer's
    finally:
        os.close(fd)
    return record


def record(path, event, **fields):
    """entry() + write(); returns the record."""
    return write(path, entry(event, **fields))


def module_run(path, event, who, warn, started, changed, failed=False, duration=None, **fields):
    """The line of one module run (a restore, an upgrade): 'failed' when it failed after changing something, 'refused'
    when it failed having changed nothing, 'success' when it changed something; a successful run that changed nothing
    is not recorded. duration defaults to the time since started. An audit log that cannot be written is a warning
    (warn), never the run's outcome."""
    outcome = ('failed' if changed else 'refused') if failed else ('success' if changed else None)
    if not path or outcome is None:
        return None
    try:
        return record(path, event, who=who, result=outcome,
                      duration=time.time() - started if duration is None else duration, **fields)
    except Exception as exc:  # noqa: BLE001 - the audit line never decides a run's outcome
        warn('could not write the audit log %s: %s' % (path, exc))
        return None


def read(path):
    """Every record of the log (lines that are not JSON are skipped), oldest first."""
    records = []
    try:
        with open(path) as handle:
            for line in handle:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return records
