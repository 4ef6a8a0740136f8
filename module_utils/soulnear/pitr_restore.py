# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore the database to a point in time (or to the latest archived commit) from pgBackRest (issue 13).

restore() - what `make restore TIME='2026-11-29 14:05:00+00' CONFIRM=soul_bot` runs through the pg_pitr module:

1. refuse: without the confirmation naming the database; a TIME without a zone; a target before the oldest
   backup or after the last archived commit (the available range is in the message); nothing is touched.
2. the bot stops. When the running server is this cluster (the repositories' system identifier), a commit is
   written first (a recovery to a time stops at the first commit after it), then the server stops cleanly, which
   archives every finished WAL segment; one that could not be archived stops the restore (the data it holds is
   only on this disk), and everything is started again.
3. pgbackrest restore into a NEW volume (<volume>__pitr_<time>) in a throwaway container of the database's image.
4. the volumes change places: the current data directory moves to <volume>__pre_pitr_<time> (kept until the
   operator drops it; the result names the command), the restored one into the database's volume - two renames
   of the volumes' directories on the host, so nothing is copied and the container keeps its volume name.
5. PostgreSQL starts on it, replays the archived WAL up to the target and promotes (a new timeline); the module
   waits for that, reads the time of the last transaction it replayed, removes the recovery settings pgBackRest
   wrote (restarting once more when a target time's postmaster settings were among them), and records the
   restored database with the data-loss guard.
6. the bot starts again and must become healthy.

A failure before step 4 leaves the live data as it was (the new volume is removed, the server and the bot are
started again). A recovery that fails in step 5 (PostgreSQL exits, or does not promote in time) puts the previous
data directory back and starts it and the bot, keeping the failed attempt's volume for inspection.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os
import time

from . import containers, defaults, guard
from .files import disk_usage, human
from .pg import ConnectError, connect, psycopg2
from .pitr import DEFAULTS as PITR_DEFAULTS
from .pitr import (
    FAILURES, LATEST, PitrError, Runner, cluster_identity, describe_failure, describe_window, info, last_commit,
    null_log, parse_target, pgbackrest, repositories, show, utc, waiting_segments, window)

# What pgBackRest writes into postgresql.auto.conf for a restore; removed once the server has promoted.
RECOVERY_SETTINGS = ('restore_command', 'recovery_target_time', 'recovery_target_action', 'recovery_target',
                     'recovery_target_timeline', 'recovery_target_inclusive')


def _stamp():
    return datetime.datetime.now().strftime('%Y%m%d_%H%M%S')


def _volume_data(volume):
    """The volume's directory on the host (its _data); raises when Docker does not know it."""
    mount = containers.volume_mountpoint(volume)
    if not mount:
        raise PitrError('the Docker volume %s does not exist' % volume)
    return mount


def _create_volume(name, like=None):
    containers.run(['volume', 'create', '--label', 'soulnear.component=database-data', name])
    path = _volume_data(name)
    if like is not None and os.path.isdir(like):
        st = os.stat(like)
        os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, st.st_mode & 0o7777)
    return path


def _remove_volume(name):
    path = containers.volume_mountpoint(name)
    if path and not os.path.isdir(path):
        os.makedirs(path, mode=0o700)  # Docker removes the directory it made; put it back for it
    containers.run(['volume', 'rm', '-f', name], check=False)


def _choose(windows, when, repo, live_until):
    """(repository key, its window) for the target, or raise with the available range."""
    usable = dict((k, w) for k, w in windows.items() if w is not None)
    if repo is not None:
        if int(repo) not in windows:
            raise PitrError('repo%s is not configured; the repositories are %s. Nothing was changed'
                            % (repo, ', '.join('repo%d' % k for k in sorted(windows))))
        if usable.get(int(repo)) is None:
            raise PitrError('repo%s holds no physical backup. Nothing was changed' % repo)
        usable = {int(repo): usable[int(repo)]}
    if not usable:
        raise PitrError('no repository holds a physical backup, so there is nothing to restore from (the first one '
                        'is taken by the deploy; soulnear-backup pitr-backup --type full takes one now). Nothing was '
                        'changed')
    if when is None:
        # latest: the repository whose archive reaches furthest (repo1 on a tie).
        key = sorted(usable, key=lambda k: (usable[k]['archive_max'] or '', -k))[-1]
        return key, usable[key]
    for key in sorted(usable):
        win = usable[key]
        end = max([t for t in (win['end'], live_until) if t is not None] or [win['start']])
        if win['start'] <= when <= end:
            return key, win
    ranges = '; '.join(describe_window(usable[k], k) for k in sorted(usable))
    if live_until is not None:
        ranges += ' (the running server archives its newer commits when it stops, so up to %s)' % show(live_until)
    raise PitrError('%s is outside the recovery window: %s. Choose a time inside it (make backups lists it), or '
                    'TIME=latest. Nothing was changed' % (show(when), ranges))


def _live(settings, runner, repos):
    """The running server, if it answers: {system_id, ours (the repositories hold this cluster), in_recovery}."""
    if not runner.running:
        return None
    try:
        system_id, in_recovery = cluster_identity(settings)
    except ConnectError:
        return None
    ids = set(r['system_id'] for r in repos.values() if r['system_id'])
    return dict(system_id=system_id, ours=system_id in ids, in_recovery=bool(in_recovery))


def _write_marker(settings):
    """One commit now, so a recovery to a time before it has a commit to stop at (PostgreSQL ends a recovery to a
    time at the first commit after it, and fails when the archive holds none)."""
    conn = connect(dict(settings['conn'], retries=1), application_name='soulnear pitr')
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT txid_current()')
    finally:
        conn.close()


def _start_container(name):
    try:
        containers.start(name)
    except containers.DockerError as exc:
        return str(exc)
    return None


def _server_log_tail(runner, lines=15):
    """The last lines of PostgreSQL's log that say why a recovery stopped (FATAL, PANIC, recovery)."""
    found = []
    log_dir = runner.bind_source('/var/log/postgresql')
    path = os.path.join(log_dir, 'postgresql.log') if log_dir else None
    try:
        if path and os.path.exists(path):
            with open(path, 'rb') as handle:
                handle.seek(max(0, os.path.getsize(path) - 65536))
                found = handle.read().decode('utf-8', 'replace').splitlines()
    except OSError:
        found = []
    proc = containers.run(['logs', '--tail', '60', runner.container], check=False, timeout=30)
    found += (proc.stdout + proc.stderr).decode('utf-8', 'replace').splitlines()
    keep = [line.strip() for line in found if any(w in line for w in ('FATAL', 'PANIC', 'recovery', 'ERROR'))]
    return keep[-lines:]


def _wait_promoted(settings, runner, timeout, log):
    """Until the restored server has replayed its WAL and promoted; returns (seconds, last replayed commit time,
    timeline). Raises when the server exits, crash-loops or is still recovering at the deadline."""
    started = time.time()
    deadline = started + timeout
    container = settings['container']
    restarts = containers.inspect(container).get('RestartCount', 0)
    last_note = 0
    params = dict(settings['conn'], retries=0, connect_timeout=5)
    while True:
        state = containers.inspect(container) or {}
        status = (state.get('State') or {}).get('Status')
        if status in ('exited', 'dead') or (state.get('State') or {}).get('Restarting') \
                or int(state.get('RestartCount') or 0) > restarts:
            raise PitrError('PostgreSQL stopped during the recovery (container %s: %s): %s'
                            % (container, status, ' | '.join(_server_log_tail(runner)) or 'see make logs-db'))
        try:
            conn = connect(params, application_name='soulnear pitr')
        except ConnectError as exc:
            conn = None
            waiting = str(exc)
        if conn is not None:
            try:
                with conn.cursor() as cur:
                    cur.execute('SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp(), '
                                'timeline_id FROM pg_control_checkpoint()')
                    in_recovery, replayed, timeline = cur.fetchone()
            except psycopg2.Error as exc:
                in_recovery, replayed, timeline, waiting = True, None, None, str(exc)
            finally:
                conn.close()
            if not in_recovery:
                return round(time.time() - started, 1), replayed, timeline
            waiting = 'replaying WAL (last replayed commit %s)' % (show(replayed) if replayed else 'none yet')
        if time.time() >= deadline:
            raise PitrError('the restored server has not finished its recovery within %d s (%s)%s. Fix: a long '
                            'recovery needs more time (recovery_timeout); look at make logs-db'
                            % (timeout, waiting, ': ' + ' | '.join(_server_log_tail(runner, 5))))
        if time.time() - last_note > 30:
            log('waiting for the recovery: %s' % ' '.join(waiting.split())[:200])
            last_note = time.time()
        time.sleep(0.25)


def _finish_recovery(settings):
    """Remove pgBackRest's recovery settings from postgresql.auto.conf (they do nothing after the promotion, but
    the next restore should not find them) and reload. Returns (the names removed, those of postmaster context:
    the server keeps their values until it restarts, and reports them as pending a restart meanwhile)."""
    conn = connect(dict(settings['conn'], retries=2), application_name='soulnear pitr')
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf' "
                        "AND name = ANY(%s)", (list(RECOVERY_SETTINGS),))
            names = [row[0] for row in cur.fetchall()]
            for name in names:
                cur.execute('ALTER SYSTEM RESET %s' % name)
            if names:
                cur.execute('SELECT pg_reload_conf()')
            cur.execute("SELECT name FROM pg_settings WHERE name = ANY(%s) AND context = 'postmaster'", (names,))
            postmaster = sorted(row[0] for row in cur.fetchall())
        return names, postmaster
    finally:
        conn.close()


