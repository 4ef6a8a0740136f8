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

Several bot hosts, one bot (issue 25): with `leader_state_file` (the soulnear-leader service's state) the host is a
standby unless its leader holds the bot lease, and every start - the new bot, the previous one after a failure, one
left by an interrupted run - happens only while it does (leader.may_start). A standby (or `standby: true`) gets the
new version ready without starting it: the container is created or replaced (stopped), the release and the history
switch, images are pruned; its pending migrations run only when no host runs the bot (a first deploy), otherwise
the active host's swap applies them between stopping and starting its bot.
Nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import os
import time

from . import audit, containers, defaults, lock
from . import leader as bot_leader
from .bot_container import BotContainer, container_options
from .deploy_common import (  # noqa: F401 - RedeployError and the helpers are this module's public names too
    CONFIG_LABEL, LOG_TAIL, PREVIOUS, RENEW_SECONDS, RedeployError, _StepFailed, argv_of, repository_of, state_of,
    version_of)
from .deploy_migrations import Migrations
from .pg import connection_argument_spec
from .releases import Releases

ACTIONS = ('deploy', 'rollback', 'migrate')
BACKUP_MODES = ('always', 'when_migrations', 'never')

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
    name=defaults.BOT_CONTAINER,
    image=None,
    image_name=None,
    version=None,
    releases_dir='/opt/soulnear/app/releases',
    current_link='/opt/soulnear/app/current',
    migrations='sql',
    migrations_subdir='database/migrations',
    migrations_table=defaults.MIGRATIONS_TABLE,
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
    stop_timeout=defaults.BOT_STOP_TIMEOUT,
    labels={},
    healthy_timeout=defaults.BOT_HEALTHY_TIMEOUT,
    rollback_timeout=300,
    settle_seconds=10.0,
    markers=DEFAULT_MARKERS,
    error_patterns=DEFAULT_ERROR_PATTERNS,
    conflicting_containers=[],
    db_container=None,
    backup='when_migrations',
    backup_dir=defaults.BACKUP_DIR,
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
    standby=False,
    leader_state_file=None,
)


