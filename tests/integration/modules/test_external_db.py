"""soulnear_db_mode external at the module level: migrations, health, backup and restore against a PostgreSQL the
project did not deploy (tests/support/externaldb.py: TLS only, its own CA), logging in as the app role the way a managed
service's customer does - no superuser, no docker exec into the server.

Proven here: sslmode=verify-full with the right CA works and with another CA fails before anything is sent; the
health report checks the server over the network and says why no database container is checked; pg_dump and
pg_restore run in a client container and keep every guarantee (checksum, verify, retention, the restore swap); the
monitor alerts on an external database that is down and restarts nothing.
"""

import json
import os

import psycopg2
import pytest
from ansible.module_utils.soulnear import monitor as soulnear_monitor
from ansible.module_utils.soulnear.backup import create_backup
from ansible.module_utils.soulnear.backup_files import BackupError, read_sidecar
from ansible.module_utils.soulnear.backup_settings import make_settings, settings_from_config
from ansible.module_utils.soulnear.checks import run_checks
from ansible.module_utils.soulnear.migrate import Migrator
from ansible.module_utils.soulnear.migration_files import MigrationError
from ansible.module_utils.soulnear.restore import restore_database
from externaldb import ExternalPg
from pgclient import connect
from pgcontainer import IMAGE, docker

from ansiblerun import ROOT
MIGRATIONS = os.path.join(ROOT, 'examples', 'bot', 'database', 'migrations')
APP_USER, APP_PASSWORD, DB = 'soulnear_app', 'external-app-secret', 'soul_bot'


@pytest.fixture(scope='module')
def external(tmp_path_factory):
    server = ExternalPg(tmp_path_factory.mktemp('external')).start()
    # What the provider's console (or the optional admin step of the deploy) creates: the app role and its database.
    server.query("CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s'" % (APP_USER, APP_PASSWORD))
    server.query('CREATE DATABASE %s OWNER %s' % (DB, APP_USER))
    yield server
    server.remove()


def app_params(server, **extra):
    params = server.params(db=DB, user=APP_USER, password=APP_PASSWORD)
    params.update(extra)
    return params


def ssl_in_use(params):
    conn = psycopg2.connect(host=params['login_host'], port=params['login_port'], user=params['login_user'],
                            password=params['login_password'], dbname=params['login_db'], sslmode='verify-full',
                            sslrootcert=params['ca_cert'])
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
            return cur.fetchone()
    finally:
        conn.close()


def rows(server, sql):
    conn = connect(server.params(db=DB))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_tls_verify_full_and_migrations_over_the_network(external):
    assert ssl_in_use(app_params(external))[0] is True
    wrong = app_params(external, ca_cert=external.wrong_ca_file)
    with pytest.raises(MigrationError, match='certificate verify failed'):
        Migrator(dict(wrong, path=MIGRATIONS, retries=0)).run()
    assert rows(external, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]  # nothing ran

    result = Migrator(dict(app_params(external), path=MIGRATIONS)).run()
    assert result['applied'] and not result.get('failed')
    assert Migrator(dict(app_params(external), path=MIGRATIONS)).run()['applied'] == []  # a no-op second run
    owner = rows(external, "SELECT tableowner FROM pg_tables WHERE tablename = 'users'")
    assert owner == [(APP_USER,)]


def test_health_report_of_an_external_database(external):
    Migrator(dict(app_params(external), path=MIGRATIONS)).run()
    where = '127.0.0.1:%d' % external.port
    options = dict(app_params(external), db_external=where, db_container='soulnear_postgres',
                   migrations_path=MIGRATIONS, required_tables=['users', 'aiogram_states', 'schema_migrations'])
    report = run_checks(options)
    assert report['ok'], report['msg']
    assert report['checks']['database']['value']['server_version'] >= 150000
    assert report['checks']['migrations']['ok'] and report['checks']['tables']['ok']
    assert 'db_container' not in report['checks']
    assert 'external' in report['skipped']['db_container'] and where in report['skipped']['db_container']

    report = run_checks(dict(options, ca_cert=external.wrong_ca_file))
    assert not report['ok'] and report['failed'] == ['database']
    message = report['checks']['database']['message']
    assert 'certificate verify failed' in message and 'TLS verification failed' in message
    assert '(1 attempt(s))' in message  # a TLS failure is final: not retried
    report = run_checks(dict(options, ca_cert='/nonexistent/ca.crt'))
    assert 'root certificate file' in report['checks']['database']['message']


