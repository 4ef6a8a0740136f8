# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks every module runs on its options before it changes anything (issue 23).

- A check takes a value and raises Invalid (what is allowed, why not, the fix) when the value is not allowed:
  numbers (in_range, positive, seconds, percent), paths (nonempty_path), regular expressions (regexes), URLs (url),
  names (name: Docker containers, volumes, networks, images and tags, pgBackRest stanzas, PostgreSQL settings;
  pg_name: databases, roles, tables), backup file name patterns (file_pattern) and PostgreSQL memory sizes (memory).
- Options runs checks over a module's parameters and collects every problem: the option, its value (a secret's is
  never shown), what is allowed and the fix. fail(module) ends the task with one message naming them all and
  changed=false, before the module did anything.
- connection() checks the connection options every database module shares; backup_settings() the backup settings
  pg_backup and pg_restore share (backup_settings.py).

No Ansible import: the host commands can run the same checks.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import math
import os
import re
from urllib.parse import urlsplit

from .backup_files import BackupError, pattern_regex

TEN_YEARS = 10 * 365 * 24 * 3600
# PostgreSQL keeps its timeouts (lock_timeout, statement_timeout) as whole milliseconds in a 32-bit integer.
PG_TIMEOUT_MAX_SECONDS = 2147483
NAMEDATALEN = 63  # bytes of a PostgreSQL identifier; a longer one is cut silently
# space_margin: the free space a backup or restore needs is the database size times it (a million times is still a
# number: a test asks for it to see a refusal; 1e308 times is infinity).
MAX_SPACE_MARGIN = 1000000
RESERVED_ROLES = ('public', 'none', 'current_user', 'session_user', 'current_role')


class Invalid(Exception):
    """A value that is not allowed: `allowed` says what is (a noun phrase), `why` what is wrong with this one when
    that is more than 'not allowed', `fix` how to put it right when that is more than 'set it to something allowed'."""

    def __init__(self, allowed, why=None, fix=None):
        Exception.__init__(self, allowed)
        self.allowed = allowed
        self.why = why
        self.fix = fix


# -- numbers ------------------------------------------------------------------------------------------------------

def _number_text(value):
    return ('%d' % value) if float(value).is_integer() and abs(value) < 1e15 else ('%g' % value)


