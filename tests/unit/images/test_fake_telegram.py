"""The fake Telegram Bot API (images/fake-telegram/server.py) as a real process on 127.0.0.1, over real HTTPS with the
test CA of make-certs.sh: getMe, delivery and confirmation of updates, long polling, the 409 rule for a second poller,
the bounded generator, the three body encodings and the control API. No mocks; every wait is on a condition."""

import http.client
import json
import os
import random
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import pytest
from pgclient import wait_until

from ansiblerun import ROOT
FAKE_DIR = os.path.join(ROOT, 'images', 'fake-telegram')
CONFLICT = 'Conflict: terminated by other getUpdates request; make sure that only one bot instance is running'
TEST_TIMEOUT = 60   # seconds per test (pytest-timeout is not among the requirements: SIGALRM does it)


@pytest.fixture(autouse=True)
def deadline():
    def expired(signum, frame):
        raise TimeoutError('test ran longer than %d s' % TEST_TIMEOUT)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def make_certs(directory):
    return subprocess.run([os.path.join(FAKE_DIR, 'make-certs.sh'), str(directory)], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def new_token():
    return '%d:%s' % (random.randint(10 ** 8, 10 ** 9 - 1), uuid.uuid4().hex)


def multipart(fields, files=None):
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in fields.items():
        chunks.append(('--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                       % (boundary, name, value)).encode('utf-8'))
    for name, (filename, data) in (files or {}).items():
        chunks.append(('--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
                       'Content-Type: application/octet-stream\r\n\r\n' % (boundary, name, filename)).encode('utf-8')
                      + data + b'\r\n')
    chunks.append(('--%s--\r\n' % boundary).encode())
    return b''.join(chunks), 'multipart/form-data; boundary=%s' % boundary


class Fake:
    """server.py as a subprocess: HTTPS on port (Bot API and /_fake/), plain HTTP control on control_port."""

    def __init__(self, certs, log_path):
        self.certs, self.log_path = str(certs), str(log_path)
        self.port, self.control_port = free_port(), free_port()
        self.context = ssl.create_default_context(cafile=os.path.join(self.certs, 'ca.crt'))

    def start(self):
        self.log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(FAKE_DIR, 'server.py'), '--listen', '127.0.0.1', '--port', str(self.port),
             '--cert', os.path.join(self.certs, 'server.crt'), '--key', os.path.join(self.certs, 'server.key'),
             '--control-listen', '127.0.0.1', '--control-port', str(self.control_port)],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self.healthy, timeout=20, what='the fake Bot API to answer')
        return self

    def healthy(self):
        assert self.proc.poll() is None, 'server.py exited: ' + open(self.log_path).read()
        try:
            return self.request('GET', '/_fake/health', timeout=2)[0] == 200
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()

    def request(self, verb, path, body=None, headers=None, timeout=10, control=False):
        if control:
            conn = http.client.HTTPConnection('127.0.0.1', self.control_port, timeout=timeout)
        else:
            conn = http.client.HTTPSConnection('127.0.0.1', self.port, timeout=timeout, context=self.context)
        try:
            conn.request(verb, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, json.loads(response.read().decode('utf-8'))
        finally:
            conn.close()

    def api(self, token, method, params=None, encoding='json', timeout=10):
        """A Bot API call with its parameters in the query string, or a JSON, urlencoded or multipart body."""
        params = params or {}
        path = '/bot%s/%s' % (token, method)
        # as the libraries send forms: strings as they are, everything else JSON-encoded
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
        if encoding == 'query':
            return self.request('GET', path + '?' + urllib.parse.urlencode(fields), timeout=timeout)
        if encoding == 'json':
            body, ctype = json.dumps(params).encode(), 'application/json'
        else:
            if encoding == 'form':
                body, ctype = urllib.parse.urlencode(fields).encode(), 'application/x-www-form-urlencoded'
            else:
                body, ctype = multipart(fields)
        return self.request('POST', path, body, {'Content-Type': ctype}, timeout=timeout)

    def control(self, path, body=None):
        status, payload = self.request('POST' if body is not None else 'GET', '/_fake/' + path,
                                       None if body is None else json.dumps(body).encode(),
                                       {'Content-Type': 'application/json'}, control=True)
        assert status == 200 and payload['ok'], payload
        return payload['result']

    def queue(self, token, text='/start', user_id=4242):
        return self.control('updates', {'token': token, 'text': text, 'user_id': user_id})['update_id']

    def state(self, token):
        return self.control('state?token=' + urllib.parse.quote(token))


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp('fake-telegram-certs')
    make_certs(directory)
    return directory


@pytest.fixture(scope='module')
def fake(certs, tmp_path_factory):
    server = Fake(certs, tmp_path_factory.mktemp('fake-telegram-log') / 'server.log').start()
    yield server
    server.stop()


def updates(payload):
    assert payload['ok'], payload
    return [u['update_id'] for u in payload['result']]


# -- the certificate -------------------------------------------------------------------------------------------------
def test_certificates_are_kept_private_and_name_api_telegram_org(certs, fake):
    assert make_certs(certs).split() == ['kept', str(certs / 'ca.crt'), 'kept', str(certs / 'ca.key'),
                                         'kept', str(certs / 'server.crt'), 'kept', str(certs / 'server.key')]
    for key in ('ca.key', 'server.key'):
        assert stat.S_IMODE(os.stat(certs / key).st_mode) == 0o600
    for name in ('api.telegram.org', 'fake-telegram'):
        with socket.create_connection(('127.0.0.1', fake.port), timeout=5) as raw:
            with fake.context.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version() in ('TLSv1.2', 'TLSv1.3')
    with socket.create_connection(('127.0.0.1', fake.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            fake.context.wrap_socket(raw, server_hostname='api.example.org')


# -- Bot API ---------------------------------------------------------------------------------------------------------
def test_get_me_is_a_bot_user_derived_from_the_token(fake):
    token = new_token()
    status, payload = fake.api(token, 'getMe')
    assert status == 200 and payload['ok'], payload
    me = payload['result']
    assert me['id'] == int(token.split(':')[0]) and me['is_bot'] is True
    assert me['username'].endswith('_bot') and me['first_name']
    assert {'can_join_groups', 'can_read_all_group_messages', 'supports_inline_queries'} <= set(me)
    # any token is accepted; one without Telegram's numeric prefix gets a stable id of its own
    first = fake.api('not-a-real-token', 'getMe', encoding='query')[1]['result']
    assert first == fake.api('not-a-real-token', 'getme', encoding='form')[1]['result'] and first['id'] > 0


def test_a_queued_update_is_delivered_until_confirmed(fake):
    token = new_token()
    update_id = fake.queue(token, '/start', user_id=777)
    payload = fake.api(token, 'getUpdates', {'timeout': 0})[1]
    assert updates(payload) == [update_id]
    message = payload['result'][0]['message']
    assert message['text'] == '/start' and message['from']['id'] == 777 and message['chat']['id'] == 777
    assert message['entities'] == [{'type': 'bot_command', 'offset': 0, 'length': 6}]
    # not confirmed yet (no offset past it): delivered again, and counted
    assert updates(fake.api(token, 'getUpdates', {'timeout': 0})[1]) == [update_id]
    state = fake.state(token)
    assert state['delivered'] == {str(update_id): 2} and state['queued'] == [update_id]
    assert state['confirmed'] == [] and state['polls'] == 2


def test_offset_confirms_and_confirmed_updates_never_come_back(fake):
    token = new_token()
    first, second, third = (fake.queue(token, 'message %d' % n) for n in range(3))
    assert updates(fake.api(token, 'getUpdates', {'limit': 2})[1]) == [first, second]
    assert updates(fake.api(token, 'getUpdates', {'offset': second + 1})[1]) == [third]
    assert updates(fake.api(token, 'getUpdates', {'offset': 0})[1]) == [third]
    state = fake.state(token)
    assert state['confirmed'] == [first, second] and state['queued'] == [third]
    assert updates(fake.api(token, 'getUpdates', {'offset': third + 1})[1]) == []
    assert fake.state(token)['confirmed'] == [first, second, third]
    # a negative offset keeps the last updates and forgets the rest, as Telegram does
    ids = [fake.queue(token, 'again %d' % n) for n in range(3)]
    assert updates(fake.api(token, 'getUpdates', {'offset': -1})[1]) == ids[-1:]
    assert fake.state(token)['confirmed'][-2:] == ids[:2]


def test_long_poll_waits_then_returns_at_once_on_a_new_update(fake):
    token = new_token()
    started = time.monotonic()
    assert updates(fake.api(token, 'getUpdates', {'timeout': 1})[1]) == []
    assert time.monotonic() - started >= 0.9        # it waited for its timeout

    answer = {}

    def poll():
        answer['payload'] = fake.api(token, 'getUpdates', {'timeout': 30}, timeout=40)[1]
        answer['at'] = time.monotonic()

    poller = threading.Thread(target=poll)
    poller.start()
    wait_until(lambda: fake.state(token)['polling_now'], what='the long poll to be in flight')
    queued_at = time.monotonic()
    update_id = fake.queue(token, 'wake up')
    poller.join(20)
    assert not poller.is_alive()
    assert updates(answer['payload']) == [update_id]
    assert answer['at'] - queued_at < 10            # answered on the update, not at its 30 s timeout
    assert fake.state(token)['last_poll_age'] is not None


def test_a_second_poller_terminates_the_first_with_409_and_is_counted(fake):
    token = new_token()
    answer = {}

    def first_poll():
        answer['first'] = fake.api(token, 'getUpdates', {'timeout': 30}, timeout=40)

    first = threading.Thread(target=first_poll)
    first.start()
    wait_until(lambda: fake.state(token)['polling_now'], what='the first poll to be in flight')
    # Telegram's rule: the newer request wins, the older one is answered 409
    status, payload = fake.api(token, 'getUpdates', {'timeout': 1})
    assert (status, payload['result']) == (200, [])
    first.join(20)
    assert not first.is_alive()
    status, payload = answer['first']
    assert status == 409
    assert payload == {'ok': False, 'error_code': 409, 'description': CONFLICT}
    state = fake.state(token)
    assert state['conflicts'] == 1
    assert state['conflict_events'][0]['terminated'] == state['conflict_events'][0]['by'] == '127.0.0.1'
    assert state['pollers']['127.0.0.1']['polls'] == 2


def test_a_poll_whose_client_left_is_not_a_conflict(fake):
    """A bot that stops closes its connection mid-poll; the next bot's poll is not a second poller."""
    token = new_token()
    raw = socket.create_connection(('127.0.0.1', fake.port), timeout=5)
    tls = fake.context.wrap_socket(raw, server_hostname='api.telegram.org')
    body = b'{"timeout": 30}'
    tls.sendall(('POST /bot%s/getUpdates HTTP/1.1\r\nHost: api.telegram.org\r\nContent-Type: application/json\r\n'
                 'Content-Length: %d\r\n\r\n' % (token, len(body))).encode() + body)
    wait_until(lambda: fake.state(token)['polling_now'], what='the raw poll to be in flight')
    tls.close()
    assert updates(fake.api(token, 'getUpdates', {'timeout': 0})[1]) == []
    state = wait_until(lambda: (lambda s: s if s['abandoned_polls'] == 1 else None)(fake.state(token)),
                       what='the abandoned poll to be counted')
    assert state['conflicts'] == 0 and state['polls'] == 2


def test_the_generator_queues_a_bounded_number_of_updates_and_stops(fake):
    token = new_token()
    generator = fake.control('generate', {'token': token, 'rate': 200, 'count': 25, 'text': 'load {n}'})
    done = wait_until(lambda: [g for g in fake.state(token)['generators'] if g['id'] == generator['id'] and g['done']],
                      what='the generator to finish')[0]
    assert done['produced'] == 25 and not done['stopped']
    state = fake.state(token)
    assert len(state['queued']) == 25
    payload = fake.api(token, 'getUpdates', {'limit': 100})[1]
    assert [u['message']['text'] for u in payload['result']] == ['load %d' % n for n in range(1, 26)]
    # bounded: a rate or count beyond the limits is refused, and a long run can be stopped
    for bad in ({'rate': 0, 'count': 5}, {'rate': 5000, 'count': 5}, {'rate': 5, 'count': 0},
                {'rate': 5, 'count': 10 ** 6}):
        status, payload = fake.request('POST', '/_fake/generate', json.dumps(dict(bad, token=token)).encode(),
                                       {'Content-Type': 'application/json'}, control=True)
        assert status == 400 and not payload['ok'], bad
    slow = fake.control('generate', {'token': token, 'rate': 20, 'count': 10000})
    wait_until(lambda: [g for g in fake.state(token)['generators'] if g['id'] == slow['id'] and g['produced']],
               what='the second generator to start')
    fake.control('generate/stop', {'token': token})
    stopped = wait_until(lambda: [g for g in fake.state(token)['generators'] if g['id'] == slow['id'] and g['done']],
                         what='the stopped generator to end')[0]
    assert stopped['stopped'] and stopped['produced'] < 10000


@pytest.mark.parametrize('encoding', ['json', 'form', 'multipart', 'query'])
def test_parameters_arrive_in_every_encoding(fake, encoding):
    token = new_token()
    status, payload = fake.api(token, 'sendMessage', {'chat_id': -100123, 'text': 'привет, ✓ & = + %'},
                               encoding=encoding)
    assert status == 200 and payload['ok'], payload
    message = payload['result']
    assert message['chat']['id'] == -100123 and message['text'] == 'привет, ✓ & = + %'
    assert message['from']['is_bot'] is True and message['message_id'] >= 1 and message['date'] > 0
    fake.queue(token, 'x')
    assert len(updates(fake.api(token, 'getUpdates', {'timeout': 0, 'allowed_updates': ['message']},
                                encoding=encoding)[1])) == 1
    state = fake.state(token)
    assert [(m['method'], m['chat_id'], m['text']) for m in state['sent_messages']] == [
        ('sendMessage', -100123, 'привет, ✓ & = + %')]
    assert state['allowed_updates'] == ['message']
    assert state['encodings'] == {encoding: 2}


def test_multipart_files_are_recorded_by_name_and_size(fake):
    token = new_token()
    body, ctype = multipart({'chat_id': '42', 'caption': 'a picture'}, {'photo': ('cat.png', b'\x89PNG' + bytes(96))})
    status, payload = fake.request('POST', '/bot%s/sendPhoto' % token, body, {'Content-Type': ctype})
    assert status == 200 and payload['result']['chat']['id'] == 42
    sent = fake.state(token)['sent_messages']
    assert sent[0]['files'] == {'photo': {'filename': 'cat.png', 'size': 100}} and sent[0]['text'] == 'a picture'


def test_webhook_blocks_polling_and_drop_pending_updates_drops(fake):
    token = new_token()
    queued = [fake.queue(token, 'before') for _ in range(2)]
    assert fake.api(token, 'setWebhook', {'url': 'https://bot.example/hook'})[1]['result'] is True
    assert fake.api(token, 'getWebhookInfo')[1]['result']['url'] == 'https://bot.example/hook'
    status, payload = fake.api(token, 'getUpdates')
    assert status == 409 and 'webhook is active' in payload['description']
    assert fake.api(token, 'deleteWebhook', {'drop_pending_updates': True}, encoding='form')[1]['result'] is True
    state = fake.state(token)
    assert state['dropped'] == queued and state['queued'] == [] and state['webhook_conflicts'] == 1
    assert state['conflicts'] == 0
    for method in ('logOut', 'close', 'setMyCommands', 'sendChatAction'):
        assert fake.api(token, method, {'chat_id': 1})[1] == {'ok': True, 'result': True}


def test_unknown_paths_and_bad_bodies(fake):
    assert fake.request('GET', '/getMe')[0] == 404
    assert fake.request('GET', '/bot123:abc')[0] == 404
    status, payload = fake.request('POST', '/bot123:abc/sendMessage', b'{not json',
                                   {'Content-Type': 'application/json'})
    assert status == 400 and payload['error_code'] == 400
    # the control port serves the control API only
    assert fake.request('GET', '/bot123:abc/getMe', control=True)[0] == 404


def test_reset_forgets_a_token(fake):
    token = new_token()
    before = fake.queue(token)
    fake.api(token, 'getUpdates')
    assert fake.state(token)['polls'] == 1
    fake.control('reset', {'token': token})
    state = fake.state(token)
    assert state['polls'] == 0 and state['queued'] == [] and state['delivered'] == {}
    # update ids keep growing across a reset: a bot that stored the old ones as UNIQUE still takes the new ones
    assert fake.queue(token) > before


def test_log_lines_show_only_the_start_of_a_token(fake):
    token = new_token()
    fake.api(token, 'getMe')
    fake.queue(token)

    def logged():
        with open(fake.log_path) as handle:
            return [line for line in handle if '/bot%s' % token[:6] in line and 'getMe' in line]

    lines = wait_until(logged, what='the request line in the log')
    assert len(lines) == 1 and ' 200 ' in lines[0]
    with open(fake.log_path) as handle:
        text = handle.read()
    assert token not in text and token.split(':')[1] not in text


def test_plain_http_mode_and_the_health_check(tmp_path):
    port = free_port()
    server = [sys.executable, os.path.join(FAKE_DIR, 'server.py'), '--listen', '127.0.0.1', '--port', str(port),
              '--no-tls']
    check = subprocess.run(server + ['--check'], capture_output=True, text=True, timeout=30)
    assert check.returncode == 1 and 'health check failed' in check.stderr    # nothing listens yet
    with open(tmp_path / 'plain.log', 'w') as log:
        proc = subprocess.Popen(server, stdout=log, stderr=subprocess.STDOUT)
    try:
        def get_me():
            conn = http.client.HTTPConnection('127.0.0.1', port, timeout=2)
            try:
                conn.request('GET', '/bot42:plain/getMe')
                return json.loads(conn.getresponse().read())
            except OSError:
                return None
            finally:
                conn.close()

        assert wait_until(get_me, timeout=20, what='the plain-HTTP fake to answer')['result']['id'] == 42
        assert subprocess.run(server + ['--check'], capture_output=True, timeout=30).returncode == 0
    finally:
        proc.terminate()
        assert proc.wait(10) == 0       # SIGTERM: a clean stop
