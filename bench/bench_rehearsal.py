#!/usr/bin/env python3
"""The migration rehearsal (issue 22): its predicted downtime against the real one, its cost against the raw tools.

For each table size a fresh bot deployment on the local Docker engine (tests/support/redeployenv.py: a PostgreSQL 15
container, here with the postgres role's 256 MB /dev/shm, versions of examples/bot built as images):

1. v1 of the example bot adds a realistic bot table,
       messages(id bigserial PRIMARY KEY, chat_id bigint, user_id integer, text text, created_at timestamptz)
   with an index on (chat_id, created_at) and one on user_id, and is deployed; the rows are loaded into the bot's
   database (VACUUM ANALYZE, CHECKPOINT: a settled live table).
2. Each run deploys a new version (rehearsal: always) whose one pending migration takes an ACCESS EXCLUSIVE lock
   and rewrites or scans the whole table (--migration):
     retype   ALTER TABLE messages ALTER COLUMN user_id TYPE bigint (then back to integer on the next run): a
              rewrite of the table and of its three indexes (the classic "Telegram ids outgrew int4");
     default  ADD COLUMN score_<n> int DEFAULT (random()*100)::int: a volatile default, a rewrite;
     index    CREATE INDEX (not concurrently) on (created_at, user_id): a scan and a sort.
   Read from the result: predicted_downtime (the migrations on the copy), the `migrate` step on the live database,
   downtime (the old bot's stop to the new one ready), the `rehearse` step (the rehearsal's whole cost) and
   result['rehearsal'] (restore_seconds, migrate_seconds, size).
3. In the same run, interleaved: a bare `docker exec -i pg_restore -d <empty database>` of the same pre-deploy dump
   (the raw tool) and a bare `docker restart` of the bot (the floor of any swap: stop + start).

Goal: |predicted - migrate on live| within 20 % of the live migration or within 2 s, for every run.

The ready point of the downtime is the module's: with no log markers (the default) the first poll after the start,
not Docker's healthcheck; the wait_healthy step's own duration is printed for information.

Each size is bounded by --timeout (seconds; a size that runs out is reported and the rest of it skipped), every
statement of a migration by statement_timeout, and each size's containers, volume, network and images are removed
when it ends, whatever happened.

The 5 M row case (about 950 MB, right at the rehearsal's auto limit of 1024 MB) is not in the default sizes: it
took 755 s for one run on a loaded 2-vCPU machine (200 s of it loading the rows); ask for it with --rows.

Usage: .venv/bin/python bench/bench_rehearsal.py [--rows 10000,1000000[,5000000]] [--runs 2] [--migration retype]
                                                 [--timeout 1200]
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg2
from benchpaths import MB, timed
from ansible.module_utils.soulnear.redeploy import RedeployError, Redeployer  # noqa: E402
from redeployenv import DB, RedeployEnv  # noqa: E402

GOAL_SHARE, GOAL_SECONDS = 0.20, 2.0
BATCH = 1000000

INDEXES = ('CREATE INDEX messages_chat_id_created_at_idx ON messages (chat_id, created_at)',
           'CREATE INDEX messages_user_id_idx ON messages (user_id)')
MESSAGES = '''-- The bot's message log (bench_rehearsal.py).
CREATE TABLE messages (
    id         bigserial PRIMARY KEY,
    chat_id    bigint NOT NULL,
    user_id    integer NOT NULL,
    text       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
''' + ''.join(sql + ';\n' for sql in INDEXES)

# Chats and users of a busy bot, messages of 32 to 96 characters, one a second back from now.
LOAD = '''INSERT INTO messages (chat_id, user_id, text, created_at)
SELECT 1000000000 + (i * 7919) %% 50000, 100000000 + (i * 104729) %% 2000000, repeat(md5(i::text), (1 + i %% 3)::int),
       now() - make_interval(secs => %(total)s - i)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i'''


def migration(kind, run):
    """(file name, SQL) of the run-th migration (1-based) of the given kind."""
    if kind == 'retype':
        target = 'bigint' if run % 2 else 'integer'
        return ('%03d_user_id_%s.sql' % (100 + run, target),
                'ALTER TABLE messages ALTER COLUMN user_id TYPE %s;\n' % target)
    if kind == 'default':
        return ('%03d_score_%d.sql' % (100 + run, run),
                'ALTER TABLE messages ADD COLUMN score_%d int DEFAULT (random() * 100)::int;\n' % run)
    return ('%03d_index_%d.sql' % (100 + run, run),
            'CREATE INDEX messages_created_at_user_id_%d_idx ON messages (created_at, user_id);\n' % run)


class OutOfTime(BaseException):
    """A size ran past --timeout (a BaseException: the module's steps let it through unchanged)."""


def on_alarm(_signum, _frame):
    raise OutOfTime()


def docker(*args, timeout=600, stdin=None):
    proc = subprocess.run(['docker'] + list(args), stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError('docker %s failed: %s' % (' '.join(args[:2]), proc.stderr.decode(errors='replace')[-500:]))


def psql(env, sql, db=DB, timeout=1800):
    """One statement as the superuser, with psql in the database container."""
    docker('exec', '-u', 'postgres', env.pg.name, 'psql', '-v', 'ON_ERROR_STOP=1', '-q', '-d', db, '-c', sql,
           timeout=timeout)


def load(env, rows):
    """The rows, with the secondary indexes built after them (the same definitions, as the migration made them)."""
    psql(env, 'DROP INDEX messages_chat_id_created_at_idx, messages_user_id_idx')
    for first in range(1, rows + 1, BATCH):
        psql(env, LOAD % dict(total=rows, first=first, last=min(rows, first + BATCH - 1)))
    for sql in INDEXES:
        psql(env, "SET maintenance_work_mem = '256MB'; " + sql)
    psql(env, 'VACUUM ANALYZE messages')
    psql(env, 'CHECKPOINT')


def bare_restore(env, path):
    """The raw tool: pg_restore of the dump into an empty database, as the superuser (seconds)."""
    env.pg.query('DROP DATABASE IF EXISTS bench_bare WITH (FORCE)')
    env.pg.query('CREATE DATABASE bench_bare')
    with open(path, 'rb') as stdin:
        seconds, _ = timed(docker, 'exec', '-i', '-u', 'postgres', env.pg.name, 'pg_restore', '--exit-on-error',
                           '-d', 'bench_bare', stdin=stdin, timeout=1800)
    env.pg.query('DROP DATABASE bench_bare WITH (FORCE)')
    return seconds


def wait_healthy(env, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = env.container()
        if state and state['status'] == 'running' and state['health'] == 'healthy':
            return
        time.sleep(0.5)
    raise RuntimeError('the bot did not become healthy again within %ds' % timeout)


def bare_restart(env):
    """docker restart of the bot: its wall time (stop + start, the module's ready point), then healthy again."""
    seconds, _ = timed(docker, 'restart', '-t', '30', env.bot, timeout=120)
    wait_healthy(env)
    return seconds


def step(result, name):
    return [s for s in result['steps'] if s['name'] == name][0]


def error_of(run):
    gap = abs(run['predicted'] - run['migrate'])
    return gap, (gap / run['migrate'] if run['migrate'] > 0 else float('inf'))


def holds(run):
    gap, share = error_of(run)
    return share <= GOAL_SHARE or gap <= GOAL_SECONDS


def measure_size(rows, opts, workdir):
    """One size in a fresh deployment: the list of runs (dicts), plus what happened before them."""
    env = RedeployEnv(os.path.join(workdir, 'size-%d' % rows), health_interval='2s')
    info = dict(rows=rows, runs=[], error=None, load_seconds=None, started=time.time())
    warnings = []
    try:
        print('  deployment %s (its containers, network and images are removed at the end)' % env.prefix, flush=True)
        env.start()
        migrations = {'100_messages.sql': MESSAGES}
        env.version('v1', migrations=migrations)
        Redeployer(env.deploy_params('v1', rehearsal='never'), warn=warnings.append).run()
        info['load_seconds'], _ = timed(load, env, rows)
        info['table_mb'] = env.pg.query("SELECT pg_total_relation_size('messages')", db=DB)[0][0] / MB
        print('  %d rows loaded in %.1f s (messages %.0f MB with its indexes)'
              % (rows, info['load_seconds'], info['table_mb']), flush=True)
        for run in range(1, opts.runs + 1):
            name, sql = migration(opts.migration, run)
            migrations[name] = sql
            version = 'v%d' % (run + 1)
            env.version(version, migrations=dict(migrations))
            wait_healthy(env)
            load_before = os.getloadavg()[0]
            took, result = timed(Redeployer(env.deploy_params(
                version, rehearsal='always', migration_options=dict(statement_timeout=opts.timeout),
                healthy_timeout=120), warn=warnings.append).run)
            assert result['applied'] == [name], result['msg']
            rehearsal = result['rehearsal']
            one = dict(run=run, predicted=result['predicted_downtime'], migrate=step(result, 'migrate')['duration'],
                       downtime=result['downtime'], rehearse=step(result, 'rehearse')['duration'],
                       restore=rehearsal['restore_seconds'], db_mb=rehearsal['size'] / MB,
                       dump_mb=os.path.getsize(result['backup']) / MB, backup=step(result, 'backup')['duration'],
                       healthy=step(result, 'wait_healthy')['duration'], deploy=took, load=load_before)
            one['bare_restore'] = bare_restore(env, result['backup'])
            one['bare_restart'] = bare_restart(env)
            gap, share = error_of(one)
            print('  run %d (%s): predicted %.2f s, migrate on live %.2f s (off by %.2f s, %.0f %%: %s), downtime '
                  '%.2f s; rehearse %.1f s (restore %.1f s of a %.0f MB database, %.1f MB dump), bare pg_restore '
                  '%.1f s, bare restart %.2f s; backup %.1f s, wait_healthy %.1f s, whole deploy %.1f s, load %.1f'
                  % (run, name, one['predicted'], one['migrate'], gap, share * 100, 'ok' if holds(one) else 'MISSED',
                     one['downtime'], one['rehearse'], one['restore'], one['db_mb'], one['dump_mb'],
                     one['bare_restore'], one['bare_restart'], one['backup'], one['healthy'], took, load_before),
                  flush=True)
            info['runs'].append(one)
    except OutOfTime:
        info['error'] = 'ran out of time (--timeout %d s) after %d run(s)' % (opts.timeout, len(info['runs']))
    except (RedeployError, RuntimeError, AssertionError, OSError, subprocess.SubprocessError, psycopg2.Error) as exc:
        # one size failing still prints the others
        info['error'] = '%s: %s' % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else '')
    finally:
        signal.alarm(0)
        env.close()
        info['seconds'] = time.time() - info['started']
    if warnings:
        print('  (the module warned %d time(s), e.g.: %s)' % (len(warnings), warnings[0].splitlines()[0][:160]))
    if info['error']:
        print('  size %d: %s' % (rows, info['error']), flush=True)
    return info


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def table(sizes):
    header = ('rows', 'db MB', 'dump MB', 'predicted s', 'migrate live s', 'downtime s', 'off', 'goal', 'rehearse s',
              'restore s', 'bare pg_restore s', 'rehearse/bare', 'restore/bare', 'bare restart s')
    lines = [header]
    for info in sizes:
        runs = info['runs']
        if not runs:
            lines.append((format(info['rows'], ','), '-', '-', '-', '-', '-', '-', 'failed', '-', '-', '-',
                          '-', '-', '-'))
            continue
        worst = max(error_of(r)[1] for r in runs)
        rehearse, bare = median(runs, 'rehearse'), median(runs, 'bare_restore')
        lines.append((format(info['rows'], ','), '%.0f' % median(runs, 'db_mb'), '%.1f' % median(runs, 'dump_mb'),
                      '%.2f' % median(runs, 'predicted'), '%.2f' % median(runs, 'migrate'),
                      '%.2f' % median(runs, 'downtime'), 'max %.0f %%' % (worst * 100),
                      'holds' if all(holds(r) for r in runs) else 'MISSED', '%.1f' % rehearse,
                      '%.1f' % median(runs, 'restore'), '%.1f' % bare, '%.2f' % (rehearse / bare),
                      '%.2f' % (median(runs, 'restore') / bare), '%.2f' % median(runs, 'bare_restart')))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print('  ' + ' | '.join(cell.rjust(width) for cell, width in zip(line, widths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rows', default='10000,1000000',
                        help='comma-separated table sizes; add 5000000 where the machine has the time')
    parser.add_argument('--runs', type=int, default=2, help='deploys (each with a new migration) per size')
    parser.add_argument('--migration', choices=('retype', 'default', 'index'), default='retype')
    parser.add_argument('--timeout', type=int, default=1200, help='seconds each size may take, all included')
    opts = parser.parse_args()
    sizes = [int(text.replace('_', '')) for text in opts.rows.split(',') if text.strip()]
    signal.signal(signal.SIGALRM, on_alarm)
    print('machine: %d CPU(s), load average %s at the start (the engine may be shared)'
          % (os.cpu_count(), ' '.join('%.2f' % x for x in os.getloadavg())), flush=True)
    done = []
    with tempfile.TemporaryDirectory(prefix='bench-rehearsal-') as workdir:
        for rows in sizes:
            print('\n%d rows, migration %s, %d run(s):' % (rows, opts.migration, opts.runs), flush=True)
            signal.alarm(opts.timeout)
            info = measure_size(rows, opts, workdir)
            print('  size %d took %.0f s in all (load %.0f s)' % (rows, info['seconds'], info['load_seconds'] or 0))
            done.append(info)
    print('\nmedians of %d run(s) per size; off = |predicted - migrate on live| / migrate on live, worst run; goal: '
          'within %d %% or %.0f s in every run; rehearse = the whole step (scratch database, restore, migrations, '
          'drop); restore = its restore part\n' % (opts.runs, GOAL_SHARE * 100, GOAL_SECONDS))
    table(done)
    for info in done:
        runs = info['runs']
        if runs:
            speed = median(runs, 'db_mb') / median(runs, 'restore')
            print('  %d rows: the rehearsal restored %.1f MB/s of database (a 1024 MB database: about %.0f s); bare '
                  'pg_restore %.1f MB/s; the size took %.0f s' % (
                      info['rows'], speed, 1024 / speed, median(runs, 'db_mb') / median(runs, 'bare_restore'),
                      info['seconds']))
    print('load average at the end: %s' % ' '.join('%.2f' % x for x in os.getloadavg()))
    return 0 if all(info['runs'] and not info['error'] and all(holds(r) for r in info['runs']) for info in done) \
        else 1


if __name__ == '__main__':
    sys.exit(main())
