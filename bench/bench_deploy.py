#!/usr/bin/env python3
"""What a no-op deploy costs, against the bare cost of reaching the host.

Operators run `ansible-playbook deploy.yml` many times a day; on a converged host it must change nothing and
cost seconds. This runs the real deploy against an already converged host several times and prints, per run,
the wall time and the play recap, then the median against the raw tool: an `ansible -m ansible.builtin.ping`
of the same host over the same connection (what any Ansible run pays before doing anything).

Targets (issue 12): changed=0, at most 30 tasks executed on the host (ok + failed; skipped ones are not
counted), at most 30 s on the sandbox.

Usage (the sandbox must be converged: `make deploy` first):
  .venv/bin/python bench/bench_deploy.py [--runs 3] [--inventory inventory/sandbox] [-- extra ansible args]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, '.venv', 'bin')
RECAP = re.compile(r'^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)'
                   r'\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)', re.M)
MAX_TASKS = 30
MAX_SECONDS = 30.0


def timed(argv):
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    return time.monotonic() - started, proc


def recap_of(output):
    """The recap line of the (single) managed host; the controller's localhost lines are ignored."""
    rows = [dict((k, v if k == 'host' else int(v)) for k, v in m.groupdict().items()) for m in RECAP.finditer(output)]
    rows = [row for row in rows if row['host'] != 'localhost']
    if len(rows) != 1:
        raise SystemExit('expected the recap of one managed host, found %d:\n%s' % (len(rows), output[-3000:]))
    return rows[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--inventory', default=os.path.join('inventory', 'sandbox'))
    parser.add_argument('extra', nargs='*', help='extra ansible-playbook arguments (after --)')
    args = parser.parse_args()
    inventory = ['-i', args.inventory]

    # One warm-up run: the host must be converged (a run that changes something is not a no-op measurement).
    _seconds, proc = timed([os.path.join(BIN, 'ansible-playbook'), 'deploy.yml'] + inventory + args.extra)
    if proc.returncode != 0:
        raise SystemExit('the warm-up deploy failed (is the host converged? make deploy):\n' + proc.stdout[-3000:])

    deploys, pings, recaps = [], [], []
    for run in range(1, args.runs + 1):
        seconds, proc = timed([os.path.join(BIN, 'ansible-playbook'), 'deploy.yml'] + inventory + args.extra)
        if proc.returncode != 0:
            raise SystemExit('deploy run %d failed:\n%s' % (run, proc.stdout[-3000:]))
        recap = recap_of(proc.stdout)
        ping_seconds, ping = timed([os.path.join(BIN, 'ansible'), 'all', '-m', 'ansible.builtin.ping'] + inventory)
        if ping.returncode != 0:
            raise SystemExit('ansible -m ping failed:\n' + ping.stdout[-2000:])
        deploys.append(seconds)
        pings.append(ping_seconds)
        recaps.append(recap)
        print('run %d: no-op deploy %.1f s (ok=%d changed=%d failed=%d skipped=%d), ansible ping %.1f s'
              % (run, seconds, recap['ok'], recap['changed'], recap['failed'], recap['skipped'], ping_seconds))

    deploy, ping = statistics.median(deploys), statistics.median(pings)
    executed = max(r['ok'] + r['failed'] for r in recaps)
    changed = max(r['changed'] for r in recaps)
    print()
    print('no-op deploy: median %.1f s over %d runs; %d tasks executed (max), changed=%d' % (
        deploy, args.runs, executed, changed))
    print('raw tool:     ansible -m ping median %.1f s' % ping)
    print('ratio:        %.1fx a ping of the host' % (deploy / ping if ping else float('inf')))
    verdicts = [('changed=0', changed == 0), ('tasks <= %d' % MAX_TASKS, executed <= MAX_TASKS),
                ('time <= %.0f s' % MAX_SECONDS, deploy <= MAX_SECONDS)]
    print('targets:      ' + ', '.join('%s %s' % (name, 'met' if ok else 'NOT met') for name, ok in verdicts))
    return 0


if __name__ == '__main__':
    sys.exit(main())
