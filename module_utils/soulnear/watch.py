# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the monitor as soon as a container of the deployment dies, not at its next minute (issue 22).

`soulnear-health watch` (the systemd service soulnear-watch, written by the monitoring role) follows
`docker events` for the `die` events of the database and bot containers and starts one monitor run
(soulnear-health.service) for each, so a bot killed from outside is restarted within seconds instead of at the
timer's next run. The monitor itself decides what a death means (a deploy's or an operator's stop: nothing; an
exit nobody asked for: a restart at once, with an alert when it starts and when it ends). When the event stream
ends (the Docker daemon restarted) the watcher exits and systemd starts it again.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import subprocess

from . import containers

EVENT_FORMAT = '{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}'


def events_command(names, since=None):
    """The docker events command for the die events of the named containers (since: a Unix time to replay them
    from, so nothing between the start of the watcher and now is missed)."""
    args = [containers.docker_binary(), 'events', '--filter', 'type=container', '--filter', 'event=die',
            '--format', EVENT_FORMAT]
    if since is not None:
        args += ['--since', '%d' % int(since)]
    for name in names:
        args += ['--filter', 'container=%s' % name]
    return args


def parse(line):
    """(container name, exit code or None) of one event line; None for a line that is not one."""
    parts = line.strip().split()
    if not parts:
        return None
    code = parts[1] if len(parts) > 1 else None
    return parts[0], int(code) if code and code.lstrip('-').isdigit() else None


def follow(names, on_death, log=print, popen=subprocess.Popen, since=None):
    """Call on_death(name, exit_code) for every die event of the named containers until the stream ends; returns
    how many there were. Nothing to watch (no container configured): returns 0 at once."""
    names = [n for n in names if n]
    if not names:
        log('soulnear-health watch: no container to watch (soulnear.json names none)')
        return 0
    proc = popen(events_command(names, since), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                 universal_newlines=True, bufsize=1)
    seen = 0
    try:
        for line in proc.stdout:
            event = parse(line)
            if event is None:
                continue
            seen += 1
            log('%s died (exit code %s): running the monitor now' % event)
            on_death(*event)
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
    return seen


def start_monitor_unit(unit='soulnear-health.service'):
    """One monitor run through systemd (the same unit the timer starts, so two runs never overlap)."""
    def start(_name, _code):
        subprocess.run(['systemctl', 'start', '--no-block', unit], check=False, timeout=30)
    return start
