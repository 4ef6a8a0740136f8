# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The major upgrade's way back, and the confirm that closes it (upgrade.py runs the upgrade itself):
_cleanup_before_swap (an attempt that failed or was killed before the volumes changed places), _writes_since_baseline
(what the new cluster took since the switch), _put_back (the old data, container and image back), rollback() and
confirm_upgrade() - the operator's `make upgrade-postgres-rollback` and `make upgrade-postgres-confirm`.

Nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import time

from . import containers, guard, pitr
from .pg import ConnectError
from .upgrade_host import (
    _DATABASES, _WRITES, CONFIRMED, COPYING, ROLLED_BACK, UPGRADED, UpgradeError, _connect, _create_volume, _docker,
    _now_text, _operation_lock, _pg_version_of, _pitr_settings, _remove_container, _remove_volume, _require_confirm,
    _result_of, _rows, _stamp, _volume_dir, _volume_exists, _wait_accepting, _wait_connect, load_state, null_log,
    save_state)


def _cleanup_before_swap(settings, state, log):
    """A failure (or a killed run) before the volumes changed places: the helpers and the new volume go, the old
    server and the bot run again. The live data was never touched."""
    for name in (state.get('source_container'), state.get('staging_container')):
        if name and containers.inspect(name) is not None:
            containers.run(['stop', '-t', str(int(settings['db_stop_timeout'])), name], check=False,
                           timeout=int(settings['db_stop_timeout']) + 30)
            _remove_container(name)
    if state.get('staging_volume') and _volume_exists(state['staging_volume']):
        _remove_volume(state['staging_volume'])
    container = state.get('container')
    if container and not containers.container_state(container)['running']:
        containers.start(container)
        log('started PostgreSQL %s again' % state.get('from_version'))
    bot = settings['bot_container']
    if bot and state.get('bot_was_running') and not containers.container_state(bot)['running']:
        containers.start(bot)
        problem = containers.wait_ready(bot, settings['bot_healthy_timeout'], interval=0.5)
        log('started the bot again' + (': %s' % problem if problem else ''))


def _writes_since_baseline(settings, state):
    """What the new cluster took since the baseline (read in it before anything else could connect): dict(count
    (rows written plus schema changes; None when it cannot be told), databases {db: what}, summary)."""
    baseline = state.get('baseline') or {}
    info = containers.inspect(state['container'])
    runs_new = info is not None and (info.get('Config') or {}).get('Image') == state.get('new_image')
    if not baseline or not runs_new:
        return dict(count=0, databases={}, summary='the new cluster never served')
    if not (info.get('State') or {}).get('Running'):
        if not state.get('writes_resumed_at'):
            return dict(count=0, databases={}, summary='the new server never accepted a connection')
        return dict(count=None, databases={}, summary='the new server accepted connections and is stopped now, so '
                    'what it took cannot be counted (start it to count)')
    try:
        conn = _connect(settings, retries=1, timeout=5)
    except ConnectError:
        if not state.get('writes_resumed_at'):
            return dict(count=0, databases={}, summary='the new server never accepted a connection')
        return dict(count=None, databases={}, summary='the new server does not answer, so its writes cannot be '
                    'counted')
    try:
        databases = [r[0] for r in _rows(conn, _DATABASES)]
    finally:
        conn.close()
    changes = {}
    count = 0
    for db in sorted(set(databases) | set(baseline)):
        if db not in baseline:
            changes[db] = 'created after the upgrade'
            count = None if count is None else count + 1
            continue
        if db not in databases:
            changes[db] = 'dropped after the upgrade'
            count = None if count is None else count + 1
            continue
        dconn = _connect(settings, db, retries=1)
        try:
            rows, reset, schema = _rows(dconn, _WRITES)[0]
        finally:
            dconn.close()
        rows = int(rows)
        was_rows, was_reset, was_schema = baseline[db]
        parts = []
        if reset != was_reset or rows < was_rows:
            parts.append('its write statistics were reset (a crash?), so writes cannot be ruled out')
            count = None
        elif rows > was_rows:
            parts.append('%d row(s) inserted, updated or deleted' % (rows - was_rows))
            count = None if count is None else count + rows - was_rows
        if schema != was_schema:
            parts.append('its schema changed (tables created, altered, dropped or truncated)')
            count = None if count is None else count + 1
        if parts:
            changes[db] = '; '.join(parts)
    summary = '; '.join('%s: %s' % (db, why) for db, why in sorted(changes.items())) or 'no writes'
    return dict(count=count, databases=changes, summary=summary)


