#!/usr/bin/env python3
"""The major upgrade PostgreSQL 15 -> 17 (issue 24, part 3): each route's downtime against a bare `docker restart`, and
the upgrade's time against a raw `pg_dump | pg_restore` of the same data, on the bot-like database of the tests
(tests/support/upgradeenv.py: a deployment laid out like the postgres role's, pgBackRest and WAL archiving on).

Per size (--sizes, thousands of messages; the users are a third of it):

1. restart: `docker restart` of the 15 container; the downtime a writer sees (the longest gap between two of its
   acknowledged INSERTs through the published port, one every 20 ms) - the floor of any switch.
2. raw: `pg_dumpall -g | psql` and `pg_dump -Fc | pg_restore` with 17's tools from the running 15 server into an
   empty 17 container (no backups, no checks, no switch) - what the dump route's copy cannot beat.
3. dump (the route kept): upgrade.upgrade() while the same writer runs - the downtime it sees (writes refused from the
   old server's stop to the new one's start), the bot's downtime, the steps and the whole upgrade.
4. pg_upgrade (tried, not kept - docs/upgrade.md): on a second copy of the same data, with an image holding both
   versions (bookworm's 15 binaries and the libraries trixie lacks, rpath-patched, next to trixie's 17; built here,
   soulnear-bench/pg-upgrade:15-17): stop 15, `pg_upgrade --copy` into a new volume, start 17; then what the move from
   bookworm's glibc 2.36 to trixie's 2.41 requires after it: REINDEX of every database and REFRESH COLLATION
   VERSION (pg_upgrade keeps the old indexes and the old collation version), and vacuumdb --analyze-in-stages.
   The same with `--link` for reference (faster, but the old cluster cannot start again once 17 ran: no rollback).

Usage: .venv/bin/python bench/bench_upgrade.py [--sizes 60,600] [--no-pg-upgrade]
"""

import argparse
import os
import subprocess
import tempfile
import threading
import time

from benchpaths import MB, timed
import psycopg2  # noqa: E402
from ansible.module_utils.soulnear import pitr, upgrade, upgrade_host  # noqa: E402
from pgcontainer import docker  # noqa: E402
from pitrenv import DB, PASSWORD  # noqa: E402
from upgradeenv import NEW_IMAGE, OLD_IMAGE, UpgradeLab  # noqa: E402

PGU_IMAGE = 'soulnear-bench/pg-upgrade:15-17'
PGU_DOCKERFILE = '''
# PostgreSQL 15 (bookworm) and 17 (trixie) in one image, for pg_upgrade: the 15 binaries with the libraries trixie
# does not have (ICU 72, OpenLDAP 2.5), their rpath pointing there; gnutls and sasl from trixie.
FROM %(old)s AS old
RUN mkdir -p /compat && cp -a /usr/lib/x86_64-linux-gnu/libicu*.so.72* /usr/lib/x86_64-linux-gnu/libldap-2.5.so.0* \\
    /usr/lib/x86_64-linux-gnu/liblber-2.5.so.0* /compat/
FROM %(new)s
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends patchelf \\
    libgnutls30t64 libsasl2-2 && rm -rf /var/lib/apt/lists/*
COPY --from=old /usr/lib/postgresql/15 /usr/lib/postgresql/15
COPY --from=old /usr/share/postgresql/15 /usr/share/postgresql/15
COPY --from=old /compat /usr/lib/postgresql/15/compat
RUN set -e; cd /usr/lib/postgresql/15; for f in bin/* lib/*.so compat/*.so.*; do \\
    [ -L "$f" ] || patchelf --force-rpath --set-rpath /usr/lib/postgresql/15/compat "$f" 2>/dev/null || true; done; \\
    /usr/lib/postgresql/15/bin/postgres --version; /usr/lib/postgresql/17/bin/pg_upgrade --version
''' % dict(old=OLD_IMAGE, new=NEW_IMAGE)


class Probe(threading.Thread):
    """One INSERT every interval through the published port (a new connection after an error): the longest gap
    between two acknowledged writes is the downtime a client sees."""

    def __init__(self, lab, interval=0.02):
        threading.Thread.__init__(self, daemon=True)
        self.lab, self.interval = lab, interval
        self.acks, self.stopping = [], threading.Event()
        lab.sql('CREATE TABLE IF NOT EXISTS bench_probe (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())')

    def run(self):
        conn = None
        deadline = time.time() + 3600
        while not self.stopping.is_set() and time.time() < deadline:
            try:
                if conn is None:
                    conn = psycopg2.connect(**dict(self.lab._kwargs(DB), connect_timeout=2))
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute('INSERT INTO bench_probe DEFAULT VALUES')
                self.acks.append(time.time())
            except psycopg2.Error:
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def stop(self):
        self.stopping.set()
        self.join(30)
        gaps = [b - a for a, b in zip(self.acks, self.acks[1:])]
        return max(gaps) if gaps else None


