"""The deploy lock: one holder, atomic takeover of a stale lock, a live holder never taken over."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from ansible.module_utils.soulnear import lock
from ansiblerun import run_module


def plant(path, **record):
    os.makedirs(path)
    with open(os.path.join(path, 'holder'), 'w') as handle:
        json.dump(record, handle)


def test_one_holder_then_refused_then_released(tmp_path):
    path = str(tmp_path / 'deploy.lock')
    result, record = lock.acquire(path, 'run1', 'alice@laptop', 'deploy')
    assert result == 'taken' and record['holder'] == 'alice@laptop'
    assert oct(os.stat(os.path.join(path, 'holder')).st_mode & 0o777) == '0o600'
    with pytest.raises(lock.LockHeld) as refused:
        lock.acquire(path, 'run2', 'bob@desk', 'restore')
    assert 'alice@laptop (deploy, run run1)' in str(refused.value) and 'make unlock' in str(refused.value)
    assert lock.acquire(path, 'run1', 'alice@laptop')[0] == 'renewed'
    assert lock.release(path, 'run2') is None and os.path.isdir(path)  # a refused run never releases it
    assert lock.release(path, 'run1')['run_id'] == 'run1' and not os.path.exists(path)
    assert lock.status(path)['held'] is False


def test_stale_lock_is_taken_over_and_named(tmp_path):
    path = str(tmp_path / 'deploy.lock')
    old = time.time() - 2 * 3600
    plant(path, holder='bob@old-laptop', run_id='dead', since=old, heartbeat=old)
    assert lock.status(path, ttl_minutes=60)['stale'] is True
    result, record = lock.acquire(path, 'run1', 'alice@laptop', ttl_minutes=60)
    assert result == 'taken over' and record['took_over']['holder'] == 'bob@old-laptop'


def test_renewed_lock_is_not_stale_however_old(tmp_path):
    path = str(tmp_path / 'deploy.lock')
    now = time.time()
    plant(path, holder='alice@laptop', run_id='long', since=now - 10 * 3600, heartbeat=now - 60)
    with pytest.raises(lock.LockHeld):
        lock.acquire(path, 'run2', 'bob@desk', ttl_minutes=60)


def test_live_process_on_this_host_is_never_taken_over(tmp_path):
    path = str(tmp_path / 'deploy.lock')
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        ancient = time.time() - 30 * 24 * 3600
        plant(path, holder='cron restore', run_id='live', since=ancient, heartbeat=ancient, host=socket.gethostname(),
              pid=sleeper.pid)
        with pytest.raises(lock.LockHeld):
            lock.acquire(path, 'run2', 'bob@desk', ttl_minutes=1)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same holder once its process is gone: stale at once, whatever its heartbeat says.
    with open(os.path.join(path, 'holder')) as handle:
        record = json.load(handle)
    record['heartbeat'] = time.time()
    with open(os.path.join(path, 'holder'), 'w') as handle:
        json.dump(record, handle)
    assert lock.acquire(path, 'run2', 'bob@desk', ttl_minutes=60)[0] == 'taken over'


def _race(path, run_id, start, queue):
    while time.time() < start:
        time.sleep(0.001)
    try:
        queue.put((run_id, lock.acquire(path, run_id, run_id, ttl_minutes=60)[0]))
    except lock.LockHeld:
        queue.put((run_id, 'refused'))


def test_racing_takers_of_a_stale_lock_one_winner(tmp_path):
    path = str(tmp_path / 'deploy.lock')
    old = time.time() - 5 * 3600
    plant(path, holder='killed run', run_id='dead', since=old, heartbeat=old)
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    start = time.time() + 0.5
    workers = [ctx.Process(target=_race, args=(path, 'run%d' % i, start, queue)) for i in range(8)]
    for worker in workers:
        worker.start()
    results = dict(queue.get(timeout=30) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
    winners = [r for r, outcome in results.items() if outcome == 'taken over']
    assert len(winners) == 1 and sorted(results.values()).count('refused') == 7
    assert lock.read(path)['run_id'] == winners[0]


def test_directory_without_record_reads_as_a_fresh_lock(tmp_path):
    path = str(tmp_path / 'deploy.lock')
    os.makedirs(path)  # a run killed between mkdir and writing its record, or the older layout
    with pytest.raises(lock.LockHeld):
        lock.acquire(path, 'run1', 'alice')
    past = time.time() - 3 * 3600
    os.utime(path, (past, past))
    assert lock.acquire(path, 'run1', 'alice', ttl_minutes=60)[0] == 'taken over'


def test_module_takes_refuses_checks_and_releases(tmp_path):
    path = str(tmp_path / 'deploy.lock')
    rc, taken, out = run_module(tmp_path, 'deploy_lock', dict(path=path, holder='alice@laptop'))
    assert rc == 0, out
    assert taken['result'] == 'taken' and taken['changed'] is False and len(taken['run_id']) == 12
    rc, refused, out = run_module(tmp_path, 'deploy_lock', dict(path=path, holder='bob@desk', operation='restore'))
    assert rc != 0 and 'alice@laptop (deploy' in refused['msg']
    rc, dry, out = run_module(tmp_path, 'deploy_lock', dict(path=path, state='absent', force=True), '--check')
    assert rc == 0 and dry['result'] == 'released' and os.path.isdir(path)  # check mode writes nothing
    rc, query, out = run_module(tmp_path, 'deploy_lock', dict(path=path, state='query'))
    assert rc == 0 and query['result'] == 'held' and query['stale'] is False
    rc, other, out = run_module(tmp_path, 'deploy_lock', dict(path=path, state='absent', run_id='someone-else'))
    assert rc == 0 and other['result'] == 'not held' and os.path.isdir(path)
    rc, released, out = run_module(tmp_path, 'deploy_lock', dict(path=path, state='absent', run_id=taken['run_id']))
    assert rc == 0 and released['result'] == 'released' and not os.path.exists(path)


def test_the_configured_ttl_decides_for_a_holder_on_another_host(tmp_path):
    """A holder on another host is judged by its heartbeat against the TTL the caller configures (issue 23: a mutant
    ignoring it survived): silent 10 minutes is stale with a 5-minute TTL and held with a 60-minute one."""
    path = str(tmp_path / 'deploy.lock')
    now = time.time()
    plant(path, run_id='other-run', holder='bob@laptop', host='another-host', pid=1, since=now - 3600,
          heartbeat=now - 600, operation='deploy')
    assert lock.status(path, ttl_minutes=5, now=now)['stale'] is True
    assert lock.status(path, ttl_minutes=60, now=now)['stale'] is False
    with pytest.raises(lock.LockHeld):
        lock.acquire(path, 'my-run', 'alice@laptop', ttl_minutes=60, now=now)
    result, record = lock.acquire(path, 'my-run', 'alice@laptop', ttl_minutes=5, now=now)
    assert result == 'taken over' and record['took_over']['holder'] == 'bob@laptop'


def test_a_long_deploy_renews_its_lock(tmp_path):
    """The deploy's heartbeat (issue 23: a mutant that never renewed survived): while safe_redeploy works, its
    renew() writes a fresh heartbeat every RENEW_SECONDS of its clock, so a deploy longer than the TTL is never
    taken over; a lock it no longer holds is warned about once, not re-taken."""
    from ansible.module_utils.soulnear.deploy_common import RENEW_SECONDS
    from ansible.module_utils.soulnear.redeploy import Redeployer
    path = str(tmp_path / 'deploy.lock')
    clock = [1000.0]
    lock.acquire(path, 'run-1', 'alice@laptop', now=clock[0])
    warnings = []
    redeployer = Redeployer(dict(lock_path=path, lock_run_id='run-1', login_db='soul_bot'), warn=warnings.append,
                            clock=lambda: clock[0])
    beats = []
    for _ in range(5):
        clock[0] += RENEW_SECONDS + 1
        redeployer.renew()
        beats.append(lock.read(path)['heartbeat'])
    assert len(set(beats)) == 5 and beats == sorted(beats), beats
    # Within RENEW_SECONDS of the last beat nothing is written (no write per poll).
    before = lock.read(path)['heartbeat']
    clock[0] += 1
    redeployer.renew()
    assert lock.read(path)['heartbeat'] == before
    lock.release(path, force=True)
    clock[0] += RENEW_SECONDS + 1
    redeployer.renew()
    redeployer.renew(force=True)
    assert lock.read(path) is None and len(warnings) == 1 and 'not held by run run-1' in warnings[0]