# -- putting the old cluster back --------------------------------------------------------------------------------------

def _put_back(settings, state, log, why, rolled_back_volume=None):
    """The old data, container and image back (and the bot); the new data kept as rolled_back_volume. Idempotent:
    each step checks what is there."""
    bot = settings['bot_container']
    if bot and containers.container_state(bot)['running']:
        log('stopping the bot (%s)' % bot)
        state['bot_stopped_at'] = time.time()
        containers.stop(bot, timeout=settings['bot_stop_timeout'])
    new = containers.inspect(state['container'])
    if new is not None and (new.get('Config') or {}).get('Image') != state['old_image']:
        if (new.get('State') or {}).get('Running'):
            containers.stop(state['container'], timeout=settings['db_stop_timeout'])
        _remove_container(state['container'])
    elif new is not None and (new.get('State') or {}).get('Running'):
        containers.stop(state['container'], timeout=settings['db_stop_timeout'])
    main = _volume_dir(state['volume'])
    kept = _volume_dir(state['kept_volume']) if _volume_exists(state['kept_volume']) else None
    rolled = rolled_back_volume or '%s__rolled_back_pg%d_%s' % (state['volume'], state['to_version'], _stamp())
    if _pg_version_of(main) == state['to_version']:
        if _pg_version_of(kept) != state['from_version']:
            raise UpgradeError('the old data is not in the volume %s' % state['kept_volume'])
        target = _create_volume(rolled)
        os.rmdir(target)
        os.rename(main, target)
        state['rolled_back_volume'] = rolled
        log('the new data is kept as volume %s' % rolled)
    elif _pg_version_of(main) is None and os.path.isdir(main or ''):
        os.rmdir(main)  # an empty directory Docker made again
    if not os.path.isdir(main) and _pg_version_of(kept) == state['from_version']:
        os.rename(kept, main)
    if _pg_version_of(main) != state['from_version']:
        raise UpgradeError('the volume %s does not hold the old cluster after putting it back' % state['volume'])
    if state.get('kept_volume') and _volume_exists(state['kept_volume']):
        _remove_volume(state['kept_volume'])
    if state.get('staging_volume') and _volume_exists(state['staging_volume']):
        _remove_volume(state['staging_volume'])  # a copy that never served: nothing of it is lost
    if settings['pitr']:
        # Back to the old cluster's history: stanza-upgrade offline with the old image (its own pgBackRest); it says
        # "already up to date" when the stanza never moved.
        holder = state['old_container'] if containers.inspect(state['old_container']) else state['container']
        runner = pitr.Runner(holder, settings['exec_user'], image=state['old_image'])
        pitr.pgbackrest(_pitr_settings(settings), runner, ['--no-online', 'stanza-upgrade'], volume=state['volume'],
                        timeout=600, what='stanza-upgrade')
        log('pgBackRest\'s stanza follows the old cluster again')
    if containers.inspect(state['container']) is None and containers.inspect(state['old_container']) is not None:
        _docker(['rename', state['old_container'], state['container']])
    policy = state.get('old_restart_policy')
    if policy and policy != 'no':
        _docker(['update', '--restart', policy, state['container']])
    if not containers.container_state(state['container'])['running']:
        containers.start(state['container'])
    _wait_accepting(state['container'], settings['start_timeout'], log, 'PostgreSQL %d' % state['from_version'])
    _wait_connect(settings, settings['start_timeout'])
    if settings['data_guard_file']:
        conn = _connect(settings, retries=2)
        try:
            observed = guard.observe(conn, settings['required_tables'] or None, state_file=settings['data_guard_file'])
        finally:
            conn.close()
        guard.accept(settings['data_guard_file'], observed, by='make upgrade-postgres-rollback',
                     reason='PostgreSQL %d put back (cluster %s): %s' % (state['from_version'],
                                                                         observed['system_identifier'], why))
    if bot and state.get('bot_was_running') and not containers.container_state(bot)['running']:
        containers.start(bot)
        problem = containers.wait_ready(bot, settings['bot_healthy_timeout'], interval=0.5)
        if problem:
            log('the bot did not come back: %s (make logs-bot)' % problem)
        state['rollback_downtime'] = round(time.time() - state['bot_stopped_at'], 1) \
            if state.get('bot_stopped_at') else None
    if settings['pitr']:
        done = pitr.setup(_pitr_settings(settings), log=log)
        log(done['msg'])
    state['phase'] = ROLLED_BACK
    state['rolled_back_at'] = _now_text()
    state['history'].append(dict(at=_now_text(), what='rolled back: %s' % why))
    save_state(settings['state_file'], state)


