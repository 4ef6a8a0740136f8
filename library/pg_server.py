#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_server
short_description: Converge a PostgreSQL server's settings, its superuser password and the app role in one call
description:
  - Sets every setting in O(settings) with C(ALTER SYSTEM) when it differs from what C(ALTER SYSTEM) wrote
    before (C(postgresql.auto.conf)), reloads the server, and returns in RV(restart_required) the settings that
    wait for a restart (C(pg_settings.pending_restart)), so the caller restarts only when a postmaster-context
    setting changed, and says so.
  - Makes sure the superuser logs in with O(login_password); when that login is refused (a rotated vault
    password, a volume from an older setup), sets it through the database container's local socket
    (O(container)).
  - Creates the app role O(app_role) (LOGIN, no superuser, no createdb, no createrole) or converges its
    attributes and password.
  - Creates the monitoring role O(monitor_role) (LOGIN, no other attribute, member of C(pg_monitor) and of no
    other role) or converges it and its password, the least-privilege login of a metrics exporter.
  - Passwords never reach the server - the module computes their SCRAM-SHA-256 verifiers (RFC 5802/7677, with
    PostgreSQL's SASLprep) and sets those (C(ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...')), so no password is in
    a statement the server could log, whoever O(login_user) is - a superuser, or a managed service's admin that
    only has CREATEROLE. A superuser's session also has statement logging off (C(log_statement),
    C(log_min_duration_statement), C(log_min_error_statement)).
  - A password is set only when the role does not log in with it already, so a converged server sees no password
    statement at all. A superuser compares the stored verifier (C(pg_authid)); another O(login_user) logs in as
    the role once, with the same host, port and TLS settings, and reads the answer (when C(pg_hba.conf) refuses
    the role from there, the answer cannot tell and the password is set again).
  - Without O(settings), nothing only a superuser may read is read (C(pg_authid), C(pg_file_settings)).
  - "Gap it fills: C(community.postgresql.postgresql_alter_system) sets one parameter per task (a round trip to
    the host each) and C(community.postgresql.postgresql_user) sends C(ALTER ROLE ... PASSWORD) with the clear
    password in a session that the server logs when C(log_statement) is C(ddl) or C(all), writing the password in
    plain text to the server log (and it reads C(pg_authid), which only a superuser may). The database itself is
    still created by C(community.postgresql.postgresql_db)."
version_added: "1.1.0"
author: SoulNear operations contributors (!UNKNOWN)
extends_documentation_fragment:
  - soulnear_connection
options:
  settings:
    description: Server settings, name -> value (booleans become C(on)/C(off)). A name is a PostgreSQL setting name,
      a value a string, a number or a boolean.
    type: dict
    default: {}
  reset_settings:
    description: Setting names to take out of C(postgresql.auto.conf) with C(ALTER SYSTEM RESET) when an earlier
      C(ALTER SYSTEM) wrote them (a setting this deployment no longer wants, such as the TLS settings of a database
      host that stopped serving bot hosts); a name not written there changes nothing. Not also in O(settings).
      Ignored with O(report_only).
    type: list
    elements: str
    default: []
  app_role:
    description: The application's login role to create or converge; not O(login_user) nor O(monitor_role), and not
      a name PostgreSQL reserves (C(pg_*), C(public), ...).
    type: str
  app_password:
    description: Its password (not empty).
    type: str
  monitor_role:
    description: A monitoring login role (for postgres_exporter) to create or converge, member of C(pg_monitor); not
      O(login_user), and not a name PostgreSQL reserves.
    type: str
  monitor_password:
    description: Its password (not empty).
    type: str
  container:
    description: The database container, used only to set a refused superuser password (its verifier, on psql's
      standard input) over the local socket.
    type: str
  report_only:
    description:
      - For a server this deployment does not own (an external or managed PostgreSQL, a Patroni cluster), compare
        O(settings) with the running server's (C(pg_settings), readable by any login; values compared in the
        setting's unit) and change nothing - no setting, password or role.
      - RV(differences) lists what differs; the task never reports a change.
    type: bool
    default: false
  unreachable_ok:
    description:
      - When no server answers (connection refused, no such host, timeout - not a refused login), return
        RV(reachable=false) and change nothing instead of failing. The postgres role converges the server that runs
        before its container task this way, so a container that task recreates anyway (a new image or mounts)
        applies the new postmaster-context settings with its one restart; a first deploy, where nothing runs yet,
        converges after it.
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reports the settings, roles and passwords that would change, and which settings would need a
      restart (their context is C(postmaster)); changes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