class Redeployer(BotContainer, Releases, Migrations):
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
        self.standby, self.standby_reason = self.decide_standby()
        self.result.update(standby=self.standby, standby_reason=self.standby_reason)

    # -- several bot hosts, one bot ------------------------------------------------------------------------
    def decide_standby(self):
        """(standby, why): standby: true, or a leader state file whose leader does not hold the lease now."""
        p = self.params
        if p['standby']:
            return True, 'standby: true'
        if p['leader_state_file']:
            allowed, why = bot_leader.may_start(p['leader_state_file'])
            return (not allowed), why
        return False, None

    def start_refused(self):
        """Why no bot may start on this host now (its leader does not hold the lease), or None."""
        path = self.params['leader_state_file']
        if not path:
            return None
        allowed, why = bot_leader.may_start(path)
        return None if allowed else why

    def gate_start(self, step):
        """Under a leader, a bot starts only while this host holds the bot lease (with time to spare)."""
        path = self.params['leader_state_file']
        if not path:
            return
        allowed, why = bot_leader.may_start(path)
        if not allowed:
            raise _StepFailed(step, 'the bot was not started: %s. A bot runs only on the bot host that holds the '
                              'lease (soulnear-leader); make failover moves it' % why)

    def bot_runs_elsewhere(self):
        """The host that runs the bot, as this host's leader last saw the lease; None when no host does."""
        path = self.params['leader_state_file']
        state = bot_leader.read_state(path) if path else None
        if not state or not state.get('alive'):
            return None
        holder = state.get('holder')
        return holder if holder and holder != state.get('me') else None

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

    # -- waiting -----------------------------------------------------------------------------------------

    # -- the database -----------------------------------------------------------------------------------

    # -- releases and history -----------------------------------------------------------------------------

    # -- leftovers of an interrupted run ------------------------------------------------------------------

    # -- actions -------------------------------------------------------------------------------------------

    def run(self):
        p = self.params
        if p['leader_state_file'] and p['lock_path'] and not self.check_mode:
            # Several bot hosts, one bot: this host's leader leaves the bot to this run while it swaps it.
            with bot_leader.swapping(p['lock_path']):
                return self._run()
        return self._run()

    def _run(self):
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
        tags = [t for t, _created in self.image_tags()]
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
        if self.standby:
            self.ship_standby(version, image, run_image, image_id, config, migrations_dir, pending, current,
                              current_state, same)
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
        progress = dict(created=False, stopped=False, old_renamed=False, new_renamed=False, down_since=None)
        try:
            self.put_in_place(version, run_image, config, current_state, had_old, progress, 'the bot was not running')
            down_since = progress['down_since']
            if pending:
                self.migrate_step(migrations_dir, run_image)
            else:
                self.skipped('migrate', 'migrations: none' if self.params['migrations'] == 'none' else
                             'nothing pending')
            with self.step('start'):
                self.gate_start('start')
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
            self.rollback(exc, progress, had_old, old_running, progress['down_since'])
        self.switch_and_prune(version, run_image, image_id, progress)
        r['msg'] = ('%s %s -> %s: %s; %s' % (
            'Rolled back' if self.action == 'rollback' else 'Deployed', r['from_version'] or 'none', version,
            ('applied %s' % ', '.join(r['applied'])) if r['applied'] else 'no migrations',
            'downtime %.1fs' % r['downtime'] if r['downtime'] is not None else 'no bot was running before'))
        self.audit(self.action, 'success')

    def put_in_place(self, version, run_image, config, current_state, had_old, progress, idle):
        """Steps create and stop of a swap (and of a standby's): create the new container under next_name, stop the
        bot that runs (progress['down_since']: the moment the stop began) and rename the new container into the
        bot's name, the old one (if any) to prev_name; progress records each change for the undoing. idle: the stop
        step's outcome when no bot was running."""
        with self.step('create'):
            self.create(self.next_name, run_image, version, config)
            progress['created'] = True
        with self.step('stop') as entry:
            progress['down_since'] = self.clock()
            if current_state['running']:
                containers.stop(self.name, timeout=int(self.params['stop_timeout']))
                progress['stopped'] = True
            else:
                entry['outcome'] = 'ok: %s (%s)' % (idle, current_state['status'] if had_old else
                                                    'no bot container yet')
            if had_old:
                self.rename(self.name, self.prev_name)
                progress['old_renamed'] = True
            self.rename(self.next_name, self.name)
            progress['new_renamed'] = True

    def migrate_step(self, migrations_dir, image):
        with self.step('migrate') as entry:
            self.migrate_now(migrations_dir, image)
            entry['outcome'] = 'ok: applied %s' % (', '.join(self.result['applied']) or 'nothing')

    def switch_and_prune(self, version, run_image, image_id, progress):
        """Steps switch and prune after a swap (or a standby's) that succeeded: the previous container goes (when
        this run renamed it aside), the current link and the deploy record name the new version, old images and
        releases are pruned (a failed prune only warns)."""
        with self.step('switch'):
            if progress['old_renamed']:
                self.remove(self.prev_name)
            self.switch(version)
            self.record(version, run_image, image_id)
        with self.step('prune') as entry:
            try:
                self.prune(version)
            except (OSError, containers.DockerError) as exc:
                self.warn('pruning old images and releases failed: %s' % exc)
            entry['outcome'] = 'ok: kept %s' % ', '.join(self.result['kept_versions'])

    def rollback(self, failure, progress, had_old, old_running, down_since):
        """Put the previous bot back after a failure at or after stopping it, then raise the failure for people."""
        r = self.result
        tail = []
        if progress['new_renamed'] and self.inspect(self.name) is not None:
            tail = self.logs(self.name, tail=LOG_TAIL).splitlines()
        r['log_tail'] = tail
        restored = None
        rollback_error = None
        try:
            with self.step('rollback') as entry:
                self.remove(self.name if progress['new_renamed'] else self.next_name)
                if progress['old_renamed']:
                    self.rename(self.prev_name, self.name)
                held_elsewhere = self.start_refused() if had_old and old_running else None
                if held_elsewhere:
                    restored = 'standby'
                    entry['outcome'] = 'ok: the previous bot was kept stopped: %s' % held_elsewhere
                elif had_old and old_running:
                    containers.start(self.name)
                    # Its own, longer wait: the previous bot was healthy minutes ago; a loaded host must not turn a
                    # slow start into "ROLLBACK FAILED".
                    ready = self.wait_ready(self.name, 'rollback', scan=False,
                                            timeout=max(float(self.params['rollback_timeout']),
                                                        float(self.params['healthy_timeout']))) or self.clock()
                    r['downtime'] = round(ready - down_since, 3)
                    restored = True
                    entry['outcome'] = 'ok: %s runs %s again and is healthy' % (self.name, r['from_version'])
                elif not held_elsewhere:
                    restored = None
                    entry['outcome'] = 'ok: no previous bot was running; none started'
            r['rolled_back'] = True
        except _StepFailed as exc:
            restored = False
            rollback_error = exc.reason
        r['failed_step'] = failure.step
        what = 'Deploy' if self.action == 'deploy' else 'Rollback'
        lines = ['%s of %s failed at step %s: %s.' % (what, r['to_version'], failure.step, failure.reason)]
        if restored == 'standby':
            lines.append('The previous container (%s) is back but was not started: %s.' % (
                r['from_version'], self.start_refused() or 'this host does not hold the bot lease'))
        elif restored:
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
                   failure.step)  # 'standby' counts as rolled back: the previous container is back, stopped
        raise RedeployError('\n'.join(lines), self.finish())

    def ship_standby(self, version, image, run_image, image_id, config, migrations_dir, pending, current,
                     current_state, same):
        """This host stands by: the version is made ready - container created or replaced and never started, the
        release switched - and pending migrations run only when no host runs the bot."""
        p, r = self.params, self.result
        elsewhere = self.bot_runs_elsewhere()
        migrate_here = bool(pending) and not elsewhere
        why_not = 'the active bot host (%s) applies them in its swap' % elsewhere if elsewhere else 'nothing pending'
        if same and not migrate_here:
            relinked = self.current_release() != version
            if relinked and not self.check_mode:
                self.switch(version)
            r['changed'] = relinked
            r['msg'] = ('Standby (%s): %s holds %s with this configuration, %s; nothing to do%s'
                        % (self.standby_reason, self.name, version, current_state['status'] or 'no container',
                           ' (current link switched to it)' if relinked else ''))
            return
        r['changed'] = True
        if self.check_mode:
            would = [] if same else ['create %s for %s (not started)' % (self.name, version)]
            if current_state['running']:
                would.insert(0, 'stop %s (a standby\'s bot must not run)' % self.name)
            if migrate_here:
                would.append('back up the database and apply %d migration(s): %s' % (len(pending),
                                                                                     ', '.join(pending)))
            for name in ('create', 'stop', 'migrate', 'switch'):
                self.steps.append(dict(name=name, duration=0.0, outcome='would run'))
            r['msg'] = 'Would prepare %s as the standby bot (%s): %s' % (version, self.standby_reason,
                                                                         '; '.join(would) or 'switch the release')
            return
        kind = 'rollback' if self.action == 'rollback' else 'deploy'
        if migrate_here and (p['backup'] == 'always' or p['backup'] == 'when_migrations'):
            with self.step('backup') as entry:
                taken = self.backup(kind, version)
                entry['outcome'] = 'ok: %s' % taken['path']
        else:
            self.skipped('backup', 'standby, %s' % why_not if pending else 'nothing pending')
        if image != run_image:
            containers.run(['tag', image, run_image])
        had_old = current is not None
        progress = dict(created=False, stopped=False, old_renamed=False, new_renamed=False, down_since=None)
        try:
            if same:
                self.skipped('create', 'the container already holds %s with this configuration' % version)
            else:
                self.put_in_place(version, run_image, config, current_state, had_old, progress, 'not running')
            if migrate_here:
                self.migrate_step(migrations_dir, run_image)
            else:
                self.skipped('migrate', why_not)
            self.skipped('start', 'standby: soulnear-leader starts the bot when this host takes the lease')
        except _StepFailed as exc:
            if progress['new_renamed'] and self.inspect(self.name) is not None:
                r['log_tail'] = self.logs(self.name, tail=LOG_TAIL).splitlines()
            self.remove(self.name if progress['new_renamed'] else self.next_name)
            if progress['old_renamed']:
                self.rename(self.prev_name, self.name)
            r['failed_step'] = exc.step
            self.audit(self.action, 'failed', exc.step)
            lines = ['Standby %s of %s failed at step %s: %s.' % (kind, version, exc.step, exc.reason),
                     'The standby keeps its previous container (%s), stopped.' % (r['from_version'] or 'none')]
            lines += self.aftermath()
            raise RedeployError('\n'.join(lines), self.finish()) from None
        self.switch_and_prune(version, run_image, image_id, progress)
        r['msg'] = ('Standby (%s): %s -> %s ready, not started (soulnear-leader starts it when this host takes the '
                    'lease); %s' % (self.standby_reason, r['from_version'] or 'none', version,
                                    ('applied %s' % ', '.join(r['applied'])) if r['applied'] else
                                    'migrations: %s' % why_not))
        self.audit(self.action, 'success')

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