def rollback(settings, confirm, confirm_loss=None, check_mode=False, log=null_log):
    """The old volume, container and image back while the upgrade is not confirmed (module docstring)."""
    started = time.time()
    _require_confirm(settings, confirm, 'A rollback puts the PostgreSQL version from before the upgrade back with '
                     'its data as it was at the switch. To go ahead, run again with confirm=%(db)s (make '
                     'upgrade-postgres-rollback CONFIRM=%(db)s)')
    path = settings['state_file']
    with _operation_lock(path):
        state = load_state(path)
        if not state or state.get('phase') in (ROLLED_BACK, 'failed'):
            return dict(changed=False, phase=(state or {}).get('phase'), duration=round(time.time() - started, 3),
                        msg='There is no upgrade to roll back%s' % (
                            ' (the last one was rolled back on %s)' % state.get('rolled_back_at')
                            if state and state.get('phase') == ROLLED_BACK else
                            ' (the last attempt failed before the switch and changed nothing)' if state else ''))
        if state['phase'] == CONFIRMED:
            raise UpgradeError('the upgrade to %s was confirmed on %s: the old volume is gone, so there is nothing to '
                               'roll back to. The logical backup taken before it (%s) restores into a %s server'
                               % (state['to_version'], state.get('confirmed_at'),
                                  (state.get('logical_backup') or {}).get('path', 'pre_upgrade_pg*.dump'),
                                  state['from_version']))
        if state['phase'] == COPYING:
            return _roll_back_unswitched(settings, state, check_mode, log, started)
        writes = _writes_since_baseline(settings, state)
        stamp = _stamp()
        rolled = '%s__rolled_back_pg%d_%s' % (state['volume'], state['to_version'], stamp)
        lost = writes['count'] is None or writes['count'] > 0
        db = settings['conn'].get('login_db')
        if lost and (confirm_loss or '') != db:
            raise UpgradeError(
                'Rollback refused (nothing was changed): PostgreSQL %d took writes since the upgrade switched to it - '
                '%s. The old cluster has its data as it was at the switch (%s), so these writes would not be in it. '
                'To roll back anyway, run again with confirm_loss=%s (make upgrade-postgres-rollback CONFIRM=%s '
                'CONFIRM_LOSS=%s): every database that changed is dumped first into %s, and the new data is kept '
                'as volume %s' % (state['to_version'], writes['summary'], state.get('switched_at') or 'the switch',
                                  db, db, db, settings['backup_dir'], rolled),
                _result_of(state, changed=False, writes=writes, operation='rollback'))
        if check_mode:
            return _result_of(
                state, changed=True, writes=writes, operation='rollback', duration=round(time.time() - started, 3),
                msg=('Would put PostgreSQL %d back (volume %s, container %s), keeping the new data as %s%s'
                     % (state['from_version'], state['kept_volume'], state['old_container'], rolled,
                        '; the databases that changed since the switch would be dumped first (%s)'
                        % writes['summary'] if lost else '')))
        dumps = _dump_changed(settings, state, writes, log) if lost else []
        state['rollback_dumps'] = dumps
        state['writes_given_up'] = writes if lost else None
        why = ('rollback asked by the operator%s' % (
            ' (confirm_loss: %s; dumped to %s)' % (writes['summary'], ', '.join(dumps)) if lost else ''))
        _put_back(settings, state, log, why, rolled_back_volume=rolled)
        return _result_of(state, changed=True, writes=writes, rollback_dumps=dumps, operation='rollback',
                          downtime=state.get('rollback_downtime'), rolled_back_volume=state.get('rolled_back_volume'),
                          msg=_rolled_back_msg(state, writes, dumps, lost),
                          duration=round(time.time() - started, 3))


def _roll_back_unswitched(settings, state, check_mode, log, started):
    """An upgrade interrupted before the switch (phase copying): its helpers and new volume go."""
    if check_mode:
        return _result_of(state, changed=True, operation='rollback',
                          msg='Would clean away the interrupted attempt (phase copying)')
    _cleanup_before_swap(settings, state, log)
    state['phase'] = ROLLED_BACK
    state['rolled_back_at'] = _now_text()
    state['history'].append(dict(at=_now_text(), what='interrupted attempt cleaned away by a rollback'))
    save_state(settings['state_file'], state)
    return _result_of(state, changed=True, operation='rollback', duration=round(time.time() - started, 3), msg=(
        'The interrupted upgrade never switched: its helpers and new volume are removed, PostgreSQL %d runs '
        'on its untouched data' % state['from_version']))


