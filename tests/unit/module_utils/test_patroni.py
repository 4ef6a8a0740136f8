"""patroni.check_cluster against a real HTTP server on 127.0.0.1 serving Patroni's GET /cluster answers.

The bodies have the shape Patroni 3.0 returns (patroni.utils.cluster_as_json: members sorted by name,
role leader/sync_standby/replica, state, api_url, host, port, timeline, lag in bytes or 'unknown'
for replicas, 'pause': true in maintenance mode). Nothing is mocked: the function under test opens a
real connection. tests/integration/module_utils/test_patroni.py runs it against a real cluster.
"""

import http.server
import json
import socket
import threading

import pytest

from ansible.module_utils.soulnear import patroni


def member(name, role='replica', state='running', lag=0, timeline=3):
    body = {'name': name, 'role': role, 'state': state, 'api_url': 'http://%s:8008/patroni' % name,
            'host': '10.0.0.%s' % name[-1], 'port': 5432, 'timeline': timeline}
    if role != 'leader':
        body['lag'] = lag
    return body


def healthy(**extra):
    return dict({'members': [member('pg1', 'leader'), member('pg2', 'sync_standby'), member('pg3', lag=1024)]},
                **extra)


class PatroniStub:
    """A real HTTP server: GET /cluster answers self.body (a dict as JSON, or raw text) with self.status."""

    def __init__(self):
        stub = self
        self.body, self.status, self.paths = healthy(), 200, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                stub.paths.append(self.path)
                raw = stub.body if isinstance(stub.body, str) else json.dumps(stub.body)
                data = raw.encode()
                self.send_response(stub.status if self.path == '/cluster' else 404)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def stub():
    server = PatroniStub()
    yield server
    server.close()


def check(stub, body, **kwargs):
    stub.body = body
    result = patroni.check_cluster(stub.url, timeout=3, **kwargs)
    assert set(result) <= {'ok', 'value', 'message', 'warning'}
    assert isinstance(result['message'], str) and '\n' not in result['message']
    return result


def test_leader_and_two_streaming_replicas(stub):
    result = check(stub, healthy())
    assert result['ok'] is True, result
    assert 'warning' not in result
    assert stub.paths == ['/cluster']
    value = result['value']
    assert value['leader'] == 'pg1'
    assert value['sync_standby'] == ['pg2']
    assert value['url'] == stub.url
    assert [(m['name'], m['role'], m['state'], m['lag'], m['timeline']) for m in value['members']] == [
        ('pg1', 'leader', 'running', None, 3), ('pg2', 'sync_standby', 'running', 0, 3),
        ('pg3', 'replica', 'running', 1024, 3)]
    assert value['members'][1]['host'] == '10.0.0.2' and value['members'][1]['port'] == 5432
    assert result['message'] == 'leader pg1, 2 replica(s) streaming (lag 1.0 KiB max), timeline 3, sync standby pg2'


def test_the_url_may_name_the_endpoint_or_omit_the_scheme(stub):
    stub.body = healthy()
    for url in (stub.url + '/', stub.url + '/cluster', stub.url.replace('http://', '')):
        result = patroni.check_cluster(url, timeout=3)
        assert result['ok'] is True, (url, result)
        assert result['value']['url'] == stub.url


def test_streaming_state_of_newer_patroni(stub):
    body = {'members': [member('pg1', 'leader'), member('pg2', state='streaming'), member('pg3', state='streaming')]}
    result = check(stub, body)
    assert result['ok'] is True, result
    assert result['message'].startswith('leader pg1, 2 replica(s) streaming (lag 0 B max)')


def test_no_leader_fails(stub):
    body = {'members': [member('pg1', state='stopped'), member('pg2'), member('pg3')]}
    result = check(stub, body)
    assert result['ok'] is False
    assert result['value']['leader'] is None
    assert 'no leader' in result['message'] and 'pg1 replica stopped' in result['message']
    assert 'Fix: ' in result['message']


