# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the project's roles (ansible.cfg filter_plugins).

did_you_mean: the known variable a misspelt one most likely meant, for the preflight's refusal of unknown variables
(`postgres_max_conections` -> `postgres_max_connections`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib


def did_you_mean(name, candidates):
    """The closest of candidates to name (difflib, cutoff 0.75), or '' when none is close."""
    found = difflib.get_close_matches(str(name), [str(c) for c in candidates or []], n=1, cutoff=0.75)
    return found[0] if found else ''


class FilterModule(object):
    def filters(self):
        return {'did_you_mean': did_you_mean}
