# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File helpers every part of the SoulNear layer uses, written once.

- private_file / write_private: write a file atomically with mode 0600 (a hidden temporary name next
  to it, fsync, os.replace), so a reader never sees half a file and a secret never sits in a world-readable one.
- lock: an exclusive fcntl lock file (busy -> None, or wait for it).
- append_line: one line at the end of a log file.
- human: a byte count for people (12.4 MB).
- disk_usage / free_bytes: the file system holding a path, as df sees it.
- sha256_file, fsync_dir, remove.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import fcntl
import hashlib
import os

CHUNK = 1 << 20  # read and copy buffer
TEMP_MARK = '.partial-'  # in the hidden name of a file being written: .<name>.partial-<pid>


def temp_name(path):
    """The hidden temporary name next to path that private_file writes before renaming it to path."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, '.%s%s%d' % (name, TEMP_MARK, os.getpid()))


def remove(path):
    """Delete path; a file that is already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _private(path, flags):
    return os.open(path, flags, 0o600)


@contextlib.contextmanager
def private_file(path, mode='wb', buffering=-1):
    """Write path atomically, mode 0600 (its directory is created when missing).

    Yields a handle (open(mode, buffering)) on a hidden temporary file next to path; handle.name is that file's
    path. When the block ends
    without an error the file is flushed, fsynced and renamed over path; when it raises, the file is removed.
    """
    tmp = temp_name(path)
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    try:
        with open(tmp, mode, buffering, opener=_private) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def write_private(path, data):
    """Write data (str or bytes) to path atomically, mode 0600."""
    with private_file(path, 'w' if isinstance(data, str) else 'wb') as handle:
        handle.write(data)


def fsync_dir(path):
    """Make a rename in directory path durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock(path, wait=False):
    """An exclusive lock on the file path (created 0600 with its directory); None when another process holds it
    and wait is false. The lock is held until the returned handle (open for reading and appending) is closed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handle = open(path, 'a+')
    os.chmod(path, 0o600)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        handle.close()
        return None
    return handle


def append_line(path, line):
    """Append one line to the file path (created with its directory when missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a') as handle:
        handle.write(line.rstrip('\n') + '\n')


def human(size):
    """A byte count for people: 512 B, 12.4 MB (units of 1024)."""
    value = float(size)
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if abs(value) < 1024 or unit == 'TB':
            return ('%d %s' % (value, unit)) if unit == 'B' else ('%.1f %s' % (value, unit))
        value /= 1024.0
    return '%d B' % size  # pragma: no cover


def disk_usage(path):
    """df's view of the file system holding path (or its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    total = used + avail
    percent = round(100.0 * used / total, 1) if total else 0.0
    return dict(path=path, measured=probe, device=os.stat(probe).st_dev, used_percent=percent, free=avail,
                free_mb=int(avail // (1024 * 1024)), total_mb=int(total // (1024 * 1024)))


def free_bytes(path):
    """Bytes an unprivileged writer can still use on the file system holding path (or its nearest existing parent)."""
    return disk_usage(path)['free']


def sha256_file(path):
    digest = hashlib.sha256()
    view = memoryview(bytearray(CHUNK))
    with open(path, 'rb', buffering=0) as handle:
        while True:
            count = handle.readinto(view)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()