def in_range(value, low=None, high=None, unit='', above=False):
    """low <= value <= high (low < value with above=True); either bound may be None. Never a bool, NaN or infinity."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value)
    if not bad:
        bad = (low is not None and (value <= low if above else value < low)) or (high is not None and value > high)
    if not bad:
        return
    whole = isinstance(value, int) and not isinstance(value, bool)
    if whole and above and low is not None and float(low).is_integer():
        low, above = int(low) + 1, False  # a whole number above 0 is one of at least 1
    unit = ' ' + unit if unit else ''
    text = 'a whole number' if whole else 'a number'
    if low is not None:
        text += ' %s %s' % ('above' if above else 'of at least', _number_text(low))
    if high is not None:
        text += '%s at most %s' % (' and' if low is not None else ' of', _number_text(high))
    text += unit
    raise Invalid(text)


def positive(value, high=None, unit=''):
    """More than 0 (a count or size that must exist), at most high."""
    in_range(value, 0, high, unit, above=True)


def seconds(value, zero=False, high=TEN_YEARS):
    """A duration in seconds: above 0 (0 too with zero=True, where 0 means 'none' or 'no limit'), at most ten years
    (or high) - a larger one overflows the clocks and timers it is added to."""
    in_range(value, 0, high, 'seconds', above=not zero)


def percent(value, low=0):
    """A share of something, low to 100."""
    in_range(value, low, 100, 'percent')


def nonempty(value, allowed='a value that is not empty'):
    """Text that says something: not empty, not only white space."""
    if not str(value).strip():
        raise Invalid(allowed, why='it is empty')


# -- paths --------------------------------------------------------------------------------------------------------

def nonempty_path(value, kind=None, absolute=True, empty=False):
    """A path: not empty (unless empty=True, where '' switches something off), absolute (a relative one would be
    taken from whatever directory the module happens to run in), and, when it exists, of the kind given: a 'file'
    is not a directory, a 'directory' is one."""
    if empty and value == '':
        return
    text = str(value)
    what = {'file': 'an absolute path of a file', 'directory': 'an absolute path of a directory'}.get(
        kind, 'an absolute path')
    if empty:
        what += ' (or empty to switch it off)'
    if not text.strip():
        raise Invalid(what, why='it is empty (a module given an empty path works in its current directory)')
    if '\0' in text or '\n' in text:
        raise Invalid(what, why='it holds a NUL or a line break')
    if absolute and not os.path.isabs(text):
        raise Invalid(what, why='it is relative (it would be taken from the directory the module runs in)')
    if kind == 'file' and os.path.isdir(text):
        raise Invalid(what, why='it is a directory', fix='name a file, for example %s' % os.path.join(
            text.rstrip('/') or '/', 'FILE'))
    if kind == 'directory' and os.path.lexists(text) and not os.path.isdir(text):
        raise Invalid(what, why='it exists and is not a directory')


# -- patterns and URLs --------------------------------------------------------------------------------------------

def regexes(values):
    """Python regular expressions, each compiled; an empty one (it matches every line) is refused."""
    for pattern in values if isinstance(values, (list, tuple)) else [values]:
        if not isinstance(pattern, str) or pattern == '':
            raise Invalid('regular expressions that are not empty (an empty one matches every line)',
                          why='%s is empty' % json.dumps(pattern))
        try:
            re.compile(pattern)
        except re.error as exc:
            raise Invalid('Python regular expressions', why='%s is not a regular expression (%s)'
                          % (json.dumps(pattern), exc),
                          fix='correct it, or escape the characters meant literally (\\( \\[ \\. \\*)') from None


def url(value, schemes=('http', 'https')):
    """A URL of one of the schemes with a host (and a valid port when it names one)."""
    allowed = 'a %s URL with a host, for example %s://10.0.0.5:8008' % (' or '.join(schemes), schemes[0])
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise Invalid(allowed, why='it is empty or holds white space')
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise Invalid(allowed, why='it does not parse (%s)' % exc) from None
    if parts.scheme.lower() not in schemes:
        raise Invalid(allowed, why='its scheme is %s' % (parts.scheme or 'missing'))
    if not parts.hostname:
        raise Invalid(allowed, why='it names no host')


def file_pattern(value):
    """A backup file name pattern (backup_files.pattern_regex: %Y %m %d required, a plain file name)."""
    try:
        pattern_regex(value)
    except BackupError as exc:
        raise Invalid('a plain file name with %Y, %m and %d (and optionally %H %M %S) once each, for example '
                      'backup_%Y%m%d_%H%M%S.dump', why=str(exc)) from None


_MEMORY = re.compile(r'^[0-9]+(?:B|kB|MB|GB|TB)?$')


def memory(value, empty=True):
    """A PostgreSQL memory size (256MB, 1GB, 65536 for kB); '' keeps the server's setting when empty=True."""
    if empty and value == '':
        return
    if not _MEMORY.match(str(value)):
        raise Invalid('a PostgreSQL memory size: a whole number with B, kB, MB, GB or TB, for example 256MB%s'
                      % (' (or empty)' if empty else ''))


# -- names --------------------------------------------------------------------------------------------------------

_DOCKER_NAME = r'[a-zA-Z0-9][a-zA-Z0-9_.-]+'
_PATH_COMPONENT = r'[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*'
_DOMAIN = r'(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*' \
          r'[a-zA-Z0-9]))*(?::[0-9]+)?'
_TAG = r'[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}'
_DIGEST = r'[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}'
_REPOSITORY = r'(?:%s/)?%s(?:/%s)*' % (_DOMAIN, _PATH_COMPONENT, _PATH_COMPONENT)

_CHARS = 'a letter or digit, then letters, digits, "_", "." or "-"'

# kind -> (full-match regex, what is allowed, longest)
NAMES = dict(
    container=(_DOCKER_NAME, 'a Docker container name: %s (two characters or more)' % _CHARS, 255),
    volume=(_DOCKER_NAME, 'a Docker volume name: %s (two characters or more)' % _CHARS, 255),
    network=(r'[a-zA-Z0-9][a-zA-Z0-9_.-]*', 'a Docker network name: ' + _CHARS, 255),
    image=(r'%s(?::%s)?(?:@%s)?' % (_REPOSITORY, _TAG, _DIGEST),
           'a Docker image reference: [registry[:port]/]lowercase/path[:tag][@digest], for example soulnear/bot:1.2',
           255),
    repository=(_REPOSITORY, 'a Docker image repository without a tag: [registry[:port]/]lowercase/path, for '
                'example soulnear/bot', 255),
    tag=(_TAG, 'a Docker tag (also the name of a release directory): %s, or "_" first; at most 128' % _CHARS, 128),
    stanza=(r'[A-Za-z0-9][A-Za-z0-9_.-]*', 'a pgBackRest stanza: %s (it is a directory of the repository and a '
            'section of pgbackrest.conf)' % _CHARS, 64),
    user=(r'[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?',
          'an operating-system user (or uid), optionally :group, for docker exec -u', 64),
    setting=(r'[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?',
             'a PostgreSQL setting name (letters, digits and "_", one "." for an extension\'s setting)', NAMEDATALEN),
)