'''

EXAMPLES = r'''
- name: Ensure the server settings, the superuser password and the app role
  pg_server:
    login_host: 127.0.0.1
    login_user: postgres
    login_password: "{{ vault_postgres_password }}"
    container: soulnear_postgres
    app_role: soulnear
    app_password: "{{ vault_app_db_password }}"
    settings:
      max_connections: 200
      tcp_keepalives_idle: 60
      log_statement: ddl
  register: server

- name: Ensure the metrics exporter's role, a member of pg_monitor only
  pg_server:
    login_host: 127.0.0.1
    login_user: postgres
    login_password: "{{ vault_postgres_password }}"
    monitor_role: soulnear_metrics
    monitor_password: "{{ vault_metrics_postgres_password }}"

- name: Restart PostgreSQL when a postmaster-context setting changed
  community.docker.docker_container:
    name: soulnear_postgres
    state: started
    restart: true
  when: server.restart_required | length > 0
'''

RETURN = r'''
changed_settings:
  description: Settings that were (or would be) set, or reset (O(reset_settings)), with ALTER SYSTEM.
  returned: always
  type: list
  elements: str
  sample: [max_connections]
restart_required:
  description: Settings that wait for a server restart after the reload.
  returned: always
  type: list
  elements: str
  sample: [max_connections]
reloaded:
  description: Whether the server configuration was reloaded.
  returned: always
  type: bool
password_changes:
  description: Whose password was (or would be) set; never the password.
  returned: always
  type: list
  elements: str
  sample: [password of soulnear]
role_changes:
  description: Roles created or whose attributes were converged.
  returned: always
  type: list
  elements: str
  sample: [role soulnear created, pg_monitor granted to soulnear_metrics]
differences:
  description: With O(report_only), the settings whose running value differs from the wanted one (current is
    null for a setting the server does not know).
  returned: always
  type: list
  elements: dict
  sample: [{name: max_connections, current: '100', wanted: '200', context: postmaster}]
reachable:
  description: False when O(unreachable_ok) is set and no server answered (then nothing was done).
  returned: always
  type: bool
  sample: true
msg:
  description: One line for people, saying whether PostgreSQL was reloaded or needs a restart.
  returned: always
  type: str
  sample: "Reloaded PostgreSQL: tcp_keepalives_idle changed (no restart needed)."
