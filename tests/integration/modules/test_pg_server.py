"""pg_server against a real PostgreSQL: settings converge with reload vs restart, roles and passwords converge, and
no password ever reaches the server log."""

import time

import psycopg2
import pytest

from ansible.module_utils.soulnear.pgserver import ServerConfigError, converge, password_matches
from ansiblerun import run_module
from pgcluster import Cluster


@pytest.fixture(scope='module')
def server():
    cluster = Cluster(settings=dict(log_statement="'all'", log_min_messages="'info'")).init().start()
    cluster.wait_ready()
    yield cluster
    cluster.destroy()


def log_text(cluster):
    with open(cluster.logfile, errors='replace') as handle:
        return handle.read()


def flushed_log_text(cluster, timeout=30):
    """The whole log up to now: a marker statement logged after everything before it (log_statement = all), and
    the log read once the marker is in it - no sleep standing in for the server's asynchronous write."""
    marker = 'soulnear-log-marker-%d' % time.time_ns()
    cluster.query("SELECT '%s'" % marker)
    deadline = time.time() + timeout
    while True:
        text = log_text(cluster)
        if marker in text:
            return text
        assert time.time() < deadline, 'the marker statement did not reach the server log within %s s' % timeout
        time.sleep(0.2)


def stored_password(cluster, role):
    return cluster.query('SELECT rolpassword FROM pg_authid WHERE rolname = %s', (role,))[0][0]


def test_settings_converge_reload_then_nothing(server):
    params = server.params()
    first = converge(params, dict(tcp_keepalives_idle=61, log_min_duration_statement='2s', logging_collector=False))
    # logging_collector (postmaster context) is already off in postgresql.auto.conf: not set again, no restart.
    assert sorted(first['changed_settings']) == ['log_min_duration_statement', 'tcp_keepalives_idle']
    assert first['reloaded'] is True and first['restart_required'] == []
    assert server.query("SELECT setting FROM pg_settings WHERE name = 'tcp_keepalives_idle'")[0][0] == '61'
    again = converge(params, dict(tcp_keepalives_idle=61, log_min_duration_statement='2s', logging_collector=False))
    assert again['changed_settings'] == [] and again['reloaded'] is False


def test_postmaster_setting_is_reported_for_a_restart_and_check_mode_predicts_it(server):
    params = server.params()
    dry = converge(params, dict(max_connections=77), check_mode=True)
    assert dry['changed_settings'] == ['max_connections'] and dry['restart_required'] == ['max_connections']
    assert server.query("SELECT setting FROM pg_file_settings WHERE name = 'max_connections' "
                        "AND sourcefile LIKE '%%auto.conf' ORDER BY seqno DESC LIMIT 1")[0][0] == '60'
    real = converge(params, dict(max_connections=77))
    assert real['restart_required'] == ['max_connections']
    # Until the restart, every later run says so as well (an interrupted deploy still restarts).
    assert converge(params, dict(max_connections=77))['restart_required'] == ['max_connections']
    server.stop()
    server.start()
    server.wait_ready()
    assert server.query('SHOW max_connections')[0][0] == '77'
    assert converge(params, dict(max_connections=77))['restart_required'] == []


def test_reset_settings_takes_out_what_alter_system_wrote_and_nothing_else(server):
    """Two hosts made one: the TLS settings an earlier deploy wrote are reset (hba_file, postmaster context, waits
    for the restart the container's recreation brings); on a server that never had them nothing changes."""
    params = server.params()
    hba = server.query('SHOW hba_file')[0][0]
    converge(params, dict(tcp_keepalives_interval=11, hba_file=hba))
    assert converge(params, reset_settings=['hba_file', 'ssl'], check_mode=True) == dict(
        changed_settings=['hba_file'], restart_required=['hba_file'], reloaded=False, password_changes=[],
        role_changes=[])
    assert 'hba_file' in dict(server.query("SELECT name, setting FROM pg_file_settings "
                                           "WHERE sourcefile LIKE '%%auto.conf'"))  # check mode changed nothing
    done = converge(params, dict(tcp_keepalives_interval=11), reset_settings=['hba_file', 'ssl'])
    assert done['changed_settings'] == ['hba_file'] and done['reloaded'] is True, done
    written = dict(server.query("SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%%auto.conf'"))
    assert 'hba_file' not in written and written['tcp_keepalives_interval'] == '11', written
    again = converge(params, dict(tcp_keepalives_interval=11), reset_settings=['hba_file', 'ssl'])
    assert again['changed_settings'] == [] and again['reloaded'] is False, again
    with pytest.raises(ServerConfigError, match='unknown setting.*no_such_setting'):
        converge(params, reset_settings=['no_such_setting'])


def test_unknown_or_invalid_setting_names_it(server):
    with pytest.raises(ServerConfigError, match='unknown setting.*no_such_setting'):
        converge(server.params(), dict(no_such_setting=1))
    with pytest.raises(ServerConfigError, match='refused tcp_keepalives_idle = soon'):
        converge(server.params(), dict(tcp_keepalives_idle='soon'))


