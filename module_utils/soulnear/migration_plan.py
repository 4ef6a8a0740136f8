# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a pg_migrate run would do, computed from the files and the tracking table (migrate.py runs it).

No Ansible imports: the host commands import this file too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from .migration_files import MigrationError
from .migration_text import parse_version, version_text


class Plan:
    """What a run would do, computed from the files and the tracking table."""

    def __init__(self, catalog, records, baseline=None, target=None, out_of_order=False, text_only=False):
        versioned, repeatable, bfiles = catalog.versioned, catalog.repeatable, catalog.baselines
        by_key = {}
        self.repeat_records = {}
        for record in records:
            if record.kind == 'repeatable':
                self.repeat_records[record.name] = record
            elif record.key is not None:
                by_key[record.key] = record
        self.records = by_key
        self.failed = [r for r in records if not r.success]
        # A Flyway B file that ran on a fresh database stands for every version up to its own.
        b_keys = [k for k, r in by_key.items() if r.success and r.is_b_script]
        self.b_floor = max(b_keys) if b_keys else None
        file_keys = set(f.key for f in versioned) | set(f.key for f in bfiles)
        self.missing = sorted((r.name or r.version) for k, r in by_key.items() if k not in file_keys)
        self.drift = []
        for mfile in versioned + bfiles:
            record = by_key.get(mfile.key)
            if record is None or not record.checksum or not record.success:
                continue
            if record.is_b_script != (mfile.kind == 'baseline-script'):
                continue  # a B record covers the V file of its version, and the other way round
            if record.checksum != mfile.checksum:
                self.drift.append(mfile)
        self.unchecksummed = [f for f in versioned if f.key in by_key and not by_key[f.key].checksum]
        covered = self.b_floor
        pending = [f for f in versioned if f.key not in by_key and not (covered is not None and f.key <= covered)]
        applied_keys = [k for k, r in by_key.items() if r.success]
        self.current = max(applied_keys) if applied_keys else None
        self.baseline = []
        if baseline is not None:
            limit = parse_version(baseline)
            if limit is None:
                raise MigrationError('baseline %r is not a version (expected e.g. 5, 20251105 or 1.2)' % baseline)
            self.baseline = [f for f in pending if f.key <= limit]
            pending = [f for f in pending if f.key > limit]
        limit = None
        if target is not None:
            limit = parse_version(target)
            if limit is None:
                raise MigrationError('target %r is not a version' % target)
            pending = [f for f in pending if f.key <= limit]
        self.b_start = None
        if not by_key and bfiles and baseline is None:
            usable = [b for b in bfiles if limit is None or b.key <= limit]
            if usable:
                self.b_start = usable[-1]
                pending = [self.b_start] + [f for f in pending if f.key > self.b_start.key]
        self.out_of_order = [f for f in pending if self.current is not None and f.key < self.current]
        if self.out_of_order and not out_of_order:
            raise MigrationError(
                'migration(s) %s are older than the newest applied version %s but were never applied (added out of '
                'order). Give them a version above %s, or set out_of_order: true to apply them anyway'
                % (', '.join(f.name for f in self.out_of_order), version_text(self.current),
                   version_text(self.current)))
        self.pending = pending
        self.repeat_due = []
        if target is None:
            for mfile in repeatable:
                record = self.repeat_records.get(mfile.name)
                recorded, current = (record.checksum or '') if record else '', mfile.checksum
                if text_only:  # without the placeholder values (the health check does not know them)
                    recorded, current = recorded.split('+')[0], current.split('+')[0]
                if record is None or recorded != current or not record.success:
                    self.repeat_due.append(mfile)

    def todo(self):
        return self.pending + self.repeat_due

    def applied_names(self):
        names = [r.name or r.version for k, r in sorted(self.records.items()) if r.success]
        return names + sorted(self.repeat_records)