def probed(lab, func, *args, **kwargs):
    probe = Probe(lab)
    probe.start()
    time.sleep(1)
    seconds, value = timed(func, *args, **kwargs)
    time.sleep(1)
    return probe.stop(), seconds, value


def restart(lab):
    docker('restart', '-t', '60', lab.name)
    lab.wait_ready()


def raw_copy(lab, work):
    """pg_dump -Fc | pg_restore with 17's tools from the running 15 server into an empty 17 container."""
    name = lab.name + '-raw17'
    docker('run', '-d', '--name', name, '--network', lab.network, '-e', 'POSTGRES_PASSWORD=' + PASSWORD, NEW_IMAGE)
    try:
        deadline = time.time() + 180
        while docker('exec', name, 'pg_isready', '-q', '-h', '127.0.0.1', check=False).returncode != 0:
            assert time.time() < deadline, 'the raw 17 container did not start'
            time.sleep(0.5)
        command = ('set -eo pipefail; export PGPASSWORD=%s; pg_dumpall -g -h %s -U postgres | grep -v "^CREATE ROLE '
                   'postgres;" | psql -q -v ON_ERROR_STOP=1 -U postgres -d postgres; pg_dump -Fc -Z0 -h %s -U postgres '
                   '-d %s | pg_restore --create --exit-on-error -U postgres -d postgres'
                   % (PASSWORD, lab.name, lab.name, DB))
        seconds, _ = timed(subprocess.run, ['docker', 'exec', name, 'bash', '-c', command], check=True,
                           capture_output=True)
        return seconds
    finally:
        docker('rm', '-f', '-v', name, check=False)


