# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge a PostgreSQL server's passwords and settings in one session (the pg_server module).

- Passwords (the superuser's, the app role's, the monitoring role's) are never sent to the server: the module
  computes their SCRAM-SHA-256 verifiers itself (scram.py) and sets those (`ALTER ROLE ... PASSWORD
  'SCRAM-SHA-256$...'`, stored as given), so a password reaches neither the server nor its log, whatever its
  logging settings and whoever logs in - a superuser, or a managed service's admin with CREATEROLE only. A
  superuser's session also turns statement logging off (log_statement, log_min_duration_statement,
  log_min_error_statement: superuser settings), so not even the verifier is logged there.
- A password is only set when the role does not already log in with it, so a converged server sees no statement at
  all: a superuser compares the stored verifier (pg_authid); any other login - which cannot read pg_authid - logs in
  as the role with the password and reads the answer (accepted, or "password authentication failed"). When that
  answer cannot tell (pg_hba.conf refuses the role from here), the password is set again.
- The superuser password is checked by logging in with it; when that login is refused, its verifier is set through
  the database container's local socket (trusted by the official image and by the project's pg_hba.conf), sent on
  psql's standard input, so it never appears on a command line.
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

import hashlib
import hmac
import re
import time

from . import containers, scram
from .pg import ConnectError, connect, connect_kwargs, describe_error, psycopg2, sqlstate_of

# Statement logging off for a superuser's session that handles passwords (all three are superuser settings).
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
    if stored.startswith(scram.PREFIX):
        return scram.matches(stored, password)
    if stored.startswith('md5'):
        return hmac.compare_digest(stored, 'md5' + hashlib.md5((password + role).encode('utf-8')).hexdigest())
    return False


def _is_superuser(cur):
    cur.execute("SELECT current_setting('is_superuser') = 'on'")
    return bool(cur.fetchone()[0])


def _quiet(cur):
    for statement in QUIET_SESSION:
        cur.execute(statement)


def set_superuser_password_in_container(container, user, password):
    """ALTER ROLE over the container's local socket with the password's SCRAM verifier, on psql's standard input."""
    secret = scram.verifier(password)
    script = '\n'.join(s + ';' for s in QUIET_SESSION) + '\n' + (
        "ALTER ROLE :\"user\" PASSWORD '%s';\n" % secret)
    argv = ['psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-v', 'user=%s' % user, '-U', user, '-d', 'postgres']
    try:
        rc, _out, err = containers.exec_run(container, argv, input_bytes=script.encode('utf-8'), timeout=60)
    except containers.DockerError as exc:
        raise ServerConfigError('the superuser password is not the configured one and setting it in container %s '
                                'failed: %s' % (container, exc)) from None
    if rc != 0:
        raise ServerConfigError('the superuser password is not the configured one and setting it in container %s '
                                'failed: %s' % (container, err.decode('utf-8', 'replace').strip()[-500:]))


def _connect_superuser(params, container, check_mode, changes):
    try:
        return connect(params, application_name='soulnear pg_server')
    except ConnectError as exc:
        refused = psycopg2 is not None and isinstance(exc.__context__, psycopg2.Error) \
            and sqlstate_of(exc.__context__) in ('28P01', '28000')
        if not (refused and container and params.get('login_password')):
            raise
    changes.append('password of %s' % params['login_user'])
    if check_mode:
        return None
    set_superuser_password_in_container(container, params['login_user'], params['login_password'])
    return connect(params, application_name='soulnear pg_server')


# Refusals a server sends only after it accepted the password: the role was authenticated, then turned away.
_AUTHENTICATED = re.compile(r'database "[^"]*" does not exist|is not permitted to log in|permission denied for '
                            r'database|too many connections for role', re.I)


def login_accepts(params, role, password):
    """Log in as role with password, over the admin's own connection settings (host, port, TLS): True when the
    server accepts the password, False when it refuses it, None when its answer does not tell (pg_hba.conf refuses
    the role from here, the server does not answer). No retry: one attempt, one line in the server's log at most."""
    kwargs = connect_kwargs(dict(params, login_user=role, login_password=password),
                            application_name='soulnear pg_server password check')
    try:
        psycopg2.connect(**kwargs).close()
        return True
    except psycopg2.Error as exc:
        text = str(exc)
        if sqlstate_of(exc) == '28P01':
            return False
        return True if _AUTHENTICATED.search(text) else None


