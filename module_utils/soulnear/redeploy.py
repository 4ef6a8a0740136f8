# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ship a new bot version safely: the logic of the safe_redeploy module.

Redeployer(params).run() does one of three actions:

- deploy: put `version` (a release directory below `releases_dir`, run as image `image_name:version`) live.
  1. preflight: the image exists; the database answers (the health checks' check_database); the pending
     migrations of the new release (migrate.status, and a check-mode Migrator over them: every pending file is
     read and checked before anything changes); no container of an older setup runs the bot.
  2. nothing to do (same version and image, same config, nothing pending, the bot runs) -> changed=False, the
     bot is not touched.
  3. backup (`backup`: always | when_migrations | never): a verified pre-deploy backup named
     pre_deploy_<version>_<time>.dump, before the old bot stops.
  4. swap: the new container is created while the old bot still runs; stop the old bot (a polling bot never
     runs twice) and keep it as `<name>-previous` -> apply the pending migrations -> start the new container
     -> wait until Docker reports it healthy and its log shows every marker, failing fast when it exits,
     restarts or becomes unhealthy -> watch its log for error patterns for `settle_seconds`.
  5. on any failure after the old bot stopped: remove the new container, start the previous one again (same
     image, same config: it is the same container), wait until it is healthy, then fail naming the failed step
     and showing the new container's last log lines. Migrations that did apply stay (write backward-compatible
     migrations); the message prints the command that restores the pre-deploy backup.
  6. only after success: the `current` link switches to the new release (the monitor reads its migrations),
     the previous container is removed, the history is written and images and releases beyond the newest
     `keep_images` previous ones are pruned.
  7. one audit line (audit.py) per deploy that changed something or failed.
- rollback: the same swap to a kept earlier version (`version`, or the previous one from the history).
- migrate: apply the pending migrations of the current release with the same backup-first rule; the bot is
  not touched.

While it works it renews the deploy lock it was given (lock.renew), so a long wait never lets the lock expire.
Nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time

from . import audit, containers, lock
from .backup import create_backup
from .backup_files import FAILURES as BACKUP_FAILURES
from .backup_files import SIDECAR_SUFFIX, describe_failure
from .backup_settings import make_settings
from .checks import check_database
from .files import write_private
from .migrate import MigrationError, Migrator
from .migrate import status as migration_status
from .pg import ConnectError, connect, connection_argument_spec
from .rehearsal import rehearse, retarget_env, write_private_copy

ACTIONS = ('deploy', 'rollback', 'migrate')
BACKUP_MODES = ('always', 'when_migrations', 'never')
PREVIOUS = 'previous'
HISTORY_FILE = '.history.json'
VERSION_LABEL = 'soulnear.version'
CONFIG_LABEL = 'soulnear.config'
PRE_BACKUP = re.compile(r'^pre_(deploy|rollback|migrate)_.*\.dump$')
POLL_SECONDS = 0.5
RENEW_SECONDS = 30
LOG_TAIL = 40

# No success markers by default: a bot is ready when it runs (and is Docker-healthy when its image has a
# HEALTHCHECK) without a restart or an error pattern for settle_seconds. A bot that logs a line once it is ready
# can ask for it (markers; the example bot's inventories do).
DEFAULT_MARKERS = []
MIGRATION_MODES = ('sql', 'command', 'none')
REHEARSAL_MODES = ('auto', 'always', 'never')
DEFAULT_ERROR_PATTERNS = ['Traceback', 'does not exist', 'FATAL', 'PANIC',
                          'terminated by other getUpdates request']

# pg_migrate options a deploy may pass on (the app role's app_migration_options): layouts of other tools,
# placeholders, taking over another tool's history, lock and statement timeouts.
MIGRATION_OPTIONS = ('format', 'placeholders', 'takeover', 'takeover_table', 'drift', 'baseline', 'out_of_order',
                     'lock_timeout', 'ddl_lock_timeout', 'ddl_lock_retries', 'statement_timeout', 'lint',
                     'lint_min_rows', 'lint_min_mb')

# The module's options besides the connection ones (pg.connection_argument_spec): type and default, once.
DEFAULTS = dict(
    action='deploy',
    name='soulnear_bot',
    image=None,
    image_name=None,
    version=None,
    releases_dir='/opt/soulnear/app/releases',
    current_link='/opt/soulnear/app/current',
    migrations='sql',
    migrations_subdir='database/migrations',
    migrations_table='schema_migrations',
    migration_options={},
    migration_command=[],
    migration_check_command=[],
    migration_timeout=3600,
    rehearsal='auto',
    rehearsal_max_mb=1024,
    max_migration_seconds=0,
    applied_by=None,
    env_file=None,
    mounts=[],
    volumes=[],
    published_ports=[],
    extra_hosts=[],
    command=[],
    healthcheck={},
    network=None,
    restart_policy='unless-stopped',
    stop_timeout=30,
    labels={},
    healthy_timeout=120,
    rollback_timeout=300,
    settle_seconds=10.0,
    markers=DEFAULT_MARKERS,
    error_patterns=DEFAULT_ERROR_PATTERNS,
    conflicting_containers=[],
    db_container=None,
    backup='when_migrations',
    backup_dir='/var/backups/soulnear',
    backup_keep=5,
    backup_login_user=None,
    backup_login_password=None,
    backup_client_image=None,
    keep_images=3,
    lock_path=None,
    lock_run_id=None,
    audit_log=None,
    audit_event=None,
    audit_who=None,
    audit_extra={},
)


