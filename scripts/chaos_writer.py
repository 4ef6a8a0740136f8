#!/usr/bin/env python3
"""The writer of the fault scenarios (scripts/chaos.py, molecule/default/tests/test_faults.py), run ON the
SoulNear host: it commits one row at a time into the deployment's own database at a steady rate and logs the
id of every row whose COMMIT returned, so a scenario can count afterwards which acknowledged rows are missing.

    chaos_writer.py --fault NAME --log FILE [--rate 40] [--seconds 300] [--max-rows 20000] [--stop-file F]

- It connects as the application's role to 127.0.0.1 (the port the database container publishes on the
  host), with the settings of /etc/soulnear/soulnear.json: it talks to nothing else.
- Bounded: it stops by itself after --seconds or --max-rows (both capped), or as soon as --stop-file exists.
- A failed statement or a lost connection is retried (reconnecting, 0.2 s apart); an id is logged only after
  its COMMIT succeeded (synchronous_commit on: the row is durable), so "acknowledged" means what a client
  was told.
- Rows go to chaos_writes (id, fault, at), created at start when missing - never on a reconnect, so the
  writer creates nothing in a database that came back empty.
"""

import argparse
import contextlib
import json
import os
import sys
import time

MAX_SECONDS = 1800
MAX_ROWS = 100000


def connect(config, timeout=3):
    import psycopg2
    db = config['db']
    conn = psycopg2.connect(host=db.get('host', '127.0.0.1'), port=int(db.get('port', 5432)), user=db['app_user'],
                            password=db['app_password'], dbname=db['name'], connect_timeout=timeout,
                            application_name='soulnear chaos writer', options='-c synchronous_commit=on')
    conn.autocommit = True
    return conn


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--fault', required=True)
    parser.add_argument('--log', required=True, help='acknowledged ids, one a line')
    parser.add_argument('--config', default='/etc/soulnear/soulnear.json')
    parser.add_argument('--rate', type=float, default=40.0, help='rows a second')
    parser.add_argument('--seconds', type=float, default=300.0)
    parser.add_argument('--max-rows', type=int, default=20000)
    parser.add_argument('--first-id', type=int, default=1)
    parser.add_argument('--stop-file')
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    max_rows = min(args.max_rows, MAX_ROWS)
    with open(args.config) as handle:
        config = json.load(handle)
    deadline = time.time() + seconds
    conn = connect(config)
    with conn.cursor() as cur:
        cur.execute('CREATE TABLE IF NOT EXISTS chaos_writes (id bigint PRIMARY KEY, fault text NOT NULL, '
                    'at timestamptz NOT NULL DEFAULT now())')
    next_id, acked, errors = args.first_id, 0, 0
    interval = 1.0 / max(args.rate, 0.1)
    with open(args.log, 'a', buffering=1) as log:
        while time.time() < deadline and acked < max_rows:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            started = time.time()
            try:
                if conn is None or conn.closed:
                    conn = connect(config)
                with conn.cursor() as cur:
                    cur.execute('INSERT INTO chaos_writes (id, fault) VALUES (%s, %s)', (next_id, args.fault))
                log.write('%d\n' % next_id)  # after the COMMIT (autocommit) returned
                acked += 1
                next_id += 1
            except Exception as exc:  # noqa: BLE001 - any failure: count it, reconnect, go on
                errors += 1
                message = str(exc).lower()
                if 'duplicate key' in message:
                    next_id += 1  # committed, but the answer was lost: not acknowledged, not retried
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.2)
                continue
            time.sleep(max(0.0, interval - (time.time() - started)))
    print(json.dumps(dict(fault=args.fault, acked=acked, errors=errors, last_id=next_id - 1)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
