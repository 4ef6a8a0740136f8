"""The metrics role's postgres_exporter start line against PostgreSQL 17 (roles/metrics/templates/
postgres-exporter.conf.j2): the exporter Debian 12 ships (0.11) and the one Debian 13 ships (0.17), each installed from
Debian's mirror into a throwaway container, started with exactly the line the role renders, scrape a real 17 server
without a failing collector; the same 0.11 started without the role's choice fails its bgwriter collector on every
scrape (the control: the test can fail). make test-full only: it installs packages from the mirror."""

import re
import socket
import time
import urllib.request
import uuid
from pathlib import Path

import jinja2
import pytest

from pgcontainer import PgContainer, docker

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / 'roles' / 'metrics' / 'templates' / 'postgres-exporter.conf.j2'
DEADLINE = 900  # apt-get update and install on a loaded machine


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def exec_start(port, checkpointer):
    """The last ExecStart= of the rendered drop-in, as systemd would run it ($$ is a literal $)."""
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters['bool'] = bool
    text = env.from_string(TEMPLATE.read_text()).render(
        __metrics_host='127.0.0.1', metrics_postgres_exporter_port=port, metrics_postgres_exporter_flags=[],
        __metrics_pg_checkpointer=checkpointer, __metrics_pg_major=17, __metrics_env_file='/etc/exporter.env',
        __metrics_db_tls=False, metrics_postgres_user='exporter', soulnear_config_dir='/etc/soulnear')
    line = [row for row in text.splitlines() if row.startswith('ExecStart=')][-1][len('ExecStart='):]
    return line.replace('$$', '$')


def scrape(port):
    with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=30) as response:
        return response.read().decode()


def wait_scrape(port, container, deadline):
    last = None
    while time.monotonic() < deadline:
        try:
            return scrape(port)
        except OSError as exc:
            last = exc
        state = docker('inspect', '-f', '{{.State.Running}}', container, check=False).stdout.strip()
        assert state == 'true', 'the exporter container stopped: %s' % docker('logs', '--tail', '40', container,
                                                                               check=False).stdout
        time.sleep(2)
    pytest.fail('no exporter answered on 127.0.0.1:%d before the deadline (%s)' % (port, last))


@pytest.fixture(scope='module')
def pg17():
    server = PgContainer(image='soulnear/postgres:17').start()
    yield server
    server.remove()


@pytest.mark.full
@pytest.mark.timeout(DEADLINE + 300)
@pytest.mark.parametrize('release,version,expect_series', [
    ('bookworm', '0.11.', None),
    ('trixie', '0.17.', 'pg_stat_checkpointer_'),
])
def test_the_start_line_scrapes_postgres_17_without_a_failing_collector(pg17, release, version, expect_series):
    role_port, plain_port = free_port(), free_port()
    dsn = 'postgresql://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable' % (pg17.password, pg17.port)
    script = ('apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus-postgres-exporter'
              ' >/dev/null && /usr/bin/prometheus-postgres-exporter --version > /tmp/version 2>&1'
              ' && { /usr/bin/prometheus-postgres-exporter --web.listen-address=127.0.0.1:%d > /tmp/plain.log 2>&1 &'
              ' } && exec /bin/sh -c %s > /tmp/role.log 2>&1'
              % (plain_port, "'" + exec_start(role_port, True).replace("'", "'\\''") + "'"))
    # The line renders to the plain start on 15, so nothing changes for a deployment that stays there.
    assert '/bin/sh' not in exec_start(role_port, False)
    name = 'soulnear-test-exporter-' + uuid.uuid4().hex[:8]
    docker('run', '-d', '--name', name, '--network', 'host', '-e', 'DATA_SOURCE_NAME=' + dsn,
           'soulnear/debian:%s' % release, 'bash', '-c', script)
    try:
        deadline = time.monotonic() + DEADLINE
        wait_scrape(role_port, name, deadline)
        wait_scrape(plain_port, name, deadline)
        body = scrape(role_port)
        scrape(plain_port)
        installed = docker('exec', name, 'cat', '/tmp/version').stdout
        assert version in installed, installed
        assert re.search(r'(?m)^pg_up 1(\.0)?$', body), body[:2000]
        role_log = docker('exec', name, 'cat', '/tmp/role.log').stdout
        plain_log = docker('exec', name, 'cat', '/tmp/plain.log').stdout
        assert 'collector failed' not in role_log, role_log
        if expect_series:
            assert expect_series in body, 'no %s series with the role\'s start line' % expect_series
        else:
            # The control: Debian 12's exporter started plainly fails its bgwriter collector against 17.
            assert re.search(r'collector failed.*bgwriter', plain_log), plain_log
    finally:
        docker('rm', '-f', name, check=False)
