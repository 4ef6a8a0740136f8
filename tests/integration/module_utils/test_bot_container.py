"""bot_container.BotContainer.problem against a real Docker container: a bot that crashed once and runs again under
its restart policy is a problem through its restart count alone (issue 23: a mutant that ignored the count survived
the redeploy test, which also sees Docker's "restarting" status); the same state against its own count is not."""

import subprocess
import time
import uuid

from ansible.module_utils.soulnear import containers
from ansible.module_utils.soulnear.bot_container import BotContainer, state_of

IMAGE = 'soulnear/python:3-bookworm'


def test_a_restart_seen_only_through_the_count_is_a_problem():
    name = 'soulnear-test-restarted-' + uuid.uuid4().hex[:8]
    # Exits 3 on its first start, then runs: Docker restarts it once and it stays up.
    subprocess.run(['docker', 'run', '-d', '--name', name, '--restart', 'on-failure', IMAGE, 'sh', '-c',
                    'test -f /tmp/once || { touch /tmp/once; exit 3; }; exec sleep 600'],
                   check=True, capture_output=True, timeout=120)
    try:
        deadline = time.time() + 120
        while True:
            state = state_of(containers.inspect(name))
            if state['running'] and state['status'] == 'running' and state['restart_count'] >= 1:
                break
            assert time.time() < deadline, 'the container did not run again after its crash: %s' % state
            time.sleep(0.5)
        trouble = BotContainer().problem(state, 0)
        assert trouble and 'Docker restarts it (restart count 1' in trouble, trouble
        assert BotContainer().problem(state, state['restart_count']) is None
    finally:
        subprocess.run(['docker', 'rm', '-f', name], capture_output=True, timeout=120)
