# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exactly one bot across the bot hosts (issue 25): `soulnear-health leader run`, the soulnear-leader service of
every bot host when there are two or more of them (app_instances: one).

Each bot host keeps its bot container created but stopped, and its leader starts it only while the host holds the
lease in PostgreSQL (lease.py). The rules, with T the lease time (ttl_seconds), F the fence time (fence_seconds),
G the stop grace (stop_grace_seconds) and T > F + G + a margin for Docker:

- The holder renews every renew_seconds with a compare-and-set on (holder, generation). It measures the age of its
  last successful renewal from the moment it SENT it, on its own boot-time clock (CLOCK_BOOTTIME: monotonic, and it
  counts a suspended machine's sleep). Past F without a successful renewal it FENCES: it stops its bot (docker stop
  with G seconds before SIGKILL) - whether the database is down, the network is cut or its queries hang.
- A standby takes a lease held by another host only after it watched the same (holder, generation) for T on its own
  boot-time clock, with every poll of it answered (a failed poll starts the watch over). So the holder's last
  renewal was sent at least T ago, and it fenced at F + G after that: the two bots never poll at once. No clock of
  one machine is compared with another's; the database's now() is only shown to people.
- A lease nobody holds (released, never taken) or one recorded for this host by an earlier life of its leader is
  taken after the leader watched the database without a failure for F + G: any host that believed it held the lease
  and could not say so since has fenced by then (this also covers commits lost by an asynchronously replicated
  database's failover: every leader sees that failover as failed polls).
- A release (make failover, or the leader stopping) happens only after the bot stopped; it may be offered to one
  host (or '*', any host but the releaser), which takes it at once; the others wait T before taking an offered one.
- The bot's lifetime is bound to its leader (leader_bot.py): a watchdog process gets the fence deadline after every
  renewal over a pipe and stops the bot when the deadline passes (a leader that hangs) or the pipe closes (a leader
  that died, even by SIGKILL). The systemd unit adds ExecStopPost (docker stop) and Restart=always, and a leader that
  starts stops a bot it finds running before anything else.
- While a safe redeploy swaps the bot (it marks its run next to the deploy lock), while the deploy lock is held by
  an operation that stops the bot for longer (a restore, a clean redeploy), or while the monitor is paused, the
  leader starts nothing; renewals and fencing never pause. A standby's bot that runs is stopped at once.

The safe redeploy reads the leader's state file (may_start) before it starts a bot: only while this host holds the
lease with time to spare.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime

from . import alert, containers, defaults, lease
from . import lock as deploy_lock
from .files import append_line
from .leader_bot import Bot, Watchdog, boottime
from .leader_bot import watchdog_main as bot_watchdog_main
from .pg import connect_kwargs, describe_error, psycopg2


def _stdout_line(text):
    """The leader's default log on the host (systemd's journal): one line on stdout, flushed."""
    sys.stdout.write(text + '\n')
    sys.stdout.flush()


DEFAULTS = dict(
    enabled=False,
    lease='soulnear',
    me=None,
    ttl_seconds=18.0,
    fence_seconds=9.0,
    renew_seconds=2.0,
    poll_seconds=1.0,
    stop_grace_seconds=3.0,
    docker_margin_seconds=2.0,
    state_file='/run/soulnear-leader/state.json',
    log_file=None,
    bot_stop_timeout=defaults.BOT_STOP_TIMEOUT,
    restart_backoff_max_seconds=60,
)
START_MARGIN = 2.0      # a bot is started only with this much of the fence deadline left
STATE_FRESH = 15.0      # a state file older than this (boot-time seconds) is a leader that stopped working


class LeaderError(Exception):
    """A setting that cannot work, or a leader that cannot start; the message names the fix."""


class NoAnswer(Exception):
    """The database did not answer a lease query in time (its connection was cut from this side)."""


def boot_id():
    try:
        with open('/proc/sys/kernel/random/boot_id') as handle:
            return handle.read().strip()
    except OSError:
        return ''


def local_now():
    return datetime.now().astimezone().isoformat(timespec='seconds')


def settings_of(raw):
    """The leader's settings (leader.json) over DEFAULTS, checked: every problem in one LeaderError."""
    s = dict(DEFAULTS)
    s.update(dict((k, v) for k, v in (raw or {}).items() if v is not None and not k.startswith('_')))
    problems = []
    for key in ('ttl_seconds', 'fence_seconds', 'renew_seconds', 'poll_seconds', 'stop_grace_seconds',
                'docker_margin_seconds', 'bot_stop_timeout', 'restart_backoff_max_seconds'):
        try:
            s[key] = float(s[key])
            if not 0 < s[key] < 86400:
                raise ValueError
        except (TypeError, ValueError):
            problems.append('%s is %r: a number of seconds above 0' % (key, s.get(key)))
    if not lease.valid_name(s['lease']):
        problems.append('lease is %r: letters, digits and _ . : / -, at most 63 characters' % s['lease'])
    if not s['me'] or not str(s['me']).strip() or str(s['me']) == lease.ANY:
        problems.append('me (this host\'s name in the lease, its inventory_hostname) is missing')
    if not s['state_file'] or not os.path.isabs(str(s['state_file'])):
        problems.append('state_file is %r: an absolute path' % s['state_file'])
    if not problems:
        margin = s['ttl_seconds'] - s['fence_seconds'] - s['stop_grace_seconds']
        if margin < s['docker_margin_seconds']:
            problems.append('ttl_seconds %g must exceed fence_seconds %g + stop_grace_seconds %g by at least %g s '
                            '(the time Docker needs to stop the bot): a standby could start its bot while the fenced '
                            'one still polls' % (s['ttl_seconds'], s['fence_seconds'], s['stop_grace_seconds'],
                                                 s['docker_margin_seconds']))
        if s['fence_seconds'] < 2 * s['renew_seconds']:
            problems.append('fence_seconds %g must be at least twice renew_seconds %g (one missed renewal must not '
                            'fence the bot)' % (s['fence_seconds'], s['renew_seconds']))
        if s['poll_seconds'] > s['renew_seconds']:
            problems.append('poll_seconds %g must not exceed renew_seconds %g'
                            % (s['poll_seconds'], s['renew_seconds']))
    if problems:
        raise LeaderError('the leader\'s settings cannot work: %s. Fix: the monitoring_leader_* variables (or '
                          'leader.json)' % '; '.join(problems))
    s['me'] = str(s['me'])
    return s


def answer_seconds(settings):
    """How long the leader waits for the database: connecting, and each lease query (a third of the fence time, at
    most 3 s and at least libpq's minimum of 2 s)."""
    return max(2, int(min(3.0, settings['fence_seconds'] / 3.0)))


def leader_connect_kwargs(conn_params, settings):
    """psycopg2.connect() arguments for the leader: short timeouts everywhere (a cut network is noticed by
    tcp_user_timeout and the keepalives, a stuck server by statement_timeout; Leader.call_db bounds the rest)."""
    wait = answer_seconds(settings)
    kwargs = connect_kwargs(dict(conn_params, connect_timeout=wait), application_name='soulnear-leader')
    kwargs.update(keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=2,
                  tcp_user_timeout=wait * 1000,
                  options='-c statement_timeout=%d -c lock_timeout=%d -c idle_in_transaction_session_timeout=%d'
                  % (wait * 1000, wait * 1000, wait * 1000))
    return kwargs


# -- the state file: what the leader of this host is doing, for the safe redeploy and the reports ------------------

def write_state(path, state):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, '.%s.%d' % (os.path.basename(path), os.getpid()))
    with open(tmp, 'w') as handle:
        json.dump(state, handle, sort_keys=True)
    os.replace(tmp, path)


