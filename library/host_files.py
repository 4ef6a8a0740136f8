#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: host_files
short_description: Converge a set of directories, files and links on the host in one call
description:
  - Each entry of O(entries) is compared with the host (type, content by sha256, mode, owner, group) and changed
    only when it differs. Files are written atomically (hidden temporary file in the same directory, fsync,
    rename), after an optional O(entries[].validate) command, so a reader never sees half a file and a failed
    validation leaves the old file in place.
  - "Gap it fills: C(ansible.builtin.file), C(ansible.builtin.copy) and C(ansible.builtin.template) converge one
    path per task (one round trip to the host each, about a second over SSH), so the deploy's thirty-odd small
    configuration files, host commands and library files made a no-op deploy take minutes. Here they are one
    task. Templates are still rendered by Ansible (the C(ansible.builtin.template) lookup) on the controller."
  - Contents of entries marked O(entries[].secret) never appear in the diff or the result.
version_added: "1.1.0"
author: SoulNear operations contributors (!UNKNOWN)
options:
  entries:
    description: What must be on the host, in order (a directory before the files in it).
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path on the host (not C(/), no C(..)).
        type: path
        required: true
      state:
        description: A regular file with O(entries[].content), a directory, a symbolic link to O(entries[].src), or
          nothing (a directory is removed with its content).
        type: str
        choices: [file, directory, link, absent]
        default: file
      content:
        description: The file's content (text). Without it, an existing file keeps its content and only its
          mode and owner converge; a missing one is created empty. Only with O(entries[].state=file);
          O(entries[].state=absent) ignores it (a role switches one entry between file and absent).
        type: str
      src:
        description: Target of a link (required with O(entries[].state=link); only then, or ignored with C(absent)).
        type: str
      mode:
        description: Mode as an octal string, at most C(07777) (files default to C(0644) when created).
        type: raw
      owner:
        description: User name (that exists on the host, checked outside check mode) or numeric uid.
        type: str
      group:
        description: Group name (that exists on the host, checked outside check mode) or numeric gid.
        type: str
      validate:
        description: Command run on the new content before it replaces the file; C(%s) is the temporary file (it
          must be there, and outside check mode the program must exist). Only with O(entries[].state=file) (or
          ignored with C(absent)).
        type: str
      secret:
        description: The content is secret - never shown in the diff.
        type: bool
        default: false
  trees:
    description:
      - Directories of files that share mode and owner (a Python package, a set of scripts), converged after
        O(entries). Files in the directory that are not listed are left alone.
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: The directory on the host (absolute, not C(/), no C(..)).
        type: path
        required: true
      files:
        description: File name (relative to O(trees[].dest), without C(..)) -> content (text).
        type: dict
        required: true
      mode:
        description: Mode of the files, an octal string (at most C(07777)).
        type: raw
        default: "0644"
      directory_mode:
        description: Mode of O(trees[].dest), an octal string (at most C(07777)).
        type: raw
        default: "0755"
      owner:
        description: Owner of the directory and the files (a user that exists on the host, or a uid).
        type: str
        default: root
      group:
        description: Group of the directory and the files (a group that exists on the host, or a gid).
        type: str
        default: root
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reports exactly which paths a real run would change, and why; writes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Before and after of every changed text file that is not secret.
'''

EXAMPLES = r'''
- name: Ensure the host commands and their configuration are in place
  host_files:
    trees:
      - dest: /opt/soulnear/lib/soulnear
        files: "{{ dict(sources | map('basename') | zip(query('ansible.builtin.file', *sources, rstrip=false))) }}"
    entries:
      - {path: /etc/soulnear, state: directory, mode: "0700", owner: root, group: root}
      - path: /etc/soulnear/soulnear.json
        content: "{{ lookup('ansible.builtin.template', 'soulnear.json.j2') }}"
        mode: "0600"
        secret: true
      - {path: /usr/local/sbin/soulnear, state: link, src: /opt/soulnear/bin/soulnear}
  register: soulnear_files
'''

RETURN = r'''
changed_paths:
  description: The paths that were (or in check mode would be) changed, in order.
  returned: always
  type: list
  elements: str
  sample: [/etc/soulnear/soulnear.json]
changes:
  description: Why each changed path changed (C(missing), C(content), C(mode 0644 -> 0600), ...).
  returned: always
  type: dict
  sample: {/etc/soulnear/soulnear.json: [content]}
msg:
  description: One line for people.
  returned: always
  type: str
  sample: 1 of 23 path(s) changed
