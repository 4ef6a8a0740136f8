#!/usr/bin/env python3
"""pg_backup / pg_restore logic against the raw tools, on a >= 500 MB database in a throwaway container.

1. Backup: create_backup() (pg_dump in the container streamed to the host with sha256 computed on
   the fly, fsync, pg_restore --list, sidecar, rename, retention) vs a raw
   `docker exec pg_dump -Fc > file` with the same compression. Goal: ratio <= 1.15.
2. Restore: restore_database() over an (empty) live database (sha256 check, --list, safety backup
   of the live database, CREATE DATABASE, pg_restore streamed into the container, ANALYZE and
   checks, exact row counts, swap) vs a raw `docker exec -i pg_restore -d <empty db> < file`.
   Goal: ratio <= 1.15.
3. For information (no goal): restore_database() replacing the full-size live database, whose
   safety backup is a complete pg_dump of it.

MB/s are given for the database size (pg_database_size) and for the archive size.

The machine may be shared: runs are interleaved, and both the median and the best run are compared.
The restore also runs the raw tool with the module's session settings (maintenance_work_mem,
synchronous_commit=off), so the share of the gain that comes from them is visible.

Usage: .venv/bin/python bench/bench_backup.py [--scale 35] [--runs 5] [--no-full-replace]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchpaths import MB, timed
from ansible.module_utils.soulnear.backup import create_backup  # noqa: E402
from ansible.module_utils.soulnear.backup_settings import make_settings  # noqa: E402
from ansible.module_utils.soulnear.restore import restore_database  # noqa: E402
from pgcontainer import PgContainer  # noqa: E402


def raw_dump(container, db, path):
    with open(path, 'wb') as out:
        subprocess.run(['docker', 'exec', '-u', 'postgres', container.name, 'pg_dump', '-Fc', '-d', db], stdout=out,
                       check=True)


def raw_restore(container, db, path, pgoptions=None):
    env = ['-e', 'PGOPTIONS=' + pgoptions] if pgoptions else []
    with open(path, 'rb') as stdin:
        subprocess.run(['docker', 'exec', '-i', '-u', 'postgres'] + env + [container.name, 'pg_restore',
                        '--exit-on-error', '-d', db], stdin=stdin, check=True)


def recreate(container, db):
    container.query('DROP DATABASE IF EXISTS %s WITH (FORCE)' % db)
    container.query('CREATE DATABASE %s' % db)


def drop_like(container, prefix):
    for (name,) in container.query("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + '%',)):
        container.query('DROP DATABASE "%s" WITH (FORCE)' % name)


def report(label, times, db_size, archive_size):
    """Print median and best run with throughputs; returns (median, best)."""
    median, best = statistics.median(times), min(times)
    print('  %-47s median %6.2f s (%5.1f MB/s db, %4.2f MB/s archive)  best %6.2f s  runs %s'
          % (label, median, db_size / MB / median, archive_size / MB / median, best,
             ' '.join('%.2f' % t for t in times)))
    return median, best


def ratios(label, module, raw, goal=True):
    print('  ratio %s: median %.3f, best %.3f%s' % (label, module[0] / raw[0], module[1] / raw[1],
                                                    ' (goal <= 1.15)' if goal else ''))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--scale', type=int, default=35, help='pgbench scale (35 is about 525 MB)')
    parser.add_argument('--runs', type=int, default=5, help='interleaved runs of each measurement')
    parser.add_argument('--no-full-replace', action='store_true', help='skip the informational measurement 3')
    opts = parser.parse_args()

    work = tempfile.mkdtemp(prefix='bench-backup-')
    container = PgContainer(extra_args=['--shm-size', '256m']).start()
    try:
        container.query('CREATE DATABASE bench')
        print('pgbench -i -s %d ...' % opts.scale, flush=True)
        init_time, _ = timed(subprocess.run, ['pgbench', '-i', '-s', str(opts.scale), '-q', '-h', container.host,
                                              '-p', str(container.port), '-U', 'postgres', 'bench'],
                             check=True, capture_output=True, env=dict(os.environ, PGPASSWORD=container.password))
        container.query('CHECKPOINT')
        db_size = container.query("SELECT pg_database_size('bench')")[0][0]
        print('database bench: %.0f MB (pgbench_accounts %d rows), created in %.0f s\n'
              % (db_size / MB, opts.scale * 100000, init_time))
        if db_size < 500 * MB:
            print('WARNING: the database is below 500 MB; use --scale 35 or more')

        settings = make_settings(container.params('bench'), container=container.name,
                                 backup_dir=os.path.join(work, 'backups'))
        raw_path = os.path.join(work, 'raw.dump')

        # --- 1. backup ---------------------------------------------------------------------------
        raw_dump(container, 'bench', raw_path)  # warm-up: caches as they would be on a live server
        raw_times, module_times = [], []
        for _ in range(opts.runs):  # interleaved, so background load hits both sides alike
            raw_times.append(timed(raw_dump, container, 'bench', raw_path)[0])
            shutil.rmtree(settings['backup_dir'], ignore_errors=True)
            seconds, result = timed(create_backup, settings)
            module_times.append(seconds)
        archive = result['size']
        print('1. backup (compression %s; archive %.1f MB, raw pg_dump archive %.1f MB), %d interleaved runs:'
              % (result['compression'], archive / MB, os.path.getsize(raw_path) / MB, opts.runs))
        raw_b = report('raw: docker exec pg_dump -Fc > file', raw_times, db_size, archive)
        mod_b = report('pg_backup: dump+sha256+fsync+--list+prune', module_times, db_size, archive)
        ratios('pg_backup / raw pg_dump', mod_b, raw_b)

        # --- 2. restore into an empty live database ----------------------------------------------------
        backup_path = result['path']
        raw_times, module_times, tuned_times = [], [], []
        target = make_settings(container.params('target'), container=container.name,
                               backup_dir=settings['backup_dir'])
        for _ in range(opts.runs):
            recreate(container, 'raw_target')
            raw_times.append(timed(raw_restore, container, 'raw_target', backup_path)[0])
            container.query('DROP DATABASE raw_target WITH (FORCE)')
            recreate(container, 'target')
            seconds, restored = timed(restore_database, target, backup_path, confirm='target')
            module_times.append(seconds)
            drop_like(container, 'target')
            for name in os.listdir(settings['backup_dir']):
                if name.startswith('pre_restore_'):
                    os.unlink(os.path.join(settings['backup_dir'], name))
            recreate(container, 'raw_target')
            tuned_times.append(timed(raw_restore, container, 'raw_target', backup_path,
                                     '-c synchronous_commit=off -c maintenance_work_mem=256MB')[0])
            container.query('DROP DATABASE raw_target WITH (FORCE)')
        rows = restored['row_counts']['after']['public.pgbench_accounts']
        print('2. restore of the %.1f MB archive into an empty live database (%d accounts rows), %d interleaved runs:'
              % (archive / MB, rows, opts.runs))
        raw_r = report('raw: docker exec -i pg_restore -d empty', raw_times, db_size, archive)
        mod_r = report('pg_restore: checks+safety backup+restore+swap', module_times, db_size, archive)
        ratios('pg_restore / raw pg_restore', mod_r, raw_r)
        tuned = report('(info) raw with the module\'s session settings', tuned_times, db_size, archive)
        ratios('(info) pg_restore / raw with the same settings', mod_r, tuned, goal=False)
        print()

        # --- 3. replacing the full-size database (information) -----------------------------------------
        if not opts.no_full_replace:
            seconds, restored = timed(restore_database, settings, backup_path, confirm='bench')
            print('3. (info) pg_restore replacing the full %.0f MB live database (its safety backup is a full dump):'
                  % (db_size / MB))
            report('pg_restore: safety backup + restore + swap', [seconds], db_size, archive)
            print('  = %.2f x the median raw restore; %.2f x raw pg_dump + raw pg_restore\n'
                  % (seconds / raw_r[0], seconds / (raw_b[0] + raw_r[0])))
        return 0
    finally:
        container.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