class RedeployError(Exception):
    """A failure for the operator: the message names the failed step, what happened to the bot, and the fix."""

    def __init__(self, message, result=None):
        Exception.__init__(self, message)
        self.result = result or {}


class _StepFailed(Exception):
    def __init__(self, step, reason):
        Exception.__init__(self, reason)
        self.step = step
        self.reason = reason


def argv_of(value):
    """A command as argv: a list as it is, a string split like a shell would (no shell runs it)."""
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return shlex.split(str(value))


PORT = re.compile(r'^(?:(?P<address>\[[0-9a-fA-F:]+\]|[0-9.]+):)?(?P<host>\d{1,5}):(?P<container>\d{1,5})'
                  r'(?:/(?:tcp|udp))?$')
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
        name, _, address = str(entry).partition(':')
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


def safe_name(text):
    """A version as it may appear in a file name (backup names)."""
    return re.sub(r'[^A-Za-z0-9._-]', '_', str(text))[:64] or 'unknown'


def repository_of(image):
    """'registry:5000/soulnear/bot:1.2' -> 'registry:5000/soulnear/bot' (digest and tag removed)."""
    image = image.split('@', 1)[0]
    slash = image.rfind('/')
    colon = image.rfind(':')
    return image[:colon] if colon > slash else image


def version_of(container):
    """The version a container runs: its label, else its image's tag (containers of the earlier layout)."""
    if not container:
        return None
    labels = (container.get('Config') or {}).get('Labels') or {}
    if labels.get(VERSION_LABEL):
        return labels[VERSION_LABEL]
    image = (container.get('Config') or {}).get('Image') or ''
    return image.rsplit(':', 1)[-1] if ':' in image.rsplit('/', 1)[-1] else image or None


def state_of(container):
    state = (container or {}).get('State') or {}
    return dict(exists=container is not None, running=bool(state.get('Running')), status=state.get('Status'),
                health=(state.get('Health') or {}).get('Status'), exit_code=state.get('ExitCode'),
                started_at=state.get('StartedAt'), restart_count=int((container or {}).get('RestartCount') or 0),
                oom_killed=bool(state.get('OOMKilled')))