def _restored_progress(settings):
    """(next 64-bit transaction id, archive_timeout in seconds) of the restored server, before anything writes."""
    conn = connect(dict(settings['conn'], retries=2), application_name='soulnear pitr')
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
                        "(SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout')")
            return cur.fetchone()
    finally:
        conn.close()


def recovery_point(recovered_to, archive_end, next_xid, record, system_id, timeline, archive_timeout,
                   slack=PITR_DEFAULTS['archive_slack_seconds']):
    """Did a restore to latest bring back what it should? Two proofs:

    - the archive: the last commit it replayed (recovered_to) is the last commit in the repository's archived WAL
      (archive_end); an earlier one means the recovery stopped at a gap or a damaged segment;
    - the data-loss guard's record of the lost server (the monitor samples its next transaction id every run, and
      when it was last seen): every transaction it had begun more than archive_timeout + slack before it was last
      seen must be back - the promise of point-in-time recovery. Samples of another cluster or timeline say nothing.

    Returns dict(ok, problems, recovered_to, archive_last_commit, last_seen, ...): times as text."""
    found = dict(ok=True, problems=[], recovered_to=show(recovered_to) if recovered_to else None,
                 archive_last_commit=show(archive_end) if archive_end else None, next_xid=next_xid, last_seen=None,
                 promised_before=None, expected_next_xid=None)
    if archive_end is not None and (recovered_to is None or recovered_to < archive_end - datetime.timedelta(
            seconds=1)):
        found['problems'].append(
            'the recovery stopped at %s, before the last commit in the archive (%s): WAL in between is missing or '
            'damaged in the repository (pgbackrest verify; the PostgreSQL log names the segment)'
            % (found['recovered_to'] or 'the end of the backup', found['archive_last_commit']))
    record = record or {}
    samples = [s for s in record.get('progress') or [] if s[1] == system_id and s[2] == timeline]
    seen = record.get('recorded_at') if record.get('system_identifier') == system_id else None
    if seen and samples and next_xid is not None and archive_timeout:
        promised = float(seen) - float(archive_timeout) - float(slack)
        before = [s for s in samples if s[0] <= promised]
        found.update(last_seen=show(utc(seen)), promised_before=show(utc(promised)))
        if before:
            expected = int(before[-1][3])
            found['expected_next_xid'] = expected
            if int(next_xid) < expected:
                found['problems'].append(
                    'transactions the database had begun by %s are missing: it was last seen at %s, so every commit '
                    'older than archive_timeout (%d s) + %.0f s before that must be back, but the restored server '
                    'continues at transaction %d where it had reached %d then. Their WAL never reached the '
                    'repository (WAL archiving stalled; see the health report\'s wal_archiving check)'
                    % (show(utc(before[-1][0])), found['last_seen'], archive_timeout, slack, int(next_xid), expected))
    found['ok'] = not found['problems']
    return found