def _docker_image(value):
    """Docker's reference grammar: the first component is a registry only when it has a '.' or a ':' or is
    localhost (else Docker Hub, where uppercase is refused)."""
    first, _unused, rest = value.partition('/')
    return bool(rest) and ('.' in first or ':' in first or first == 'localhost')


def name(value, kind, empty=False):
    """A name of kind (NAMES); '' is allowed with empty=True (where it switches something off)."""
    pattern, allowed, longest = NAMES[kind]
    if empty and value == '':
        return
    text = str(value)
    if empty:
        allowed += ' (or empty)'
    if not text:
        raise Invalid(allowed, why='it is empty')
    if kind in ('image', 'repository') and not _docker_image(text) and text.split('/', 1)[0] != \
            text.split('/', 1)[0].lower():
        raise Invalid(allowed, why='it has uppercase letters outside a registry name')
    if len(text) > longest or not re.match(r'^(?:%s)$' % pattern, text):
        raise Invalid(allowed)


def pg_name(value, kind='database', create=False, empty=False):
    """A PostgreSQL identifier of kind database, role or table (a table optionally schema.table): not empty, at most
    63 bytes each part (a longer one is cut silently), no control characters; a role this module creates
    (create=True) is not reserved (pg_*, public, ...)."""
    allowed = 'a PostgreSQL %s name of 1 to %d bytes without control characters%s' % (
        kind, NAMEDATALEN, ', optionally schema-qualified (schema.table)' if kind == 'table' else '')
    if empty and value == '':
        return
    text = str(value)
    parts = text.split('.', 1) if kind == 'table' else [text]
    for part in parts:
        if not part:
            raise Invalid(allowed, why='it is empty' if not text else 'it has an empty part')
        if len(part.encode('utf-8')) > NAMEDATALEN:
            raise Invalid(allowed, why='it is %d bytes long; PostgreSQL would cut it to %d' % (
                len(part.encode('utf-8')), NAMEDATALEN))
        if any(ord(c) < 32 or ord(c) == 127 for c in part):
            raise Invalid(allowed, why='it holds a control character')
    if create and kind == 'role' and (text.startswith('pg_') or text.lower() in RESERVED_ROLES):
        raise Invalid(allowed + ' that PostgreSQL does not reserve', why='PostgreSQL reserves it (pg_*, %s)'
                      % ', '.join(RESERVED_ROLES))


# -- collecting the problems of a module's options ------------------------------------------------------------------

def show(value, secret=False):
    """A value as the message prints it: JSON (strings quoted, so "" is visible), cut at 120 characters."""
    if secret:
        return '(hidden)'
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    except ValueError:  # NaN and infinity are not JSON
        text = repr(value)
    return text if len(text) <= 120 else text[:117] + '...'


class Options:
    """The problems of one module's options. spec: the module's argument spec (for secrets and defaults)."""

    def __init__(self, params, spec=None):
        self.params = params
        self.spec = spec or {}
        self.problems = []

    def secret(self, option):
        return bool((self.spec.get(option.split('[', 1)[0].split('.', 1)[0]) or {}).get('no_log'))

    def add(self, option, value, exc):
        """Record a problem of option (exc an Invalid, or its allowed text)."""
        if not isinstance(exc, Invalid):
            exc = Invalid(exc)
        default = (self.spec.get(option) or {}).get('default')
        fix = exc.fix or 'set %s to %s%s' % (option, exc.allowed, ' (or leave it out: default %s)' % show(default)
                                             if default not in (None, '', [], {}) else '')
        text = '%s=%s is invalid: %sit must be %s. Fix: %s' % (
            option, show(value, self.secret(option)), exc.why + '; ' if exc.why else '', exc.allowed, fix)
        self.problems.append(dict(option=option, msg=text))

    def value(self, label, value, check, *args, **kwargs):
        """check(value, *args, **kwargs) on any value (an element of a list, a suboption) named label."""
        try:
            check(value, *args, **kwargs)
        except Invalid as exc:
            self.add(label, value, exc)
            return False
        return True

    def check(self, options, check, *args, **kwargs):
        """check(value, ...) on each of options (a name or a tuple of names) that is set (not None)."""
        ok = True
        for option in (options,) if isinstance(options, str) else options:
            if self.params.get(option) is not None:
                ok = self.value(option, self.params[option], check, *args, **kwargs) and ok
        return ok

    def each(self, option, check, *args, **kwargs):
        """check(element, ...) on every element of a list option (option[index] names the one that fails)."""
        for index, element in enumerate(self.params.get(option) or []):
            self.value('%s[%d]' % (option, index), element, check, *args, **kwargs)

    def require(self, option, allowed, why='it is not set'):
        """An option that must be set here (another option's value or the operation needs it)."""
        if self.params.get(option) in (None, '', [], {}):
            self.add(option, self.params.get(option), Invalid(allowed, why=why))

    def fail(self, module):
        """End the task when there is a problem: one message naming every one, nothing changed."""
        if self.problems:
            module.fail_json(msg='Invalid option(s), nothing was changed: %s' % ' | '.join(
                p['msg'] for p in self.problems), changed=False, invalid_options=[p['option'] for p in self.problems])