'''

import grp
import os
import pwd
import re
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.soulnear import hostfiles
from ansible.module_utils.soulnear import validate


def argument_spec():
    return dict(entries=dict(type='list', elements='dict', required=True, options=dict(
        path=dict(type='path', required=True),
        state=dict(type='str', choices=['file', 'directory', 'link', 'absent'], default='file'),
        content=dict(type='str'),
        src=dict(type='str'),
        mode=dict(type='raw'),
        owner=dict(type='str'),
        group=dict(type='str'),
        validate=dict(type='str'),
        secret=dict(type='bool', default=False),
    )), trees=dict(type='list', elements='dict', default=[], options=dict(
        dest=dict(type='path', required=True),
        files=dict(type='dict', required=True),
        mode=dict(type='raw', default='0644'),
        directory_mode=dict(type='raw', default='0755'),
        owner=dict(type='str', default='root'),
        group=dict(type='str', default='root'),
    )))


def _host_path(value):
    """An absolute path that is not / and has no .. (a path built from a name must stay where it was meant to be)."""
    validate.nonempty_path(value)
    if os.path.normpath(value) == '/' or '..' in value.split('/'):
        raise validate.Invalid('an absolute path below /, without ".."')


def _mode(value):
    """An octal mode: a string of octal digits (0644) or the number it stands for, at most 07777."""
    text = str(value)
    number = value if isinstance(value, int) and not isinstance(value, bool) else (
        int(text, 8) if re.match(r'^0?[0-7]{1,4}$', text) else None)
    if number is None or not 0 <= number <= 0o7777:
        raise validate.Invalid('an octal mode as a string, such as "0644" or "0750" (at most 07777)')


def _account(value, database, kind):
    """A user or group that exists on this host, or a numeric id."""
    if str(value).isdigit():
        return
    try:
        database(str(value))
    except KeyError:
        raise validate.Invalid('a %s that exists on this host, or a numeric id' % kind,
                               why='there is no %s %s here' % (kind, value)) from None


def _command(value, check_mode):
    """validate: a command with %s for the temporary file, whose program exists (outside check mode)."""
    argv = value.split()
    if not argv or '%s' not in value:
        raise validate.Invalid('a command with %s for the temporary file, for example "visudo -cf %s"')
    if not check_mode and not shutil.which(argv[0]):
        raise validate.Invalid('a command whose program exists on this host', why='%s is not found' % argv[0])


def _common(options, label, item, mode_keys, check_mode):
    """Modes, owner and group. In check mode a user, group or validate program that an earlier task of a real run
    would install may be missing yet: they are checked when the files are really written."""
    for key in mode_keys:
        if item.get(key) is not None:
            options.value('%s.%s' % (label, key), item[key], _mode)
    for key, database, kind in (('owner', pwd.getpwnam, 'user'), ('group', grp.getgrnam, 'group')):
        if item.get(key) is not None and not check_mode:
            options.value('%s.%s' % (label, key), item[key], _account, database, kind)


def check_options(module):
    """Every entry and tree checked before any path changes (validate.py); fails naming each bad one."""
    options = validate.Options(module.params, argument_spec())
    for index, entry in enumerate(module.params['entries']):
        label = 'entries[%d]' % index
        options.value(label + '.path', entry['path'], _host_path)
        if entry['state'] == 'link':
            options.value(label + '.src', entry['src'] or '', validate.nonempty, 'the target of the link')
        for key, state in (('content', 'file'), ('src', 'link'), ('validate', 'file')):
            # state=absent ignores them: a role toggles one entry between file and absent
            if entry.get(key) is not None and entry['state'] not in (state, 'absent'):
                options.add('%s.%s' % (label, key), '(given)' if key == 'content' else entry[key],
                            validate.Invalid('left out with state=%s' % entry['state'],
                                             why='%s goes with state=%s only' % (key, state)))
        if entry.get('validate') is not None:
            options.value(label + '.validate', entry['validate'], _command, module.check_mode)
        _common(options, label, entry, ('mode',), module.check_mode)
    for index, tree in enumerate(module.params['trees']):
        label = 'trees[%d]' % index
        options.value(label + '.dest', tree['dest'], _host_path)
        for name, content in sorted(tree['files'].items()):
            options.value(label + '.files', name, _host_path_name)
            if not isinstance(content, str):
                options.add('%s.files[%s]' % (label, name), '(given)', validate.Invalid('text (the file\'s content)'))
        _common(options, label, tree, ('mode', 'directory_mode'), module.check_mode)
    options.fail(module)


def _host_path_name(value):
    """A file name relative to a tree's dest: not empty, not absolute, no .. (it must stay below dest)."""
    if not value or value.startswith('/') or '..' in value.split('/') or '\0' in value:
        raise validate.Invalid('a path relative to dest, without ".." (for example lib/checks.py)')


def _before(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read().decode('utf-8')
    except (OSError, UnicodeDecodeError):
        return ''


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    check_options(module)
    entries = list(module.params['entries'])
    for tree in module.params['trees']:
        owner = dict(owner=tree['owner'], group=tree['group'])
        entries.append(dict(owner, path=tree['dest'], state='directory', mode=tree['directory_mode']))
        for name, content in sorted(tree['files'].items()):
            entries.append(dict(owner, path='%s/%s' % (tree['dest'].rstrip('/'), name), state='file',
                                content=content, mode=tree['mode'], secret=False, validate=None))
    for entry in entries:
        if entry.get('secret') and entry.get('content'):
            module.no_log_values.add(entry['content'])
    try:
        changes = hostfiles.plan(entries)
        diffs = []
        if module._diff:
            for entry, _action, reasons in changes:
                if entry['state'] == 'file' and ('content' in reasons or 'missing' in reasons) and not entry['secret']:
                    diffs.append(dict(before_header=entry['path'], after_header=entry['path'],
                                      before=_before(entry['path']), after=entry.get('content') or ''))
        if not module.check_mode:
            hostfiles.apply(changes)
    except (hostfiles.HostFilesError, OSError) as exc:
        module.fail_json(msg='cannot converge the files: %s' % exc)
    paths = [entry['path'] for entry, _a, _r in changes]
    result = dict(changed=bool(changes), changed_paths=paths,
                  changes=dict((entry['path'], reasons) for entry, _a, reasons in changes),
                  msg='%d of %d path(s) %schanged%s' % (len(paths), len(entries), 'would be ' if module.check_mode
                                                        and paths else '', ': ' + ', '.join(paths) if paths else ''))
    if diffs:
        result['diff'] = diffs
    module.exit_json(**result)


if __name__ == '__main__':
    main()
