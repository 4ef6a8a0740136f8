"""What every benchmark shares: the repository root, the tests' helpers (tests/support/) and the project's
module_utils on the import path (as Ansible packs them for a module), and a timer. Import it before the project's
modules."""

import os
import sys
import time

import ansible.module_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No __pycache__ inside module_utils/: the soulnear role copies that directory to the hosts as it is.
sys.dont_write_bytecode = True
if os.path.join(ROOT, 'tests', 'support') not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, 'tests', 'support'))
if os.path.join(ROOT, 'module_utils') not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(os.path.join(ROOT, 'module_utils'))

MB = 1024.0 * 1024.0


def timed(func, *args, **kwargs):
    """(seconds, value) of one call."""
    started = time.perf_counter()
    value = func(*args, **kwargs)
    return time.perf_counter() - started, value
