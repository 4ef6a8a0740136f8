# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the safe redeploy's parts share (redeploy.py, bot_container.py, releases.py, deploy_migrations.py): its
errors, its constants, and small functions over docker inspect data and commands."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import shlex

PREVIOUS = 'previous'
HISTORY_FILE = '.history.json'
VERSION_LABEL = 'soulnear.version'
CONFIG_LABEL = 'soulnear.config'
PRE_BACKUP = re.compile(r'^pre_(deploy|rollback|migrate)_.*\.dump$')
POLL_SECONDS = 0.5
RENEW_SECONDS = 30
LOG_TAIL = 40


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
