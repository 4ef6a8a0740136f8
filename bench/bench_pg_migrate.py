#!/usr/bin/env python3
"""pg_migrate against the raw tool (psql), on one throwaway PostgreSQL server.

1. Apply 500 small migration files: pg_migrate (one module process, as Ansible
   runs it on the host) vs a shell loop of `psql -1 -f` per file.
   Goal: pg_migrate at most 0.5x the loop's wall time.
2. A no-op run over 1,000 applied files vs one `psql -c 'select 1'` process.
   Goal: under 10x. Printed twice: the whole module process (Python start-up
   and Ansible's module_utils import included) and the run itself in-process.
3. One 50 MB migration file vs `psql -1 -f` of the same file. Goal: within 1.5x.
   The file is a data load: multi-row INSERTs with quoted, E'' and JSON strings,
   block comments and a function body (what the statement scanner has to read).
   For information, also 50 MB of single-row INSERTs (one statement per row:
   the per-statement cost of a run, where psql pays a round trip per statement
   too). Runs are interleaved and the best of --runs is compared (the machine
   may be shared).

Usage: .venv/bin/python bench/bench_pg_migrate.py [--files 500] [--noop-files 1000] [--big-mb 50] [--runs 2]
       [--no-rows]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchpaths import ROOT
from ansible.module_utils.soulnear.migrate import Migrator  # noqa: E402
from pgcluster import Cluster  # noqa: E402

# Runs the module file the way AnsiballZ does on a host: a fresh Python process
# that imports AnsibleModule and our module_utils, reading its arguments from a file.
RUNNER = '''
import sys, runpy, ansible.module_utils
ansible.module_utils.__path__.append(sys.argv[1])
sys.argv = [sys.argv[2], sys.argv[3]]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def make_files(directory, count, offset=0):
    os.makedirs(directory, exist_ok=True)
    for i in range(offset, offset + count):
        with open(os.path.join(directory, '%05d_table_%d.sql' % (i + 1, i)), 'w') as handle:
            handle.write('CREATE TABLE bench_%d (id int PRIMARY KEY, note text);\n'
                         "INSERT INTO bench_%d VALUES (1, 'row');\n" % (i, i))


def run_module(params, path, workdir):
    args_file = os.path.join(workdir, 'args.json')
    with open(args_file, 'w') as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': dict(params, path=path)}, handle)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, '-c', RUNNER, os.path.join(ROOT, 'module_utils'),
                           os.path.join(ROOT, 'library', 'pg_migrate.py'), args_file],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    result = json.loads(proc.stdout)
    if result.get('failed'):
        raise SystemExit('pg_migrate failed: %s' % result['msg'])
    return elapsed, result


def make_big(path, megabytes, rows_per_statement):
    """A data migration of about `megabytes` MB."""
    target = megabytes * 1024 * 1024
    with open(path, 'w') as handle:
        handle.write('-- A data load\nCREATE TABLE big (id int PRIMARY KEY, name text, note text, payload jsonb);\n'
                     'CREATE FUNCTION big_touch() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n'
                     "  NEW.note := NEW.note || ';';\n  RETURN NEW;\nEND;\n$$;\n")
        size, i = 0, 0
        while size < target:
            rows = []
            for _ in range(rows_per_statement):
                i += 1
                rows.append("(%d, 'user %d it''s', E'line\\\\n%d; (x)', '{\"k\": %d, \"s\": \"a;b\"}')" % (i, i, i, i))
            statement = '/* batch %d */ INSERT INTO big (id, name, note, payload) VALUES\n%s;\n' % (i, ',\n'.join(rows))
            handle.write(statement)
            size += len(statement)


def psql(cluster, db, *args):
    env = dict(os.environ, PGPASSWORD=cluster.params()['login_password'])
    cmd = [os.path.join(cluster.bindir, 'psql'), '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', cluster.host,
           '-p', str(cluster.port), '-U', 'postgres', '-d', db] + list(args)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def best_of(times, func):
    return min(func() for _ in range(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--files', type=int, default=500)
    parser.add_argument('--noop-files', type=int, default=1000)
    parser.add_argument('--big-mb', type=int, default=50)
    parser.add_argument('--runs', type=int, default=2)
    parser.add_argument('--no-rows', action='store_true', help='skip the single-row INSERT variant')
    opts = parser.parse_args()

    cluster = Cluster(settings=dict(fsync='on', synchronous_commit='on')).init().start()
    work = tempfile.mkdtemp(prefix='bench-migrate-')
    try:
        cluster.wait_ready()
        for db in ('via_module', 'via_psql', 'noop'):
            cluster.query('CREATE DATABASE %s' % db)

        apply_dir = os.path.join(work, 'apply')
        make_files(apply_dir, opts.files)

        module_s, result = run_module(cluster.params(db='via_module'), apply_dir, work)
        assert len(result['applied']) == opts.files, result['msg']

        started = time.perf_counter()
        for name in sorted(os.listdir(apply_dir)):
            psql(cluster, 'via_psql', '-1', '-f', os.path.join(apply_dir, name))
        loop_s = time.perf_counter() - started

        noop_dir = os.path.join(work, 'noop')
        make_files(noop_dir, opts.noop_files)
        run_module(cluster.params(db='noop'), noop_dir, work)
        noop_process_s = best_of(5, lambda: run_module(cluster.params(db='noop'), noop_dir, work)[0])

        def in_process():
            started = time.perf_counter()
            outcome = Migrator(dict(cluster.params(db='noop'), path=noop_dir)).run()
            assert not outcome['changed']
            return time.perf_counter() - started
        noop_inproc_s = best_of(5, in_process)

        def select_one():
            started = time.perf_counter()
            psql(cluster, 'noop', '-c', 'select 1')
            return time.perf_counter() - started
        psql_s = best_of(5, select_one)

        def interpreter(code):
            started = time.perf_counter()
            subprocess.run([sys.executable, '-c', code], check=True)
            return time.perf_counter() - started
        floor_s = best_of(5, lambda: interpreter('import ansible.module_utils.basic, psycopg2'))

        big = []
        for shape, rows_per_statement in (('multi-row INSERTs', 1000), ('single-row INSERTs', 1)):
            if rows_per_statement == 1 and opts.no_rows:
                continue
            big_dir = os.path.join(work, 'big_%d' % rows_per_statement)
            os.makedirs(big_dir)
            big_file = os.path.join(big_dir, '001_load.sql')
            make_big(big_file, opts.big_mb, rows_per_statement)
            module_runs, psql_runs = [], []
            for run in range(opts.runs):
                db_module, db_psql = ('big_%s_%d_%d' % (who, rows_per_statement, run) for who in ('m', 'p'))
                for db in (db_module, db_psql):
                    cluster.query('CREATE DATABASE %s' % db)
                elapsed, result = run_module(cluster.params(db=db_module), big_dir, work)
                assert result['applied'] == ['001_load.sql'], result
                module_runs.append(elapsed)
                started = time.perf_counter()
                psql(cluster, db_psql, '-1', '-f', big_file)
                psql_runs.append(time.perf_counter() - started)
                for db in (db_module, db_psql):
                    cluster.query('DROP DATABASE %s' % db)
            big.append((shape, os.path.getsize(big_file) / 1e6, min(module_runs), min(psql_runs)))

        print('pg_migrate benchmark (PostgreSQL %s, fsync on)' % cluster.query('SHOW server_version')[0][0])
        print('apply %d files: pg_migrate %.2f s, psql -1 -f loop %.2f s, ratio %.2fx (goal <= 0.5x)'
              % (opts.files, module_s, loop_s, module_s / loop_s))
        print('no-op over %d applied files: module process %.3f s, psql -c "select 1" %.3f s, ratio %.1fx '
              '(goal < 10x)' % (opts.noop_files, noop_process_s, psql_s, noop_process_s / psql_s))
        print('  of which a bare Python importing AnsibleModule and psycopg2 (the floor for any module): %.3f s, '
              '%.1fx' % (floor_s, floor_s / psql_s))
        print('no-op over %d applied files, in-process run (no interpreter start-up): %.3f s, ratio %.1fx'
              % (opts.noop_files, noop_inproc_s, noop_inproc_s / psql_s))
        for shape, megabytes, module_best, psql_best in big:
            print('one %.0f MB migration (%s): pg_migrate %.2f s, psql -1 -f %.2f s, ratio %.2fx%s'
                  % (megabytes, shape, module_best, psql_best, module_best / psql_best,
                     ' (goal <= 1.5x)' if shape.startswith('multi') else ' (for information)'))
    finally:
        cluster.destroy()
        subprocess.run(['rm', '-rf', work])


if __name__ == '__main__':
    main()