def test_backup_and_restore_through_a_client_container(external, tmp_path):
    Migrator(dict(app_params(external), path=MIGRATIONS)).run()
    conn = connect(app_params(external), sslmode='verify-full', sslrootcert=external.ca_file)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO users (id, username) SELECT g, 'user' || g FROM generate_series(1, 500) g "
                    "ON CONFLICT DO NOTHING")
    conn.close()
    before = rows(external, 'SELECT count(*), md5(string_agg(id::text, \',\' ORDER BY id)) '
                            'FROM users')
    backup_dir = tmp_path / 'backups'
    settings = make_settings(app_params(external), client_image=IMAGE, backup_dir=str(backup_dir),
                             container='no-such-container')
    steps = []
    result = create_backup(settings, log=steps.append)
    assert result['verified'] is True and result['size'] > 1000
    assert any('client container of %s' % IMAGE in s for s in steps), steps
    assert read_sidecar(result['path'])  # the sha256 sidecar, as for a local dump

    # With a CA that does not match, the client container refuses the server: no dump, no partial file.
    wrong = make_settings(app_params(external, ca_cert=external.wrong_ca_file, retries=0), client_image=IMAGE,
                          backup_dir=str(backup_dir))
    with pytest.raises(BackupError):
        create_backup(wrong)
    name = os.path.basename(result['path'])
    assert sorted(n for n in os.listdir(backup_dir) if not n.startswith('.soulnear-backup')) == [name, name + '.sha256']

    conn = connect(app_params(external), sslmode='verify-full', sslrootcert=external.ca_file)
    with conn.cursor() as cur:
        cur.execute('DELETE FROM users')
    conn.close()
    restored = restore_database(settings, confirm=DB, log=steps.append)
    assert restored['swapped'] is True
    assert rows(external, 'SELECT count(*), md5(string_agg(id::text, \',\' ORDER BY id)) '
                          'FROM users') == before
    assert 'DROP DATABASE' in restored['drop_previous_command']
    assert any('not checked' in s for s in steps), steps  # the provider's disk is not ours to measure


def test_missing_client_image_is_named(external, tmp_path):
    settings = make_settings(app_params(external), client_image='soulnear/no-such-client:1',
                             backup_dir=str(tmp_path / 'b'))
    with pytest.raises(BackupError, match='client image soulnear/no-such-client:1'):
        create_backup(settings)


def test_host_command_settings_and_monitor_for_external_mode(external, tmp_path):
    Migrator(dict(app_params(external), path=MIGRATIONS)).run()
    ca = external.ca_file
    config = dict(backup_dir=str(tmp_path / 'backups'), log_dir=str(tmp_path / 'log'),
                  db=dict(mode='external', host='127.0.0.1', port=external.port, name=DB, superuser=APP_USER,
                          superuser_password=APP_PASSWORD, app_user=APP_USER, app_password=APP_PASSWORD,
                          container='soulnear_postgres', volume='soulnear_postgres_data', sslmode='verify-full',
                          ca_file=ca, client_image=IMAGE),
                  bot=dict(container=''))
    settings = settings_from_config(config, {})
    assert settings['client_image'] == IMAGE and settings['conn']['ssl_mode'] == 'verify-full'
    assert create_backup(settings)['verified'] is True

    base = tmp_path / 'soulnear.json'
    base.write_text(json.dumps(config))
    mon = tmp_path / 'monitoring.json'
    alerts = tmp_path / 'alerts.txt'
    mon.write_text(json.dumps(dict(state_file=str(tmp_path / 'state.json'), check_bot=False, required_tables=['users'],
                                   migrations_dir=None, failures_before_recovery=1, interval_seconds=60)))
    config_obj = soulnear_monitor.Config(str(base), str(mon))
    assert config_obj.db_container is None and config_obj.db_external == '127.0.0.1:%d' % external.port
    report, line = soulnear_monitor.Monitor(config_obj).run()
    assert report['ok'], line
    assert 'db_container' in report['skipped']

    docker('stop', '-t', '5', external.name)
    try:
        config_obj.base['alert'] = dict(command='cat >> %s' % alerts)
        for _ in range(2):
            report, line = soulnear_monitor.Monitor(config_obj).run()
        assert not report['ok'] and 'database' in report['failed']
        assert 'does not own it, so nothing is restarted' in line, line
        assert 'external database' in alerts.read_text()
        state = docker('inspect', '--format', '{{.State.Running}}', external.name).stdout.strip()
        assert state == 'false'  # the monitor did not start it
    finally:
        docker('start', external.name)
        external.published(60)


def test_provider_settings_are_reported_not_changed(external):
    from ansible.module_utils.soulnear.pgserver import report

    external.query("ALTER SYSTEM SET idle_in_transaction_session_timeout = '300s'")
    external.query('SELECT pg_reload_conf()')
    wanted = dict(max_connections=200, idle_in_transaction_session_timeout='5min', shared_buffers='128MB',
                  log_statement='none', statement_timeout='0', no_such_setting='1')
    differences = report(app_params(external), wanted)  # as the app role: no superuser needed
    by_name = dict((d['name'], d) for d in differences)
    assert sorted(by_name) == ['max_connections', 'no_such_setting']  # 5min = 300000ms, 128MB = 16384 x 8kB
    assert by_name['max_connections']['current'] == '100' and by_name['max_connections']['context'] == 'postmaster'
    assert by_name['no_such_setting']['current'] is None
    assert rows(external, "SELECT setting FROM pg_settings WHERE name = 'max_connections'") == [('100',)]