def _record_guard(settings, reason, log):
    """The data-loss guard records the restored database and lowers its flag (like a completed pg_restore)."""
    return guard.accept_restored(
        settings.get('data_guard_file'),
        lambda: connect(dict(settings['conn'], retries=2), application_name='soulnear pitr'),
        settings['conn'].get('login_db'), list(defaults.REQUIRED_TABLES), 'pg_pitr', reason, log,
        errors=(ConnectError,))


def plan(settings, target=LATEST, repo=None, runner=None):
    """Everything restore() decides before it touches anything: the target, the repositories and their windows,
    the chosen repository and backup, the running server. Raises (nothing changed) when the target is outside."""
    when = parse_target(target)
    runner = runner or Runner(settings['container'], settings['exec_user'])
    if not runner.volume:
        raise PitrError('the database container %s has no data volume at /var/lib/postgresql/data; nothing was '
                        'changed' % settings['container'])
    repos = repositories(info(settings, runner))
    live = _live(settings, runner, repos)
    now = datetime.datetime.now(datetime.timezone.utc)
    if when is not None and when > now:
        raise PitrError('%s is in the future (now %s): nothing after the last archived commit can be restored. '
                        'Nothing was changed' % (show(when), show(now)))
    # The end of a window (the last archived commit, read with pg_waldump) only decides a restore to a time;
    # latest takes the archive that reaches furthest.
    windows = dict((k, window(settings, runner, r, exact=when is not None)) for k, r in repos.items())
    live_until = now if live and live['ours'] and not live['in_recovery'] else None
    key, win = _choose(windows, when, repo, live_until)
    return dict(target=when, target_text=show(when) if when else LATEST, repo=key, window=win, windows=windows,
                repositories=repos, live=live, runner=runner)


