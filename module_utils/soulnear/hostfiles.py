# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A set of directories, files and links on the host converged in one call (the host_files module).

Each entry is compared with what is on disk (type, content by sha256, mode, owner, group) and changed only
when it differs: files are written atomically (a hidden temporary file in the same directory, fsync, rename)
after an optional validation command, directories are created or fixed, links are (re)pointed. The plan is
computed first, so check mode reports exactly what a real run would change and writes nothing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import hashlib
import os
import pwd
import shutil
import subprocess

from . import files


class HostFilesError(Exception):
    pass


def _uid(owner):
    if owner is None:
        return None
    owner = str(owner)
    if owner.isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise HostFilesError('user %s does not exist on this host' % owner) from None


def _gid(group):
    if group is None:
        return None
    group = str(group)
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise HostFilesError('group %s does not exist on this host' % group) from None


def _mode(mode):
    if mode is None:
        return None
    if isinstance(mode, int):
        return mode
    return int(str(mode), 8)


def _attrs_differ(st, entry):
    reasons = []
    mode, uid, gid = _mode(entry.get('mode')), _uid(entry.get('owner')), _gid(entry.get('group'))
    if mode is not None and (st.st_mode & 0o7777) != mode:
        reasons.append('mode %04o -> %04o' % (st.st_mode & 0o7777, mode))
    if uid is not None and st.st_uid != uid:
        reasons.append('owner %d -> %d' % (st.st_uid, uid))
    if gid is not None and st.st_gid != gid:
        reasons.append('group %d -> %d' % (st.st_gid, gid))
    return reasons


def _content_bytes(entry):
    content = entry.get('content')
    if content is None:
        return None
    return content.encode('utf-8') if not isinstance(content, bytes) else content


def plan(entries):
    """[(entry, action, reasons)] for every entry that differs from the host; action is create/update/remove/fix."""
    out = []
    for entry in entries:
        path, state = entry['path'], entry.get('state') or 'file'
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if state == 'absent':
            if st is not None:
                out.append((entry, 'remove', ['present']))
            continue
        if state == 'directory':
            if st is None:
                out.append((entry, 'create', ['missing']))
            elif not os.path.isdir(path) or os.path.islink(path):
                raise HostFilesError('%s exists and is not a directory; remove it by hand' % path)
            else:
                reasons = _attrs_differ(st, entry)
                if reasons:
                    out.append((entry, 'fix', reasons))
            continue
        if state == 'link':
            if st is None:
                out.append((entry, 'create', ['missing']))
            elif not os.path.islink(path) or os.readlink(path) != entry['src']:
                out.append((entry, 'update', ['points elsewhere']))
            continue
        if st is not None and not os.path.isfile(path) or st is not None and os.path.islink(path):
            raise HostFilesError('%s exists and is not a regular file; remove it by hand' % path)
        data = _content_bytes(entry)
        if st is None:
            out.append((entry, 'create', ['missing']))
            continue
        reasons = []
        if data is not None and (st.st_size != len(data)
                                 or files.sha256_file(path) != hashlib.sha256(data).hexdigest()):
            reasons.append('content')
        reasons += _attrs_differ(st, entry)
        if reasons:
            out.append((entry, 'update' if 'content' in reasons else 'fix', reasons))
    return out


def _validate(entry, tmp):
    command = entry.get('validate')
    if not command:
        return
    argv = [part.replace('%s', tmp) for part in command.split()]
    proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode != 0:
        raise HostFilesError('%s failed validation (%s): %s' % (
            entry['path'], command.replace('%s', entry['path']),
            (proc.stdout + proc.stderr).decode('utf-8', 'replace').strip()[-1000:]))


def _chown_chmod(path, entry, follow=True):
    uid, gid, mode = _uid(entry.get('owner')), _gid(entry.get('group')), _mode(entry.get('mode'))
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid, follow_symlinks=follow)
    if mode is not None:
        os.chmod(path, mode)


def apply(changes):
    """Carry out a plan; returns the changed paths."""
    done = []
    for entry, action, _reasons in changes:
        path, state = entry['path'], entry.get('state') or 'file'
        if state == 'absent':
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                files.remove(path)
        elif state == 'directory':
            os.makedirs(path, exist_ok=True)
            _chown_chmod(path, entry)
        elif state == 'link':
            tmp = files.temp_name(path)
            files.remove(tmp)
            os.symlink(entry['src'], tmp)
            os.replace(tmp, path)
        elif action == 'fix':
            _chown_chmod(path, entry)
        else:
            data = _content_bytes(entry) or b''
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with files.private_file(path) as handle:
                handle.write(data)
                handle.flush()
                _validate(entry, handle.name)
                _chown_chmod(handle.name, entry)
            if entry.get('mode') is None:
                os.chmod(path, 0o644)
        done.append(path)
    return done