class _Passwords:
    """Whether a role already logs in with its password: the stored verifier when this login reads pg_authid (a
    superuser), else a login attempt as the role."""

    def __init__(self, params, cur):
        self.params = params
        cur.execute("SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')")
        self.reads_authid = bool(cur.fetchone()[0])

    def correct(self, cur, name, password):
        if self.reads_authid:
            cur.execute('SELECT rolpassword FROM pg_authid WHERE rolname = %s', (name,))
            row = cur.fetchone()
            return bool(row) and password_matches(row[0], password, name)
        return bool(login_accepts(self.params, name, password))


def _ensure_role(cur, passwords, name, password, check_mode, changes):
    cur.execute('SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s', (name,))
    row = cur.fetchone()
    ident = psycopg2.extensions.quote_ident(name, cur)
    if row is None:
        changes.append('role %s created' % name)
        if not check_mode:
            cur.execute("CREATE ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '%s'"
                        % (ident, scram.verifier(password)))
        return
    login, superuser, createdb, createrole = row
    if not login or superuser or createdb or createrole:
        changes.append('attributes of %s' % name)
        if not check_mode:
            cur.execute('ALTER ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE' % ident)
    if not passwords.correct(cur, name, password):
        changes.append('password of %s' % name)
        if not check_mode:
            cur.execute("ALTER ROLE %s PASSWORD '%s'" % (ident, scram.verifier(password)))


def _ensure_monitor_role(cur, passwords, name, password, check_mode, changes):
    """A login role that is a member of pg_monitor and of nothing else."""
    _ensure_role(cur, passwords, name, password, check_mode, changes)
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


def converge(params, settings=None, app_role=None, app_password=None, container=None, check_mode=False,
             monitor_role=None, monitor_password=None, reset_settings=None):
    """Passwords, the app role, the monitoring role and the server settings (reset_settings: names taken out of
    postgresql.auto.conf with ALTER SYSTEM RESET when an earlier ALTER SYSTEM wrote them); returns the result dict of
    the pg_server module. Without settings, nothing is read that only a superuser may read (a managed service's admin
    with CREATEROLE converges the roles)."""
    changes = []
    conn = _connect_superuser(params, container, check_mode, changes)
    result = dict(changed_settings=[], restart_required=[], reloaded=False, password_changes=[], role_changes=[])
    if conn is None:  # check mode with a superuser password to fix: nothing more can be read
        result['password_changes'] = changes
        return result
    try:
        with conn.cursor() as cur:
            if _is_superuser(cur):
                _quiet(cur)
            role_changes = []
            if app_role or monitor_role:
                passwords = _Passwords(params, cur)
                if app_role:
                    _ensure_role(cur, passwords, app_role, app_password, check_mode, role_changes)
                if monitor_role:
                    _ensure_monitor_role(cur, passwords, monitor_role, monitor_password, check_mode, role_changes)
            wanted = dict((name, setting_text(value)) for name, value in sorted((settings or {}).items()))
            reset = sorted(set(reset_settings or ()) - set(wanted))
            current = _auto_conf(cur) if wanted or reset else {}
            changed = [name for name, text in wanted.items() if current.get(name) != text]
            cleared = [name for name in reset if name in current]
            cur.execute('SELECT name, context FROM pg_settings WHERE name = ANY(%s)', (list(wanted) + reset,))
            contexts = dict(cur.fetchall())
            unknown = [name for name in list(wanted) + reset if name not in contexts]
            if unknown:
                raise ServerConfigError('unknown setting(s) %s: check the names in postgres_extra_settings'
                                        % ', '.join(unknown))
            since = time.time()
            pending = []
            if check_mode:
                pending = [name for name in changed + cleared if contexts.get(name) == 'postmaster']
            elif changed or cleared:
                for name in changed:
                    try:
                        cur.execute('ALTER SYSTEM SET %s = %%s' % name, (wanted[name],))
                    except psycopg2.Error as exc:
                        raise ServerConfigError('PostgreSQL refused %s = %s: %s' % (name, wanted[name],
                                                                                    describe_error(exc))) from None
                for name in cleared:  # a name pg_settings knows (checked above), so safe as an identifier
                    cur.execute('ALTER SYSTEM RESET %s' % name)
                cur.execute('SELECT pg_reload_conf()')
                result['reloaded'] = True
            else:
                # Nothing new, but a change an earlier run made may still wait for its restart.
                cur.execute('SELECT name FROM pg_settings WHERE pending_restart ORDER BY name')
                pending = [row[0] for row in cur.fetchall()]
        if (changed or cleared) and not check_mode:
            pending = _wait_for_reload(params, since - 1)
    finally:
        conn.close()
    result.update(changed_settings=sorted(changed + cleared), restart_required=pending,
                  password_changes=changes + [c for c in role_changes if c.startswith('password')],
                  role_changes=[c for c in role_changes if not c.startswith('password')])
    return result