def restore(settings, target=LATEST, confirm=None, repo=None, check_mode=False, log=null_log):
    """Restore the database to target (an aware time, its text, or latest); see the module docstring."""
    started = time.time()
    live_db = settings['conn'].get('login_db')
    if confirm != live_db:
        raise PitrError('a point-in-time restore replaces the whole database server of %s (every database in it) '
                        'with its state at %s; confirm it by passing confirm=%s (you passed %s). Nothing was changed'
                        % (live_db, target or LATEST, live_db, 'nothing' if confirm in (None, '') else repr(confirm)))
    job = _Restore(settings, plan(settings, target, repo), log, started)
    if check_mode:
        return job.would()
    job.check_space()
    try:
        job.stop_services()
        job.restore_files()
        job.swap()
        job.recover()
    except BaseException as exc:
        job.failed(exc)
        raise
    finally:
        _start_bot(settings, job.result, log)
    return job.finish()


class _Restore:
    """One restore's state through its phases (restore() calls them in order)."""

    def __init__(self, settings, decided, log, started):
        self.settings, self.decided, self.log, self.started = settings, decided, log, started
        self.runner, self.when, self.win = decided['runner'], decided['target'], decided['window']
        self.live_db = settings['conn'].get('login_db')
        try:
            # The lost server's last known progress (the monitor's samples), read before the restore rewrites it.
            self.guard_record = guard.entry(settings['data_guard_file'], self.live_db) \
                if settings.get('data_guard_file') else None
        except guard.GuardError as exc:
            self.guard_record = None
            log('the data-loss guard record cannot be read, so the recovery point is checked against the archive '
                'only: %s' % exc)
        self.volume, stamp = self.runner.volume, _stamp()
        self.new_volume = '%s__pitr_%s' % (self.volume, stamp)
        self.kept_volume = '%s__pre_pitr_%s' % (self.volume, stamp)
        self.backup = self.win['newest_backup'] if self.when is None else \
            ([b for b in decided['repositories'][decided['repo']]['backups'] if utc(b['stop']) <= self.when] or
             [self.win['newest_backup']])[-1]
        self.result = dict(
            changed=True, database=self.live_db, target=decided['target_text'], repo=decided['repo'],
            backup=self.backup['label'], backup_type=self.backup['type'],
            window=dict((k, None if w is None else dict(
                start=show(w['start']), end=show(w['end']) if w['end'] else 'archived WAL up to %s' % (
                    w['archive_max'] or 'none'))) for k, w in decided['windows'].items()),
            volume=self.volume, kept_volume=None, restored_volume=None, recovered_to=None, timeline=None,
            recovery_point=None, steps={},
            bot=dict(container=settings['bot_container'] or None, was_running=False, stopped=False, started=False))
        self.db_was_running = self.runner.running
        self.swapped = self.put_back = False
        self.data_dir = self.kept_dir = None
        self.archive = {}
        self.replayed = None
        log('target %s from repo%d (backup %s, %s); window %s' % (
            self.result['target'], decided['repo'], self.backup['label'], self.backup['type'],
            describe_window(self.win)))

    def step(self, name, since):
        self.result['steps'][name] = round(time.time() - since, 3)

    def would(self):
        self.result.update(changed=False, duration=round(time.time() - self.started, 3), msg=(
            'Would restore %s to %s from repo%d (backup %s), keeping the current data as volume %s' % (
                self.live_db, self.result['target'], self.decided['repo'], self.backup['label'], self.kept_volume)))
        return self.result

    def check_space(self):
        need = int((self.backup.get('size') or 0) * float(self.settings['space_margin']))
        free = disk_usage(os.path.dirname(_volume_data(self.volume)))['free']
        if need and free < need:
            raise PitrError('not enough free space for the restored copy next to the current data: %s free on the '
                            'disk of the Docker volumes, about %s needed (the backup\'s database size x %s); nothing '
                            'was changed' % (human(free), human(need), self.settings['space_margin']), self.result)
        self.data_dir = _volume_data(self.volume)

    def stop_services(self):
        """The bot stops; the live server (when it runs) writes a marker commit for a restore to a time and stops
        cleanly, which archives its last segments; a segment that could not be archived stops the restore."""
        settings, result, when, live = self.settings, self.result, self.when, self.decided['live']
        bot = settings['bot_container'] or None
        bot_state = containers.container_state(bot) if bot else None
        result['bot']['was_running'] = bool(bot_state and bot_state['running'])
        if result['bot']['was_running']:
            self.log('stopping the bot (%s)' % bot)
            since = time.time()
            containers.stop(bot, timeout=settings['bot_stop_timeout'])
            result['bot'].update(stopped=True, stopped_at=time.time())
            self.step('stop_bot', since)
        if self.db_was_running:
            since = time.time()
            if live and live['ours'] and not live['in_recovery'] and when is not None:
                _write_marker(settings)
            self.log('stopping the database server cleanly (it archives its last WAL segments)')
            containers.stop(settings['container'], timeout=settings['db_stop_timeout'])
            self.step('stop_database', since)
        if live and live['ours']:
            ready = waiting_segments(self.volume)
            if ready and when is None:
                raise PitrError('%d WAL segment(s) of the stopped server could not be archived (WAL archiving '
                                'fails: see the health report): their commits are only on this disk, and a '
                                'restore to the latest archived commit would lose them. Fix archiving first; '
                                'nothing was changed' % ready, result)
            if ready:
                # Only the segments after the last archived one are missing: the target must lie before them.
                stopped = Runner(settings['container'], settings['exec_user'])
                refreshed = window(settings, stopped, repositories(info(settings, stopped))[self.decided['repo']])
                if refreshed['end'] is None or when > refreshed['end']:
                    raise PitrError('%s lies after the last archived commit (%s): %d WAL segment(s) of the stopped '
                                    'server could not be archived. Fix WAL archiving, or choose an earlier time; '
                                    'nothing was changed' % (show(when), show(refreshed['end']), ready), result)

    def restore_files(self):
        """pgbackrest restore into a new volume (the end of the archive read first, for a restore to latest)."""
        settings, when = self.settings, self.when
        self.archive = _archive_end(settings, self.decided['repo'], self.log) if when is None else {}
        since = time.time()
        self.log('restoring into the new volume %s' % self.new_volume)
        _create_volume(self.new_volume, like=self.data_dir)
        self.result['restored_volume'] = self.new_volume
        args = ['--repo=%d' % self.decided['repo']]
        args += ['--type=time', '--target=%s' % show(when), '--target-action=promote'] if when else ['--type=default']
        helper = Runner(settings['container'], settings['exec_user'])
        pgbackrest(settings, helper, args + ['restore'], volume=self.new_volume, what='restore')
        self.step('restore_files', since)

    def swap(self):
        """The volumes change places: two renames on the host, nothing copied."""
        since = time.time()
        previous = os.listdir(self.data_dir)
        if previous:
            self.kept_dir = _create_volume(self.kept_volume)
            os.rename(self.data_dir, self.kept_dir)  # replaces the new volume's empty directory
            self.result['kept_volume'] = self.kept_volume
        else:
            os.rmdir(self.data_dir)
        os.rename(_volume_data(self.new_volume), self.data_dir)
        self.swapped = True
        _remove_volume(self.new_volume)
        self.result['restored_volume'] = None
        self.log('the restored data is in %s%s' % (self.volume, '; the previous data is kept as volume %s'
                                                   % self.kept_volume if previous else ''))
        self.step('swap', since)

    def recover(self):
        """PostgreSQL replays and promotes (the previous data put back when it cannot); the recovery point proved
        for a restore to latest; the recovery settings removed; the guard records the restored database."""
        settings, result = self.settings, self.result
        since = time.time()
        containers.start(settings['container'])
        try:
            seconds, replayed, timeline = _wait_promoted(settings, self.runner, int(settings['recovery_timeout']),
                                                         self.log)
        except FAILURES as exc:
            _put_back(settings, self.volume, self.data_dir, self.kept_dir, self.new_volume, result, self.log)
            self.swapped, self.put_back = False, True  # the failed attempt's volume stays for inspection
            raise PitrError('the recovery to %s failed: %s. The previous data is back in %s and started again; the '
                            'failed attempt is kept as volume %s' % (result['target'], describe_failure(exc),
                                                                     self.volume, self.new_volume), result) from None
        result.update(recovered_to=show(replayed) if replayed else None, timeline=timeline)
        self.step('recovery', since)
        self.log('recovered%s and promoted (timeline %s) in %.1f s' % (
            ' to %s' % result['recovered_to'] if replayed else '', timeline, seconds))
        if self.when is None:
            next_xid, archive_timeout = _restored_progress(settings)
            result['recovery_point'] = recovery_point(
                replayed, self.archive.get('end'), next_xid, self.guard_record, self.archive.get('system_id'),
                self.archive.get('timeline'), archive_timeout)
            result['recovery_point'].update(archive_last_segment=self.archive.get('segment'))
            for problem in result['recovery_point']['problems']:
                self.log('RECOVERY POINT BEHIND: %s' % problem)
        result['reset_settings'], postmaster = _finish_recovery(settings)
        if postmaster:
            # recovery_target_time and recovery_target_action hold until a restart: one now, while the bot is
            # stopped, rather than an unexplained one at the next deploy (pg_server would see them pending).
            since = time.time()
            self.log('restarting PostgreSQL once to drop %s' % ', '.join(postmaster))
            containers.restart(settings['container'], timeout=settings['db_stop_timeout'])
            _wait_promoted(settings, self.runner, 120, self.log)
            self.step('restart', since)
        result['data_guard'] = _record_guard(settings, 'point-in-time restore of %s to %s (repo%d, backup %s) '
                                             'completed' % (self.live_db, result['target'], self.decided['repo'],
                                                            self.backup['label']), self.log)

    def failed(self, exc):
        """Before the swap: the new volume goes and the server starts again. A failure that is not one of ours is
        said with what became of the live data."""
        if not self.swapped and not self.put_back:
            _cleanup_before_swap(self.settings, self.result, self.db_was_running, self.log)
        if isinstance(exc, FAILURES) and not isinstance(exc, PitrError):
            raise PitrError('%s. %s' % (describe_failure(exc), 'The live data was not changed' if not self.swapped
                                        else 'The restored data is in place'), self.result) from None

    def finish(self):
        result = self.result
        result['duration'] = round(time.time() - self.started, 3)
        if result['kept_volume']:
            result['drop_previous_command'] = 'docker volume rm %s' % result['kept_volume']
        result['msg'] = ('Restored %s to %s from repo%d (backup %s) in %.1f s: recovered to the commit of %s, '
                         'timeline %s' % (self.live_db, result['target'], self.decided['repo'], self.backup['label'],
                                          result['duration'], result['recovered_to'] or 'the backup\'s end',
                                          result['timeline']))
        point = result.get('recovery_point')
        if point is not None and point['ok']:
            result['msg'] += ('; the last commit in the archive (%s) is back%s' % (
                point['archive_last_commit'] or 'none', ', and every transaction begun by %s (archive_timeout + '
                'slack before the database was last seen, %s)' % (point['promised_before'], point['last_seen'])
                if point['expected_next_xid'] is not None else ''))
        elif point is not None:
            result['msg'] = ('RESTORED, BUT COMMITS THAT POINT-IN-TIME RECOVERY PROMISES ARE MISSING: %s. %s'
                             % ('; '.join(point['problems']), result['msg']))
        if result['bot']['started']:
            result['msg'] += '; the bot runs again'
        if result['kept_volume']:
            result['msg'] += ('; the previous data is kept as volume %s (drop it once the restored data is '
                              'confirmed good: %s)' % (result['kept_volume'], result['drop_previous_command']))
        return result


