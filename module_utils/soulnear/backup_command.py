# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `soulnear-backup` host command: backup | restore-test | list, and for point-in-time recovery
pitr-backup | pitr-verify | pitr-check | window, run by cron on the database host.

The backup role installs a copy of this package and a small wrapper that calls main(); the configuration
comes from /etc/soulnear/soulnear.json (soulnear role), /etc/soulnear/backup.json (backup role) and, for the
physical backups, /etc/soulnear/pitr.json (pitr role: retention).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import datetime
import json
import os
import sys

from .alert import send as send_alert
from .backup import create_backup
from .backup_files import FAILURES, BackupError, describe_failure, list_backups
from .backup_settings import settings_from_config
from .files import human
from . import pitr
from .restore import LATEST, restore_test


def _load_json(path, required=True):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        if required:
            raise BackupError('%s is missing; it is written by the soulnear role (ansible-playbook deploy.yml)'
                              % path) from None
        return {}
    except ValueError as exc:
        raise BackupError('%s is not valid JSON (%s); re-run the playbook to rewrite it' % (path, exc)) from None


def _stamp():
    return datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')


def main(argv=None):
    """soulnear-backup backup|restore-test|list: the command cron runs on the database host."""
    parser = argparse.ArgumentParser(prog='soulnear-backup', description=main.__doc__)
    parser.add_argument('--config-dir', default='/etc/soulnear',
                        help='directory holding soulnear.json (soulnear role), backup.json (backup role) and '
                             'pitr.json (pitr role)')
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('backup', help='dump, verify, prune, copy offsite; alert and exit 1 on failure')
    test = sub.add_parser('restore-test', help='restore a backup into a throwaway database, check it, drop it')
    test.add_argument('--backup', default=LATEST, help='%s (default) or a file name in the backups directory' % LATEST)
    sub.add_parser('list', help='list the backups with their verification state')
    physical = sub.add_parser('pitr-backup', help='a physical backup (pgBackRest) on every repository')
    physical.add_argument('--type', choices=pitr.BACKUP_TYPES, default='diff', dest='backup_type')
    sub.add_parser('pitr-verify', help='pgbackrest verify: every backup file and WAL segment against its checksum')
    sub.add_parser('pitr-check', help='pgbackrest check: WAL reaches every repository')
    sub.add_parser('window', help='the physical backups and the recovery window of point-in-time recovery')
    args = parser.parse_args(argv)

    def log(message):
        print('%s soulnear-backup %s: %s' % (_stamp(), args.command, message), flush=True)

    config = {}
    try:
        config = _load_json(os.path.join(args.config_dir, 'soulnear.json'))
        if args.command.startswith('pitr-') or args.command == 'window':
            pitr_config = _load_json(os.path.join(args.config_dir, 'pitr.json'), required=False)
            return _pitr(args, pitr.settings_from_config(config, pitr_config), config, log)
        backup_config = _load_json(os.path.join(args.config_dir, 'backup.json'), required=False)
        settings = settings_from_config(config, backup_config)
        if args.command == 'list':
            for item in list_backups(settings['backup_dir'], settings['name_pattern']):
                print('%s  %10s  %s' % (item['name'], human(item['size']),
                                        'verified' if item['verified'] else 'NO SIDECAR'))
            return 0
        if args.command == 'backup':
            result = create_backup(settings, log=log)
            log('OK %s %s sha256 %s in %.1f s; pruned %d: %s' % (
                result['path'], human(result['size']), result['sha256'], result['duration'],
                len(result['pruned']), ', '.join(result['pruned']) or '-'))
            offsite = result.get('offsite')
            if offsite and not offsite['ok']:
                raise BackupError('the backup %s is good, but the offsite copy to %s failed: %s'
                                  % (result['path'], offsite['target'], offsite['error']))
            return 0
        result = restore_test(settings, args.backup, log=log)
        log('OK ' + result['msg'])
        return 0
    except FAILURES as exc:
        message = describe_failure(exc)
        log('FAILED: %s' % message)
        for error in send_alert(config.get('alert'), 'soulnear %s FAILED' % args.command, message):
            log('alert not delivered: %s' % error)
        return 1


def _pitr(args, settings, config, log):
    """The point-in-time recovery commands; a failure alerts like a failed backup."""
    if not (config.get('pitr') or {}).get('enabled'):
        print('point-in-time recovery is off on this host (soulnear_pitr_enabled)')
        return 0 if args.command == 'window' else 1
    try:
        if args.command == 'window':
            print('Physical backups (pgBackRest, stanza %s):' % settings['stanza'])
            print('\n'.join(pitr.describe(settings)['lines']))
            return 0
        if args.command == 'pitr-backup':
            result = pitr.backup(settings, args.backup_type, log=log)
            if result.get('repaired'):
                for error in send_alert(config.get('alert'), 'soulnear point-in-time recovery repaired',
                                        result['repaired']['msg']):
                    log('alert not delivered: %s' % error)
        elif args.command == 'pitr-verify':
            result = pitr.verify(settings, log=log)
        else:
            pitr.check(settings)
            result = dict(msg='pgbackrest check passed')
        log('OK %s' % result['msg'])
        return 0
    except pitr.FAILURES as exc:
        message = pitr.describe_failure(exc)
        log('FAILED: %s' % message)
        for error in send_alert(config.get('alert'), 'soulnear %s FAILED' % args.command, message):
            log('alert not delivered: %s' % error)
        return 1


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
