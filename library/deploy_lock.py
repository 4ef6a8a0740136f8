#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: deploy_lock
short_description: Take, renew, release or inspect the deploy lock of a SoulNear host
description:
  - No two deploys, redeploys or restores on one host at once. The lock is a directory on the managed host
    with one record naming its holder (operator, controller, operation, run id, since, last heartbeat).
  - "Gap it fills: C(ansible.builtin.file) or C(ansible.builtin.command) with C(mkdir) can create a lock
    directory, but taking over a stale lock is then a separate step two runs can race through, and nothing
    tells a live holder from a killed one. Here reading, deciding and writing are one step under an fcntl
    lock, so of two runs exactly one wins, and a lock is stale only when its holder stopped renewing it for
    O(ttl_minutes) (or is a process on the host that is gone): a live holder is never taken over."
  - O(state=present) takes the lock, renews it when this O(run_id) already holds it, takes over a stale one
    (reported in RV(took_over)), and fails naming the holder when another live run holds it.
  - O(state=absent) releases the lock this O(run_id) holds and nothing else, so a refused run can never
    release the holder's lock; O(force=true) releases any holder's lock (C(make unlock)).
  - O(state=query) only reports.
  - A run that failed passes the step with its release (O(failed_step), O(audit_log)) and the module writes the
    run's audit line (event the lock's operation, result C(failed), who the holder, the duration since the lock was
    taken) - for a run whose own modules did not get to record it (a clean redeploy that fails before its bot step).
