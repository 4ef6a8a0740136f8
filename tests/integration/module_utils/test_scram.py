"""Passwords as SCRAM-SHA-256 verifiers computed on the client (module_utils/soulnear/scram.py, issue 23) against real
PostgreSQL 15 and 17 containers:

- the verifier PostgreSQL builds itself from a password is the one scram.py computes with the same salt - for ASCII
  passwords and for those SASLprep maps, normalises or refuses (PostgreSQL then uses the raw bytes: so does
  scram.py) - and a role whose verifier scram.py computed logs in with the clear password through libpq;
- pg_server converges the app role logging in as a managed service's admin - LOGIN CREATEROLE, not a superuser, so
  it can neither read pg_authid nor switch statement logging off: the role is created, logs in, a converged run
  changes nothing (the module logs in as the role to know), a rotation takes effect, check mode changes nothing;
  with log_statement = all, no password is in the server's log - only the verifiers.
"""

import time

import psycopg2
import pytest

from ansible.module_utils.soulnear import scram
from ansible.module_utils.soulnear.pgserver import login_accepts, password_matches
from ansiblerun import run_module
from pgcontainer import PgContainer, docker

IMAGES = ('soulnear/postgres:15', 'soulnear/postgres:17')
ADMIN, ADMIN_PASSWORD = 'provider_admin', 'Admin-Secret-7f3a9c'

# PostgreSQL's SASLprep cases: ASCII (used as is, control characters too), mapped (soft hyphen to nothing, no-break
# space to a space), normalised (NFKC: a roman numeral, a ligature, a combining ring, the Angstrom sign), and the
# refused ones that PostgreSQL uses unchanged (a control character after a non-ASCII one, an unassigned code point,
# private use, nothing left after the mapping, right-to-left mixed with left-to-right or ending on a digit).
PASSWORDS = (
    'pencil', 'with space and $ymbols \' " \\ ;--', 'tab\tand\x07bell', 'caf\u00e9', 'I\u00adX', 'a\u00a0b',
    '\u2168', '\ufb01ne', 'A\u030angstr\u00f6m', '\u212b', '\u00e9\x07', '\U0001f600 smile', '\ue000private',
    '\u00ad', '\u05d0abc\u05d0', '\u0627\u0031', '\u0627\u0628\u062a', '\u043f\u0430\u0440\u043e\u043b\u044c',
)


@pytest.fixture(scope='module', params=IMAGES, ids=lambda image: image.split(':')[1])
def server(request):
    container = PgContainer(image=request.param).start()
    container.query("ALTER SYSTEM SET log_statement = 'all'")
    container.query('SELECT pg_reload_conf()')
    container.query("CREATE ROLE %s LOGIN CREATEROLE PASSWORD '%s'" % (ADMIN, scram.verifier(ADMIN_PASSWORD)))
    container.query('CREATE DATABASE appdb')
    yield container
    container.remove()


def log_text(server):
    """The server's log (its stderr: the test image logs there) up to a marker statement logged after everything
    before it (log_statement = all)."""
    marker = 'soulnear-log-marker-%d' % time.time_ns()
    server.query("SELECT '%s'" % marker)
    deadline = time.time() + 30
    while True:
        logs = docker('logs', server.name)
        text = logs.stdout + logs.stderr
        if marker in text:
            return text
        assert time.time() < deadline, 'the marker did not reach the log'
        time.sleep(0.2)


def logs_in(server, role, password, db='postgres'):
    try:
        server.connect(db=db, user=role, password=password).close()
        return True
    except psycopg2.OperationalError as exc:
        assert 'password authentication failed' in str(exc), exc
        return False


def test_rfc7677_example():
    """RFC 7677's example (user, pencil): the keys its ClientProof and ServerSignature come from."""
    salt = 'W22ZaJ0SNY7soEsUEjb6gQ=='
    assert scram.verifier('pencil', salt=__import__('base64').b64decode(salt)) == (
        'SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:'
        'wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=')
    verifier = scram.verifier('pencil')
    assert scram.matches(verifier, 'pencil') and not scram.matches(verifier, 'pencil ')
    assert password_matches(verifier, 'pencil', 'user') and scram.VERIFIER.match(verifier)
    assert verifier != scram.verifier('pencil')  # a new salt every time
    with pytest.raises(ValueError):
        scram.verifier('')


def test_the_server_builds_the_same_verifier_and_accepts_ours(server):
    """For every password: the server's own verifier (password_encryption scram-sha-256, clear password sent - only
    in this test) equals scram.py's with that salt; the other way round, a role with scram.py's verifier logs in."""
    differ, refused = [], []
    for number, password in enumerate(PASSWORDS):
        role = 'sasl_%d' % number
        server.query('CREATE ROLE %s LOGIN PASSWORD %%s' % role, (password,))
        stored = server.query('SELECT rolpassword FROM pg_authid WHERE rolname = %s', (role,))[0][0]
        iterations, salt, _stored_key, _server_key = scram.parse(stored)
        if scram.verifier(password, salt=salt, iterations=iterations) != stored:
            differ.append(repr(password))
        server.query("ALTER ROLE %s PASSWORD '%s'" % (role, scram.verifier(password)))
        if not logs_in(server, role, password):
            refused.append(repr(password))
    assert differ == [] and refused == [], (differ, refused)
    assert server.query("SELECT setting FROM pg_settings WHERE name = 'server_encoding'")[0][0] == 'UTF8'