def test_app_role_created_then_password_rotated_never_logged(server):
    params = server.params()
    first = converge(params, app_role='botapp', app_password='FirstSecret-1a2b3c')
    assert first['role_changes'] == ['role botapp created']
    assert password_matches(stored_password(server, 'botapp'), 'FirstSecret-1a2b3c', 'botapp')
    assert converge(params, app_role='botapp', app_password='FirstSecret-1a2b3c') == dict(
        changed_settings=[], restart_required=[], reloaded=False, password_changes=[], role_changes=[])
    rotated = converge(params, app_role='botapp', app_password='RotatedSecret-9z8y7x')
    assert rotated['password_changes'] == ['password of botapp']
    conn = psycopg2.connect(host=server.host, port=server.port, user='botapp', password='RotatedSecret-9z8y7x',
                            dbname='postgres')
    conn.close()
    server.query('ALTER ROLE botapp SUPERUSER')
    assert converge(params, app_role='botapp', app_password='RotatedSecret-9z8y7x')['role_changes'] == [
        'attributes of botapp']
    assert server.query("SELECT rolsuper FROM pg_roles WHERE rolname = 'botapp'")[0][0] is False
    text = flushed_log_text(server)
    assert 'FirstSecret' not in text and 'RotatedSecret' not in text
    # The control: the same statement in an ordinary session is logged with log_statement = all.
    server.query("ALTER ROLE botapp PASSWORD 'ControlSecret-555'")
    assert 'ControlSecret-555' in flushed_log_text(server)


def test_scram_and_md5_verifiers():
    assert not password_matches(None, 'x', 'r') and not password_matches('SCRAM-SHA-256$bad', 'x', 'r')
    assert password_matches('md5' + __import__('hashlib').md5(b'pwrole').hexdigest(), 'pw', 'role')


def test_module_reports_and_hides_the_password(server, tmp_path):
    args = dict(server.params(), app_role='modapp', app_password='ModuleSecret-424242',
                settings=dict(tcp_keepalives_count=7))
    rc, result, out = run_module(tmp_path, 'pg_server', args, '--check', '-vvv')
    assert rc == 0 and result['changed'] is True and result['role_changes'] == ['role modapp created'], out
    assert server.query("SELECT count(*) FROM pg_roles WHERE rolname = 'modapp'")[0][0] == 0  # check mode
    rc, result, out = run_module(tmp_path, 'pg_server', args, '-vvv')
    assert rc == 0 and 'Reloaded PostgreSQL: tcp_keepalives_count changed' in result['msg']
    assert 'ModuleSecret-424242' not in out
    rc, result, out = run_module(tmp_path, 'pg_server', args)
    assert rc == 0 and result['changed'] is False and result['msg'] == 'PostgreSQL settings unchanged.'


def test_monitor_role_is_a_pg_monitor_member_only_and_its_password_is_never_logged(server, tmp_path):
    params = server.params()
    server.query('CREATE TABLE IF NOT EXISTS private_data (secret text)')
    dry = converge(params, monitor_role='metrics_mon', monitor_password='MonitorSecret-1a2b3c', check_mode=True)
    assert dry['role_changes'] == ['role metrics_mon created', 'pg_monitor granted to metrics_mon']
    assert server.query("SELECT count(*) FROM pg_roles WHERE rolname = 'metrics_mon'")[0][0] == 0
    first = converge(params, monitor_role='metrics_mon', monitor_password='MonitorSecret-1a2b3c')
    assert first['role_changes'] == ['role metrics_mon created', 'pg_monitor granted to metrics_mon']
    assert converge(params, monitor_role='metrics_mon', monitor_password='MonitorSecret-1a2b3c') == dict(
        changed_settings=[], restart_required=[], reloaded=False, password_changes=[], role_changes=[])
    conn = psycopg2.connect(host=server.host, port=server.port, user='metrics_mon', password='MonitorSecret-1a2b3c',
                            dbname='postgres')
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            # pg_monitor reads every session's statistics and the settings ...
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE query IS NOT NULL AND usename <> current_user")
            cur.execute("SELECT setting FROM pg_settings WHERE name = 'max_connections'")
            # ... and no data.
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute('SELECT * FROM private_data')
    finally:
        conn.close()
    # Another membership granted by hand is taken away again; attributes converge like the app role's.
    server.query('CREATE ROLE some_group NOLOGIN')
    server.query('GRANT some_group TO metrics_mon')
    server.query('ALTER ROLE metrics_mon CREATEDB')
    again = converge(params, monitor_role='metrics_mon', monitor_password='MonitorRotated-9z8y7x')
    assert again['role_changes'] == ['attributes of metrics_mon', 'some_group revoked from metrics_mon']
    assert again['password_changes'] == ['password of metrics_mon']
    assert server.query("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                        "WHERE r.rolname = 'metrics_mon'")[0][0] == 1
    args = dict(params, monitor_role='modmon', monitor_password='ModuleMonitor-434343')
    rc, result, out = run_module(tmp_path, 'pg_server', args, '-vvv')
    assert rc == 0 and result['role_changes'] == ['role modmon created', 'pg_monitor granted to modmon'], out
    assert 'ModuleMonitor-434343' not in out
    text = flushed_log_text(server)
    assert 'MonitorSecret' not in text and 'MonitorRotated' not in text and 'ModuleMonitor' not in text


def test_unreachable_ok_returns_unreachable_instead_of_failing(server, tmp_path):
    """The postgres role's first pg_server call runs before the container task: nothing answering is not an error
    then, but a refused login still is."""
    from pgcluster import free_port
    nobody = dict(login_host='127.0.0.1', login_port=free_port(), login_user='postgres', login_password='x',
                  retries=0)
    rc, result, out = run_module(tmp_path, 'pg_server', dict(nobody, unreachable_ok=True,
                                                             settings=dict(archive_timeout='60s')))
    assert rc == 0 and result['reachable'] is False and result['changed'] is False, out
    rc, result, out = run_module(tmp_path, 'pg_server', dict(nobody, settings=dict(archive_timeout='60s')))
    assert rc != 0 and 'could not connect' in result['msg'], out
    params = dict(server.params(), login_password='wrong-password', retries=0)
    rc, result, out = run_module(tmp_path, 'pg_server', dict(params, unreachable_ok=True))
    assert rc != 0, out
    rc, result, out = run_module(tmp_path, 'pg_server', dict(server.params(), unreachable_ok=True))
    assert rc == 0 and result['reachable'] is True, out