def read_state(path, now=None):
    """The leader's state on this host, with `alive` (its process runs, this boot, written within STATE_FRESH s),
    `age` and `deadline_in` (seconds of the fence deadline left, None unless active); None without a state file."""
    try:
        with open(path) as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    now = boottime() if now is None else now
    same_boot = state.get('boot_id') == boot_id()
    state['age'] = round(now - float(state.get('updated') or 0), 3) if same_boot else None
    state['alive'] = bool(same_boot and deploy_lock.pid_alive(state.get('pid')) and state['age'] is not None
                          and state['age'] <= STATE_FRESH)
    deadline = state.get('deadline')
    state['deadline_in'] = round(float(deadline) - now, 3) if same_boot and deadline else None
    return state


def may_start(path, margin=START_MARGIN):
    """(True, why) when the bot may be started on this host now: its leader runs and holds the lease with at least
    margin seconds before its fence deadline; else (False, why)."""
    state = read_state(path)
    if state is None:
        return False, 'no leader runs on this host (no state file %s): the soulnear-leader service starts it' % path
    if not state['alive']:
        return False, 'the leader of this host is not running (its state file %s is %s)' % (
            path, 'from an earlier boot' if state['age'] is None else '%.0f s old' % state['age'])
    if state.get('role') != 'active':
        return False, 'this host stands by: the bot lease is %s' % (
            'held by %s' % state['holder'] if state.get('holder') else 'held by nobody')
    if state['deadline_in'] is None or state['deadline_in'] < margin:
        return False, 'this host\'s leader has not renewed the lease for too long (fence deadline in %s s)' % (
            state['deadline_in'],)
    return True, 'this host holds the bot lease (generation %s, %.1f s before its fence deadline)' % (
        state.get('generation'), state['deadline_in'])


