"""Shared pytest fixtures: a real PostgreSQL cluster and Ansible's module_utils path.

Fixtures
- pg_server (session): a running throwaway cluster (tests/support/pgcluster.py: Cluster).
- pg_db (function): a fresh, empty database on it; returns module-style
  connection parameters (login_host, login_port, login_user, login_password,
  login_db, connect_timeout). Dropped afterwards.
- pg_container (session): a running PostgreSQL container on the local Docker
  engine (tests/support/pgcontainer.py: PgContainer .name, .port, .params(db), .query()),
  for modules that work through `docker exec`. Removed afterwards.
"""

import os
import sys
import uuid

# No __pycache__ inside module_utils/: the soulnear role copies that directory to the hosts as it is.
sys.dont_write_bytecode = True

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked full run in make test-full only (SOULNEAR_TEST_FULL=1): make test stays inside CI's budget."""
    if os.environ.get('SOULNEAR_TEST_FULL'):
        return
    skip = pytest.mark.skip(reason='make test-full (SOULNEAR_TEST_FULL=1)')
    for item in items:
        if item.get_closest_marker('full'):
            item.add_marker(skip)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The harness (tests/support/: servers, containers, labs, the Ansible runner) is imported by module name:
# `from pgclient import query`.
sys.path.insert(0, os.path.join(ROOT, 'tests', 'support'))

# Our package is imported as ansible.module_utils.soulnear.<name> by the modules;
# make that import work in-process for the tests, as Ansible does when it packs a module.
import ansible.module_utils  # noqa: E402

_MU = os.path.join(ROOT, 'module_utils')
if _MU not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MU)

from pgcluster import Cluster  # noqa: E402
from pgcontainer import PgContainer  # noqa: E402


@pytest.fixture(scope='session')
def pg_server():
    cluster = Cluster().init().start()
    cluster.wait_ready()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_db(pg_server):
    name = 'test_' + uuid.uuid4().hex[:12]
    pg_server.query('CREATE DATABASE %s' % name)
    yield pg_server.params(db=name)
    pg_server.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                    'WHERE datname = %s AND pid <> pg_backend_pid()', (name,))
    pg_server.query('DROP DATABASE IF EXISTS %s' % name)


@pytest.fixture(scope='session')
def pg_container():
    container = PgContainer().start()
    yield container
    container.remove()


@pytest.fixture
def repo_root():
    return ROOT