def test_login_accepts_tells_right_wrong_and_authenticated_elsewhere(server):
    server.query("CREATE ROLE probe LOGIN PASSWORD '%s'" % scram.verifier('Probe-Secret-1'))
    params = server.params(user=ADMIN, password=ADMIN_PASSWORD)
    assert login_accepts(params, 'probe', 'Probe-Secret-1') is True
    assert login_accepts(params, 'probe', 'Probe-Secret-2') is False
    # Authenticated, then turned away: a database that does not exist (the admin's login_db unset: the role's name).
    assert login_accepts(dict(params, login_db=''), 'probe', 'Probe-Secret-1') is True
    assert login_accepts(dict(params, login_db='no_such_db'), 'probe', 'Probe-Secret-2') is False
    server.query('ALTER ROLE probe NOLOGIN')
    assert login_accepts(params, 'probe', 'Probe-Secret-1') is True


def test_a_createrole_admin_converges_the_app_role_and_no_password_is_logged(server, tmp_path):
    admin = dict(server.params(db='appdb', user=ADMIN, password=ADMIN_PASSWORD), retries=0)
    assert server.query("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s", (ADMIN,)) == [
        (False, True)]
    first, second = 'App-First-Secret-51e2', 'App-Rotated-Secret-9d0c'

    rc, result, out = run_module(tmp_path, 'pg_server', dict(admin, app_role='app', app_password=first), '--check')
    assert rc == 0 and result['changed'] and result['role_changes'] == ['role app created'], out
    assert server.query("SELECT count(*) FROM pg_roles WHERE rolname = 'app'")[0][0] == 0

    rc, result, out = run_module(tmp_path, 'pg_server', dict(admin, app_role='app', app_password=first), '-vvv')
    assert rc == 0 and result['changed'] and result['role_changes'] == ['role app created'], out
    assert first not in out
    assert logs_in(server, 'app', first, db='appdb')
    assert server.query("SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles "
                        "WHERE rolname = 'app'") == [(False, False, False, True)]

    # Converged: the module logged in as app to know (it cannot read pg_authid), and changes nothing.
    rc, result, out = run_module(tmp_path, 'pg_server', dict(admin, app_role='app', app_password=first))
    assert rc == 0 and result['changed'] is False and result['password_changes'] == [], out

    rc, result, out = run_module(tmp_path, 'pg_server', dict(admin, app_role='app', app_password=second), '--check')
    assert rc == 0 and result['changed'] and result['password_changes'] == ['password of app'], out
    assert logs_in(server, 'app', first, db='appdb')  # check mode changed nothing

    rc, result, out = run_module(tmp_path, 'pg_server', dict(admin, app_role='app', app_password=second), '-vvv')
    assert rc == 0 and result['password_changes'] == ['password of app'] and second not in out, out
    assert logs_in(server, 'app', second, db='appdb') and not logs_in(server, 'app', first, db='appdb')
    rc, result, out = run_module(tmp_path, 'pg_server', dict(admin, app_role='app', app_password=second))
    assert rc == 0 and result['changed'] is False, out

    text = log_text(server)
    assert first not in text and second not in text and ADMIN_PASSWORD not in text
    # What the server did log (log_statement = all, as this admin may not turn it off): the verifiers.
    assert 'CREATE ROLE "app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD \'SCRAM-SHA-256$4096:' in text
    assert 'ALTER ROLE "app" PASSWORD \'SCRAM-SHA-256$4096:' in text


def test_a_refused_superuser_password_is_set_through_the_container_as_a_verifier(server, tmp_path):
    """A rotated vault_postgres_password: the login is refused, the module sets the verifier over the container's
    local socket (psql's standard input), then logs in; the password is in no log, the server's or Ansible's."""
    rotated = 'Rotated-Superuser-Secret-0b8e'
    args = dict(server.params(password=rotated), retries=0, container=server.name)
    rc, result, out = run_module(tmp_path, 'pg_server', args, '--check')
    assert rc == 0 and result['password_changes'] == ['password of postgres'], out
    assert not logs_in(server, 'postgres', rotated)
    try:
        rc, result, out = run_module(tmp_path, 'pg_server', args, '-vvv')
        assert rc == 0 and result['password_changes'] == ['password of postgres'] and rotated not in out, out
        assert logs_in(server, 'postgres', rotated)
        stored = docker('exec', server.name, 'psql', '-XAtU', 'postgres', '-c',
                        "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").stdout.strip()
        assert scram.matches(stored, rotated)
        rc, result, out = run_module(tmp_path, 'pg_server', args)
        assert rc == 0 and result['changed'] is False, out
    finally:
        back = dict(server.params(), retries=0, container=server.name)
        rc, result, out = run_module(tmp_path, 'pg_server', back)
        assert rc == 0 and result['password_changes'] == ['password of postgres'], out
    assert rotated not in log_text(server)
