# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The safe redeploy's database side (Redeployer's Migrations part): the database check, what the new version would
migrate by the migrations mode (sql with pg_migrate's logic, the bot's own command and its probe, none), the
rehearsal on a copy, applying them, and the verified pre-deploy backups."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from .backup import create_backup
from .backup_files import FAILURES as BACKUP_FAILURES
from .backup_files import SIDECAR_SUFFIX, describe_failure
from .backup_settings import make_settings
from .checks import check_database
from .deploy_common import LOG_TAIL, PRE_BACKUP, _StepFailed, argv_of, safe_name
from .migrate import Migrator
from .migrate import status as migration_status
from .migration_files import MigrationError
from .pg import ConnectError, connect
from .rehearsal import rehearse, retarget_env, write_private_copy


class Migrations:
    """Redeployer's migrations and backups (self.params, self.conn, self.result, self.action, self.step, ...)."""

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
        for _unused, path in found[keep:]:
            if path == newest:
                continue
            for victim in (path, path + SIDECAR_SUFFIX):
                try:
                    os.unlink(victim)
                except FileNotFoundError:
                    pass

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