def test_leader_not_running_fails(stub):
    result = check(stub, {'members': [member('pg1', 'leader', state='starting'), member('pg2')]})
    assert result['ok'] is False
    assert result['value']['leader'] == 'pg1'
    assert 'the leader pg1 is starting' in result['message'] and 'Fix: ' in result['message']


@pytest.mark.parametrize('state', ['stopped', 'crashed', 'creating replica', 'in archive recovery', 'start failed'])
def test_member_not_running_fails(stub, state):
    result = check(stub, {'members': [member('pg1', 'leader'), member('pg2', 'sync_standby'),
                                      member('pg3', state=state, lag='unknown')]})
    assert result['ok'] is False
    assert result['value']['leader'] == 'pg1'
    assert 'pg3 (10.0.0.3) is %s' % state in result['message']
    assert 'Fix: ' in result['message'] and 'patronictl reinit' in result['message']


def test_lag_over_the_limit_warns(stub):
    body = {'members': [member('pg1', 'leader'), member('pg2', 'sync_standby'),
                        member('pg3', lag=40 * 1024 * 1024)]}
    result = check(stub, body)
    assert result['ok'] is True  # the leader takes writes: high availability is degraded, not the service
    assert 'pg3 40.0 MiB' in result['warning'] and 'over 16.0 MiB' in result['warning']
    assert 'Fix: ' in result['warning']
    assert 'lag 40.0 MiB max' in result['message']
    assert 'warning' not in check(stub, body, max_lag_bytes=64 * 1024 * 1024)


def test_unknown_lag_and_older_timeline_warn(stub):
    body = {'members': [member('pg1', 'leader', timeline=4), member('pg2', 'sync_standby', timeline=4),
                        member('pg3', lag='unknown', timeline=3)]}
    result = check(stub, body)
    assert result['ok'] is True
    assert 'lag unknown for pg3' in result['warning']
    assert 'pg3 (timeline 3)' in result['warning']
    assert result['value']['members'][2]['lag'] is None


def test_paused_cluster_warns(stub):
    result = check(stub, healthy(pause=True))
    assert result['ok'] is True
    assert result['value']['paused'] is True
    assert 'maintenance mode' in result['warning'] and 'patronictl resume' in result['warning']
    assert result['message'].endswith(', paused')


def test_single_member_warns(stub):
    result = check(stub, {'members': [member('pg1', 'leader', timeline=1)]})
    assert result['ok'] is True
    assert result['message'] == 'leader pg1, 0 replica(s) streaming (lag 0 B max), timeline 1'
    assert 'no replica' in result['warning']


def test_not_a_patroni_answer_fails(stub):
    for body in ('<html>nginx</html>', {'state': 'running'}, '[]'):
        result = check(stub, body)
        assert result['ok'] is False
        assert "did not answer like Patroni's /cluster" in result['message'] and 'Fix: ' in result['message']


def test_http_error_fails_with_the_status(stub):
    stub.status = 503
    result = check(stub, healthy())
    assert result['ok'] is False
    assert 'answered HTTP 503' in result['message'] and stub.url + '/cluster' in result['message']


def test_rest_api_down_fails_with_the_url():
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()  # a closed port: connection refused
    url = 'http://127.0.0.1:%d' % port
    result = patroni.check_cluster(url, timeout=2)
    assert result['ok'] is False
    assert url + '/cluster' in result['message']
    assert 'Fix: check patroni_url and that port 8008 is reachable from this host' in result['message']
    assert result['value'] == {'leader': None, 'members': [], 'sync_standby': [], 'url': url}
    assert patroni.leader_of(url, timeout=2) is None


def test_rest_api_that_never_answers_times_out():
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)  # accepts the TCP connection, never answers
    try:
        url = 'http://127.0.0.1:%d' % listener.getsockname()[1]
        result = patroni.check_cluster(url, timeout=1)
    finally:
        listener.close()
    assert result['ok'] is False
    assert 'did not answer' in result['message'] and url in result['message']


def test_leader_of(stub):
    stub.body = healthy()
    assert patroni.leader_of(stub.url, timeout=3) == 'pg1'
    stub.body = {'members': [member('pg1'), member('pg2')]}
    assert patroni.leader_of(stub.url, timeout=3) is None
