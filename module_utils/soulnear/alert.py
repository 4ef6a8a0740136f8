# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The alert hook shared by the health monitor and the backup command.

Three channels, any combination, configured in /etc/soulnear/soulnear.json
("alert" section, written by the soulnear role):
- command: run with the message on stdin and SOULNEAR_ALERT_SUBJECT set;
- webhook_url: receives a JSON POST {"subject", "text", "host"};
- telegram_token + telegram_chat_id: a message to the admins' Telegram chat.
An alert that cannot be delivered is returned as an error string, never raised:
the caller logs it and carries on with its own job.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import subprocess
from urllib import request


def _post_json(url, payload, timeout):
    data = json.dumps(payload).encode('utf-8')
    req = request.Request(url, data=data, headers={'Content-Type': 'application/json'}, method='POST')
    with request.urlopen(req, timeout=timeout) as response:  # noqa: S310 - the URL is the operator's setting
        return response.status


def send(alert_config, subject, text, timeout=10):
    """Deliver an alert through every configured channel; returns a list of delivery errors."""
    config = alert_config or {}
    host = socket.gethostname()
    message = '[%s] %s\n%s' % (host, subject, text)
    errors = []
    if config.get('command'):
        try:
            proc = subprocess.run(config['command'], shell=True, input=message.encode('utf-8'), timeout=timeout,
                                  capture_output=True, check=False, env={
                                      'SOULNEAR_ALERT_SUBJECT': subject,
                                      'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'})
            if proc.returncode != 0:
                errors.append('alert command exited %d: %s' % (proc.returncode,
                                                               proc.stderr.decode('utf-8', 'replace').strip()[:200]))
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append('alert command failed: %s' % exc)
    if config.get('webhook_url'):
        try:
            _post_json(config['webhook_url'], dict(subject=subject, text=text, host=host), timeout)
        except Exception as exc:  # noqa: BLE001 - any delivery failure is reported, not raised
            errors.append('alert webhook failed: %s' % exc)
    if config.get('telegram_token') and config.get('telegram_chat_id'):
        url = 'https://api.telegram.org/bot%s/sendMessage' % config['telegram_token']
        try:
            _post_json(url, dict(chat_id=config['telegram_chat_id'], text=message[:4000]), timeout)
        except Exception as exc:  # noqa: BLE001 - any delivery failure is reported, not raised
            # The token is part of the URL: never echo the URL back.
            errors.append('telegram alert failed: %s' % str(exc).replace(config['telegram_token'], '***'))
    return errors
