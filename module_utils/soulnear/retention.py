# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backups to keep (restic/borg semantics), and pruning the rest.

Walking the verified backups newest first, a backup is kept when it is the newest of one of the
`keep_daily` most recent days, `keep_weekly` most recent ISO weeks or `keep_monthly` most recent months
that have a backup, or one of the `keep_last` newest. Files without a sidecar are reported and never
deleted: the backup command did not verify them.

Retention works on the backups of one database (settings `database`, else the login database): several
databases can share a directory without pruning each other. Safety backups a restore takes (pre_restore_*)
are pruned separately: the newest `keep_safety_backups` of the database are kept.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from .backup_files import SAFETY_NAME_PATTERN, SIDECAR_SUFFIX, list_backups, null_log, pattern_regex
from .backup_settings import DEFAULTS
from .files import remove

_PERIODS = (
    ('daily', lambda t: t.date()),
    ('weekly', lambda t: t.isocalendar()[:2]),
    ('monthly', lambda t: (t.year, t.month)),
)


def plan_retention(backups, keep_daily=DEFAULTS['keep_daily'], keep_weekly=DEFAULTS['keep_weekly'],
                   keep_monthly=DEFAULTS['keep_monthly'], keep_last=DEFAULTS['keep_last']):
    """Decide which backups to keep: returns (keep {name: [reasons]}, prune [names], unverified [names]).

    `backups` are dicts with name, time and verified (list_backups). Unverified backups are neither
    kept by a rule nor pruned. At least the newest verified backup is always kept.
    """
    verified = sorted((b for b in backups if b['verified']), key=lambda b: (b['time'], b['name']), reverse=True)
    keep = {}
    for backup in verified[:max(1, int(keep_last))]:
        keep.setdefault(backup['name'], []).append('last')
    counts = dict(daily=int(keep_daily), weekly=int(keep_weekly), monthly=int(keep_monthly))
    for rule, period_of in _PERIODS:
        last_period, kept = None, 0
        for backup in verified:
            if kept >= counts[rule]:
                break
            period = period_of(backup['time'])
            if period != last_period:
                keep.setdefault(backup['name'], []).append(rule)
                last_period = period
                kept += 1
    prune = [b['name'] for b in verified if b['name'] not in keep]
    unverified = [b['name'] for b in backups if not b['verified']]
    return keep, prune, unverified


def retention_plan(backups, settings):
    """plan_retention with the settings' keep_* values, reported as apply_retention reports what it did:
    dict(pruned, kept [{name, reasons}], unverified)."""
    keep, prune, unverified = plan_retention(backups, settings['keep_daily'], settings['keep_weekly'],
                                             settings['keep_monthly'], settings['keep_last'])
    kept = [dict(name=b['name'], reasons=keep[b['name']]) for b in backups if b['name'] in keep]
    return dict(pruned=prune, kept=kept, unverified=unverified)


def database_of(settings):
    """The database whose backups retention works on: settings `database`, else the login database."""
    return settings.get('database') or (settings.get('conn') or {}).get('login_db') or None


def apply_retention(directory, settings, check_mode=False, log=null_log):
    """Prune directory by the retention settings; returns dict(pruned, kept, unverified)."""
    plan = retention_plan(list_backups(directory, settings['name_pattern'], database_of(settings)), settings)
    for name in plan['pruned']:
        if check_mode:
            log('would prune %s' % name)
            continue
        # The dump goes first: a crash in between leaves an orphan sidecar (removed below next time),
        # never a dump without its sidecar (which retention would then keep forever as unverified).
        remove(os.path.join(directory, name))
        remove(os.path.join(directory, name + SIDECAR_SUFFIX))
        log('pruned %s' % name)
    if not check_mode:
        regex = pattern_regex(settings['name_pattern'])
        for name in os.listdir(directory):
            if name.endswith(SIDECAR_SUFFIX) and regex.match(name[:-len(SIDECAR_SUFFIX)]) \
                    and not os.path.exists(os.path.join(directory, name[:-len(SIDECAR_SUFFIX)])):
                remove(os.path.join(directory, name))
                log('removed orphan sidecar %s' % name)
    if plan['unverified']:
        log('left alone (no %s sidecar, not made or verified by soulnear-backup): %s'
            % (SIDECAR_SUFFIX, ', '.join(plan['unverified'])))
    return plan


def prune_safety_backups(directory, settings, check_mode=False, log=null_log):
    """Keep the newest `keep_safety_backups` (at least 1) verified pre_restore_* dumps of the database; returns
    the names pruned. Unverified ones are left alone, as for regular backups."""
    keep = settings.get('keep_safety_backups')
    keep = max(1, int(DEFAULTS['keep_safety_backups'] if keep is None else keep))
    verified = [b for b in list_backups(directory, SAFETY_NAME_PATTERN, database_of(settings)) if b['verified']]
    pruned = []
    for backup in verified[keep:]:
        if not check_mode:
            remove(backup['path'])
            remove(backup['path'] + SIDECAR_SUFFIX)
        pruned.append(backup['name'])
        log('%s safety backup %s (keeping the newest %d)' % ('would prune' if check_mode else 'pruned',
                                                             backup['name'], keep))
    return pruned