'''


from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.soulnear.pg import (
    HAS_PSYCOPG2, PSYCOPG2_IMPORT_ERROR, ConnectError, connection_argument_spec, is_retryable, psycopg2)
from ansible.module_utils.soulnear.pgserver import ServerConfigError, converge, report
from ansible.module_utils.soulnear import validate


def argument_spec():
    spec = connection_argument_spec()
    spec.update(
        settings=dict(type='dict', default={}),
        reset_settings=dict(type='list', elements='str', default=[]),
        app_role=dict(type='str'),
        app_password=dict(type='str', no_log=True),
        monitor_role=dict(type='str'),
        monitor_password=dict(type='str', no_log=True),
        container=dict(type='str'),
        unreachable_ok=dict(type='bool', default=False),
        report_only=dict(type='bool', default=False),
    )
    return spec


def _setting_value(value):
    if isinstance(value, (dict, list, tuple)) or value is None or (isinstance(value, str) and '\0' in value):
        raise validate.Invalid('a string, a number or a boolean')


def _role(options, option, others):
    """A role this module creates or converges: a name PostgreSQL does not reserve, and none of the others (the
    app role made NOSUPERUSER would be the superuser itself), with its password."""
    p = options.params
    if not p[option]:
        return
    if options.value(option, p[option], validate.pg_name, 'role', create=True):
        clash = [other for other in others if p[other] and p[other] == p[option]]
        if clash:
            options.add(option, p[option], validate.Invalid(
                'a role of its own', why='it is also %s - converging it would change that role' % clash[0]))
    password = option.replace('_role', '_password')
    if p[password] is not None and p[password] == '':
        options.add(password, p[password], validate.Invalid(
            'a password that is not empty (PostgreSQL takes an empty one as no password: the role could not log in '
            'with one)', why='it is empty'))


def check_options(module):
    """Every option checked before anything is set (validate.py); fails naming each bad one."""
    p = module.params
    options = validate.Options(p, argument_spec())
    validate.connection(options)
    for setting in sorted(p['settings']):
        options.value('settings', setting, validate.name, 'setting')
        options.value('settings.%s' % setting, p['settings'][setting], _setting_value)
    for setting in p['reset_settings']:
        if options.value('reset_settings', setting, validate.name, 'setting') and setting in p['settings']:
            options.add('reset_settings', setting, validate.Invalid(
                'a setting to reset or one to set, not both', why='it is in settings too'))
    _role(options, 'app_role', ('login_user', 'monitor_role'))
    _role(options, 'monitor_role', ('login_user',))
    options.check('container', validate.name, 'container')
    options.fail(module)


def server_unreachable(exc):
    """True when connecting failed because no server answered (not because it refused the login)."""
    cause = exc.__context__
    return cause is not None and psycopg2 is not None and isinstance(cause, psycopg2.Error) and is_retryable(cause)


def summary(result):
    changed = result['changed_settings']
    if result['restart_required']:
        text = 'Restart needed: %s changed (postmaster context).' % ', '.join(result['restart_required'])
    elif changed:
        text = 'Reloaded PostgreSQL: %s changed (no restart needed).' % ', '.join(changed)
    else:
        text = 'PostgreSQL settings unchanged.'
    others = result['password_changes'] + result['role_changes']
    return text + (' Also: %s.' % ', '.join(others) if others else '')


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_by=dict(app_role='app_password', monitor_role='monitor_password'))
    if not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    check_options(module)
    p = module.params
    if p['report_only']:
        try:
            differences = report(p, p['settings'])
        except ConnectError as exc:
            module.fail_json(msg=str(exc))
        text = '; '.join('%s is %s (wanted %s)' % (d['name'], d['current'] if d['current'] is not None
                                                   else 'unknown to this server', d['wanted']) for d in differences)
        module.exit_json(changed=False, reachable=True, differences=differences, changed_settings=[],
                         restart_required=[], reloaded=False, password_changes=[], role_changes=[],
                         msg=('Settings controlled by the server\'s provider, not changed: ' + text) if differences
                         else 'The server runs every wanted setting.')
    try:
        result = converge(p, p['settings'], p['app_role'], p['app_password'], p['container'],
                          check_mode=module.check_mode,
                          monitor_role=p['monitor_role'], monitor_password=p['monitor_password'],
                          reset_settings=p['reset_settings'])
    except ConnectError as exc:
        if p['unreachable_ok'] and server_unreachable(exc):
            module.exit_json(changed=False, reachable=False, changed_settings=[], restart_required=[], reloaded=False,
                             password_changes=[], role_changes=[],
                             msg='No server answers (%s); nothing was converged.' % exc)
        module.fail_json(msg=str(exc))
    except ServerConfigError as exc:
        module.fail_json(msg=str(exc))
    changed = bool(result['changed_settings'] or result['password_changes'] or result['role_changes'])
    module.exit_json(changed=changed, msg=summary(result), reachable=True, differences=[], **result)


if __name__ == '__main__':
    main()
