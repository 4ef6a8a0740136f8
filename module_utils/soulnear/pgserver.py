# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge a PostgreSQL server's passwords and settings in one session (the pg_server module).

- Passwords (the superuser's and the app role's) are set in a session whose statement logging is off
  (log_statement, log_min_duration_statement, log_min_error_statement), so `ALTER ROLE ... PASSWORD` never
  reaches the server log, whatever the server's logging settings. A password is only set when the stored SCRAM
  (or md5) verifier does not match it, so a converged server sees no statement at all.
- The superuser password is checked by logging in with it; when that login is refused, it is set through the
  database container's local socket (trusted by the official image) with the password read inside the
  container from its secret file, so it never appears on a command line.
- A monitoring role (postgres_exporter's login) is a LOGIN role without any other attribute and a member of
  pg_monitor only (PostgreSQL's built-in read-only monitoring role): it reads statistics and settings, no data.
- Settings are compared with what ALTER SYSTEM wrote (postgresql.auto.conf, via pg_file_settings) and set
  with ALTER SYSTEM when they differ; the server is then reloaded and asked which changed settings wait for a
  restart (pg_settings.pending_restart), so the caller restarts only when a postmaster-context setting changed.
- report(): for a server this deployment does not own (a managed service, a Patroni cluster), compare the wanted
  settings with what the server runs (pg_settings, readable by any role) and change nothing: its provider or cluster
  manager controls them. Values are compared in the setting's own unit (5min = 300000 ms, 256MB = 32768 x 8kB).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import hmac
import time

from . import containers
from .pg import ConnectError, connect, describe_error, psycopg2, sqlstate_of

# Statement logging off for the session that handles passwords (all three are superuser-settable).
QUIET_SESSION = ("SET log_statement = 'none'", 'SET log_min_duration_statement = -1',
                 "SET log_min_error_statement = 'panic'", "SET log_error_verbosity = 'terse'")


class ServerConfigError(Exception):
    pass


def setting_text(value):
    """The text ALTER SYSTEM is given for a value (booleans as on/off, like postgresql.conf)."""
    if isinstance(value, bool):
        return 'on' if value else 'off'
    return str(value)


_UNITS = {'us': ('time', 0.001), 'ms': ('time', 1.0), 's': ('time', 1000.0), 'min': ('time', 60000.0),
          'h': ('time', 3600000.0), 'd': ('time', 86400000.0),
          'B': ('memory', 1.0), 'kB': ('memory', 1024.0), 'MB': ('memory', 1024.0 ** 2), 'GB': ('memory', 1024.0 ** 3),
          'TB': ('memory', 1024.0 ** 4)}


def _in_unit(text, unit):
    """text ('5min', '256MB', '60', 'on') as a number of the setting's base unit ('ms', '8kB', ...); None when it is not
    a number (enums, strings: compared as text)."""
    text = str(text).strip()
    number = ''
    while text and (text[0].isdigit() or text[0] in '.-'):
        number, text = number + text[0], text[1:]
    if not number:
        return None
    value, suffix = float(number), text.strip()
    if not suffix or not unit:
        return value
    base_count = ''.join(c for c in unit if c.isdigit() or c == '.') or '1'
    base = _UNITS.get(unit.lstrip('0123456789.'))
    given = _UNITS.get(suffix)
    if base is None or given is None or base[0] != given[0]:
        return None
    return value * given[1] / (base[1] * float(base_count))


def report(params, settings):
    """The wanted settings against the running server's, without changing anything: a list of
    {name, current, wanted, context} for every setting that differs, plus unknown names."""
    conn = connect(params, application_name='soulnear settings report')
    try:
        with conn.cursor() as cur:
            wanted = dict((name, setting_text(value)) for name, value in sorted((settings or {}).items()))
            cur.execute('SELECT name, setting, unit, context FROM pg_settings WHERE name = ANY(%s)', (list(wanted),))
            running = dict((row[0], row[1:]) for row in cur.fetchall())
    finally:
        conn.close()
    differences = []
    for name, text in wanted.items():
        if name not in running:
            differences.append(dict(name=name, current=None, wanted=text, context=None))
            continue
        setting, unit, context = running[name]
        want, have = _in_unit(text, unit), _in_unit(setting, unit)
        same = (want == have) if want is not None and have is not None else text.lower() == str(setting).lower()
        if not same:
            differences.append(dict(name=name, current=setting + (unit or '') if unit and have is not None else setting,
                                    wanted=text, context=context))
    return differences


def password_matches(stored, password, role):
    """Does the stored verifier (pg_authid.rolpassword) accept password? False for an unknown format."""
    if not stored or password is None:
        return False
    if stored.startswith('SCRAM-SHA-256$'):
        try:
            head, keys = stored[len('SCRAM-SHA-256$'):].split('$', 1)
            iterations, salt = head.split(':', 1)
            stored_key = base64.b64decode(keys.split(':', 1)[0])
            salted = hashlib.pbkdf2_hmac('sha256', password.encode('utf-8'), base64.b64decode(salt), int(iterations))
        except (ValueError, TypeError):
            return False
        client_key = hmac.new(salted, b'Client Key', hashlib.sha256).digest()
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
    if stored.startswith('md5'):
        return hmac.compare_digest(stored, 'md5' + hashlib.md5((password + role).encode('utf-8')).hexdigest())
    return False


def _quiet(cur):
    for statement in QUIET_SESSION:
        cur.execute(statement)


def set_superuser_password_in_container(container, user, secret_file):
    """ALTER ROLE over the container's local socket; psql reads the password from the secret file itself."""
    script = '\n'.join(s + ';' for s in QUIET_SESSION) + '\n' + (
        "\\set pw `cat %s`\nALTER ROLE :\"user\" PASSWORD :'pw';\n" % secret_file)
    argv = ['psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-v', 'user=%s' % user, '-U', user, '-d', 'postgres']
    try:
        rc, _out, err = containers.exec_run(container, argv, input_bytes=script.encode('utf-8'), timeout=60)
    except containers.DockerError as exc:
        raise ServerConfigError('the superuser password is not the configured one and setting it in container %s '
                                'failed: %s' % (container, exc)) from None
    if rc != 0:
        raise ServerConfigError('the superuser password is not the configured one and setting it in container %s '
                                'failed: %s' % (container, err.decode('utf-8', 'replace').strip()[-500:]))


def _connect_superuser(params, container, secret_file, check_mode, changes):
    try:
        return connect(params, application_name='soulnear pg_server')
    except ConnectError as exc:
        refused = psycopg2 is not None and isinstance(exc.__context__, psycopg2.Error) \
            and sqlstate_of(exc.__context__) in ('28P01', '28000')
        if not (refused and container):
            raise
    changes.append('password of %s' % params['login_user'])
    if check_mode:
        return None
    set_superuser_password_in_container(container, params['login_user'], secret_file)
    return connect(params, application_name='soulnear pg_server')


def _ensure_role(cur, name, password, check_mode, changes):
    cur.execute('SELECT rolpassword, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_authid '
                'WHERE rolname = %s', (name,))
    row = cur.fetchone()
    ident = psycopg2.extensions.quote_ident(name, cur)
    if row is None:
        changes.append('role %s created' % name)
        if not check_mode:
            cur.execute('CREATE ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %%s' % ident, (password,))
        return
    stored, login, superuser, createdb, createrole = row
    if not login or superuser or createdb or createrole:
        changes.append('attributes of %s' % name)
        if not check_mode:
            cur.execute('ALTER ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE' % ident)
    if not password_matches(stored, password, name):
        changes.append('password of %s' % name)
        if not check_mode:
            cur.execute('ALTER ROLE %s PASSWORD %%s' % ident, (password,))


def _ensure_monitor_role(cur, name, password, check_mode, changes):
    """A login role that is a member of pg_monitor and of nothing else."""
    _ensure_role(cur, name, password, check_mode, changes)
    cur.execute('SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid '
                'JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s ORDER BY 1', (name,))
    groups = [row[0] for row in cur.fetchall()]
    ident = psycopg2.extensions.quote_ident(name, cur)
    if 'pg_monitor' not in groups:
        changes.append('pg_monitor granted to %s' % name)
        if not check_mode:
            cur.execute('GRANT pg_monitor TO %s' % ident)
    for group in groups:
        if group != 'pg_monitor':
            changes.append('%s revoked from %s' % (group, name))
            if not check_mode:
                cur.execute('REVOKE %s FROM %s' % (psycopg2.extensions.quote_ident(group, cur), ident))


def _auto_conf(cur):
    """name -> the text ALTER SYSTEM wrote for it (postgresql.auto.conf)."""
    cur.execute("SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf' "
                "ORDER BY seqno")
    return dict(cur.fetchall())


def _wait_for_reload(params, since, timeout=15.0):
    """Wait until a new session sees the configuration loaded after `since` (the postmaster handles SIGHUP
    asynchronously); returns the names of the settings that wait for a restart."""
    deadline = time.time() + timeout
    while True:
        conn = connect(dict(params, retries=0), application_name='soulnear pg_server')
        try:
            with conn.cursor() as cur:
                cur.execute('SELECT extract(epoch FROM pg_conf_load_time())')
                loaded = float(cur.fetchone()[0])
                if loaded >= since or time.time() >= deadline:
                    cur.execute('SELECT name FROM pg_settings WHERE pending_restart ORDER BY name')
                    return [row[0] for row in cur.fetchall()]
        finally:
            conn.close()
        time.sleep(0.2)


def converge(params, settings=None, app_role=None, app_password=None, container=None,
             superuser_secret_file='/run/secrets/soulnear/superuser_password', check_mode=False,
             monitor_role=None, monitor_password=None):
    """Passwords, the app role, the monitoring role and the server settings; returns the result dict of the
    pg_server module."""
    changes = []
    conn = _connect_superuser(params, container, superuser_secret_file, check_mode, changes)
    result = dict(changed_settings=[], restart_required=[], reloaded=False, password_changes=[], role_changes=[])
    if conn is None:  # check mode with a superuser password to fix: nothing more can be read
        result['password_changes'] = changes
        return result
    try:
        with conn.cursor() as cur:
            _quiet(cur)
            role_changes = []
            if app_role:
                _ensure_role(cur, app_role, app_password, check_mode, role_changes)
            if monitor_role:
                _ensure_monitor_role(cur, monitor_role, monitor_password, check_mode, role_changes)
            current = _auto_conf(cur)
            wanted = dict((name, setting_text(value)) for name, value in sorted((settings or {}).items()))
            changed = [name for name, text in wanted.items() if current.get(name) != text]
            cur.execute('SELECT name, context FROM pg_settings WHERE name = ANY(%s)', (list(wanted),))
            contexts = dict(cur.fetchall())
            unknown = [name for name in wanted if name not in contexts]
            if unknown:
                raise ServerConfigError('unknown setting(s) %s: check the names in postgres_extra_settings'
                                        % ', '.join(unknown))
            since = time.time()
            pending = []
            if check_mode:
                pending = [name for name in changed if contexts.get(name) == 'postmaster']
            elif changed:
                for name in changed:
                    try:
                        cur.execute('ALTER SYSTEM SET %s = %%s' % name, (wanted[name],))
                    except psycopg2.Error as exc:
                        raise ServerConfigError('PostgreSQL refused %s = %s: %s' % (name, wanted[name],
                                                                                   describe_error(exc))) from None
                cur.execute('SELECT pg_reload_conf()')
                result['reloaded'] = True
            else:
                # Nothing new, but a change an earlier run made may still wait for its restart.
                cur.execute('SELECT name FROM pg_settings WHERE pending_restart ORDER BY name')
                pending = [row[0] for row in cur.fetchall()]
        if changed and not check_mode:
            pending = _wait_for_reload(params, since - 1)
    finally:
        conn.close()
    result.update(changed_settings=changed, restart_required=pending,
                  password_changes=changes + [c for c in role_changes if c.startswith('password')],
                  role_changes=[c for c in role_changes if not c.startswith('password')])
    return result
