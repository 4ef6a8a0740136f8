# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bot's container for the safe redeploy (Redeployer's BotContainer part): its options checked and turned into
docker create arguments, creating, renaming and removing it, waiting until it is ready and watching it settle, the
one-off containers of its image (the migration command, its probe), and the leftovers of an interrupted run."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import re
import shlex
import subprocess

from . import containers
from .deploy_common import CONFIG_LABEL, POLL_SECONDS, VERSION_LABEL, _StepFailed, argv_of, state_of

PORT = re.compile(r'^(?:(?P<address>\[[0-9a-fA-F:]+\]|[0-9.]+):)?(?P<host>\d{1,5}):(?P<container>\d{1,5})'
                  r'(?:/(?:tcp|udp))?$')
VOLUME_SOURCE = re.compile(r'^(/.*|[A-Za-z0-9][A-Za-z0-9_.-]*)$')  # a host path, or a named volume
HEALTH_KEYS = ('test', 'interval', 'timeout', 'retries', 'start_period')

VOLUME_SOURCE = re.compile(r'^(/.*|[A-Za-z0-9][A-Za-z0-9_.-]*)$')  # a host path, or a named volume
HEALTH_KEYS = ('test', 'interval', 'timeout', 'retries', 'start_period')


def container_options(params):
    """The bot container's options besides image, env and network, checked: (docker create arguments, the part
    of them that goes into the config hash - only what is set, so a container without them keeps its hash).
    Raises ValueError with what to fix."""
    args, hashed = [], {}
    volumes = []
    for entry in params.get('volumes') or []:
        parts = str(entry).split(':')
        if len(parts) not in (2, 3) or not VOLUME_SOURCE.match(parts[0]) or not parts[1].startswith('/') or \
                (len(parts) == 3 and parts[2] not in ('ro', 'rw')):
            raise ValueError('volume %r is not "source:/path/in/container[:ro|rw]" (source: a named volume or an '
                             'absolute host path)' % entry)
        volumes.append(str(entry))
    ports = []
    for entry in params.get('published_ports') or []:
        match = PORT.match(str(entry))
        if not match or not 0 < int(match.group('host')) < 65536 or not 0 < int(match.group('container')) < 65536:
            raise ValueError('published port %r is not "[address:]host_port:container_port" (e.g. 8080:8080, '
                             'published on 127.0.0.1 unless an address is given)' % entry)
        ports.append(str(entry) if match.group('address') else '127.0.0.1:' + str(entry))
    hosts = []
    for entry in params.get('extra_hosts') or []:
        name, _unused, address = str(entry).partition(':')
        if not name or not address:
            raise ValueError('extra host %r is not "name:address"' % entry)
        hosts.append('%s:%s' % (name, address))
    health = dict(params.get('healthcheck') or {})
    unknown = sorted(set(health) - set(HEALTH_KEYS))
    if unknown:
        raise ValueError('healthcheck takes %s, not %s' % (', '.join(HEALTH_KEYS), ', '.join(unknown)))
    for volume in sorted(volumes):
        args += ['-v', volume]
    for port in ports:
        args += ['-p', port]
    for host in sorted(hosts):
        args += ['--add-host', host]
    test = health.get('test')
    if (isinstance(test, (list, tuple)) and list(test)[:1] == ['NONE']) or test == 'NONE':
        args += ['--no-healthcheck']
    elif test:
        if isinstance(test, (list, tuple)):
            test = ' '.join(shlex.quote(str(t)) for t in (test[1:] if test[0] in ('CMD', 'CMD-SHELL') else test))
        args += ['--health-cmd', str(test)]
    for key in ('interval', 'timeout', 'start_period'):
        if health.get(key):
            args += ['--health-%s' % key.replace('_', '-'), str(health[key])]
    if health.get('retries'):
        args += ['--health-retries', str(int(health['retries']))]
    for key, value in (('volumes', sorted(volumes)), ('published_ports', ports), ('extra_hosts', sorted(hosts)),
                       ('healthcheck', dict(sorted(health.items()))), ('command', argv_of(params.get('command')))):
        if value:
            hashed[key] = value
    return args, hashed