def _dump_changed(settings, state, writes, log):
    """Every database the new cluster changed since the switch, dumped into the backups directory (the writes
    a rollback gives up are kept); returns the dumps' paths."""
    dumps = []
    if writes['databases'] and containers.container_state(state['container'])['running']:
        from .backup import create_backup
        from .backup_settings import make_settings as backup_settings
        for name in sorted(writes['databases']):
            if 'dropped' in writes['databases'][name]:
                continue
            conn = dict(settings['conn'], login_db=name)
            taken = create_backup(backup_settings(
                conn, container=state['container'], exec_user=settings['exec_user'],
                backup_dir=settings['backup_dir'],
                name_pattern='rolled_back_pg%d_%s_%%Y%%m%%d_%%H%%M%%S.dump' % (state['to_version'],
                                                                               re.sub(r'[^\w.-]', '_', name))),
                                  log=log, retention=False, offsite=False, db=name)
            dumps.append(taken['path'])
            log('the writes made on PostgreSQL %d to %s are kept in %s' % (state['to_version'], name,
                                                                           taken['path']))
    return dumps


def _rolled_back_msg(state, writes, dumps, lost):
    """The message of a rollback: what is back, what is kept, what was given up."""
    return ('Rolled back to PostgreSQL %d: its data as it was at the switch (%s) is back in %s, the container %s '
            'runs %s%s. The PostgreSQL %d data is kept as volume %s (docker volume rm %s drops it). Set '
            'postgres_major_version: %d (and postgres_image) in the inventory again before the next deploy'
            % (state['from_version'], state.get('switched_at'), state['volume'], state['container'],
               state['old_image'], '; writes made on %d are NOT in it: %s - kept in %s' % (
                   state['to_version'], writes['summary'], ', '.join(dumps) or 'the kept volume') if lost else
               '; PostgreSQL %d took no writes, so nothing is lost' % state['to_version'],
               state['to_version'], state.get('rolled_back_volume'), state.get('rolled_back_volume'),
               state['from_version']))


def confirm_upgrade(settings, confirm, check_mode=False, log=null_log):
    """Drop the old volume and the old container of an upgrade that finished (the old image stays)."""
    started = time.time()
    _require_confirm(settings, confirm, 'Confirming the upgrade drops the old volume for good (no rollback after '
                     'it). To go ahead, run again with confirm=%(db)s (make upgrade-postgres-confirm CONFIRM=%(db)s)')
    path = settings['state_file']
    with _operation_lock(path):
        state = load_state(path)
        if state and state.get('phase') == CONFIRMED:
            return _result_of(state, changed=False, operation='confirm', duration=round(time.time() - started, 3),
                              msg='The upgrade to %s was confirmed on %s already' % (state['to_version'],
                                                                                     state.get('confirmed_at')))
        if not state or state.get('phase') != UPGRADED:
            raise UpgradeError('there is no finished upgrade to confirm (%s)' % (
                'phase %s: finish it first (make upgrade-postgres) or roll it back' % state['phase'] if state
                else 'no upgrade recorded'))
        running = containers.container_state(state['container'])
        volume_version = _pg_version_of(_volume_dir(state['volume']))
        if not running['running'] or volume_version != state['to_version']:
            raise UpgradeError('the database container %s is %s with PostgreSQL %s data; confirm only an upgrade '
                               'whose new server runs (make health)' % (state['container'], running['status'],
                                                                        volume_version))
        if check_mode:
            return _result_of(state, changed=True, operation='confirm', duration=round(time.time() - started, 3), msg=(
                'Would drop the volume %s and the container %s (PostgreSQL %d); the image %s stays'
                % (state['kept_volume'], state['old_container'], state['from_version'], state['old_image'])))
        if containers.inspect(state['old_container']) is not None:
            _remove_container(state['old_container'])
        if _volume_exists(state['kept_volume']):
            _docker(['volume', 'rm', state['kept_volume']])
        state['phase'] = CONFIRMED
        state['confirmed_at'] = _now_text()
        state['history'].append(dict(at=_now_text(), what='confirmed: old volume and container dropped'))
        save_state(path, state)
        return _result_of(state, changed=True, operation='confirm', duration=round(time.time() - started, 3), msg=(
            'Confirmed the upgrade to PostgreSQL %d: the volume %s and the container %s are dropped; the old image '
            '%s stays (docker image rm %s when nothing needs it)' % (state['to_version'], state['kept_volume'],
                                                                     state['old_container'], state['old_image'],
                                                                     state['old_image'])))
