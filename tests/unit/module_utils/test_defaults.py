"""module_utils/soulnear/defaults.py: the one home of the defaults several pieces of code share. The role variables
that restate one agree with it, and the DEFAULTS dicts of the modules and host commands take theirs from it."""

import os

import pytest
import yaml

from ansible.module_utils.soulnear import (backup_settings, checks, defaults, leader, monitor, pitr, redeploy,
                                           upgrade)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def role_default(role, name):
    with open(os.path.join(ROOT, 'roles', role, 'defaults', 'main.yml')) as handle:
        value = yaml.safe_load(handle)[name]
    return value.replace('{{ soulnear_name }}', defaults.NAME) if isinstance(value, str) else value


@pytest.mark.parametrize('role,name', sorted(defaults.ROLE_DEFAULTS))
def test_the_role_default_restating_a_shared_one_agrees(role, name):
    assert role_default(role, name) == defaults.ROLE_DEFAULTS[(role, name)], (
        '%s (roles/%s/defaults/main.yml) and module_utils/soulnear/defaults.py differ: change both' % (name, role))


def test_the_defaults_dicts_take_the_shared_values():
    assert backup_settings.DEFAULTS['container'] == pitr.DEFAULTS['container'] == defaults.DB_CONTAINER
    assert (backup_settings.DEFAULTS['bot_stop_timeout'] == pitr.DEFAULTS['bot_stop_timeout']
            == leader.DEFAULTS['bot_stop_timeout'] == monitor.MONITOR_DEFAULTS['bot_stop_timeout']
            == redeploy.DEFAULTS['stop_timeout'] == upgrade.DEFAULTS['bot_stop_timeout'] == defaults.BOT_STOP_TIMEOUT)
    assert pitr.DEFAULTS['db_stop_timeout'] == monitor.MONITOR_DEFAULTS['db_stop_timeout'] == defaults.DB_STOP_TIMEOUT
    assert (backup_settings.DEFAULTS['backup_dir'] == redeploy.DEFAULTS['backup_dir'] == upgrade.DEFAULTS['backup_dir']
            == defaults.BACKUP_DIR)
    assert checks.DEFAULTS['migrations_table'] == redeploy.DEFAULTS['migrations_table'] == defaults.MIGRATIONS_TABLE
    assert checks.DEFAULTS['required_tables'] == list(upgrade.DEFAULTS['required_tables']) == []
    assert backup_settings.DEFAULTS['compression'] == defaults.COMPRESSION
    assert backup_settings.DEFAULTS['keep_safety_backups'] == defaults.KEEP_SAFETY_BACKUPS
    assert backup_settings.DEFAULTS['space_margin'] == pitr.DEFAULTS['space_margin'] == defaults.SPACE_MARGIN
    assert pitr.DEFAULTS['recovery_timeout'] == defaults.RECOVERY_TIMEOUT
    assert checks.DEFAULTS['backup_max_age_hours'] == pitr.DEFAULTS['backup_max_age_hours'] == 26.0


def test_the_shared_defaults_import_nothing():
    """A module that needs one default imports defaults.py and nothing comes with it (the modules' payloads)."""
    with open(defaults.__file__) as handle:
        text = handle.read()
    assert [line for line in text.splitlines() if line.startswith(('import ', 'from ')) and '__future__' not in line] \
        == []