class BotContainer:
    """Redeployer's docker side (self.params, self.run_options, self.renew, self.clock, self.sleep, self.warn)."""

    def inspect(self, name):
        return containers.inspect(name)

    def inspect_many(self, names):
        """{name: docker inspect of the container} of those of names that exist, in one docker call."""
        proc = containers.run(['inspect', '--type', 'container'] + list(names), check=False)
        text = proc.stdout.decode('utf-8', 'replace').strip()
        if proc.returncode != 0 and 'No such' not in proc.stderr.decode('utf-8', 'replace'):
            raise containers.DockerError('docker inspect failed: %s' % proc.stderr.decode('utf-8', 'replace').strip())
        found = json.loads(text) if text.startswith('[') else []
        return dict((item.get('Name', '').lstrip('/'), item) for item in found)

    def image_id(self, image):
        proc = containers.run(['image', 'inspect', '--format', '{{.Id}}', image], check=False)
        if proc.returncode != 0:
            return None
        return proc.stdout.decode('utf-8', 'replace').strip() or None

    def logs(self, name, since=None, tail=None):
        """The container's log, stdout and stderr in their order."""
        args = [containers.docker_binary(), 'logs']
        if since:
            args += ['--since', since]
        if tail:
            args += ['--tail', str(tail)]
        try:
            proc = subprocess.run(args + [name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                                  check=False)
        except subprocess.TimeoutExpired:
            return ''
        return proc.stdout.decode('utf-8', 'replace')

    def config_hash(self):
        """What the container's configuration depends on besides its image: the env file and the run options."""
        p = self.params
        digest = hashlib.sha256()
        if p['env_file']:
            try:
                with open(p['env_file'], 'rb') as handle:
                    digest.update(handle.read())
            except OSError as exc:
                raise _StepFailed('preflight', 'cannot read the env file %s: %s; write it first (the app role '
                                  'does)' % (p['env_file'], exc.strerror or exc)) from None
        options = dict(network=p['network'], restart_policy=p['restart_policy'], stop_timeout=int(p['stop_timeout']),
                       labels=dict(sorted((p['labels'] or {}).items())))
        if p['mounts']:  # only when set, so the hash of a container without mounts stays what it was
            options['mounts'] = sorted(p['mounts'])
        options.update(self.hashed_options)
        digest.update(json.dumps(options, sort_keys=True).encode('utf-8'))
        return digest.hexdigest()[:16]

    def create(self, name, image, version, config):
        p = self.params
        args = ['create', '--name', name, '--restart', p['restart_policy'],
                '--stop-timeout', str(int(p['stop_timeout']))]
        if p['network']:
            args += ['--network', p['network']]
        if p['env_file']:
            args += ['--env-file', p['env_file']]
        for path in sorted(p['mounts'] or []):
            args += ['-v', '%s:%s:ro' % (path, path)]
        args += self.run_options
        labels = dict(p['labels'] or {})
        labels.update({VERSION_LABEL: version, CONFIG_LABEL: config})
        for key in sorted(labels):
            args += ['--label', '%s=%s' % (key, labels[key])]
        containers.run(args + [image] + argv_of(p['command']))

    def remove(self, name):
        containers.run(['rm', '-f', '-v', name], check=False)

    def rename(self, old, new):
        containers.run(['rename', old, new])

    def problem(self, state, baseline_restarts):
        """Why a container that should be starting up is failing, or None."""
        if not state['exists']:
            return 'the container disappeared'
        if state['status'] in ('exited', 'dead') or (not state['running'] and state['status'] != 'created'):
            return 'the container %s (exit code %s%s)' % (state['status'], state['exit_code'],
                                                          ', killed by the OOM killer' if state['oom_killed'] else '')
        if state['status'] == 'restarting' or state['restart_count'] > baseline_restarts:
            return ('the container crashed and Docker restarts it (restart count %d, last exit code %s)'
                    % (state['restart_count'], state['exit_code']))
        if state['health'] == 'unhealthy':
            return 'its healthcheck reports unhealthy'
        return None

    def error_lines(self, text, patterns):
        found = []
        for line in text.splitlines():
            for pattern in patterns:
                if re.search(pattern, line):
                    found.append((pattern, line.strip()))
                    break
        return found

    def wait_ready(self, name, step, scan=True, timeout=None):
        """Wait until name is healthy (or runs, without a healthcheck) and its log since this start shows every
        marker; fail fast on an exit, a restart, unhealthy, or (scan) an error pattern. Returns the end of the
        downtime: when the markers were first seen, or without markers when it was ready (healthy, or running
        without a healthcheck). timeout: default healthy_timeout."""
        p = self.params
        data = self.inspect(name)
        state = state_of(data)
        since = state['started_at']
        baseline = state['restart_count']
        timeout = float(p['healthy_timeout'] if timeout is None else timeout)
        deadline = self.clock() + timeout
        markers_seen = None
        while True:
            self.renew()
            state = state_of(self.inspect(name))
            trouble = self.problem(state, baseline)
            if trouble:
                raise _StepFailed(step, trouble)
            text = self.logs(name, since=since)
            bad = self.error_lines(text, p['error_patterns']) if scan else []
            if bad:
                raise _StepFailed(step, 'error pattern %r in the log: %s' % bad[0])
            missing = [m for m in p['markers'] if not re.search(m, text)]
            if p['markers'] and not missing and markers_seen is None:
                markers_seen = self.clock()
            if state['running'] and state['health'] in ('healthy', None) and not missing:
                return markers_seen if markers_seen is not None else self.clock()
            if self.clock() >= deadline:
                raise _StepFailed(step, 'not ready within %ss: status %s, health %s%s'
                                  % (int(timeout), state['status'], state['health'] or 'none',
                                     ('; markers not in its log yet: %s' % ', '.join(missing)) if missing else ''))
            self.sleep(POLL_SECONDS)

    def settle(self, name):
        """Watch the new container for settle_seconds: still running, no restart, no error pattern in its log."""
        p = self.params
        state = state_of(self.inspect(name))
        since, baseline = state['started_at'], state['restart_count']
        end = self.clock() + float(p['settle_seconds'])
        while True:
            state = state_of(self.inspect(name))
            trouble = self.problem(state, baseline)
            if trouble:
                raise _StepFailed('settle', trouble)
            bad = self.error_lines(self.logs(name, since=since), p['error_patterns'])
            if bad:
                raise _StepFailed('settle', 'error pattern %r in the log: %s' % bad[0])
            if self.clock() >= end:
                return
            self.sleep(min(POLL_SECONDS, max(0.0, end - self.clock())))

    def one_off(self, image, argv, role, timeout, env_file=None):
        """argv in a throwaway container of image, with the bot's environment, network, mounts and extra hosts
        (not its ports): (exit code, its output). A run past timeout is removed and fails the step."""
        p = self.params
        name = '%s-%s' % (self.name, role)
        self.remove(name)
        args = ['run', '--rm', '--name', name, '--label', 'soulnear.component=bot-%s' % role]
        if p['network']:
            args += ['--network', p['network']]
        if env_file or p['env_file']:
            args += ['--env-file', env_file or p['env_file']]
        for path in sorted(p['mounts'] or []):
            args += ['-v', '%s:%s:ro' % (path, path)]
        options = self.run_options
        for i, option in enumerate(options):
            if option in ('-v', '--add-host'):
                args += [option, options[i + 1]]
        try:
            proc = containers.run(args + ['--entrypoint', argv[0], image] + argv[1:], timeout=timeout, check=False)
        except containers.DockerError:
            self.remove(name)
            raise _StepFailed(role if role in ('migrate', 'rehearse') else 'preflight', '%s did not finish within %ss '
                              'in a container of %s; it was stopped' % (' '.join(argv), timeout, image)) from None
        text = (proc.stdout + proc.stderr).decode('utf-8', 'replace').strip()
        return proc.returncode, text

    def recover_leftovers(self):
        """A run killed mid-swap leaves <name>-next (never started) or <name>-previous (the stopped old bot)."""
        if self.inspect(self.next_name) is not None:
            self.remove(self.next_name)
            self.warn('removed %s, left by an interrupted deploy' % self.next_name)
        previous = self.inspect(self.prev_name)
        if previous is None:
            return
        current = self.inspect(self.name)
        state = state_of(current)
        if current is not None and state['running'] and state['health'] in ('healthy', None):
            self.remove(self.prev_name)
            self.warn('removed %s, left by an interrupted deploy whose new bot is running' % self.prev_name)
            return
        if current is not None:
            self.remove(self.name)
        self.rename(self.prev_name, self.name)
        refused = self.start_refused() if hasattr(self, 'start_refused') else None
        if refused or getattr(self, 'standby', False):
            # Several bot hosts, one bot: only the lease's holder runs a bot (its leader starts it there).
            self.warn('an interrupted deploy left the previous bot stopped as %s; it is %s again, not started: %s'
                      % (self.prev_name, self.name, refused or 'this host stands by'))
            return
        containers.start(self.name)
        self.warn('an interrupted deploy left the previous bot stopped as %s; it runs again as %s'
                  % (self.prev_name, self.name))