version_added: "1.1.0"
author: SoulNear operations contributors (!UNKNOWN)
options:
  path:
    description: The lock directory on the managed host - an absolute path, not C(/), and when it exists a
      directory holding nothing but the lock's record.
    type: path
    default: /var/lib/soulnear/deploy.lock
  state:
    description: Take (or renew) the lock, release it, or only report it.
    type: str
    choices: [present, absent, query]
    default: present
  run_id:
    description:
      - Identifies this run. With O(state=present) and no value, a new one is made and returned in RV(run_id);
        pass it back to renew and release.
      - Required with O(state=absent) unless O(force=true). Not empty.
    type: str
  holder:
    description: Who takes the lock, for the refusal message of the next run (e.g. C(alice@laptop)); not empty.
    type: str
    default: unknown
  operation:
    description: What the holder does (deploy, redeploy, restore, rollback, ...), shown to others; not empty.
    type: str
    default: deploy
  ttl_minutes:
    description: Minutes without a heartbeat after which a held lock counts as stale and may be taken over (1 to
      525600, a year).
    type: int
    default: 60
  force:
    description: With O(state=absent), release the lock whoever holds it (the operator's C(make unlock)).
    type: bool
    default: false
  failed_step:
    description: With O(state=absent) and O(audit_log), the step this run failed at; the release then writes the
      run's audit line. Not for a run whose own modules already recorded the failure.
    type: str
  audit_log:
    description: With O(state=absent) and O(failed_step), the audit log on the host (an absolute path of a file) that
      gets the failed run's line, when the lock's operation is an audit event (deploy, rollback, migrate, restore,
      clean-redeploy, upgrade-postgres). A log that cannot be written is a warning, never the release's outcome;
      nothing is written in check mode.
    type: path
  audit_extra:
    description: Further fields of that line (for example the backup the run took first); they never replace the
      common ones.
    type: dict
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Decides exactly as for real (would it be taken, renewed, taken over, refused) and writes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
notes:
  - The host monitor reads the same lock; while it is held and not stale the monitor neither restarts
    containers nor alerts (a deploy restarts them on purpose).
'''

EXAMPLES = r'''
- name: Take the deploy lock
  deploy_lock:
    holder: "{{ lookup('ansible.builtin.env', 'USER') }}@{{ lookup('ansible.builtin.pipe', 'hostname') }}"
    operation: deploy
  register: deploy_lock

- name: Release the deploy lock
  deploy_lock:
    state: absent
    run_id: "{{ deploy_lock.run_id }}"

- name: Release a lock left by a killed run (make unlock)
  deploy_lock:
    state: absent
    force: true
'''

RETURN = r'''
run_id:
  description: The run that holds the lock after this call (present), or that held it (absent).
  returned: when a lock is or was held
  type: str
  sample: 3f9c2a1b7d4e
result:
  description: What happened.
  returned: always
  type: str
  sample: taken
  choices: [taken, renewed, taken over, released, not held, held]
audited:
  description: With O(failed_step) and O(audit_log), the audit line the release wrote.
  returned: when one was written
  type: dict
record:
  description: The lock's record after the call (present, query) or the released one (absent).
  returned: when a lock is or was held
  type: dict
  sample: {holder: alice@laptop, operation: deploy, run_id: 3f9c2a1b7d4e, since: 1764410000.0, heartbeat: 1764410000.0}
took_over:
  description: The stale record that was replaced.
  returned: when result is C(taken over)
  type: dict
stale:
  description: With O(state=query), whether the held lock is stale.
  returned: when state is query
  type: bool
msg:
  description: One line for people.
  returned: always
  type: str
  sample: "deploy lock /var/lib/soulnear/deploy.lock taken by alice@laptop (deploy, run 3f9c2a1b7d4e)"
'''

import os
import time
import uuid

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.soulnear import audit
from ansible.module_utils.soulnear import lock
from ansible.module_utils.soulnear import validate


def argument_spec():
    return dict(
        path=dict(type='path', default=lock.DEFAULT_PATH),
        state=dict(type='str', choices=['present', 'absent', 'query'], default='present'),
        run_id=dict(type='str'),
        holder=dict(type='str', default='unknown'),
        operation=dict(type='str', default='deploy'),
        ttl_minutes=dict(type='int', default=lock.DEFAULT_TTL_MINUTES),
        force=dict(type='bool', default=False),
        failed_step=dict(type='str'),
        audit_log=dict(type='path'),
        audit_extra=dict(type='dict'),
    )


def _lock_dir(value):
    """An absolute path that is not / and, when it exists, a lock directory: a directory holding nothing but the
    holder record (a release, state=absent force=true, removes the whole directory)."""
    validate.nonempty_path(value, 'directory')
    path = os.path.abspath(value)
    allowed = 'an absolute path of the lock directory, not / (for example %s)' % lock.DEFAULT_PATH
    if path == '/':
        raise validate.Invalid(allowed, why='it is the root directory')
    if os.path.isdir(path) and not os.path.islink(path):
        others = sorted(set(os.listdir(path)) - {lock.RECORD})
        if others:
            raise validate.Invalid(allowed + ' that holds nothing but the lock\'s %s record' % lock.RECORD,
                                   why='it is a directory holding other files (%s%s), not a lock' % (
                                       ', '.join(others[:3]), ', ...' if len(others) > 3 else ''))


def check_options(module):
    """Every option checked before the lock is read or written (validate.py); fails naming each bad one."""
    options = validate.Options(module.params, argument_spec())
    options.check('path', _lock_dir)
    options.check('run_id', validate.nonempty, 'the run id this module returned when it took the lock')
    options.check(('holder', 'operation'), validate.nonempty)
    options.check('ttl_minutes', validate.in_range, 1, 525600, 'minutes')
    options.check('audit_log', validate.nonempty_path, 'file', empty=True)
    options.fail(module)


def failed_run_line(module, record):
    """The audit line of the failed run whose lock was just released (failed_step and audit_log given), or None."""
    p = module.params
    if not (p['failed_step'] and p['audit_log']) or module.check_mode:
        return None
    if record.get('operation') not in audit.EVENTS:
        module.warn('no audit line for the failed %s: not an audit event (%s)' % (
            record.get('operation'), ', '.join(audit.EVENTS)))
        return None
    return audit.module_run(p['audit_log'], record['operation'], record.get('holder'), module.warn,
                            float(record.get('since') or time.time()), changed=True, failed=True,
                            failed_step=p['failed_step'], **(p['audit_extra'] or {}))


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_if=[('state', 'absent', ('run_id', 'force'), True)])
    check_options(module)
    p = module.params
    path = p['path']
    try:
        if p['state'] == 'query':
            info = lock.status(path, p['ttl_minutes'])
            record = info['record']
            module.exit_json(changed=False, result='held' if info['held'] else 'not held', record=record,
                             run_id=(record or {}).get('run_id'), stale=info['stale'],
                             msg='deploy lock %s: %s%s' % (path, lock.describe(record) if record else 'not held',
                                                           ' (stale)' if info['stale'] else ''))
        if p['state'] == 'absent':
            record = lock.release(path, p['run_id'], force=p['force'], check_mode=module.check_mode)
            if record is None:
                module.exit_json(changed=False, result='not held',
                                 msg='deploy lock %s: not held by this run, nothing released' % path)
            audited = failed_run_line(module, record)
            # The lock is bookkeeping of the run itself: only an operator's forced release is a change.
            module.exit_json(changed=p['force'], result='released', record=record, run_id=record.get('run_id'),
                             msg='deploy lock %s released (held by %s)' % (path, lock.describe(record)),
                             **(dict(audited=audited) if audited else {}))
        run_id = p['run_id'] or uuid.uuid4().hex[:12]
        result, record = lock.acquire(path, run_id, p['holder'], p['operation'], p['ttl_minutes'],
                                      check_mode=module.check_mode)
    except lock.LockHeld as exc:
        module.fail_json(msg=str(exc), result='held', record=exc.record)
    except OSError as exc:
        module.fail_json(msg='cannot use the deploy lock %s: %s. Fix: run as root (become: true) and check that '
                         'its parent directory is writable' % (path, exc))
    out = dict(changed=False, result=result, record=record, run_id=run_id,
               msg='deploy lock %s %s by %s' % (path, result, lock.describe(record)))
    if result == 'taken over':
        out['took_over'] = record['took_over']
        module.warn('took over a stale deploy lock: %s (no heartbeat for %s minutes or more)'
                    % (lock.describe(record['took_over']), p['ttl_minutes']))
    module.exit_json(**out)


if __name__ == '__main__':
    main()