def _archive_end(settings, repo, log):
    """The repository's archive as a restore to latest should reach it: its last commit (pg_waldump over the newest
    segments), newest segment, timeline and cluster. Read after the live server stopped (it archives its last
    segments then) and before the restore; {} when it cannot be read (the restore goes on, its report says so)."""
    try:
        runner = Runner(settings['container'], settings['exec_user'])
        found = repositories(info(settings, runner))[repo]
        end, _segment = last_commit(settings, runner, found)
    except FAILURES as exc:
        log('the end of the archive could not be read (%s): the recovery point is not checked against it'
            % describe_failure(exc))
        return {}
    segment = found.get('archive_max')
    return dict(end=end, segment=segment, system_id=found.get('system_id'),
                timeline=int(segment[:8], 16) if segment else None)


def _cleanup_before_swap(settings, result, db_was_running, log):
    """A failure before the volumes changed places: remove the new volume, start the server again."""
    if result.get('restored_volume'):
        _remove_volume(result['restored_volume'])
        result['restored_volume'] = None
    if db_was_running:
        problem = _start_container(settings['container'])
        log('started the database again' if problem is None else 'could not start the database again: %s' % problem)


def _put_back(settings, volume, data_dir, kept_dir, failed_volume, result, log):
    """A recovery that failed after the swap: the failed data goes to failed_volume, the previous one comes back."""
    containers.run(['stop', '-t', str(int(settings['db_stop_timeout'])), settings['container']], check=False,
                   timeout=int(settings['db_stop_timeout']) + 30)
    failed_dir = _create_volume(failed_volume)
    os.rename(data_dir, failed_dir)
    if kept_dir:
        os.rename(kept_dir, data_dir)
        _remove_volume(result['kept_volume'])
        result['kept_volume'] = None
    else:
        os.makedirs(data_dir, mode=0o700)
    result['restored_volume'] = failed_volume
    problem = _start_container(settings['container'])
    if problem is None:
        try:  # serving again before the failure is reported, not only started
            _wait_promoted(settings, Runner(settings['container'], settings['exec_user']), 120, log)
        except FAILURES as exc:
            problem = 'it does not answer yet: %s' % describe_failure(exc)
    log('put the previous data back and started the database%s' % ('' if problem is None else ': %s' % problem))


def _start_bot(settings, result, log):
    bot = result['bot']
    if not bot['stopped'] or bot['started']:
        return
    log('starting the bot (%s)' % bot['container'])
    problem = _start_container(bot['container'])
    if problem is None:
        problem = containers.wait_ready(bot['container'], int(settings['bot_healthy_timeout']))
    bot['started'] = problem is None
    bot['downtime'] = round(time.time() - bot.get('stopped_at', time.time()), 1)
    if problem:
        bot['problem'] = problem
        log('the bot did not come back: %s (make logs-bot)' % problem)