def build_pg_upgrade_image():
    if docker('image', 'inspect', PGU_IMAGE, check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory() as context:
        with open(os.path.join(context, 'Dockerfile'), 'w') as handle:
            handle.write(PGU_DOCKERFILE)
        subprocess.run(['docker', 'build', '--network', 'host', '-q', '-t', PGU_IMAGE, context], check=True,
                       capture_output=True, timeout=900)


def pg_upgrade_route(lab, mode):
    """stop 15, pg_upgrade (--copy or --link) into a new volume, start 17 on it; then REINDEX, REFRESH COLLATION
    VERSION and analyze, which the glibc move requires. Returns (write downtime, {step: seconds})."""
    steps = {}
    new_volume = lab.volume + '-pgu-' + mode
    probe = Probe(lab)
    probe.start()
    time.sleep(1)
    since = time.time()
    docker('stop', '-t', '60', lab.name)
    steps['stop'] = time.time() - since
    docker('volume', 'create', new_volume)
    # Both data directories under one mount: --link needs them on one file system as the process sees it.
    volumes = os.path.dirname(os.path.dirname(upgrade._volume_dir(lab.volume)))
    old_dir, new_dir = '/vols/%s/_data' % lab.volume, '/vols/%s/_data' % new_volume
    mounts = ['-v', '%s:/vols' % volumes]
    script = (
        'set -e; chown postgres:postgres %(new)s; chmod 700 %(new)s; '
        "su postgres -c 'initdb -U postgres --auth-host=scram-sha-256 --pwfile=<(echo %(password)s) "
        "-D %(new)s >/dev/null' -s /bin/bash; cp %(old)s/pg_hba.conf %(new)s/; cd /tmp; "
        "su postgres -c 'cd /tmp && /usr/lib/postgresql/17/bin/pg_upgrade -b /usr/lib/postgresql/15/bin "
        '-B /usr/lib/postgresql/17/bin -d %(old)s -D %(new)s --%(mode)s -o "-c archive_mode=off" '
        "-O \"-c archive_mode=off\" >/tmp/pgu.log' -s /bin/bash || "
        '{ tail -20 /tmp/pgu.log; cat %(new)s/pg_upgrade_output.d/*/log/*.log | tail -20; exit 1; }'
        % dict(new=new_dir, old=old_dir, password=PASSWORD, mode=mode))
    since = time.time()
    proc = subprocess.run(['docker', 'run', '--rm', '--entrypoint', 'bash'] + mounts + [PGU_IMAGE, '-c', script],
                          capture_output=True, text=True, timeout=3600)
    steps['pg_upgrade'] = time.time() - since
    if proc.returncode != 0:
        probe.stop()
        raise RuntimeError('pg_upgrade failed: %s %s' % (proc.stdout[-2000:], proc.stderr[-2000:]))
    # 17 in place of 15: the same name, port and mounts, on the new volume.
    since = time.time()
    docker('rm', lab.name)
    old_volume, lab.volume, lab.image = lab.volume, new_volume, NEW_IMAGE
    lab.create_container()
    lab.wait_ready()
    steps['start'] = time.time() - since
    downtime = probe.stop()
    warnings = lab.sql("SELECT datname, datcollversion, pg_database_collation_actual_version(oid) FROM pg_database "
                       "WHERE datallowconn ORDER BY 1", db='postgres')
    since = time.time()
    for (db,) in lab.sql('SELECT datname FROM pg_database WHERE datallowconn', db='postgres'):
        lab.sql('REINDEX DATABASE %s' % db, db=db)
        lab.sql('ALTER DATABASE %s REFRESH COLLATION VERSION' % db, db=db)
    steps['reindex'] = time.time() - since
    since = time.time()
    docker('exec', '-u', 'postgres', lab.name, 'vacuumdb', '--all', '--analyze-in-stages', '-q')
    steps['analyze'] = time.time() - since
    lab.volume = old_volume
    return downtime, steps, warnings


def make_lab(work, name, thousands):
    lab = UpgradeLab(os.path.join(work, name), archive_timeout='60s').start()
    lab.load(users=max(1000, thousands * 1000 // 3), messages=thousands * 1000)
    lab.sql('CHECKPOINT', db='postgres')
    pitr.setup(lab.settings())
    return lab


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', default='60,600', help='thousands of messages per run (comma-separated)')
    parser.add_argument('--no-pg-upgrade', action='store_true', help='skip the pg_upgrade route')
    opts = parser.parse_args()
    work = tempfile.mkdtemp(prefix='bench-upgrade-')
    rows = []
    if not opts.no_pg_upgrade:
        print('building %s ...' % PGU_IMAGE, flush=True)
        build_pg_upgrade_image()
    for thousands in [int(s) for s in opts.sizes.split(',')]:
        print('\n== %dk messages: loading ...' % thousands, flush=True)
        lab = make_lab(work, 'a%d' % thousands, thousands)
        try:
            db_size = lab.sql("SELECT pg_database_size('%s')" % DB, db='postgres')[0][0]
            cluster = upgrade_host._dir_size(upgrade._volume_dir(lab.volume))
            print('database %s: %.1f MB, data directory %.1f MB' % (DB, db_size / MB, cluster / MB), flush=True)
            restart_gap, restart_s, _ = probed(lab, restart, lab)
            print('docker restart: writes stopped for %.2f s (command %.2f s)' % (restart_gap, restart_s), flush=True)
            raw_s = raw_copy(lab, work)
            print('raw pg_dump | pg_restore (17 tools, 15 -> empty 17): %.2f s' % raw_s, flush=True)
            dump_gap, dump_s, result = probed(lab, upgrade.upgrade, lab.upgrade_settings(), DB)
            print('dump route: writes stopped for %.2f s, bot down %.1f s, upgrade %.1f s; steps %s'
                  % (dump_gap, result['downtime'] or 0, dump_s, result['steps']), flush=True)
            rows.append(dict(size=thousands, db=db_size, cluster=cluster, restart=restart_gap, raw=raw_s,
                             dump_gap=dump_gap, dump_bot=result['downtime'], dump_total=dump_s,
                             copy=sum(result['steps'].get(k, 0) for k in ('source', 'copy', 'verify'))))
        finally:
            lab.remove()
        if opts.no_pg_upgrade:
            continue
        for mode in ('copy', 'link'):
            lab = make_lab(work, 'b%d%s' % (thousands, mode), thousands)
            try:
                gap, steps, collations = pg_upgrade_route(lab, mode)
                print('pg_upgrade --%s: writes stopped for %.2f s; steps %s; collation versions after it (datname, '
                      'recorded, actual): %s' % (mode, gap, dict((k, round(v, 1)) for k, v in steps.items()),
                                                 collations), flush=True)
                rows[-1]['pgu_' + mode] = gap
                rows[-1]['pgu_%s_after' % mode] = steps['reindex'] + steps['analyze']
            finally:
                docker('volume', 'rm', '-f', lab.volume + '-pgu-' + mode, check=False)
                lab.remove()
    print('\n| messages | database | data dir | docker restart | raw dump/restore | dump route: writes stopped | '
          'bot down | upgrade | upgrade / raw | pg_upgrade --copy (+ reindex, analyze) | --link (+ ...) |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(('| %dk | %.0f MB | %.0f MB | %.2f s | %.1f s | %.1f s (%.0fx restart) | %.1f s | %.1f s | %.1f '
               '| %s | %s |')
              % (r['size'], r['db'] / MB, r['cluster'] / MB, r['restart'], r['raw'], r['dump_gap'],
                 r['dump_gap'] / r['restart'], r['dump_bot'] or 0, r['dump_total'], r['dump_total'] / r['raw'],
                 '%.1f s (+ %.1f s)' % (r['pgu_copy'], r['pgu_copy_after']) if 'pgu_copy' in r else '-',
                 '%.1f s (+ %.1f s)' % (r['pgu_link'], r['pgu_link_after']) if 'pgu_link' in r else '-'))


if __name__ == '__main__':
    main()