# -- a deploy swapping the bot -------------------------------------------------------------------------------------
# The leader leaves the bot alone while the safe redeploy swaps it (stop -> migrate -> start, or a rollback): the
# module marks its run in a file next to the deploy lock. A marker whose process is gone (a killed run) is ignored.
LEAVE_TO_DEPLOY = ('deploy', 'redeploy', 'rollback', 'migrate')  # lock operations that touch the bot only by a swap


def swap_marker(lock_dir):
    return os.path.abspath(lock_dir).rstrip('/') + '.swap'


def _process_start(pid):
    """The start time of process pid (clock ticks since boot, /proc/<pid>/stat field 22), or None: with the boot id
    it tells a swapping run from another process that got its pid after it was killed."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return int(handle.read().rsplit(')', 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def swapping(lock_dir):
    """Mark a safe redeploy's run for the leader of this host (see swap_in_progress)."""
    path = swap_marker(lock_dir)
    pid = os.getpid()
    write_state(path, dict(pid=pid, start=_process_start(pid), boot_id=boot_id(), since=boottime()))
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def swap_in_progress(lock_dir):
    """The pid of a safe redeploy swapping the bot on this host now, or None: a marker of another boot, of a process
    that is gone (a killed run) or whose pid another process has now, or one that cannot be read, is ignored."""
    try:
        with open(swap_marker(lock_dir)) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get('boot_id') != boot_id():
        return None
    pid = data.get('pid')
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not deploy_lock.pid_alive(pid):
        return None
    if data.get('start') is not None and _process_start(pid) not in (None, data['start']):
        return None
    return pid


def watchdog_main(argv=None):
    """The watchdog (leader_bot.py) for a leader started before it moved there: it spawns it from here until it
    restarts."""
    return bot_watchdog_main(argv)


# -- the leader ---------------------------------------------------------------------------------------------------

DB_ERRORS = (psycopg2.Error, lease.LeaseError, NoAnswer) if psycopg2 is not None else (lease.LeaseError, NoAnswer)