class Redeployer:
    """One safe_redeploy run; params are the module's parameters (connection options included)."""

    def __init__(self, params, check_mode=False, warn=None, sleep=time.sleep, clock=time.time):
        self.params = dict(DEFAULTS)
        self.params.update((k, v) for k, v in params.items() if v is not None)
        self.check_mode = check_mode
        self.warn = warn or (lambda msg: None)
        self.sleep = sleep
        self.clock = clock
        p = self.params
        self.action = p['action']
        if self.action not in ACTIONS:
            raise RedeployError('action must be one of %s' % ', '.join(ACTIONS))
        if p['backup'] not in BACKUP_MODES:
            raise RedeployError('backup must be one of %s' % ', '.join(BACKUP_MODES))
        if p['rehearsal'] not in REHEARSAL_MODES:
            raise RedeployError('rehearsal must be one of %s' % ', '.join(REHEARSAL_MODES))
        if p['migrations'] not in MIGRATION_MODES:
            raise RedeployError('migrations must be one of %s' % ', '.join(MIGRATION_MODES))
        if p['migrations'] == 'command' and not argv_of(p['migration_command']):
            raise RedeployError('migrations: command needs migration_command, the bot\'s own migration command '
                                '(e.g. alembic upgrade head), run in a one-off container of the new image')
        try:
            self.run_options, self.hashed_options = container_options(p)
        except ValueError as exc:
            raise RedeployError('%s. Nothing was changed' % exc) from None
        self.name = p['name']
        self.prev_name = self.name + '-previous'
        self.next_name = self.name + '-next'
        self.conn = dict((k, p[k]) for k in connection_argument_spec() if k in p)
        self.started = clock()
        self.steps = []
        self.result = dict(changed=False, action=self.action, from_version=None, to_version=None, pending=[],
                           applied=[], lint=[], backup=None, rolled_back=False, downtime=None, predicted_downtime=None,
                           rehearsal=None, failed_step=None,
                           log_tail=[], pruned_images=[], pruned_releases=[], kept_versions=[], steps=self.steps)
        self._renewed = clock()
        self._renew_warned = False
        self.probe_said = None

    # -- bookkeeping -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, name, outcome=None):
        began = self.clock()
        self.renew(force=True)
        entry = dict(name=name, duration=None, outcome='running')
        self.steps.append(entry)
        try:
            yield entry
        except BaseException as exc:
            entry['outcome'] = 'failed'
            if isinstance(exc, _StepFailed) or not isinstance(exc, Exception):
                raise
            raise _StepFailed(name, str(exc)) from None
        else:
            if entry['outcome'] == 'running':
                entry['outcome'] = outcome or ('would run' if self.check_mode else 'ok')
        finally:
            entry['duration'] = round(self.clock() - began, 3)

    def skipped(self, name, why):
        self.steps.append(dict(name=name, duration=0.0, outcome='skipped: %s' % why))

    def renew(self, force=False):
        """Keep the deploy lock this run holds alive while it works."""
        p = self.params
        if self.check_mode or not p['lock_path'] or not p['lock_run_id']:
            return
        if not force and self.clock() - self._renewed < RENEW_SECONDS:
            return
        self._renewed = self.clock()
        try:
            if not lock.renew(p['lock_path'], p['lock_run_id']) and not self._renew_warned:
                self._renew_warned = True
                self.warn('the deploy lock %s is not held by run %s any more; carrying on'
                          % (p['lock_path'], p['lock_run_id']))
        except OSError as exc:
            if not self._renew_warned:
                self._renew_warned = True
                self.warn('could not renew the deploy lock %s: %s' % (p['lock_path'], exc))

    def audit(self, event, result, failed_step=None):
        p = self.params
        if self.check_mode or not p['audit_log']:
            return
        r = self.result
        extra = dict(action=self.action, applied=r['applied'], backup=r['backup'], image=r.get('image'),
                     predicted_downtime=r['predicted_downtime'])
        extra.update((k, v) for k, v in (p['audit_extra'] or {}).items() if v is not None)
        try:
            audit.record(p['audit_log'], p['audit_event'] or event, who=p['audit_who'], from_version=r['from_version'],
                         to_version=r['to_version'], result=result, failed_step=failed_step,
                         duration=self.clock() - self.started, downtime=r['downtime'], **extra)
        except Exception as exc:  # noqa: BLE001 - the audit line never decides a deploy's outcome
            self.warn('could not write the audit log %s: %s' % (p['audit_log'], exc))

    # -- docker ------------------------------------------------------------------------------------------
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
            proc = subprocess.run(args + [name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
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

    # -- waiting -----------------------------------------------------------------------------------------
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
        marker; fail fast on an exit, a restart, unhealthy, or (scan) an error pattern. Returns when the markers
        were first seen (the end of the downtime). timeout: default healthy_timeout."""
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
            if not missing and markers_seen is None:
                markers_seen = self.clock()
            if state['running'] and state['health'] in ('healthy', None) and not missing:
                return markers_seen
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

    # -- the database -----------------------------------------------------------------------------------
    def check_db(self):
        result, conn = check_database(dict(self.conn, db_container=self.params['db_container']))
        if conn is not None:
            conn.close()
        if not result['ok']:
            raise _StepFailed('preflight', 'the database is not healthy: %s' % result['message'])

    def pending(self, migrations_dir, image=None, same_image=False):
        """What the new version would migrate, by the migrations mode: sql - pending files (pg_migrate's logic;
        when anything is pending, failed or drifted, a check-mode run of pg_migrate reads and checks every pending
        file, so a bad file fails here, before the bot stops); command - the probe's answer (see probe); none -
        nothing."""
        mode = self.params['migrations']
        if mode == 'none':
            return []
        if mode == 'command':
            return self.probe(image, same_image)
        if not os.path.isdir(migrations_dir):
            raise _StepFailed('preflight', 'the release has no migrations directory %s. Fix: a bot without SQL '
                              'migrations sets app_migrations: none (or command, for its own tool such as Alembic); '
                              'SQL files elsewhere in its source: soulnear_migrations_subdir' % migrations_dir)
        try:
            state = migration_status(self.conn, migrations_dir, self.params['migrations_table'],
                                     self.params['migration_options'].get('format') or 'auto')
            if state['pending'] or state['failed'] or state['drift']:
                # The one lint of this deploy (locking DDL named with the tables' sizes, before anything stops).
                checked = Migrator(self.migrate_params(migrations_dir), check_mode=True, warn=self.warn).run()
                self.result['lint'] = checked.get('lint') or []
        except MigrationError as exc:
            raise _StepFailed('preflight', 'the migrations cannot run: %s' % exc) from None
        except ConnectError as exc:
            raise _StepFailed('preflight', 'cannot read the migration status: %s' % exc) from None
        return state['pending']

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

    def probe(self, image, same_image):
        """command mode: is the new image's migration pending? migration_check_command answers by its exit code
        (0 nothing pending, 1 pending, anything else: unknown - then back up and run, the safe side). Without a
        probe, the command runs when the image changes (the running image ran it at its own deploy)."""
        p = self.params
        command = ' '.join(argv_of(p['migration_command']))
        check = argv_of(p['migration_check_command'])
        if self.action == 'rollback':
            return []  # an older image's forward migration never runs: it cannot know the newer schema
        if not check:
            self.probe_said = 'no migration_check_command: %s' % ('same image, not run again' if same_image else
                                                                   'a new image runs it')
            return [] if same_image else ['command: %s' % command]
        if image is None:
            self.probe_said = 'the image is not built yet (check mode): %s would be probed' % ' '.join(check)
            return ['command: %s' % command]
        rc, text = self.one_off(image, check, 'migrate-check', 300)
        last = ' | '.join(text.splitlines()[-3:]) or 'no output'
        self.probe_said = '%s exited %d: %s' % (' '.join(check), rc, last)
        if rc == 0:
            return []
        if rc != 1:
            self.warn('the migration probe %s exited %d (not 0 = up to date, 1 = pending): treated as pending, so '
                      'the database is backed up and %s runs: %s' % (' '.join(check), rc, command, last))
        return ['command: %s' % command]

    def run_command_migration(self, image):
        p = self.params
        argv = argv_of(p['migration_command'])
        rc, text = self.one_off(image, argv, 'migrate', int(p['migration_timeout']))
        tail = text.splitlines()[-LOG_TAIL:]
        self.result['migration_output'] = tail
        if rc != 0:
            raise _StepFailed('migrate', '%s exited %d in a container of %s; its last lines: %s'
                              % (' '.join(argv), rc, image, ' | '.join(tail[-8:]) or 'no output'))
        self.result['applied'] = ['command: %s' % ' '.join(argv)]

    def database_mb(self):
        conn = connect(dict(self.conn, retries=1), application_name='soulnear redeploy')
        try:
            with conn.cursor() as cur:
                cur.execute('SELECT pg_database_size(current_database())')
                return cur.fetchone()[0] / 1048576.0
        finally:
            conn.close()

    def rehearse(self, migrations_dir, image):
        """The pending migrations on a copy restored from the fresh pre-deploy backup, before the old bot stops
        (rehearsal.py): a failure costs no downtime, and the time they took is the predicted downtime."""
        p, r = self.params, self.result
        if p['rehearsal'] == 'never':
            self.skipped('rehearse', 'rehearsal: never')
            return
        if not r['backup']:
            self.skipped('rehearse', 'no pre-deploy backup to rehearse on (backup: %s)' % p['backup'])
            return
        size = self.database_mb()
        if p['rehearsal'] == 'auto' and size > float(p['rehearsal_max_mb']):
            self.skipped('rehearse', 'rehearsal auto: the database is %.0f MB, more than rehearsal_max_mb %s (its '
                                     'restore would lengthen the deploy; rehearsal: always forces it)'
                         % (size, p['rehearsal_max_mb']))
            return
        live = self.conn.get('login_db')

        def apply(scratch):
            if p['migrations'] == 'command':
                with open(p['env_file']) as handle:
                    copy = write_private_copy(p['env_file'], retarget_env(handle.read(), live, scratch))
                try:
                    rc, text = self.one_off(image, argv_of(p['migration_command']), 'rehearse',
                                            int(p['migration_timeout']), env_file=copy)
                finally:
                    os.unlink(copy)
                if rc != 0:
                    raise MigrationError('%s exited %d on the copy: %s' % (
                        ' '.join(argv_of(p['migration_command'])), rc, ' | '.join(text.splitlines()[-8:])))
            else:
                Migrator(dict(self.migrate_params(migrations_dir), login_db=scratch, lint='off'), warn=self.warn).run()
        with self.step('rehearse') as entry:
            try:
                done = rehearse(self.backup_settings('rehearsal_%Y%m%d_%H%M%S.dump'), r['backup'], apply)
            except MigrationError as exc:
                raise _StepFailed('rehearse', 'the pending migrations failed on a copy of the database restored from '
                                  'the pre-deploy backup, so the old bot was never stopped: %s' % exc) from None
            except BACKUP_FAILURES as exc:
                # The rehearsal is a safety net, not a gate: a copy that cannot be made (no room, no CREATEDB on a
                # managed server) leaves the deploy as it was before rehearsals, and says so.
                self.warn('the rehearsal could not restore the pre-deploy backup into a scratch database (%s); the '
                          'deploy goes on without it. Fix: free space for a copy of the database, or set '
                          'app_migration_rehearsal: never' % describe_failure(exc))
                entry['outcome'] = 'skipped: the copy could not be made: %s' % describe_failure(exc)
                return
            r['rehearsal'] = done
            r['predicted_downtime'] = done['migrate_seconds']
            limit = float(p['max_migration_seconds'] or 0)
            if limit and done['migrate_seconds'] > limit:
                raise _StepFailed('rehearse', 'the migrations took %.1f s on a copy of the database, more than '
                                  'max_migration_seconds %s: the bot would be down about that long (writers blocked '
                                  'by their locks). Nothing was changed. Fix: make the migration non-blocking (see '
                                  'the lint warnings), or raise app_max_migration_seconds for a maintenance window'
                                  % (done['migrate_seconds'], p['max_migration_seconds']))
            entry['outcome'] = ('ok: the migrations took %.1f s on a copy (%.0f MB restored in %.1f s): predicted '
                                'downtime %.1f s plus the bot\'s restart' % (
                                    done['migrate_seconds'], done['size'] / 1048576.0, done['restore_seconds'],
                                    done['migrate_seconds']))

    def migrate_params(self, migrations_dir):
        params = dict(self.params['migration_options'])
        params.update(self.conn, path=migrations_dir, table=self.params['migrations_table'])
        if self.params['applied_by']:
            params['applied_by'] = self.params['applied_by']
        return params

    def apply(self, migrations_dir):
        try:
            result = Migrator(dict(self.migrate_params(migrations_dir), lint='off'), warn=self.warn).run()
        except MigrationError as exc:
            self.result['applied'] = list(exc.result.get('applied') or [])
            raise _StepFailed('migrate', str(exc)) from None
        self.result['applied'] = list(result.get('applied') or [])
        return result

    def backup_settings(self, pattern):
        """The backup code's settings: the superuser's login (backup_login_*), the database container or client
        image, the backups directory."""
        p = self.params
        conn = dict(self.conn)
        if p['backup_login_user']:
            conn['login_user'] = p['backup_login_user']
        if p['backup_login_password']:
            conn['login_password'] = p['backup_login_password']
        return make_settings(conn, container=p['db_container'] or 'soulnear_postgres',
                             client_image=p['backup_client_image'] or '', backup_dir=p['backup_dir'],
                             name_pattern=pattern)

    def backup(self, kind, version):
        """A verified backup named pre_<kind>_<version>_<time>.dump; older ones beyond backup_keep are pruned."""
        p = self.params
        pattern = 'pre_%s_%s_%%Y%%m%%d_%%H%%M%%S.dump' % (kind, safe_name(version))
        try:
            settings = self.backup_settings(pattern)
            taken = create_backup(settings, check_mode=self.check_mode, retention=False, offsite=False)
        except BACKUP_FAILURES as exc:
            raise _StepFailed('backup', 'the pre-%s backup failed: %s' % (kind, describe_failure(exc))) from None
        self.result['backup'] = taken['path']
        if not self.check_mode:
            self.prune_backups(p['backup_dir'], taken['path'])
        return taken

    def prune_backups(self, directory, newest):
        keep = max(1, int(self.params['backup_keep']))
        found = []
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if PRE_BACKUP.match(name) and os.path.isfile(path):
                found.append((os.path.getmtime(path), path))
        found.sort(reverse=True)
        for _, path in found[keep:]:
            if path == newest:
                continue
            for victim in (path, path + SIDECAR_SUFFIX):
                try:
                    os.unlink(victim)
                except FileNotFoundError:
                    pass

    # -- releases and history -----------------------------------------------------------------------------
    def release_dir(self, version):
        return os.path.join(self.params['releases_dir'], version)

    def history_path(self):
        return os.path.join(self.params['releases_dir'], HISTORY_FILE)

    def history(self):
        try:
            with open(self.history_path()) as handle:
                data = json.load(handle)
            return [e for e in data.get('deployed', []) if isinstance(e, dict) and e.get('version')]
        except (OSError, ValueError, AttributeError):
            return []

    def current_release(self):
        link = self.params['current_link']
        if not os.path.islink(link):
            return None
        return os.path.basename(os.path.normpath(os.readlink(link)))

    def switch(self, version):
        """Point the current link at the release, atomically (a new link renamed over the old one)."""
        link = self.params['current_link']
        target = os.path.relpath(self.release_dir(version), os.path.dirname(os.path.abspath(link)))
        if os.path.islink(link) and os.readlink(link) == target:
            return False
        if os.path.exists(link) and not os.path.islink(link):
            raise _StepFailed('switch', '%s exists and is not a symbolic link; move it away (the releases live in %s)'
                              % (link, self.params['releases_dir']))
        tmp = link + '.new'
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
        return True

    def record(self, version, image, image_id):
        entries = [e for e in self.history() if e['version'] != version]
        entries.append(dict(version=version, image=image, image_id=image_id,
                            deployed_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())))
        os.makedirs(self.params['releases_dir'], exist_ok=True)
        write_private(self.history_path(), json.dumps(dict(deployed=entries[-50:]), indent=1) + '\n')
        os.chmod(self.history_path(), 0o644)

    def kept_versions(self, current):
        """The current version and the newest keep_images previous ones: from the history, then (images of an
        earlier layout) the newest other tags of image_name."""
        keep = max(0, int(self.params['keep_images']))
        tags = [tag for tag, _created in self.image_tags()]
        kept = [current]
        for version in [e['version'] for e in reversed(self.history())] + tags:
            if len(kept) > keep:
                break
            if version not in kept and version in tags:
                kept.append(version)
        return kept

    def image_tags(self):
        """Tags of image_name on this host, newest first: [(tag, created)]."""
        proc = containers.run(['images', '--format', '{{.Tag}}\t{{.CreatedAt}}', self.params['image_name']],
                              check=False)
        tags = []
        for line in proc.stdout.decode('utf-8', 'replace').splitlines():
            tag, _, created = line.partition('\t')
            if tag and tag != '<none>':
                tags.append((tag, created))
        tags.sort(key=lambda t: t[1], reverse=True)
        return tags

    def prune(self, current):
        kept = self.kept_versions(current)
        self.result['kept_versions'] = kept
        for tag, _ in self.image_tags():
            if tag in kept:
                continue
            ref = '%s:%s' % (self.params['image_name'], tag)
            proc = containers.run(['rmi', ref], check=False)
            if proc.returncode == 0:
                self.result['pruned_images'].append(ref)
            else:
                self.warn('could not remove the old image %s: %s'
                          % (ref, proc.stderr.decode('utf-8', 'replace').strip()))
        releases = self.params['releases_dir']
        for name in sorted(os.listdir(releases)):
            path = os.path.join(releases, name)
            if name.startswith('.') or name in kept or not os.path.isdir(path) or os.path.islink(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            self.result['pruned_releases'].append(name)

    # -- leftovers of an interrupted run ------------------------------------------------------------------
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
        containers.start(self.name)
        self.warn('an interrupted deploy left the previous bot stopped as %s; it runs again as %s'
                  % (self.prev_name, self.name))

    # -- actions -------------------------------------------------------------------------------------------
    def run(self):
        try:
            if self.action == 'migrate':
                self.do_migrate()
            else:
                self.do_ship()
        except _StepFailed as exc:
            # Every failure after the old bot stopped ends in rollback(); these happened before it.
            self.result['failed_step'] = exc.step
            self.audit(self.action, 'failed', exc.step)
            what = dict(deploy='Deploy', rollback='Rollback', migrate='Migrate')[self.action]
            target = ' of %s' % self.result['to_version'] if self.result['to_version'] else ''
            lines = ['%s%s failed at step %s: %s. The running bot was not touched.'
                     % (what, target, exc.step, exc.reason)]
            lines += self.aftermath()
            raise RedeployError('\n'.join(lines), self.finish()) from None
        return self.finish()

    def finish(self):
        self.result['duration'] = round(self.clock() - self.started, 3)
        return self.result

    def resolve_target(self, current_version):
        """(version, image to run) of a deploy or rollback."""
        p = self.params
        if self.action == 'deploy':
            if not p['version'] or not p['image']:
                raise _StepFailed('preflight', 'version and image are required to deploy')
            image_name = p['image_name'] or repository_of(p['image'])
            p['image_name'] = image_name
            return p['version'], p['image']
        p['image_name'] = p['image_name'] or (repository_of(p['image']) if p['image'] else None)
        if not p['image_name']:
            raise _StepFailed('preflight', 'image_name is required to roll back (the repository of the kept images)')
        wanted = p['version'] or PREVIOUS
        history = self.history()
        tags = [t for t, _ in self.image_tags()]
        if wanted == PREVIOUS:
            candidates = [e['version'] for e in reversed(history) if e['version'] != current_version]
            candidates = [v for v in candidates if v in tags]
            if not candidates:
                raise _StepFailed('preflight', 'no earlier version is kept to roll back to (current %s; kept images '
                                  'of %s: %s)' % (current_version, p['image_name'], ', '.join(tags) or 'none'))
            wanted = candidates[0]
        elif wanted not in tags:
            raise _StepFailed('preflight', 'version %s is not kept on this host; kept images of %s: %s'
                              % (wanted, p['image_name'], ', '.join(tags) or 'none'))
        return wanted, '%s:%s' % (p['image_name'], wanted)

    def do_ship(self):
        p = self.params
        r = self.result
        with self.step('preflight') as entry:
            found = self.inspect_many([self.name, self.prev_name, self.next_name])
            current = found.get(self.name)
            if not self.check_mode and (self.prev_name in found or self.next_name in found):
                self.recover_leftovers()
                current = self.inspect(self.name)
            current_state = state_of(current)
            from_version = version_of(current)
            r['from_version'] = from_version
            version, image = self.resolve_target(from_version)
            r['to_version'] = version
            run_image = '%s:%s' % (p['image_name'], version)
            r['image'] = run_image
            image_id = self.image_id(image)
            release = self.release_dir(version)
            missing = []
            if image_id is None:
                missing.append('image %s' % image)
            if not os.path.isdir(release):
                missing.append('release directory %s' % release)
            if missing and not self.check_mode:
                raise _StepFailed('preflight', '%s not on the host: build or ship it first (the app role does)'
                                  % ' and '.join(missing))
            for other in p['conflicting_containers'] or []:
                if state_of(self.inspect(other))['running']:
                    raise _StepFailed('preflight', 'container %s from an older setup is running the bot. A polling '
                                      'bot must never run twice (Telegram answers 409 Conflict). Stop it first: '
                                      'docker stop %s' % (other, other))
            self.check_db()
            config = self.config_hash()
            migrations_dir = os.path.join(release, p['migrations_subdir'])
            same_image = current is not None and (current or {}).get('Image') == image_id
            pending = self.pending(migrations_dir, None if missing else image, same_image) \
                if not missing or p['migrations'] == 'command' else []
            r['pending'] = pending
            labels = ((current or {}).get('Config') or {}).get('Labels') or {}
            same = (current is not None and from_version == version and (current or {}).get('Image') == image_id
                    and labels.get(CONFIG_LABEL) == config)
            entry['outcome'] = 'ok: %s -> %s, %s' % (from_version or 'none', version, self.describe_pending(pending))
        if missing:  # check mode: what a real run would ship and build first
            r['changed'] = True
            r['msg'] = 'Would deploy %s (its %s is built or shipped first)' % (version, ' and '.join(missing))
            return
        if same and not pending and current_state['running']:
            relinked = False
            if self.current_release() != version:
                relinked = True
                if not self.check_mode:
                    self.switch(version)
            r['changed'] = relinked
            r['msg'] = '%s already runs %s with this configuration; nothing to do%s' % (
                self.name, version, ' (current link switched to it)' if relinked else '')
            health = current_state['health']
            if health not in ('healthy', None, 'starting'):
                self.warn('%s runs %s but its health is %s; see make logs-bot' % (self.name, version, health))
            return
        r['changed'] = True
        kind = 'rollback' if self.action == 'rollback' else 'deploy'
        if self.check_mode:
            self.plan(kind, version, pending, current_state, same)
            return
        if p['backup'] == 'always' or (p['backup'] == 'when_migrations' and pending):
            with self.step('backup') as entry:
                taken = self.backup(kind, version)
                entry['outcome'] = 'ok: %s' % taken['path']
        else:
            self.skipped('backup', 'backup=%s%s' % (p['backup'], ', nothing pending' if not pending else ''))
        if pending:
            self.rehearse(migrations_dir, image)
        if image != run_image:
            containers.run(['tag', image, run_image])
        self.swap(version, run_image, image_id, config, migrations_dir, pending, current, current_state)

    def describe_pending(self, pending):
        mode = self.params['migrations']
        if mode == 'none':
            return 'no migrations (migrations: none)'
        if mode == 'command':
            return '%s (%s)' % ('migration command pending' if pending else 'no migration pending',
                                self.probe_said or 'rollback: the older image\'s migrations never run')
        return '%d pending migration(s)' % len(pending)

    def migrate_now(self, migrations_dir, image):
        """Apply what is pending, by the migrations mode."""
        if self.params['migrations'] == 'command':
            self.run_command_migration(image)
        else:
            self.apply(migrations_dir)

    def plan(self, kind, version, pending, current_state, same):
        p = self.params
        would = []
        if p['backup'] == 'always' or (p['backup'] == 'when_migrations' and pending):
            would.append('back up the database')
            if pending and p['rehearsal'] != 'never':
                would.append('rehearse the migrations on a copy restored from that backup')
        if same and not pending:
            would.append('start %s (it is %s)' % (self.name, current_state['status']))
        else:
            would += ['stop the running bot'] if current_state['running'] else []
            if pending and p['migrations'] == 'command':
                would.append('run the migration command in a container of the new image (%s)'
                             % ' '.join(argv_of(p['migration_command'])))
            elif pending:
                would.append('apply %d migration(s): %s' % (len(pending), ', '.join(pending)))
            would += ['start %s and wait until it is healthy' % version]
        for name in ('backup', 'rehearse', 'stop', 'migrate', 'start', 'wait_healthy', 'settle', 'switch'):
            self.steps.append(dict(name=name, duration=0.0, outcome='would run'))
        self.result['msg'] = 'Would %s %s: %s' % (kind, version, '; '.join(would))

    def swap(self, version, run_image, image_id, config, migrations_dir, pending, current, current_state):
        r = self.result
        had_old = current is not None
        old_running = current_state['running']
        progress = dict(created=False, stopped=False, old_renamed=False, new_renamed=False)
        down_since = None
        try:
            with self.step('create'):
                self.create(self.next_name, run_image, version, config)
                progress['created'] = True
            with self.step('stop') as entry:
                down_since = self.clock()
                if old_running:
                    containers.stop(self.name, timeout=int(self.params['stop_timeout']))
                    progress['stopped'] = True
                else:
                    entry['outcome'] = 'ok: the bot was not running (%s)' % (
                        current_state['status'] if had_old else 'no bot container yet')
                if had_old:
                    self.rename(self.name, self.prev_name)
                    progress['old_renamed'] = True
                self.rename(self.next_name, self.name)
                progress['new_renamed'] = True
            if pending:
                with self.step('migrate') as entry:
                    self.migrate_now(migrations_dir, run_image)
                    entry['outcome'] = 'ok: applied %s' % (', '.join(r['applied']) or 'nothing')
            else:
                self.skipped('migrate', 'migrations: none' if self.params['migrations'] == 'none' else
                             'nothing pending')
            with self.step('start'):
                containers.start(self.name)
            with self.step('wait_healthy') as entry:
                ready = self.wait_ready(self.name, 'wait_healthy') or self.clock()
                if old_running:
                    r['downtime'] = round(ready - down_since, 3)
                    entry['outcome'] = 'ok: healthy, markers seen after %.1fs of downtime' % r['downtime']
                else:
                    entry['outcome'] = 'ok: healthy, markers seen %.1fs after the start' % (ready - down_since)
            if float(self.params['settle_seconds']) > 0:
                with self.step('settle'):
                    self.settle(self.name)
        except _StepFailed as exc:
            if not progress['stopped'] and not progress['old_renamed'] and not progress['new_renamed']:
                if progress['created']:
                    self.remove(self.next_name)
                raise
            self.rollback(exc, progress, had_old, old_running, down_since)
        with self.step('switch'):
            if had_old:
                self.remove(self.prev_name)
            self.switch(version)
            self.record(version, run_image, image_id)
        with self.step('prune') as entry:
            try:
                self.prune(version)
            except (OSError, containers.DockerError) as exc:
                self.warn('pruning old images and releases failed: %s' % exc)
            entry['outcome'] = 'ok: kept %s' % ', '.join(r['kept_versions'])
        r['msg'] = ('%s %s -> %s: %s; %s' % (
            'Rolled back' if self.action == 'rollback' else 'Deployed', r['from_version'] or 'none', version,
            ('applied %s' % ', '.join(r['applied'])) if r['applied'] else 'no migrations',
            'downtime %.1fs' % r['downtime'] if r['downtime'] is not None else 'no bot was running before'))
        self.audit(self.action, 'success')

    def rollback(self, failure, progress, had_old, old_running, down_since):
        """Put the previous bot back after a failure at or after stopping it, then raise the failure for people."""
        r = self.result
        tail = []
        if progress['new_renamed'] and self.inspect(self.name) is not None:
            tail = self.logs(self.name, tail=LOG_TAIL).splitlines()
        r['log_tail'] = tail
        restored = None
        try:
            with self.step('rollback') as entry:
                self.remove(self.name if progress['new_renamed'] else self.next_name)
                if progress['old_renamed']:
                    self.rename(self.prev_name, self.name)
                if had_old and old_running:
                    containers.start(self.name)
                    # Its own, longer wait: the previous bot was healthy minutes ago; a loaded host must not turn a
                    # slow start into "ROLLBACK FAILED".
                    ready = self.wait_ready(self.name, 'rollback', scan=False,
                                            timeout=max(float(self.params['rollback_timeout']),
                                                        float(self.params['healthy_timeout']))) or self.clock()
                    r['downtime'] = round(ready - down_since, 3)
                    restored = True
                    entry['outcome'] = 'ok: %s runs %s again and is healthy' % (self.name, r['from_version'])
                else:
                    restored = None
                    entry['outcome'] = 'ok: no previous bot was running; none started'
            r['rolled_back'] = True
        except _StepFailed as exc:
            restored = False
            rollback_error = exc.reason
        r['failed_step'] = failure.step
        what = 'Deploy' if self.action == 'deploy' else 'Rollback'
        lines = ['%s of %s failed at step %s: %s.' % (what, r['to_version'], failure.step, failure.reason)]
        if restored:
            lines.append('Rolled back: the previous bot (%s) runs again and is healthy.' % r['from_version'])
        elif restored is None:
            lines.append('No previous bot was running, so none was started; the new container was removed.')
        else:
            lines.append('ROLLBACK FAILED: the previous bot (%s) did not become healthy again: %s. Look at make '
                         'logs-bot and make diagnose; docker start %s' % (r['from_version'], rollback_error, self.name))
        lines += self.aftermath()
        if r['log_tail']:
            lines.append('Last %d log lines of the new container (%s):' % (len(r['log_tail']), r['to_version']))
            lines += ['  ' + line for line in r['log_tail']]
        self.audit(self.action, 'rolled back' if restored else ('failed' if restored is None else 'rollback failed'),
                   failure.step)
        raise RedeployError('\n'.join(lines), self.finish())

    def aftermath(self):
        """What a failed run leaves in the database, and the command that undoes it."""
        r = self.result
        lines = []
        if r['applied']:
            lines.append('Migrations applied by this run stay applied: %s (migrations must be backward compatible).'
                         % ', '.join(r['applied']))
        if r['backup']:
            lines.append('%s restore the pre-%s backup: make restore BACKUP=%s CONFIRM=%s'
                         % ('To undo them,' if r['applied'] else 'Should the data need it,', self.action,
                            os.path.basename(r['backup']), self.conn.get('login_db') or 'the database'))
        return lines

    def do_migrate(self):
        p = self.params
        r = self.result
        with self.step('preflight') as entry:
            version = p['version'] or self.current_release()
            migrations_dir = os.path.join(self.release_dir(version) if version else p['current_link'],
                                          p['migrations_subdir'])
            r['from_version'] = r['to_version'] = version
            self.check_db()
            image = ((self.inspect(self.name) or {}).get('Config') or {}).get('Image')
            if p['migrations'] == 'command' and not image:
                raise _StepFailed('preflight', 'the bot container %s does not exist, so there is no image to run its '
                                  'migration command in; deploy first' % self.name)
            pending = self.pending(migrations_dir, image, same_image=False)
            r['pending'] = pending
            entry['outcome'] = 'ok: %s%s' % (self.describe_pending(pending), ' in %s' % migrations_dir
                                             if p['migrations'] == 'sql' else '')
        if not pending:
            r['msg'] = 'All migrations up to date'
            return
        r['changed'] = True
        if self.check_mode:
            r['msg'] = 'Would apply %d migration(s): %s' % (len(pending), ', '.join(pending))
            return
        if p['backup'] in ('always', 'when_migrations'):
            with self.step('backup') as entry:
                taken = self.backup('migrate', version or 'current')
                entry['outcome'] = 'ok: %s' % taken['path']
        else:
            self.skipped('backup', 'backup=never')
        with self.step('migrate') as entry:
            self.migrate_now(migrations_dir, image)
            entry['outcome'] = 'ok: applied %s' % ', '.join(r['applied'])
        r['msg'] = 'Applied %d new migration(s): %s' % (len(r['applied']), ', '.join(r['applied']))
        self.audit('migrate', 'success')
