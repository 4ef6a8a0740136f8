# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shape of one health check's answer, shared by every check (checks.py, pitr.py, patroni.py):
{ok, value, message[, warning]}; a failed check's message names the fix."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def check(ok, value, message, warning=None):
    result = dict(ok=bool(ok), value=value, message=message)
    if warning:
        result['warning'] = warning
    return result