# -- groups of options several modules share ---------------------------------------------------------------------

def connection(options, database=False):
    """The connection options (pg.connection_argument_spec); database=True when login_db is required."""
    options.check('login_port', in_range, 1, 65535)
    options.check('connect_timeout', in_range, 1, 86400, 'seconds')
    options.check('retries', in_range, 0, 100)
    options.check('login_user', pg_name, 'role')
    if database and options.params.get('login_db') in ('', None):
        options.require('login_db', 'the name of the database (for example soul_bot)')
    else:
        options.check('login_db', pg_name, 'database', empty=not database)
    options.check('login_unix_socket', nonempty_path, 'directory', empty=True)
    options.check('ca_cert', nonempty_path, 'file', empty=True)  # empty: libpq's default root certificate


def compression_level(value, method, low, high):
    """A compression level within what pg_dump takes for the method (auto: what both its choices take)."""
    try:
        in_range(value, low, high)
    except Invalid as exc:
        raise Invalid(exc.allowed + ' with compression=%s' % method, why='compression=%s takes %d to %d%s' % (
            method, low, high, ' (valid for gzip and zstd, whichever auto picks)' if method == 'auto' else '')) \
            from None


def _offsite(value):
    """'' (no copy), an rsync target (user@host:/path, rsync://...) or an absolute directory path."""
    if value == '' or value.startswith('rsync://') or re.match(r'^[^/]+:', value):
        return
    try:
        nonempty_path(value, 'directory')
    except Invalid as exc:
        raise Invalid('empty, an rsync target (user@host:/path/, rsync://host/module/) or %s' % exc.allowed,
                      why=exc.why) from None


def backup_settings(options, names):
    """The backup settings (backup_settings.DEFAULTS) a module takes, named in names."""
    rules = dict(
        backup_dir=(nonempty_path, 'directory'), exec_user=(name, 'user'), client_image=(name, 'image', True),
        name_pattern=(file_pattern,), space_margin=(in_range, 0, MAX_SPACE_MARGIN), keep_daily=(in_range, 0, 100000),
        keep_weekly=(in_range, 0, 100000), keep_monthly=(in_range, 0, 100000), keep_last=(in_range, 1, 100000),
        keep_safety_backups=(in_range, 1, 100000), offsite=(_offsite,), bot_container=(name, 'container', True),
        bot_stop_timeout=(seconds,), largest_tables=(in_range, 0, 1000), maintenance_db=(pg_name, 'database'),
        maintenance_work_mem=(memory,), data_guard_file=(nonempty_path, 'file', True, True))
    for option in names:
        if option in rules:
            options.check(option, *rules[option])
    if 'owner' in names:
        options.check('owner', pg_name, 'role', empty=True)
    if 'container' in names and not options.params.get('client_image'):
        options.check('container', name, 'container')
    if 'compression_level' in names and options.params.get('compression_level') is not None:
        method = options.params.get('compression') or 'auto'
        ranges = dict(gzip=(0, 9), zstd=(1, 22), lz4=(1, 12), auto=(1, 9))
        if method == 'none':
            options.add('compression_level', options.params['compression_level'], Invalid(
                'left out with compression=none', why='compression=none takes no level',
                fix='leave compression_level out, or choose a compression'))
        elif method in ranges:
            options.check('compression_level', compression_level, method, *ranges[method])


def whole_or_number(value, whole):
    """A number given as text (a templated value) as a number; None when it is not one."""
    if isinstance(value, str):
        try:
            return int(value) if whole else float(value)
        except ValueError:
            return None
    if whole and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
