# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small Docker helpers shared by the modules and the host commands.

They drive the docker CLI that ships with the engine instead of the Python SDK:
the host commands run from cron/systemd with the system Python, and streaming
`docker exec ... pg_dump` straight into a file is simplest with a pipe. Use
community.docker modules for container *state* in playbooks; these helpers are
for operations inside our own modules (exec, inspect, stop/start around a swap).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import subprocess
import time


class DockerError(Exception):
    """The docker CLI failed; the message says what was run and why it failed."""


def docker_binary():
    found = shutil.which('docker') or ('/usr/bin/docker' if os.path.exists('/usr/bin/docker') else None)
    if not found:
        raise DockerError('the docker CLI is not installed on this host; run the docker_host role '
                          '(ansible-playbook deploy.yml --tags docker_host)')
    return found


def run(args, input_bytes=None, timeout=120, check=True):
    """Run `docker <args>`; returns CompletedProcess with bytes stdout/stderr."""
    try:
        proc = subprocess.run([docker_binary()] + list(args), input=input_bytes, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DockerError('docker %s did not finish within %ss' % (' '.join(args[:2]), timeout)) from None
    if check and proc.returncode != 0:
        raise DockerError('docker %s failed: %s' % (' '.join(args[:2]),
                                                    proc.stderr.decode('utf-8', 'replace').strip()))
    return proc


def inspect(name):
    """`docker inspect` of a container as a dict; None when it does not exist."""
    proc = run(['inspect', '--type', 'container', name], check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode('utf-8', 'replace')
        if 'No such' in err or 'no such' in err:
            return None
        raise DockerError('docker inspect %s failed: %s' % (name, err.strip()))
    return json.loads(proc.stdout.decode('utf-8'))[0]


def container_state(name):
    """Running/health/restart facts of a container; exists=False when there is none."""
    data = inspect(name)
    if data is None:
        return dict(name=name, exists=False, running=False, status='missing', health=None, restart_count=0)
    state = data.get('State', {})
    health = (state.get('Health') or {}).get('Status')
    return dict(name=name, exists=True, running=bool(state.get('Running')), status=state.get('Status'),
                health=health, restart_count=int(data.get('RestartCount', 0)), started_at=state.get('StartedAt'),
                exit_code=state.get('ExitCode'), oom_killed=bool(state.get('OOMKilled')),
                image=data.get('Config', {}).get('Image'), image_id=data.get('Image'))


def wait_ready(name, timeout, interval=1.0):
    """Until the container runs and is healthy (or has no healthcheck): None, or why not once timeout seconds have
    passed or it stopped (exited, removed)."""
    deadline = time.time() + timeout
    state = {}
    while time.time() < deadline:
        state = container_state(name)
        if state['running'] and state['health'] in (None, 'healthy'):
            return None
        if not state['exists'] or state['status'] == 'exited':
            break
        time.sleep(interval)
    return 'the bot %s is %s%s' % (name, state.get('status'), ' (%s)' % state['health'] if state.get('health') else '')


def exec_argv(container, argv, user=None, env=None, interactive=False):
    """The full `docker exec` command line for argv inside container (for streaming with Popen)."""
    cmd = [docker_binary(), 'exec']
    if interactive:
        cmd.append('-i')
    if user:
        cmd += ['-u', user]
    for key in sorted(env or {}):
        # Only the variable name goes on the command line; the value comes from our environment,
        # so secrets such as PGPASSWORD never show in `ps`.
        cmd += ['-e', key]
    return cmd + [container] + list(argv)


def run_argv(image, argv, env=None, mounts=(), interactive=False):
    """The full `docker run --rm` command line for argv in a throwaway container of image, on the host's network
    (so 127.0.0.1 and the host's routes and DNS are the host's). mounts are host paths, mounted read-only at the same
    path. Like exec_argv, only variable names go on the command line."""
    cmd = [docker_binary(), 'run', '--rm', '--network', 'host', '--log-driver', 'none']
    if interactive:
        cmd.append('-i')
    for key in sorted(env or {}):
        cmd += ['-e', key]
    for path in mounts:
        cmd += ['-v', '%s:%s:ro' % (path, path)]
    return cmd + [image] + list(argv)


def image_exists(image):
    return run(['image', 'inspect', '--format', '{{.Id}}', image], check=False).returncode == 0


def exec_env(env):
    """Environment for a Popen of exec_argv(..., env=env): ours plus the passed-through variables."""
    merged = dict(os.environ)
    merged.update(dict((k, str(v)) for k, v in (env or {}).items()))
    return merged


def exec_run(container, argv, user=None, env=None, input_bytes=None, timeout=300):
    """Run argv in the container and wait; returns (rc, stdout bytes, stderr bytes)."""
    try:
        proc = subprocess.run(exec_argv(container, argv, user, env, interactive=input_bytes is not None),
                              input=input_bytes, capture_output=True, timeout=timeout, env=exec_env(env),
                              check=False)
    except subprocess.TimeoutExpired:
        raise DockerError('%s in %s did not finish within %ss' % (argv[0], container, timeout)) from None
    return proc.returncode, proc.stdout, proc.stderr


def stop(name, timeout=30):
    run(['stop', '-t', str(int(timeout)), name], timeout=timeout + 30)


def start(name):
    run(['start', name])


def restart(name, timeout=30):
    run(['restart', '-t', str(int(timeout)), name], timeout=timeout + 60)


def volume_mountpoint(name):
    """Host directory of a Docker volume; None when the volume does not exist."""
    proc = run(['volume', 'inspect', '--format', '{{.Mountpoint}}', name], check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.decode('utf-8', 'replace').strip() or None
