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
author: SoulNear operations contributors
options:
  entries:
    description: What must be on the host, in order (a directory before the files in it).
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path on the host.
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
          mode and owner converge; a missing one is created empty.
        type: str
      src:
        description: Target of a link.
        type: str
      mode:
        description: Mode as an octal string (files default to C(0644) when created).
        type: raw
      owner:
        description: User name or numeric uid.
        type: str
      group:
        description: Group name or numeric gid.
        type: str
      validate:
        description: Command run on the new content before it replaces the file; C(%s) is the temporary file.
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
        description: The directory on the host.
        type: path
        required: true
      files:
        description: File name (relative to O(trees[].dest)) -> content.
        type: dict
        required: true
      mode:
        description: Mode of the files.
        type: raw
        default: "0644"
      directory_mode:
        description: Mode of O(trees[].dest).
        type: raw
        default: "0755"
      owner:
        description: Owner of the directory and the files.
        type: str
        default: root
      group:
        description: Group of the directory and the files.
        type: str
        default: root
attributes:
  check_mode:
    support: full
    details: Reports exactly which paths a real run would change, and why; writes nothing.
  diff_mode:
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

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.soulnear import hostfiles


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


def _before(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read().decode('utf-8')
    except (OSError, UnicodeDecodeError):
        return ''


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    entries = list(module.params['entries'])
    for tree in module.params['trees']:
        owner = dict(owner=tree['owner'], group=tree['group'])
        entries.append(dict(owner, path=tree['dest'], state='directory', mode=tree['directory_mode']))
        for name, content in sorted(tree['files'].items()):
            entries.append(dict(owner, path='%s/%s' % (tree['dest'].rstrip('/'), name), state='file',
                                content=content, mode=tree['mode'], secret=False, validate=None))
    for entry in entries:
        if entry['state'] == 'link' and not entry.get('src'):
            module.fail_json(msg='entry %s has state link but no src' % entry['path'])
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
