# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery with pgBackRest, which runs inside the database container (issue 13).

- The repositories are pgBackRest's own, described by pgbackrest.conf (written by the pitr role, mounted
  read-only at /etc/pgbackrest): repo1 a directory on the host (bind-mounted at /var/lib/pgbackrest) and,
  optionally, repo2 in S3-compatible storage, encrypted. PostgreSQL hands every finished WAL segment to them
  (archive_command = pgbackrest archive-push; archive_timeout closes a segment at least once a minute while
  anything is written, which is the recovery point objective).
- Runner (pitr_runner.py, with pgbackrest() and the WAL reading of last_commit): runs a command where the database
  runs - `docker exec` in the running container or, when it is stopped (or its data is gone), `docker run --rm` of
  the same image with the same network and bind mounts.
- info / repositories / window: what the repositories hold, and the recovery window of each: from the end of
  its oldest physical backup to the last commit in its archived WAL (read from the newest segment with
  pg_waldump, so the window names a time a restore can really reach).
- setup (each deploy): stanza-create where a repository has no stanza, `pgbackrest check` (a WAL segment
  reaches every repository) after that, a first full backup where a repository holds none. On a converged
  host it costs one `pgbackrest info`.
- backup, verify, check: the scheduled jobs (soulnear-backup pitr-backup, pitr-verify) and the health report.
- check_wal_archiving (pg_stat_archiver and the segments waiting in pg_wal/archive_status) and
  check_physical_backup (the newest backup of each repository, its status, the repository's free space): two
  checks of checks.run_checks, so db_health and the host monitor report them and the monitor alerts on them.

pitr_restore.py restores to a point in time with these pieces. Nothing here imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import glob
import json
import os
import re
import subprocess
import time

from . import containers, defaults
from .backup_settings import with_defaults
from .files import disk_usage, human
from .pg import ConnectError, connect, describe_error, psycopg2
from .pitr_runner import PitrError, Runner, error_text, last_commit, oldest_unarchived_commit, pgbackrest
from .results import check as _result  # the shape of a health check's answer

LATEST = 'latest'
BACKUP_TYPES = ('full', 'diff', 'incr')
# pgbackrest info status codes (per repository and per stanza).
STATUS_OK, STATUS_MISSING_PATH, STATUS_NO_BACKUP, STATUS_MISSING_DATA, STATUS_BUSY = 0, 1, 2, 3, 6

DEFAULTS = dict(
    container=defaults.DB_CONTAINER,
    stanza=defaults.PITR_STANZA,
    exec_user=defaults.DB_EXEC_USER,
    repo_dir='',
    retention_full=2,
    retention_diff=7,
    backup_max_age_hours=defaults.BACKUP_MAX_AGE_HOURS,
    archive_ready_max=defaults.ARCHIVE_READY_MAX,
    archive_slack_seconds=defaults.ARCHIVE_SLACK_SECONDS,
    command_timeout=6 * 3600,
    db_stop_timeout=defaults.DB_STOP_TIMEOUT,
    bot_container='',
    bot_stop_timeout=defaults.BOT_STOP_TIMEOUT,
    bot_healthy_timeout=defaults.BOT_HEALTHY_TIMEOUT,
    recovery_timeout=defaults.RECOVERY_TIMEOUT,
    space_margin=defaults.SPACE_MARGIN,
    data_guard_file='',
)

FAILURES = (PitrError, ConnectError, containers.DockerError, OSError, subprocess.SubprocessError) + (
    (psycopg2.Error,) if psycopg2 is not None else ())


def describe_failure(exc):
    if psycopg2 is not None and isinstance(exc, psycopg2.Error):
        return 'PostgreSQL error: %s' % describe_error(exc)
    if isinstance(exc, subprocess.TimeoutExpired):
        return '%s did not finish within %s s' % (' '.join(str(a) for a in (exc.cmd or [])[:3]), exc.timeout)
    return str(exc)


def null_log(_message):
    pass


def make_settings(conn=None, **options):
    """Settings of setup, backup, verify, info and restore: DEFAULTS overridden by options, plus the superuser's
    connection parameters (module style) when the operation talks to the server."""
    return with_defaults(DEFAULTS, conn, options)


def settings_from_config(config, pitr_config=None):
    """Settings from /etc/soulnear/soulnear.json (its pitr and db sections) and pitr.json (the pitr role: retention)."""
    db = config.get('db') or {}
    pitr = config.get('pitr') or {}
    conn = dict(login_host=db.get('host', '127.0.0.1'), login_port=int(db.get('port', 5432)),
                login_user=db.get('superuser', 'postgres'), login_password=db.get('superuser_password', ''),
                login_db=db.get('name', 'soul_bot'), connect_timeout=10, retries=3)
    options = dict(container=db.get('container'), stanza=pitr.get('stanza'), repo_dir=pitr.get('repo_dir'),
                   bot_container=(config.get('bot') or {}).get('container'))
    options.update((k, v) for k, v in (pitr_config or {}).items() if k in DEFAULTS)
    return make_settings(conn, **options)


# -- times ---------------------------------------------------------------------------------------------------

def utc(stamp):
    """Epoch seconds as an aware UTC datetime."""
    return datetime.datetime.fromtimestamp(float(stamp), datetime.timezone.utc)


def show(when):
    """A time for people and for TIME='...': 2026-11-29 14:05:00+00 (UTC, the database container's zone)."""
    if when is None:
        return 'unknown'
    if not isinstance(when, datetime.datetime):
        when = utc(when)
    when = when.astimezone(datetime.timezone.utc)
    text = when.strftime('%Y-%m-%d %H:%M:%S')
    if when.microsecond:
        text += ('.%06d' % when.microsecond).rstrip('0')
    return text + '+00'


_ZONE = re.compile(r'(?:\s*(?:UTC|GMT|Z)|\s*([+-])(\d\d):?(\d\d)?)$', re.I)


def parse_target(text):
    """TIME as an aware datetime, None for latest. A time zone is required (+00, +01:00, -0500, Z, UTC): a bare
    time would be read in some zone nobody chose."""
    value = (text or '').strip()
    if not value or value.lower() == LATEST:
        return None
    match = _ZONE.search(value)
    if not match:
        raise PitrError('TIME %r has no time zone: give it with one, for example TIME=\'%s\' (UTC) - '
                        'the window is printed in UTC by make backups' % (text, show(time.time())))
    base = value[:match.start()].strip().replace('T', ' ')
    if match.group(1):
        offset = datetime.timedelta(hours=int(match.group(2)), minutes=int(match.group(3) or 0))
        zone = datetime.timezone(offset if match.group(1) == '+' else -offset)
    else:
        zone = datetime.timezone.utc
    for fmt in ('%Y-%m-%d %H:%M:%S.%f', '%Y-%m-%d %H:%M:%S', '%Y-%m-%d %H:%M'):
        try:
            return datetime.datetime.strptime(base, fmt).replace(tzinfo=zone)
        except ValueError:
            continue
    raise PitrError('TIME %r is not a time: write it as YYYY-MM-DD HH:MM[:SS] with a zone, for example '
                    'TIME=\'%s\'' % (text, show(time.time())))


# -- what the repositories hold --------------------------------------------------------------------------------

def info(settings, runner):
    """The stanza's entry of `pgbackrest info --output=json`."""
    _rc, out, _err = pgbackrest(settings, runner, ['--output=json', 'info'], timeout=300)
    try:
        data = json.loads(out)
    except ValueError:
        raise PitrError('pgbackrest info printed no JSON: %s' % out[-500:]) from None
    for stanza in data:
        if stanza.get('name') == settings['stanza']:
            return stanza
    raise PitrError('pgbackrest knows no stanza %s: its configuration (pgbackrest.conf, written by the postgres '
                    'role) names %s. Fix: deploy (make deploy)' % (settings['stanza'], ', '.join(
                        s.get('name', '?') for s in data) or 'none'))


def repositories(stanza):
    """{key: repository} of an info entry: status, cipher, the current database's system id, valid backups of the
    current database (oldest first; those from before a stanza-upgrade are its prior history) and the archive's
    newest segment."""
    repos = {}
    for repo in stanza.get('repo') or []:
        status = repo.get('status') or {}
        repos[int(repo['key'])] = dict(key=int(repo['key']), status=status.get('code'),
                                       message=status.get('message'), cipher=repo.get('cipher'), backups=[],
                                       system_id=None, db_id=None, archive_id=None, archive_min=None,
                                       archive_max=None)
    for db in stanza.get('db') or []:
        repo = repos.get(int(db.get('repo-key') or 1))
        if repo is not None and (repo['db_id'] is None or db['id'] > repo['db_id']):
            repo.update(db_id=db['id'], system_id=str(db.get('system-id')), version=db.get('version'))
    for archive in stanza.get('archive') or []:
        repo = repos.get(int((archive.get('database') or {}).get('repo-key') or 1))
        if repo is None or not archive.get('max'):
            continue
        if repo['archive_max'] is None or archive['max'] > repo['archive_max']:
            repo.update(archive_id=archive.get('id'), archive_max=archive['max'])
        if repo['archive_min'] is None or archive['min'] < repo['archive_min']:
            repo['archive_min'] = archive['min']
    for backup in stanza.get('backup') or []:
        database = backup.get('database') or {}
        repo = repos.get(int(database.get('repo-key') or 1))
        if repo is None or backup.get('error'):
            continue
        if database.get('id') is not None and repo['db_id'] is not None and database['id'] != repo['db_id']:
            continue  # a backup of the cluster before a stanza-upgrade (clean redeploy): not in this window
        stamp = backup.get('timestamp') or {}
        sizes = backup.get('info') or {}
        repo['backups'].append(dict(label=backup.get('label'), type=backup.get('type'), start=stamp.get('start'),
                                    stop=stamp.get('stop'), size=sizes.get('size'),
                                    repo_size=(sizes.get('repository') or {}).get('size'),
                                    prior=backup.get('prior')))
    for repo in repos.values():
        repo['backups'].sort(key=lambda b: b['stop'] or 0)
    return repos


def window(settings, runner, repo, exact=True):
    """The recovery window of one repository: start (the end of its oldest backup: no earlier moment is
    consistent), end (the last commit in its archived WAL: a recovery to a later time finds no commit to stop at)
    and its newest backup. Without backups: None."""
    if not repo['backups']:
        return None
    oldest, newest = repo['backups'][0], repo['backups'][-1]
    result = dict(repo=repo['key'], start=utc(oldest['stop']), newest_backup=newest, backups=len(repo['backups']),
                  end=None, end_segment=None, archive_max=repo.get('archive_max'), exact=exact)
    if exact:
        result['end'], result['end_segment'] = last_commit(settings, runner, repo)
    if result['end'] is not None and result['end'] < result['start']:
        result['end'] = result['start']
    return result


def describe_window(win, key=None):
    if win is None:
        return 'repo%s: no physical backup' % key
    return 'repo%d: from %s to %s' % (win['repo'], show(win['start']), show(win['end']) if win['end'] else
                                      'the end of its archived WAL%s' % (
                                          ' (no commit found in its newest segments)' if win.get('exact', True)
                                          else ' (segment %s)' % win.get('archive_max')))


def cluster_identity(settings):
    """(system identifier, in recovery) of the running server, over the superuser's connection."""
    conn = connect(dict(settings['conn'], retries=0), application_name='soulnear pitr')
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT system_identifier::text, pg_is_in_recovery() FROM pg_control_system()')
            return cur.fetchone()
    finally:
        conn.close()


# -- setup, backups, checks --------------------------------------------------------------------------------------

def _backup_args(settings, key, backup_type):
    return ['--repo=%d' % key, '--type=%s' % backup_type,
            '--repo%d-retention-full=%d' % (key, int(settings['retention_full'])),
            '--repo%d-retention-diff=%d' % (key, max(1, int(settings['retention_diff']))), 'backup']


def setup(settings, check_mode=False, log=null_log, archiving_resumed=False, new_history=False):
    """Make every repository ready: stanza-create where one has no stanza, a check that WAL reaches them, a first
    full backup where one holds none. Refuses a repository that holds another cluster's backups.

    archiving_resumed: WAL archiving was just turned on again (archive_mode was off): the archive misses the WAL
    written meanwhile, so a restore from the older backups would stop at that gap. A new full backup on every
    repository that holds backups makes TIME=latest whole again.

    new_history: the running server is meant to be another cluster than the one the repositories know (a clean
    redeploy re-initialised it on purpose): `pgbackrest stanza-upgrade` records the new cluster, the old backups stay
    in the repository as its prior history, and every repository gets a first full backup of the new one."""
    started = time.time()
    runner = Runner(settings['container'], settings['exec_user'])
    if not runner.running:
        raise PitrError('the database container %s is not running: start it (make restart) and deploy again'
                        % settings['container'])
    repos = repositories(info(settings, runner))
    system_id, _recovery = cluster_identity(settings)
    foreign = [r for r in repos.values() if r['system_id'] and r['system_id'] != system_id]
    actions = []
    if foreign and new_history:
        actions.append('stanza %s moved to the new database cluster (system identifier %s) on %s; the backups of '
                       'the previous one (%s) stay as its prior history'
                       % (settings['stanza'], system_id, ', '.join('repo%d' % r['key'] for r in foreign),
                          foreign[0]['system_id']))
        if check_mode:
            return dict(changed=True, actions=actions, duration=round(time.time() - started, 3),
                        repositories=sorted(repos), system_identifier=system_id,
                        msg='Would set up point-in-time recovery: %s; a first full backup on every repository'
                            % actions[0])
        log('stanza-upgrade: the repositories follow the new database cluster %s' % system_id)
        pgbackrest(settings, runner, ['stanza-upgrade'], timeout=600)
        repos = repositories(info(settings, runner))
        foreign = []
    if foreign:
        raise PitrError('%s holds the backups of another database cluster (system identifier %s) than the one '
                        'running now (%s): this server was re-initialised or is a new one, and WAL archiving to it '
                        'is refused. Fix: to get the data back, restore it - make restore TIME=latest CONFIRM=%s; '
                        'to start a new history on purpose (e.g. after restoring a logical dump onto a new volume), '
                        'deploy once with -e pitr_new_history=true (the old backups stay as the stanza\'s '
                        'prior history)' % (', '.join('repo%d' % r['key'] for r in foreign),
                                            foreign[0]['system_id'], system_id,
                                            settings['conn'].get('login_db') or 'the database'))
    broken = [r for r in repos.values() if r['status'] not in (STATUS_OK, STATUS_MISSING_PATH, STATUS_NO_BACKUP,
                                                               STATUS_MISSING_DATA, STATUS_BUSY)]
    if broken:
        raise PitrError('pgBackRest cannot use %s. Fix the repository (the directory %s must be writable by the '
                        'server\'s uid 999; the offsite bucket reachable with the vault credentials) and deploy again'
                        % ('; '.join('repo%d: %s' % (r['key'], r['message']) for r in broken),
                           settings['repo_dir'] or 'of repo1'))
    missing = [r['key'] for r in repos.values() if r['status'] in (STATUS_MISSING_PATH, STATUS_MISSING_DATA)]
    if missing:
        actions.append('stanza %s created on %s' % (settings['stanza'], ', '.join('repo%d' % k for k in missing)))
        if not check_mode:
            log('creating stanza %s' % settings['stanza'])
            pgbackrest(settings, runner, ['stanza-create'], timeout=600)
            log('checking that WAL reaches every repository')
            check(settings, runner)
            actions.append('pgbackrest check passed')
    empty = [r['key'] for r in repos.values() if not r['backups']]
    for key in empty:
        actions.append('first full backup on repo%d' % key)
        if not check_mode:
            log('taking the first full backup on repo%d' % key)
            pgbackrest(settings, runner, _backup_args(settings, key, 'full'), what='backup')
    if archiving_resumed:
        for key in sorted(k for k in repos if k not in empty):
            actions.append('new full backup on repo%d (WAL archiving was off: the archive has a gap since its '
                           'older backups; restore to a time after this backup)' % key)
            if not check_mode:
                log('taking a new full backup on repo%d: WAL archiving was off' % key)
                pgbackrest(settings, runner, _backup_args(settings, key, 'full'), what='backup')
    summary = None if check_mode or not actions else repositories(info(settings, runner))
    return dict(changed=bool(actions), actions=actions, duration=round(time.time() - started, 3),
                repositories=sorted(summary or repos), system_identifier=system_id,
                msg=('%s: %s' % ('Would set up point-in-time recovery' if check_mode else 'Point-in-time recovery set '
                                 'up', '; '.join(actions))) if actions else
                'point-in-time recovery ready: stanza %s with backups on %s' % (
                    settings['stanza'], ', '.join('repo%d' % k for k in sorted(repos))))


def check(settings, runner=None):
    """`pgbackrest check`: the configuration is valid and a freshly switched WAL segment reaches every repository."""
    runner = runner or Runner(settings['container'], settings['exec_user'])
    pgbackrest(settings, runner, ['check'], timeout=300)


def backup(settings, backup_type='diff', repo=None, log=null_log):
    """A physical backup of the given type on every repository (or one); expiry by the retention settings follows
    each. A diff or incr without a full before it becomes a full (pgBackRest's rule)."""
    if backup_type not in BACKUP_TYPES:
        raise PitrError('backup type must be one of %s, not %r' % (', '.join(BACKUP_TYPES), backup_type))
    runner = Runner(settings['container'], settings['exec_user'])
    if not runner.running:
        raise PitrError('the database container %s is not running; a physical backup reads the running server. '
                        'Start it (make restart)' % settings['container'])
    repos = repositories(info(settings, runner))
    repaired = repair(settings, repos, log)
    if repaired:
        repos = repositories(info(settings, runner))
    keys = sorted(repos) if repo is None else [int(repo)]
    keys = [k for k in keys if k not in repaired.get('repos', [])]  # a first full backup was just taken there
    done = []
    for key in keys:
        started = time.time()
        log('%s backup on repo%d' % (backup_type, key))
        pgbackrest(settings, runner, _backup_args(settings, key, backup_type), what='backup')
        newest = repositories(info(settings, runner)).get(key, {}).get('backups', [])
        done.append(dict(repo=key, duration=round(time.time() - started, 3),
                         backup=newest[-1] if newest else None))
    msg = '; '.join(
        'repo%d: %s backup %s (%s, %.1f s)' % (d['repo'], (d['backup'] or {}).get('type') or backup_type,
                                               (d['backup'] or {}).get('label'),
                                               human((d['backup'] or {}).get('repo_size') or 0), d['duration'])
        for d in done)
    if repaired:
        msg = '%s%s' % (repaired['msg'], '; ' + msg if msg else '')
    return dict(changed=True, backups=done, repaired=repaired or None, msg=msg)


def repair(settings, repos, log=null_log):
    """A repository that lost its stanza (its directory deleted or emptied, a new disk mounted) gets it back: the
    scheduled backup runs the deploy's setup (stanza-create, check, a first full backup), so WAL archiving - which
    pushes to every repository and fails while one has no stanza - works again without a deploy. Returns {} when
    nothing was missing, else dict(repos, msg) for the alert: what was lost and what holds now."""
    lost = sorted(k for k, r in repos.items() if r['status'] in (STATUS_MISSING_PATH, STATUS_MISSING_DATA))
    if not lost:
        return {}
    log('repairing point-in-time recovery: %s had lost the stanza' % ', '.join('repo%d' % k for k in lost))
    done = setup(settings, log=log)
    now = show(datetime.datetime.now(datetime.timezone.utc))
    return dict(repos=lost, actions=done['actions'], msg=(
        'REPAIRED point-in-time recovery: %s had lost its stanza (its files were deleted or it is a new disk), so WAL '
        'archiving failed since. Done now: %s. What was in it before - its physical backups and archived WAL, the '
        'recovery window before %s - is gone; the recovery window starts again at %s (the other repositories and '
        'the logical dumps keep their history)' % (', '.join('repo%d' % k for k in lost), '; '.join(done['actions']),
                                                   now, now)))


def verify(settings, log=null_log):
    """`pgbackrest verify` of every repository: the checksum of every backup file and WAL segment. 2.45 exits 0
    either way, so its summary is read."""
    runner = Runner(settings['container'], settings['exec_user'])
    results, bad = [], []
    for key in sorted(repositories(info(settings, runner))):
        log('verifying repo%d' % key)
        _rc, out, err = pgbackrest(settings, runner, ['--repo=%d' % key, '--output=text', 'verify'], what='verify')
        text = ' '.join(out.split())
        results.append(dict(repo=key, summary=text[:2000]))
        if re.search(r'status:\s*error', out) or 'ERROR' in err:
            bad.append('repo%d: %s' % (key, text[:600] or error_text(out, err)))
    if bad:
        raise PitrError('pgbackrest verify found damaged files: %s. Fix: take a new full backup (soulnear-backup '
                        'pitr-backup --type full) and look at the disk (make diagnose)' % ' | '.join(bad),
                        dict(results=results))
    return dict(changed=False, results=results, msg='pgbackrest verify: every backup file and WAL segment of %s is '
                'intact' % ', '.join('repo%d' % r['repo'] for r in results))


def describe(settings, exact=True):
    """What `make backups` prints about the physical side: every repository's backups and recovery window."""
    runner = Runner(settings['container'], settings['exec_user'])
    repos = repositories(info(settings, runner))
    lines, windows = [], {}
    for key in sorted(repos):
        repo = repos[key]
        where = ' (%s)' % settings['repo_dir'] if key == 1 and settings.get('repo_dir') else ''
        lines.append('repo%d%s: %s, %d backup(s), encryption %s' % (key, where, repo['message'], len(repo['backups']),
                                                                    repo['cipher'] or 'none'))
        for item in repo['backups']:
            lines.append('  %s  %-4s  %s .. %s  %s in the repository' % (
                item['label'], item['type'], show(item['start']), show(item['stop']), human(item['repo_size'] or 0)))
        try:
            windows[key] = window(settings, runner, repo, exact=exact)
        except PitrError as exc:
            windows[key] = None
            lines.append('  (the end of the window could not be read: %s)' % exc)
    lines.append('Recovery window (make restore TIME=\'...\' CONFIRM=%s, or TIME=latest):'
                 % (settings['conn'].get('login_db') or '<database>'))
    lines += ['  ' + describe_window(windows[k], k) for k in sorted(windows)]
    return dict(lines=lines, repositories=repos, windows=windows)


# -- health ---------------------------------------------------------------------------------------------------

def _ago(seconds):
    if seconds is None:
        return 'never'
    seconds = max(0, float(seconds))
    if seconds < 120:
        return '%.0f s ago' % seconds
    if seconds < 7200:
        return '%.0f min ago' % (seconds / 60)
    return '%.1f h ago' % (seconds / 3600)


def waiting_segments(db_volume):
    """WAL segments PostgreSQL has finished but not archived yet (pg_wal/archive_status/*.ready, read through the
    data volume's directory on the host); None when it cannot be read."""
    if not db_volume:
        return None
    try:
        mount = containers.volume_mountpoint(db_volume)
    except containers.DockerError:
        return None
    status = os.path.join(mount or '', 'pg_wal', 'archive_status')
    if not mount or not os.path.isdir(status):
        return None
    return len(glob.glob(os.path.join(status, '*.ready')))


def _unarchived_exposure(options, current_segment, timeout_seconds, seen_at):
    """How old the oldest commit not yet in the repositories is: dict(oldest_unarchived_commit, segment,
    unarchived_commit_age_seconds, stall_limit_seconds, stalled, error). Stalled: older than archive_timeout + slack,
    so a disk lost now would take commits the recovery point objective promises (the archiver failing, hanging, or
    PostgreSQL not switching segments). The age is taken at seen_at, the moment the server named its current
    segment (epoch seconds): pg_waldump may take half a minute on a loaded host, and the segment it reads may be
    archived meanwhile - its commits' age then is not how long they waited unarchived."""
    slack = float(options.get('pitr_archive_slack_seconds') or DEFAULTS['archive_slack_seconds'])
    found = dict(oldest_unarchived_commit=None, unarchived_segment=None, unarchived_commit_age_seconds=None,
                 stall_limit_seconds=None, stalled=False)
    container = options.get('db_container')
    if not container or not current_segment:
        return found
    if timeout_seconds > 0:
        found['stall_limit_seconds'] = timeout_seconds + slack
    try:
        runner = Runner(container)
        if not runner.running:
            return found
        when, segment = oldest_unarchived_commit(runner, current_segment)
    except FAILURES as exc:
        found['error'] = describe_failure(exc)
        return found
    if when is not None:
        age = max(0.0, (seen_at or time.time()) - when.timestamp())
        found.update(oldest_unarchived_commit=show(when), unarchived_segment=segment,
                     unarchived_commit_age_seconds=round(age, 1),
                     stalled=found['stall_limit_seconds'] is not None and age > found['stall_limit_seconds'])
    return found


def check_wal_archiving(conn, options):
    """WAL archiving works: archive_mode on, the archiver's last attempt succeeded, few segments waiting, and no
    commit waits longer than archive_timeout + slack to reach the repositories. The value also carries what the
    data-loss guard and a later restore compare against: the server's cluster, timeline and next transaction id."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('archive_mode'), current_setting('archive_timeout'), "
                    "(SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout'), a.archived_count, "
                    "a.last_archived_wal, extract(epoch FROM now() - a.last_archived_time), a.failed_count, "
                    "a.last_failed_wal, extract(epoch FROM now() - a.last_failed_time), "
                    "a.last_failed_time >= coalesce(a.last_archived_time, '-infinity'), "
                    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, "
                    "extract(epoch FROM clock_timestamp()) "
                    "FROM pg_stat_archiver a")
        (mode, timeout, timeout_seconds, archived, last_wal, archived_ago, failed, failed_wal, failed_ago, failing,
         current, seen_at) = cur.fetchone()
    ready = waiting_segments(options.get('db_volume'))
    limit = int(options.get('pitr_archive_ready_max') or DEFAULTS['archive_ready_max'])
    value = dict(archive_mode=mode, archive_timeout=timeout, archived_count=archived, last_archived_wal=last_wal,
                 last_archived_age_seconds=None if archived_ago is None else round(float(archived_ago), 1),
                 failed_count=failed, last_failed_wal=failed_wal,
                 last_failed_age_seconds=None if failed_ago is None else round(float(failed_ago), 1),
                 failing=bool(failing), ready=ready, current_segment=current)
    repo = options.get('pitr_repo_dir') or 'the repository directory'
    if mode not in ('on', 'always'):
        return _result(False, value, 'archive_mode is %s: no WAL reaches the repositories, so there is no '
                       'point-in-time recovery. Fix: deploy (make deploy) - it turns WAL archiving on (one restart '
                       'of PostgreSQL)' % mode)
    value.update(_unarchived_exposure(options, current, int(timeout_seconds or 0),
                                      None if seen_at is None else float(seen_at)))
    exposure = ''
    if value['unarchived_commit_age_seconds'] is not None:
        exposure = ('; the oldest commit not yet in the repositories is %s (%s)'
                    % (_ago(value['unarchived_commit_age_seconds']), value['oldest_unarchived_commit']))
    if failing:
        return _result(False, value, 'WAL archiving is FAILING: the archiver\'s last attempt (segment %s, %s) failed '
                       '(%d failure(s) since the statistics were reset); the last segment archived was %s (%s)%s%s. '
                       'Commits since then are not in the repositories: the recovery point falls behind. Fix: read '
                       'the pgBackRest error in the PostgreSQL log (make logs-db; soulnear_log_dir/postgres/'
                       'postgresql.log) - %s must be writable by uid 999 and have free space, the offsite bucket '
                       'reachable; archiving resumes by itself once that is fixed'
                       % (failed_wal, _ago(failed_ago), failed, last_wal or 'none', _ago(archived_ago),
                          '; %d segment(s) wait' % ready if ready else '', exposure, repo))
    if ready is not None and ready > limit:
        return _result(False, value, '%d WAL segments wait to be archived (more than %d): archiving falls behind '
                       'the writes; the recovery point is older than it should be%s. Fix: look at the repository\'s '
                       'disk and network (the offsite bucket) and the pgBackRest log' % (ready, limit, exposure))
    if value['stalled']:
        return _result(False, value, 'WAL archiving is STALLED: the oldest commit not yet in the repositories is %s '
                       '(%s, segment %s), longer than archive_timeout %s + %.0f s; a disk lost now would take it. '
                       'The archiver reports no failure, so the segment was not switched (PostgreSQL\'s '
                       'checkpointer honours archive_timeout only once woken after a start) or archive-push hangs. '
                       'Fix: the monitor wakes the checkpointer at once (SIGHUP: docker kill --signal HUP %s), which '
                       'switches the segment; if it stays stalled, look at the pgBackRest log (make logs-db)'
                       % (_ago(value['unarchived_commit_age_seconds']), value['oldest_unarchived_commit'],
                          value['unarchived_segment'], timeout,
                          value['stall_limit_seconds'] - int(timeout_seconds or 0),
                          options.get('db_container')))
    if not archived:
        return _result(True, value, 'archive_mode on, nothing archived yet (archive_timeout %s)%s'
                       % (timeout, exposure))
    return _result(True, value, 'WAL archiving works: last segment %s archived %s, archive_timeout %s%s%s'
                   % (last_wal, _ago(archived_ago), timeout, ', %d waiting' % ready if ready else '', exposure),
                   'the archiver failed %s on %s, then recovered' % (_ago(failed_ago), failed_wal)
                   if failed_ago is not None and failed_ago < 3600 else
                   ('the unarchived WAL could not be read: %s' % value['error'] if value.get('error') else None))


def _segment_number(name):
    """The position of a WAL segment name (timeline, then log and segment) without its timeline, or None."""
    name = (name or '')[:24]
    return int(name[8:], 16) if re.match(r'^[0-9A-F]{24}$', name) else None


def _archive_behind(repo, archiving):
    """Why a repository's recovery point is behind what the server archived or should have archived, or None."""
    value = (archiving or {}).get('value') or {}
    theirs, ours = _segment_number(value.get('last_archived_wal')), _segment_number(repo.get('archive_max'))
    if theirs is not None and ours is not None and ours < theirs:
        return ('repo%d: its archive ends at segment %s but the server archived %s since: WAL does not reach it, so '
                'its recovery point stands still' % (repo['key'], repo['archive_max'], value['last_archived_wal']))
    if value.get('stalled'):
        return ('repo%d: its recovery point is stalled - the oldest commit not in it is %s (%s), longer than '
                'archive_timeout + slack (see wal_archiving)'
                % (repo['key'], _ago(value['unarchived_commit_age_seconds']), value['oldest_unarchived_commit']))
    return None


def check_physical_backup(options, now=None, archiving=None):
    """The newest physical backup of every repository is young enough, every repository answers, the local one
    has room for the next full backup, and its archive keeps up with the server (archiving: the wal_archiving
    check's answer: a stalled recovery point fails this check too - a young backup is no comfort when the WAL after
    it does not arrive); with pitr_check also `pgbackrest check`. None when the database container does not run
    (its own check reports that)."""
    settings = make_settings(container=options.get('db_container') or DEFAULTS['container'],
                             stanza=options['pitr_stanza'], repo_dir=options.get('pitr_repo_dir') or '')
    max_age = float(options.get('pitr_backup_max_age_hours') or DEFAULTS['backup_max_age_hours'])
    now = time.time() if now is None else now
    try:
        runner = Runner(settings['container'])
        if not runner.running:
            return None
        repos = repositories(info(settings, runner))
    except FAILURES as exc:
        return _result(False, dict(stanza=settings['stanza']), 'pgBackRest could not be asked: %s. Fix: see the '
                       'database container (make logs-db) and deploy again' % describe_failure(exc))
    problems, parts, values = [], [], []
    newest_full = None
    for key in sorted(repos):
        repo = repos[key]
        newest = repo['backups'][-1] if repo['backups'] else None
        age = (now - newest['stop']) / 3600.0 if newest else None
        values.append(dict(repo=key, status=repo['status'], message=repo['message'], backups=len(repo['backups']),
                           archive_max=repo['archive_max'],
                           newest=newest['label'] if newest else None, type=newest['type'] if newest else None,
                           age_hours=None if age is None else round(age, 2),
                           window_start=show(repo['backups'][0]['stop']) if newest else None))
        fulls = [b for b in repo['backups'] if b['type'] == 'full']
        if key == 1 and fulls:
            newest_full = fulls[-1]
        if repo['status'] not in (STATUS_OK, STATUS_BUSY, STATUS_NO_BACKUP):
            problems.append('repo%d: %s' % (key, repo['message']))
        elif newest is None:
            problems.append('repo%d holds no physical backup: run soulnear-backup pitr-backup --type full on the '
                            'host (or deploy)' % key)
        elif age > max_age:
            problems.append('the newest physical backup on repo%d (%s, %s) is %.1f h old (limit %s h): the daily '
                            'differential backup is not running or fails; see backup.log in the log directory'
                            % (key, newest['label'], newest['type'], age, max_age))
        elif _archive_behind(repo, archiving):
            problems.append(_archive_behind(repo, archiving))
        else:
            parts.append('repo%d %s (%s) %.1f h old, window from %s, archive up to %s'
                         % (key, newest['label'], newest['type'], age, show(repo['backups'][0]['stop']),
                            repo['archive_max'] or 'nothing yet'))
    value = dict(stanza=settings['stanza'], repositories=values, repo_dir=settings['repo_dir'] or None,
                 repo_free_bytes=None)
    if settings['repo_dir']:
        try:
            usage = disk_usage(settings['repo_dir'])
            value.update(repo_free_bytes=usage['free'], repo_used_percent=usage['used_percent'])
            parts.append('repository disk %s free' % human(usage['free']))
            need = (newest_full or {}).get('repo_size') or 0
            if need and usage['free'] < need:
                problems.append('the repository disk (%s) has %s free, the newest full backup took %s: the next '
                                'full backup may not fit. Fix: grow the disk, or lower pitr_retention_full'
                                % (settings['repo_dir'], human(usage['free']), human(need)))
        except OSError as exc:
            problems.append('cannot measure %s: %s' % (settings['repo_dir'], exc))
    if options.get('pitr_check') and not problems:
        try:
            check(settings, runner)
            parts.append('pgbackrest check passed')
        except FAILURES as exc:
            problems.append('%s. Fix: the repositories must be writable and reachable (see the pgBackRest log in '
                            'soulnear_log_dir/postgres)' % describe_failure(exc))
    if problems:
        return _result(False, value, '; '.join(problems))
    return _result(True, value, 'newest physical backup: ' + '; '.join(parts))
