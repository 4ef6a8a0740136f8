#!/usr/bin/env python3
"""Physical backups and point-in-time recovery (pgBackRest) against the logical tools, on the backup benchmark's
>= 500 MB pgbench database, in a database container laid out like the postgres role lays it out
(tests/support/pitrenv.py: pgBackRest's repository and configuration bind-mounted, WAL archiving on,
archive_timeout 60 s).

1. Backup: a full physical backup (pitr.backup: `pgbackrest backup --type=full` in the container, zstd, 2
   processes, then expiry) vs `docker exec pg_dump -Fc bench > file`.
2. Restore: the whole restore to latest (pitr_restore.restore: stop, `pgbackrest restore` into a new volume, the
   volumes swapped, start, WAL replay, promotion) vs `docker exec -i pg_restore -d <empty db> < file` of the dump
   of the same data. Goal: physical restore <= 0.5 x the logical restore.

The ratios are printed per run and for the medians. Then the recovery window (make backups prints the same).
The physical side copies the whole cluster (the bench database plus the small bot database and the catalogs),
the logical side the bench database only.

Usage: .venv/bin/python bench/bench_pitr.py [--scale 35] [--runs 2]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from benchpaths import MB, timed
from ansible.module_utils.soulnear import pitr  # noqa: E402
from ansible.module_utils.soulnear.pitr_restore import restore  # noqa: E402
from pitrenv import DB, PASSWORD, PitrLab  # noqa: E402


def raw_dump(lab, path):
    with open(path, 'wb') as out:
        subprocess.run(['docker', 'exec', '-u', 'postgres', lab.name, 'pg_dump', '-Fc', '-d', 'bench'], stdout=out,
                       check=True)


def raw_restore(lab, db, path):
    with open(path, 'rb') as stdin:
        subprocess.run(['docker', 'exec', '-i', '-u', 'postgres', lab.name, 'pg_restore', '--exit-on-error',
                        '-d', db], stdin=stdin, check=True)


def line(label, times, size):
    median = statistics.median(times)
    print('  %-58s median %6.2f s (%5.1f MB/s)  runs %s' % (label, median, size / MB / median,
                                                              ' '.join('%.2f' % t for t in times)))
    return median


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--scale', type=int, default=35, help='pgbench scale (35 is about 525 MB)')
    parser.add_argument('--runs', type=int, default=2, help='interleaved runs of each measurement')
    opts = parser.parse_args()

    work = tempfile.mkdtemp(prefix='bench-pitr-')
    lab = PitrLab(os.path.join(work, 'lab'), archive_timeout='60s').start()
    try:
        lab.sql('CREATE DATABASE bench', db='postgres')
        print('pgbench -i -s %d ...' % opts.scale, flush=True)
        seconds, _ = timed(subprocess.run, ['pgbench', '-i', '-s', str(opts.scale), '-q', '-h', '127.0.0.1',
                                            '-p', str(lab.port), '-U', 'postgres', 'bench'],
                           check=True, capture_output=True, env=dict(os.environ, PGPASSWORD=PASSWORD))
        lab.sql('CHECKPOINT', db='postgres')
        db_size = lab.sql("SELECT pg_database_size('bench')", db='postgres')[0][0]
        cluster = int(lab.sql('SELECT sum(pg_database_size(oid)) FROM pg_database', db='postgres')[0][0])
        print('database bench: %.0f MB (cluster %.0f MB), created in %.0f s' % (db_size / MB, cluster / MB, seconds))
        if db_size < 500 * MB:
            print('WARNING: the database is below 500 MB; use --scale 35 or more')
        settings = lab.settings(recovery_timeout=1800)
        print('first full backup (stanza-create, check) ...', flush=True)
        pitr.setup(settings)
        dump = os.path.join(work, 'bench.dump')
        raw_dump(lab, dump)  # warm-up

        dump_t, backup_t, restore_t, pg_restore_t, replay_t, files_t = [], [], [], [], [], []
        for run in range(opts.runs):
            dump_t.append(timed(raw_dump, lab, dump)[0])
            seconds, result = timed(pitr.backup, settings, 'full', repo=1)
            backup_t.append(seconds)
            physical = result['backups'][0]['backup']
            lab.sql('SELECT txid_current(); SELECT pg_switch_wal()', db='postgres')
            seconds, restored = timed(restore, settings, 'latest', confirm=DB)
            restore_t.append(seconds)
            files_t.append(restored['steps']['restore_files'])
            replay_t.append(restored['steps']['recovery'])
            if restored.get('kept_volume'):
                subprocess.run(['docker', 'volume', 'rm', restored['kept_volume']], check=True, capture_output=True)
            lab.sql('CREATE DATABASE bench_logical', db='postgres')
            pg_restore_t.append(timed(raw_restore, lab, 'bench_logical', dump)[0])
            lab.sql('DROP DATABASE bench_logical', db='postgres')
            print('run %d: pg_dump %.1f s, full backup %.1f s, restore latest %.1f s (files %.1f s, replay+promotion '
                  '%.1f s), pg_restore %.1f s' % (run + 1, dump_t[-1], backup_t[-1], restore_t[-1], files_t[-1],
                                                  replay_t[-1], pg_restore_t[-1]), flush=True)
        dump_size = os.path.getsize(dump)
        print('\n1. backup (pg_dump -Fc archive %.1f MB; full physical backup %.1f MB in the repository, zstd), '
              '%d runs:' % (dump_size / MB, (physical.get('repo_size') or 0) / MB, opts.runs))
        logical_b = line('logical: docker exec pg_dump -Fc > file', dump_t, db_size)
        physical_b = line('physical: pgbackrest backup --type=full (+ expire)', backup_t, cluster)
        print('  ratio full physical backup / pg_dump: %.2f' % (physical_b / logical_b))
        print('\n2. restore, %d runs:' % opts.runs)
        logical_r = line('logical: docker exec -i pg_restore -d empty < file', pg_restore_t, db_size)
        physical_r = line('physical: make restore TIME=latest (whole procedure)', restore_t, cluster)
        line('  of which pgbackrest restore into the new volume', files_t, cluster)
        line('  of which start, WAL replay and promotion', replay_t, cluster)
        print('  ratio physical restore (latest) / pg_restore: %.2f (goal <= 0.5)' % (physical_r / logical_r))
        print('\n3. the recovery window (make backups):')
        print('\n'.join('  ' + text for text in pitr.describe(settings)['lines']))
        return 0
    finally:
        lab.remove()


if __name__ == '__main__':
    sys.exit(main())
