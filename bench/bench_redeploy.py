#!/usr/bin/env python3
"""Downtime of a safe_redeploy swap against a bare `docker restart`, as the bot's users would see it.

A probe container on the bot's network asks the bot's GET /health every 100 ms (by container name, so it
follows the swap to the new container) and logs each answer. For each operation the downtime is the time from
the probe's first failed request to its next 200 (resolution: the poll interval).

1. safe_redeploy of a new version with no pending migration (examples/bot with a changed file; the versions
   alternate, so every run is a real swap: create, stop, start, wait healthy with markers, settle, switch).
2. `docker restart` of the same bot container, in the same run (interleaved with 1).
   Goal: median(1) / median(2) <= 1.5.
3. safe_redeploy with nothing changed: no downtime at all (0 s; the container is not touched).

Everything runs on the local Docker engine against a throwaway PostgreSQL container
(tests/support/redeployenv.py) and the real example bot image (its healthcheck unchanged).

Usage: .venv/bin/python bench/bench_redeploy.py [--runs 3]
"""

import argparse
import statistics
import subprocess
import tempfile
import time

import benchpaths  # noqa: F401 - the tests' helpers and module_utils on the import path
from ansible.module_utils.soulnear.redeploy import Redeployer  # noqa: E402
from redeployenv import BASE_IMAGE, RedeployEnv  # noqa: E402

POLL = 0.1
PROBE = r'''
import sys, time, urllib.request
url = 'http://%s:8080/health' % sys.argv[1]
while True:
    started = time.time()
    try:
        with urllib.request.urlopen(url, timeout=0.5) as answer:
            ok = answer.status == 200
    except Exception:
        ok = False
    print('%.3f %d' % (started, ok), flush=True)
    time.sleep(max(0.0, 0.1 - (time.time() - started)))
'''


class Probe:
    def __init__(self, env):
        self.name = env.prefix + '_probe'
        subprocess.run(['docker', 'run', '-d', '--name', self.name, '--network', env.network, BASE_IMAGE, 'python3',
                        '-u', '-c', PROBE, env.bot], check=True, capture_output=True)

    def samples(self):
        out = subprocess.run(['docker', 'logs', self.name], capture_output=True, text=True).stdout
        return [(float(t), ok == '1') for t, ok in (line.split() for line in out.splitlines() if line.strip())]

    def downtime(self, since, until):
        """Seconds from the first failed request after `since` to the next successful one (0 without a failure)."""
        window = [s for s in self.samples() if since <= s[0] <= until]
        down_at = None
        for stamp, ok in window:
            if not ok and down_at is None:
                down_at = stamp
            elif ok and down_at is not None:
                return stamp - down_at
        if down_at is not None:
            raise RuntimeError('the bot did not answer again before %.1f' % until)
        return 0.0

    def remove(self):
        subprocess.run(['docker', 'rm', '-f', self.name], capture_output=True)


def wait_answering(probe, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        samples = probe.samples()
        if len(samples) >= 5 and all(ok for _, ok in samples[-5:]):
            return
        time.sleep(0.5)
    raise RuntimeError('the bot does not answer /health')


def measure(probe, action):
    """Run action and return (downtime seen by the probe, seconds the action took)."""
    wait_answering(probe)
    started = time.time()
    action()
    ended = time.time()
    time.sleep(1.5)  # the probe has seen the bot answer again
    return probe.downtime(started - POLL, time.time()), ended - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        env = RedeployEnv(workdir).start()
        probe = None
        try:
            print('building two versions of examples/bot ...', flush=True)
            env.version('a')
            env.version('b', edits=[('bot/__init__.py', lambda text: text.replace("'1.0.0'", "'1.0.1'"))])
            Redeployer(env.deploy_params('a')).run()
            probe = Probe(env)
            swaps, restarts, swap_times = [], [], []
            current = 'a'
            for run in range(args.runs):
                target = 'b' if current == 'a' else 'a'
                down, took = measure(probe, lambda target=target: Redeployer(env.deploy_params(target)).run())
                current = target
                swaps.append(down)
                swap_times.append(took)
                down_restart, _ = measure(probe, lambda: subprocess.run(
                    ['docker', 'restart', '-t', '30', env.bot], check=True, capture_output=True))
                restarts.append(down_restart)
                print('run %d: safe_redeploy swap %.2f s down (the call took %.1f s), docker restart %.2f s down'
                      % (run + 1, down, took, down_restart), flush=True)
            before = env.container()
            noop, took = measure(probe, lambda: Redeployer(env.deploy_params(current)).run())
            assert env.container() == before, 'a no-change redeploy touched the bot'
            swap, restart = statistics.median(swaps), statistics.median(restarts)
            print()
            print('downtime seen by /health every %d ms, median of %d run(s):' % (POLL * 1000, args.runs))
            print('  safe_redeploy, new version, no pending migration: %.2f s  (min %.2f, max %.2f)'
                  % (swap, min(swaps), max(swaps)))
            print('  docker restart of the same container:             %.2f s  (min %.2f, max %.2f)'
                  % (restart, min(restarts), max(restarts)))
            print('  ratio: %.2f  (goal <= 1.5)%s' % (swap / restart, '' if swap / restart <= 1.5 else '  MISSED'))
            print('  safe_redeploy with nothing changed:               %.2f s  (goal 0; the call took %.2f s)'
                  % (noop, took))
            print('  a swap call takes %.1f s end to end (median): the bot is up long before it returns (it waits '
                  'for Docker\'s healthcheck and settles)' % statistics.median(swap_times))
        finally:
            if probe is not None:
                probe.remove()
            env.close()


if __name__ == '__main__':
    main()