class Leader:
    """One bot host's leader: run() until stop() (SIGTERM) or max_seconds."""

    def __init__(self, settings, connection, bot_name, lock_dir=None, lock_ttl_minutes=None, maintenance_file=None,
                 alert_config=None, log=None, clock=boottime, sleep=time.sleep):
        self.s = settings_of(settings)
        if not bot_name:
            raise LeaderError('no bot container is configured on this host (soulnear.json names none): the leader '
                              'runs on bot hosts only')
        self.conn_kwargs = leader_connect_kwargs(connection, self.s)
        self.answer = answer_seconds(self.s)
        self.ensured = False
        self.bot = Bot(bot_name, self.s['bot_stop_timeout'], self.s['stop_grace_seconds'])
        self.lock_dir = lock_dir
        self.lock_ttl_minutes = lock_ttl_minutes or deploy_lock.DEFAULT_TTL_MINUTES
        self.maintenance_file = maintenance_file
        self.alert_config = alert_config or {}
        self._log = log or _stdout_line
        self.clock = clock
        self.sleep = sleep
        self.me, self.name = self.s['me'], self.s['lease']
        self.ttl, self.fence_after = self.s['ttl_seconds'], self.s['fence_seconds']
        self.settle = self.s['fence_seconds'] + self.s['stop_grace_seconds']
        self.conn = None
        self.role = 'standby'
        self.generation = None        # the generation this host holds (active, stepping down)
        self.last_ok = None           # boot time the last successful renewal (or take) was SENT
        self.next_db = 0.0
        self.watch_start = None       # boot time since which every poll of the lease was answered
        self.seen = None              # (holder, generation) last read
        self.seen_since = None        # boot time that (holder, generation) was first seen in this watch
        self.row = None               # the lease as last read
        self.db_error = None
        self.stopping = False
        self.step_down = None         # (offer, why) while handing the bot over
        self.action = None            # (name, thread) of the bot action in progress
        self.bot_state = {}
        self.next_inspect = 0.0
        self.not_running_since = None
        self.next_start = 0.0
        self.backoff = 0.0
        self.running_since = None
        self.announce = None          # what to say once the bot runs after a take
        self.hold_said = None
        self.events = []
        self.watchdog = Watchdog(bot_name, self.s['stop_grace_seconds'], self.log)
        self.started = clock()

    # -- plumbing -----------------------------------------------------------------------------------------------
    def log(self, text):
        line = '%s %s: %s' % (local_now(), self.me, text)
        self._log(line)
        if self.s.get('log_file'):
            try:
                append_line(self.s['log_file'], line)
            except OSError:
                pass

    def notify(self, subject, text):
        """An alert through the deployment's alert hook, in the background (never slows the loop)."""
        self.log('ALERT %s' % subject)
        if not any(self.alert_config.get(k) for k in ('command', 'webhook_url', 'telegram_token')):
            return

        def send():
            errors = alert.send(self.alert_config, subject, text)
            if errors:
                self.log('alert not delivered: %s' % '; '.join(errors))
        threading.Thread(target=send, daemon=True).start()

    def stop(self, *_args):
        self.stopping = True

    def call_db(self, what, func, *args):
        """func(connection, *args) with an answer within self.answer seconds. libpq has no client-side query timeout:
        a middlebox that acknowledges packets but never forwards them would hang a query for ever (keepalives and
        tcp_user_timeout see a live peer). So the query runs in a thread, and one that does not answer in time has its
        socket shut down from here, which ends the query with an error; the connection is dropped."""
        if self.conn is None or self.conn.closed:
            self.conn = psycopg2.connect(**self.conn_kwargs)
            self.conn.autocommit = True
            self.ensured = False
        conn, ensure, box = self.conn, not self.ensured, {}

        def work():
            try:
                if ensure:
                    lease.ensure(conn, self.name)
                box['value'] = func(conn, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop below
                box['error'] = exc
        thread = threading.Thread(target=work, name='lease: %s' % what, daemon=True)
        thread.start()
        thread.join(self.answer)
        if thread.is_alive():
            self.conn = None
            try:
                sock = socket.socket(fileno=os.dup(conn.fileno()))
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except (OSError, psycopg2.Error):
                pass
            thread.join(1.0)
            raise NoAnswer('no answer to the lease %s within %d s' % (what, self.answer))
        if 'error' in box:
            raise box['error']
        self.ensured = True
        return box['value']

    def db_failed(self, exc):
        text = describe_error(exc) if isinstance(exc, psycopg2.Error) else str(exc)
        if text != self.db_error:
            self.log('the database does not answer: %s' % text)
        self.db_error = text
        self.watch_start = self.seen = self.seen_since = None
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        self.conn = None

    def db_ok(self):
        if self.db_error:
            self.log('the database answers again')
        self.db_error = None

    def busy(self):
        return self.action is not None and self.action[1].is_alive()

    def in_background(self, what, func):
        def work():
            try:
                func()
            except Exception as exc:  # noqa: BLE001 - logged; the loop decides again at its next tick
                self.log('%s failed: %s' % (what, exc))
        thread = threading.Thread(target=work, name=what, daemon=True)
        self.action = (what, thread)
        thread.start()

    def hold(self):
        """Why the leader must not start the bot now (a deploy holds the lock, an operator paused the monitor)."""
        if self.maintenance_file:
            from .monitor import maintenance  # noqa: PLC0415 - monitor imports checks; only needed here
            paused = maintenance(self.maintenance_file)
            if paused:
                return 'the monitor is paused (%s)' % paused['reason']
        if self.lock_dir:
            swapper = swap_in_progress(self.lock_dir)
            if swapper:
                return 'a deploy swaps the bot (safe_redeploy, pid %s)' % swapper
            try:
                held = deploy_lock.status(self.lock_dir, self.lock_ttl_minutes)
            except OSError:
                return None
            record = held['record'] or {}
            # A deploy touches the bot only in its swap (above); a restore, a clean redeploy or an upgrade stops it
            # for longer, so the bot waits for the lock.
            if held['held'] and not held['stale'] and record.get('operation') not in LEAVE_TO_DEPLOY:
                return 'the deploy lock is held (%s by %s)' % (
                    record.get('operation') or 'an operation', record.get('holder') or 'unknown')
        return None

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self, max_seconds=None):
        self.log('leader of lease %s starting: lease time %gs, fence after %gs, renewal every %gs, bot %s'
                 % (self.name, self.ttl, self.fence_after, self.s['renew_seconds'], self.bot.name))
        self.watchdog.start()
        self.fence_first()
        tick = min(0.5, self.s['poll_seconds'] / 2.0)
        ends = None if max_seconds is None else self.clock() + max_seconds
        try:
            while True:
                try:
                    self.tick()
                except (containers.DockerError, OSError) as exc:
                    # Docker or a file did not answer: said, and decided again at the next tick. Safety does not
                    # depend on this loop alone: the watchdog fences at the deadline it was last given.
                    self.log('this tick failed: %s' % exc)
                if self.stopping:
                    break  # shutdown() hands the bot over
                if ends is not None and self.clock() >= ends:
                    self.stopping = True
                self.sleep(tick)
        finally:
            self.shutdown()
        return 0

    def fence_first(self):
        """A leader that starts holds nothing yet: a bot running here now runs unfenced (left by a leader that
        died): stop it before anything else."""
        try:
            state = self.bot.state()
        except containers.DockerError as exc:
            raise LeaderError('cannot inspect the bot container %s: %s' % (self.bot.name, exc)) from None
        if state['running']:
            self.log('the bot %s runs although this leader holds no lease yet: stopping it first' % self.bot.name)
            self.bot.stop(self.s['stop_grace_seconds'])

    def tick(self):
        now = self.clock()
        if self.role in ('active', 'stepping_down'):
            if now >= self.next_db:
                self.next_db = now + self.s['renew_seconds']
                self.renew()
            if self.role in ('active', 'stepping_down') and self.clock() - self.last_ok > self.fence_after:
                self.fence('no renewal of the lease for %.1f s (the database or the network to it is down)'
                           % (self.clock() - self.last_ok))
        elif now >= self.next_db:
            self.next_db = now + self.s['poll_seconds']
            self.poll()
        if self.clock() >= self.next_inspect or self.role == 'stepping_down':
            self.next_inspect = self.clock() + self.s['poll_seconds']
            try:
                self.bot_state = self.bot.state()
            except containers.DockerError as exc:
                self.bot_state = dict(running=False, exists=False, status='unknown: %s' % exc)
        if self.role == 'active':
            self.supervise()
        elif self.role == 'stepping_down':
            self.continue_step_down()
        elif self.bot_state.get('running') and not self.busy():
            self.log('the bot %s runs on this standby host (the lease is %s): stopping it'
                     % (self.bot.name, 'held by %s' % self.seen[0] if self.seen and self.seen[0] else 'not held'))
            self.bot.stop(self.s['stop_grace_seconds'])
        if self.role == 'standby' and self.stopping:
            return
        self.write()

    def renew(self):
        sent = self.clock()
        try:
            renewed = self.call_db('renewal', lease.renew, self.name, self.me, self.generation, self.ttl)
        except DB_ERRORS as exc:
            self.db_failed(exc)
            self.watchdog.send(self.last_ok + self.fence_after)
            return
        self.db_ok()
        if renewed is None:
            row = self.read_quietly()
            if row and row['holder'] == self.me and row['generation'] > self.generation:
                # A renewal whose answer was lost had been applied: only this host moves its own generation on.
                self.log('a renewal whose answer was lost had been applied (generation %d); carrying on'
                         % row['generation'])
                self.generation = row['generation']
                self.next_db = self.clock()
                return
            self.lose('the lease is not this host\'s any more (now %s)' % lease.describe(row, self.me))
            return
        self.generation, handover_to, handover_by = renewed
        self.last_ok = sent
        self.watch_start = self.watch_start or sent
        self.watchdog.send(self.last_ok + self.fence_after)
        if handover_to and handover_to != self.me and self.role == 'active' and not self.step_down:
            self.begin_step_down(handover_to, 'a failover to %s was asked by %s' % (
                'any other host' if handover_to == lease.ANY else handover_to, handover_by or 'someone'))

    def read_quietly(self):
        try:
            return self.call_db('read', lease.read, self.name)
        except DB_ERRORS:
            return None

    def poll(self):
        now = self.clock()
        try:
            row = self.call_db('read', lease.read, self.name)
            if row is None:
                self.ensured = False  # someone deleted the row: it is made again (nobody holding it) at the next call
        except DB_ERRORS as exc:
            self.db_failed(exc)
            return
        self.db_ok()
        if self.watch_start is None:
            self.watch_start = now
        if row is None:
            return
        self.row = row
        seen = (row['holder'], row['generation'])
        if seen != self.seen:
            self.seen, self.seen_since = seen, now
        wait = self.wait_before_take(row)
        if wait is not None and wait <= 0:
            self.take(row)

    def wait_before_take(self, row):
        """Seconds this standby still waits before it may take the lease (<= 0: now); None: not for it."""
        if self.watch_start is None or self.seen_since is None:
            return None  # not watching: the database did not answer the last poll
        now = self.clock()
        watched = now - self.watch_start
        unchanged = now - self.seen_since
        holder, offered = row['holder'], row['offered_to']
        if self.stopping or not self.bot_state.get('exists'):
            return None  # stopping, or no bot container here to run (yet): the lease is for a host that can
        if holder and holder != self.me:
            return self.ttl - unchanged
        if holder is None and offered:
            for_me = offered == self.me or (offered == lease.ANY and row['released_by'] != self.me)
            if not for_me:
                return self.ttl - unchanged  # kept for its host: taken by the others only when it does not come
        return self.settle - watched

    def take(self, row):
        sent = self.clock()
        previous = row['holder'] or row['released_by']
        try:
            generation = self.call_db('take', lease.take, self.name, self.me, row['generation'], self.ttl)
        except DB_ERRORS as exc:
            self.db_failed(exc)
            return
        if generation is None:
            return  # another host was faster; the next poll says who
        self.role, self.generation, self.last_ok = 'active', generation, sent
        self.next_db = sent + self.s['renew_seconds']
        self.watchdog.send(self.last_ok + self.fence_after)
        self.backoff, self.next_start, self.not_running_since = 0.0, 0.0, None
        if row['holder'] and row['holder'] != self.me:
            how = 'took the lease over from %s, silent for %.1f s' % (row['holder'], self.clock() - self.seen_since)
        elif row['holder'] == self.me:
            how = 'took back the lease this host held before (generation %d)' % row['generation']
        elif row['released_by']:
            how = 'took the lease %s released' % row['released_by']
        else:
            how = 'took the lease (nobody held it)'
        self.log('ACTIVE: %s; generation %d' % (how, generation))
        self.announce = (previous, how, self.clock())
        self.seen = self.seen_since = None  # a standby's watch starts over after this host held the lease

    def lose(self, why):
        self.log('LOST the lease: %s; stopping the bot' % why)
        self.generation = self.last_ok = None
        self.role = 'standby'
        self.step_down = None
        self.seen = self.seen_since = None
        self.watchdog.send(0.0)
        self.bot.stop(self.s['stop_grace_seconds'])
        self.notify('%s lost the bot lease' % self.me, '%s: %s. Its bot was stopped.' % (self.me, why))

    def fence(self, why):
        self.log('FENCED: %s; stopping the bot %s (SIGKILL after %g s) before the lease can expire'
                 % (why, self.bot.name, self.s['stop_grace_seconds']))
        self.bot.stop(self.s['stop_grace_seconds'])
        self.role = 'standby'
        self.step_down = None
        self.watchdog.send(0.0)
        self.watch_start = self.seen = self.seen_since = None
        self.notify('%s fenced its bot' % self.me,
                    '%s could not renew the bot lease for %g s (%s), so it stopped its bot: another bot host takes '
                    'the lease after %g s of silence, or this one takes it back when the database answers again.'
                    % (self.me, self.fence_after, self.db_error or why, self.ttl))

    def supervise(self):
        """This host holds the lease: the bot runs, or is started (not while a deploy or a pause holds it)."""
        if self.busy():
            return
        state, now = self.bot_state, self.clock()
        if state.get('running'):
            self.not_running_since = None
            self.running_since = self.running_since or now
            if now - self.running_since > 60:
                self.backoff = 0.0
            if self.announce:
                previous, how, since = self.announce
                self.announce = None
                self.notify('the bot runs on %s now' % self.me,
                            '%s is the active bot host: it %s, and its bot %s runs since %.1f s after the take. '
                            'Previous: %s.' % (self.me, how, self.bot.name, now - since, previous or 'none'))
            return
        self.running_since = None
        held = self.hold()
        if not state.get('exists'):
            if not held:  # not a deploy swapping containers: hand the lease to a host that has a bot
                self.begin_step_down(lease.ANY, 'the bot container %s does not exist on this host' % self.bot.name)
            return
        if held:
            if self.hold_said != held:
                self.hold_said = held
                self.log('not starting the bot: %s' % held)
            return
        self.hold_said = None
        if self.not_running_since is None:
            self.not_running_since = now  # seen stopped once: make sure (an operator's restart passes through here)
            return
        if now - self.not_running_since < 1.0 or now < self.next_start:
            return
        if self.last_ok + self.fence_after - now < START_MARGIN:
            return
        if self.backoff:
            self.log('the bot %s is %s (exit code %s): starting it again' % (
                self.bot.name, state.get('status'), state.get('exit_code')))
        else:
            self.log('starting the bot %s' % self.bot.name)
        self.next_start = now + max(self.backoff, 2.0)
        self.backoff = min(self.s['restart_backoff_max_seconds'], max(5.0, self.backoff * 2))
        self.in_background('starting the bot', self.bot.start)

    def begin_step_down(self, offer, why):
        self.log('handing over: %s; stopping the bot %s (up to %d s) before releasing the lease'
                 % (why, self.bot.name, self.bot.stop_timeout))
        self.role = 'stepping_down'
        self.step_down = (offer, why, self.clock())
        self.in_background('stopping the bot for the handover', self.bot.stop)

    def continue_step_down(self):
        if self.busy() or self.bot_state.get('running'):
            if not self.busy() and self.bot_state.get('running'):
                self.in_background('stopping the bot for the handover', self.bot.stop)
            return
        offer, why, since = self.step_down
        try:
            released = self.call_db('release', lease.release, self.name, self.me, self.generation, offer)
        except DB_ERRORS as exc:
            self.db_failed(exc)
            return
        self.role, self.step_down = 'standby', None
        self.watchdog.send(0.0)
        self.generation = self.last_ok = None
        self.seen = self.seen_since = None
        if released:
            self.log('RELEASED the lease (%s) after the bot stopped in %.1f s; offered to %s'
                     % (why, self.clock() - since, 'any other host' if offer == lease.ANY else offer))
        else:
            self.log('the lease was not this host\'s any more when releasing it (%s)' % why)

    def shutdown(self):
        """The leader stops: a bot still running is stopped and the lease released for another host."""
        try:
            if self.role == 'active':
                self.begin_step_down(lease.ANY, 'the leader stops')
            deadline = self.clock() + self.bot.stop_timeout + 20
            while self.role == 'stepping_down' and self.clock() < deadline:
                self.tick()
                self.sleep(0.25)
            if self.role != 'standby' or self.bot_state.get('running'):
                self.bot.stop(self.s['stop_grace_seconds'])
        finally:
            self.watchdog.send(0.0)
            self.watchdog.close()
            if self.conn is not None:
                try:
                    self.conn.close()
                except psycopg2.Error:
                    pass
            self.write(stopped=True)
            self.log('leader stopped')

    def write(self, stopped=False):
        now = self.clock()
        state = dict(pid=os.getpid(), me=self.me, lease=self.name, boot_id=boot_id(), updated=now,
                     updated_at=local_now(), role='stopped' if stopped else self.role, generation=self.generation,
                     deadline=(self.last_ok + self.fence_after) if self.role != 'standby' and self.last_ok else None,
                     holder=(self.me if self.role != 'standby' else (self.seen[0] if self.seen else None)),
                     row=lease.jsonable(self.row) if self.role == 'standby' else None, db_error=self.db_error,
                     watching_for=round(now - self.watch_start, 1) if self.watch_start is not None else None,
                     bot=dict((k, self.bot_state.get(k)) for k in ('running', 'status', 'exit_code', 'health')),
                     bot_name=self.bot.name, ttl_seconds=self.ttl, fence_seconds=self.fence_after,
                     hold=self.hold_said, host=socket.gethostname())
        if self.role == 'standby' and self.row is not None and not stopped:
            wait = self.wait_before_take(self.row)
            state['takes_over_in'] = None if wait is None else round(max(0.0, wait), 1)
        try:
            write_state(self.s['state_file'], state)
        except OSError as exc:
            if self.events[-1:] != ['state']:
                self.log('cannot write the state file %s: %s' % (self.s['state_file'], exc))
                self.events.append('state')


def run_leader(config, log=None):
    """soulnear-health leader run: the soulnear-leader service (config: monitor.Config with .leader)."""
    settings = config.leader
    if not settings or not settings.get('enabled'):
        raise LeaderError('the leader is not enabled on this host (no %s, or enabled: false): with one bot host, or '
                          'app_instances: all, every bot host runs its bot and no leader is needed'
                          % config.leader_path)
    db = config.connection()
    leader = Leader(settings, db, config.bot_container or (config.base.get('bot') or {}).get('container'),
                    lock_dir=config.lock_dir, lock_ttl_minutes=config.lock_ttl_minutes,
                    maintenance_file=config.monitoring.get('maintenance_file'),
                    alert_config=config.base.get('alert'), log=log)
    signal.signal(signal.SIGTERM, leader.stop)
    signal.signal(signal.SIGINT, leader.stop)
    return leader.run()
