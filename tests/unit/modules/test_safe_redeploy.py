"""safe_redeploy passes pg_migrate's own options on to the deploy's migrations, and refuses names it does not know."""

from types import SimpleNamespace

from ansible.module_utils.soulnear.redeploy import MIGRATION_OPTIONS, Redeployer
from ansiblerun import run_module


def test_unknown_migration_option_is_refused_before_anything_runs(tmp_path):
    rc, result, out = run_module(tmp_path, 'safe_redeploy', dict(
        action='migrate', login_host='127.0.0.1', login_port=1, login_db='x', migration_options=dict(fromat='dbmate')))
    assert rc != 0 and 'unknown option(s) fromat' in result['msg'], out
    assert 'format' in result['msg']


def test_migration_options_reach_pg_migrate():
    conn = dict(login_host='127.0.0.1', login_port=5432, login_user='soulnear', login_password='x', login_db='soul_bot')
    deploy = SimpleNamespace(conn=conn, params=dict(migration_options=dict(format='dbmate', takeover='dbmate'),
                                                    migrations_table='schema_migrations', applied_by=None))
    built = Redeployer.migrate_params(deploy, '/opt/soulnear/app/releases/v1/database/migrations')
    assert built['format'] == 'dbmate' and built['takeover'] == 'dbmate' and built['table'] == 'schema_migrations'
    assert built['path'].endswith('v1/database/migrations') and built['login_db'] == 'soul_bot'
    assert set(MIGRATION_OPTIONS) >= {'format', 'placeholders', 'takeover', 'statement_timeout', 'lint',
                                      'lint_min_rows', 'lint_min_mb'}
