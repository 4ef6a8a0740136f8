# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The settings of backup, restore and restore-test: every default in one place (DEFAULTS), and the three ways
in - a module's parameters, the host command's configuration files, and keyword arguments (make_settings).

The pg_backup and pg_restore modules build their argument specs from here (settings_argument_spec), so a
default changed here changes the modules and the `soulnear-backup` host command together.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from . import defaults
from .backup_files import DEFAULT_NAME_PATTERN, BackupError, pattern_regex
from .pg import connection_argument_spec

COMPRESSIONS = ('auto', 'gzip', 'zstd', 'lz4', 'none')
VERIFY_MODES = ('list', 'full')

DEFAULTS = dict(
    container=defaults.DB_CONTAINER,
    exec_user=defaults.DB_EXEC_USER,
    client_image='',
    backup_dir=defaults.BACKUP_DIR,
    name_pattern=DEFAULT_NAME_PATTERN,
    compression=defaults.COMPRESSION,
    compression_level=None,
    space_margin=defaults.SPACE_MARGIN,
    verify='list',
    keep_daily=7,
    keep_weekly=4,
    keep_monthly=6,
    keep_last=2,
    keep_safety_backups=defaults.KEEP_SAFETY_BACKUPS,
    prune=True,
    offsite='',
    bot_container='',
    bot_stop_timeout=defaults.BOT_STOP_TIMEOUT,
    safety_backup=True,
    owner='',
    no_owner=False,
    largest_tables=5,
    require_checksum=True,
    maintenance_db=defaults.MAINTENANCE_DB,
    analyze=False,
    maintenance_work_mem='256MB',
    data_guard_file='',
)


# How a module takes each setting (argument-spec type, required); defaults come from DEFAULTS and choices from
# the constants above. The modules require backup_dir; the host command defaults it.
_MODULE_OPTIONS = dict(
    container=dict(type='str'),
    exec_user=dict(type='str'),
    client_image=dict(type='str'),
    backup_dir=dict(type='path', required=True),
    name_pattern=dict(type='str'),
    compression=dict(type='str', choices=list(COMPRESSIONS)),
    compression_level=dict(type='int'),
    space_margin=dict(type='float'),
    verify=dict(type='str', choices=list(VERIFY_MODES)),
    keep_daily=dict(type='int'),
    keep_weekly=dict(type='int'),
    keep_monthly=dict(type='int'),
    keep_last=dict(type='int'),
    keep_safety_backups=dict(type='int'),
    prune=dict(type='bool'),
    offsite=dict(type='str'),
    bot_container=dict(type='str'),
    bot_stop_timeout=dict(type='int'),
    safety_backup=dict(type='bool'),
    owner=dict(type='str'),
    no_owner=dict(type='bool'),
    largest_tables=dict(type='int'),
    require_checksum=dict(type='bool'),
    maintenance_db=dict(type='str'),
    analyze=dict(type='bool'),
    maintenance_work_mem=dict(type='str'),
    data_guard_file=dict(type='path'),
)


def settings_argument_spec(names):
    """Argument spec of the named settings for a module: type from _MODULE_OPTIONS, default from DEFAULTS."""
    spec = {}
    for name in names:
        option = dict(_MODULE_OPTIONS[name])
        if not option.get('required') and DEFAULTS[name] is not None:
            option['default'] = DEFAULTS[name]
        spec[name] = option
    return spec


def with_defaults(defaults, conn, options):
    """defaults overridden by the options that are not None, plus the superuser's connection parameters (module
    style) as settings['conn']: how backup, restore, point-in-time recovery and the major upgrade make theirs."""
    settings = dict(defaults)
    settings.update((k, v) for k, v in options.items() if v is not None)
    settings['conn'] = dict(conn or {})
    return settings


def make_settings(conn, **options):
    """Settings for backup, restore and restore-test: connection parameters (module style) plus DEFAULTS overridden
    by options."""
    settings = with_defaults(DEFAULTS, conn, options)
    if not settings['conn'].get('login_db'):
        raise BackupError('no database given: set login_db to the database to back up or restore (e.g. soul_bot)')
    if settings['compression'] not in COMPRESSIONS:
        raise BackupError('compression must be one of %s, not %r' % (', '.join(COMPRESSIONS), settings['compression']))
    pattern_regex(settings['name_pattern'])
    return settings


def settings_from_params(params, options):
    """Settings from a module's parameters: the shared connection options plus the module's own `options`."""
    return make_settings(dict((k, params[k]) for k in connection_argument_spec()),
                         **dict((k, params[k]) for k in options))


def settings_from_config(config, backup_config):
    """Settings from /etc/soulnear/soulnear.json (soulnear role) and /etc/soulnear/backup.json (backup role)."""
    db = config.get('db') or {}
    conn = dict(login_host=db.get('host', '127.0.0.1'), login_port=int(db.get('port', 5432)),
                login_user=db.get('superuser', 'postgres'), login_password=db.get('superuser_password', ''),
                login_db=db.get('name', 'soul_bot'), connect_timeout=10, retries=3,
                ssl_mode=db.get('sslmode') or 'prefer', ca_cert=db.get('ca_file') or None)
    options = dict((k, v) for k, v in backup_config.items() if k in DEFAULTS)
    options.setdefault('container', db.get('container', DEFAULTS['container']))
    if db.get('mode') == 'external':  # a database this deployment does not own: the tools run in a client container
        options.setdefault('client_image', db.get('client_image') or '')
    options.setdefault('backup_dir', config.get('backup_dir', DEFAULTS['backup_dir']))
    options.setdefault('bot_container', (config.get('bot') or {}).get('container', ''))
    if options.get('compression_level') in ('', None):
        options['compression_level'] = None
    return make_settings(conn, **options)
