# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bot container as soulnear-leader drives it, and the watchdog that binds the bot's lifetime to its leader.

The watchdog is a child process of the leader (its own session) fed the fence deadline over a pipe after every
renewal: it stops the bot (SIGTERM, SIGKILL after the stop grace) when the deadline passes without a newer one (a
leader that hangs) or when the pipe closes (a leader that died, even by SIGKILL). See leader.py for the rules.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import select
import signal
import subprocess
import sys
import time

from . import containers


def boottime():
    """Seconds on CLOCK_BOOTTIME: monotonic (no wall-clock step moves it) and counting a suspended machine's sleep,
    the same for every process of this boot."""
    clock = getattr(time, 'CLOCK_BOOTTIME', None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


class Bot:
    """The bot container, by name (a deploy swaps the container behind the name)."""

    def __init__(self, name, stop_timeout, grace):
        self.name = name
        self.stop_timeout = int(stop_timeout)
        self.grace = int(max(1, grace))

    def state(self):
        return containers.container_state(self.name)

    def start(self):
        containers.run(['start', self.name], timeout=60)

    def stop(self, timeout=None):
        """docker stop with timeout seconds before SIGKILL (default the bot's clean-stop time)."""
        seconds = self.stop_timeout if timeout is None else int(timeout)
        proc = containers.run(['stop', '-t', str(seconds), self.name], timeout=seconds + 30, check=False)
        if proc.returncode != 0 and 'No such container' not in proc.stderr.decode('utf-8', 'replace'):
            containers.run(['kill', self.name], timeout=30, check=False)


def stop_bot_now(name, grace):
    """The fence: SIGTERM, SIGKILL after grace seconds; docker kill when docker stop itself does not answer."""
    docker = containers.docker_binary()
    try:
        subprocess.run([docker, 'stop', '-t', str(int(grace)), name], capture_output=True,
                       timeout=int(grace) + 20, check=False)
    except subprocess.TimeoutExpired:
        subprocess.run([docker, 'kill', name], capture_output=True, timeout=30, check=False)


def watchdog_main(argv=None):
    """The watchdog process: stdin carries `D <deadline>` lines (boot-time seconds; 0: nothing to enforce). It
    stops the bot when a deadline passes without a newer one, and when stdin closes (its leader died) or it gets
    SIGTERM. argv: bot container name, stop grace seconds."""
    argv = sys.argv[1:] if argv is None else argv
    name, grace = argv[0], float(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def terminated(_signum, _frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, terminated)
    fd = sys.stdin.fileno()
    deadline, fired, buffer = 0.0, True, b''

    def fence(why):
        sys.stderr.write('soulnear-leader watchdog: %s: stopping %s (SIGKILL after %g s)\n' % (why, name, grace))
        sys.stderr.flush()
        stop_bot_now(name, grace)
    try:
        while True:
            timeout = None if fired or deadline <= 0 else max(0.0, deadline - boottime())
            ready = select.select([fd], [], [], timeout)[0]
            if ready:
                data = os.read(fd, 4096)
                if not data:
                    fence('the leader is gone')
                    return 0
                buffer += data
                *lines, buffer = buffer.split(b'\n')
                for line in lines:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == b'D' and float(parts[1]) != deadline:
                        deadline, fired = float(parts[1]), float(parts[1]) <= 0
            elif not fired and deadline > 0 and boottime() >= deadline:
                fence('no renewal of the lease before the fence deadline')
                fired = True
    except SystemExit:
        fence('stopped with its leader')
        return 0


class Watchdog:
    """The leader's side of the watchdog: a child process (its own session, so a Ctrl-C of the leader does not reach
    it) fed the fence deadline; restarted when it dies."""

    def __init__(self, bot_name, grace, log):
        self.bot_name = bot_name
        self.grace = grace
        self.log = log
        self.proc = None
        self.deadline = 0.0

    def start(self):
        library = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = ('import sys; sys.path.insert(0, %r); from soulnear.leader_bot import watchdog_main; '
                'sys.exit(watchdog_main())' % library)
        self.proc = subprocess.Popen([sys.executable, '-c', code, self.bot_name, '%g' % self.grace],
                                     stdin=subprocess.PIPE, close_fds=True, start_new_session=True)
        self.send(self.deadline)

    def send(self, deadline):
        self.deadline = deadline
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.log('the watchdog exited (code %s); starting it again' % self.proc.returncode)
            self.proc = None
            self.start()
            return
        try:
            self.proc.stdin.write(b'D %.3f\n' % deadline)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.proc = None
            self.start()

    def close(self):
        """A clean exit: the bot is stopped already; the watchdog sees its stdin close and exits."""
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
