#!/usr/bin/env python3
"""A fake Telegram Bot API for tests: real bot frameworks accept it as https://api.telegram.org.

Standard library only. Bot API calls arrive at /bot<TOKEN>/<method> (any token; state is kept per token) with their
parameters in the query string or a JSON, urlencoded or multipart/form-data body. getUpdates long-polls with
Telegram's rules (offset confirms, a second poll while one is in flight terminates the older one with 409 - counted,
so double polling is visible to a test). A control API under /_fake/ queues updates, runs bounded update generators,
shows the state per token and resets it. See README.md next to this file.
"""

import argparse
import email.parser
import email.policy
import hashlib
import json
import os
import select
import signal
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONFLICT = 'Conflict: terminated by other getUpdates request; make sure that only one bot instance is running'
WEBHOOK_CONFLICT = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the " \
                   "webhook first"
MAX_POLL_TIMEOUT = 60          # seconds a getUpdates may wait (clients ask for 10-30)
POLL_SLICE = 0.25              # how often a waiting poll checks that its client is still connected
CONFLICT_GRACE = 0.3           # how long a new poll waits to see the older poll's client close its connection
MAX_BODY = 20 * 1024 * 1024    # bytes
IDLE_TIMEOUT = MAX_POLL_TIMEOUT + 15   # an idle keep-alive connection is closed after this many seconds
MAX_GENERATOR_COUNT = 100000
MAX_GENERATOR_RATE = 1000.0
# Methods whose result is a Message; every other method answers true unless handled below.
MESSAGE_METHODS = {'sendmessage', 'sendphoto', 'senddocument', 'sendaudio', 'sendvideo', 'sendanimation', 'sendvoice',
                   'sendvideonote', 'sendsticker', 'sendlocation', 'sendvenue', 'sendcontact', 'sendpoll', 'senddice',
                   'forwardmessage', 'editmessagetext', 'editmessagecaption'}


def log(message):
    sys.stderr.write('%s fake-telegram %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), message))
    sys.stderr.flush()


def short(token):
    """What a log line or a state listing may show of a token: its first 6 characters."""
    return token[:6] + '...'


def bot_id_for(token):
    """The bot's user id: the token's numeric prefix as Telegram has it (123456:ABC...), else one derived from it."""
    prefix = token.split(':', 1)[0]
    if prefix.isdigit() and 0 < int(prefix) < 2 ** 52:
        return int(prefix)
    return 5000000000 + int(hashlib.sha256(token.encode()).hexdigest()[:8], 16)


class ApiError(Exception):
    def __init__(self, code, description):
        super().__init__(description)
        self.code, self.description = code, description


# -- parameters -----------------------------------------------------------------------------------------------------
def parse_multipart(body, content_type):
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b'Content-Type: ' + content_type.encode('latin-1') + b'\r\n\r\n' + body)
    if not message.is_multipart():
        raise ApiError(400, 'Bad Request: malformed multipart/form-data body')
    params = {}
    for part in message.iter_parts():
        name = part.get_param('name', header='content-disposition')
        if not name:
            continue
        payload = part.get_payload(decode=True) or b''
        if part.get_filename():
            params[name] = {'filename': part.get_filename(), 'size': len(payload)}
        else:
            params[name] = payload.decode(part.get_content_charset() or 'utf-8', 'replace')
    return params


def parse_body(body, content_type):
    kind = content_type.split(';', 1)[0].strip().lower()
    if not body:
        return {}
    if kind == 'application/json':
        try:
            params = json.loads(body.decode('utf-8'))
        except ValueError as exc:
            raise ApiError(400, 'Bad Request: invalid JSON body (%s)' % exc) from None
        if not isinstance(params, dict):
            raise ApiError(400, 'Bad Request: the JSON body must be an object')
        return params
    if kind == 'multipart/form-data':
        return parse_multipart(body, content_type)
    # application/x-www-form-urlencoded, also what a client that sends no type most likely meant
    return dict(urllib.parse.parse_qsl(body.decode('utf-8', 'replace'), keep_blank_values=True))


def decoded(value):
    """A form value as the Bot API reads it: numbers, booleans, arrays and objects arrive JSON-encoded."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ('[', '{') or text in ('true', 'false', 'null') or text.lstrip('-').isdigit():
            try:
                return json.loads(text)
            except ValueError:
                return value
    return value


def int_param(params, name, default, low=None, high=None):
    value = decoded(params.get(name, default))
    if value in (None, ''):
        value = default
    try:
        value = int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, 'Bad Request: %s must be an integer' % name) from None
    if low is not None:
        value = max(low, value)
    if high is not None:
        value = min(high, value)
    return value


def bool_param(params, name):
    value = decoded(params.get(name, False))
    return value is True or (isinstance(value, str) and value.lower() in ('true', '1', 'yes'))


# -- state ----------------------------------------------------------------------------------------------------------
class Poll:
    def __init__(self, peer, agent, connection):
        self.peer, self.agent, self.connection = peer, agent, connection
        self.started = time.time()
        self.ended = None    # why it must end early: 'conflict', 'webhook', 'gone' (client left) or 'reset'

    def client_gone(self):
        """True when the client closed its connection (or sent anything: HTTP/1.1 clients do not pipeline here)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


class BotState:
    def __init__(self, token):
        self.token = token
        self.bot_id = bot_id_for(token)
        self.pending = []            # updates not yet confirmed, in update_id order
        self.confirmed = []          # confirmed update ids, in confirmation order
        self.dropped = []            # ids dropped by deleteWebhook/setWebhook(drop_pending_updates)
        self.delivered = {}          # update_id -> how many getUpdates answers carried it
        self.conflicts = 0
        self.conflict_events = []
        self.webhook_conflicts = 0
        self.abandoned_polls = 0
        self.polls = 0
        self.last_poll = None
        self.pollers = {}
        self.active = None           # the getUpdates in flight
        self.sent = []
        self.calls = {}
        self.encodings = {}          # how the parameters came: query, json, form, multipart, none
        self.webhook_url = ''
        self.allowed_updates = None
        self.next_message_id = 1

    def me(self):
        return {'id': self.bot_id, 'is_bot': True, 'first_name': 'Fake Bot %d' % self.bot_id,
                'username': 'fake_%d_bot' % self.bot_id, 'can_join_groups': True,
                'can_read_all_group_messages': False, 'supports_inline_queries': False,
                'can_connect_to_business': False, 'has_main_web_app': False}

    def confirm(self, offset):
        """Telegram's offset: ids below it are confirmed (never sent again); negative counts from the end."""
        if offset < 0:
            keep = self.pending[offset:]
            gone, self.pending = self.pending[:len(self.pending) - len(keep)], keep
        elif offset > 0:
            gone = [u for u in self.pending if u['update_id'] < offset]
            self.pending = [u for u in self.pending if u['update_id'] >= offset]
        else:
            gone = []
        self.confirmed.extend(u['update_id'] for u in gone)

    def describe(self, now, full=True):
        state = {'bot_id': self.bot_id, 'token': short(self.token), 'username': self.me()['username'],
                 'queued': [u['update_id'] for u in self.pending], 'delivered': {str(k): v for k, v in
                                                                                self.delivered.items()},
                 'confirmed': list(self.confirmed), 'dropped': list(self.dropped), 'conflicts': self.conflicts,
                 'webhook_conflicts': self.webhook_conflicts, 'abandoned_polls': self.abandoned_polls,
                 'polls': self.polls, 'polling_now': self.active is not None, 'last_poll': self.last_poll,
                 'last_poll_age': None if self.last_poll is None else round(now - self.last_poll, 3),
                 'pollers': self.pollers, 'sent_count': len(self.sent), 'methods': self.calls,
                 'encodings': self.encodings,
                 'webhook_url': self.webhook_url, 'allowed_updates': self.allowed_updates}
        if full:
            state.update(sent_messages=self.sent, conflict_events=self.conflict_events)
        return state


class Generator:
    def __init__(self, gen_id, fake, token, rate, count, template):
        self.id, self.fake, self.token = gen_id, fake, token
        self.rate, self.count, self.template = rate, count, template
        self.produced = []
        self.stop = threading.Event()
        self.started = time.time()
        self.thread = threading.Thread(target=self.run, name='generator-%d' % gen_id, daemon=True)

    def run(self):
        start = time.monotonic()
        for index in range(self.count):
            # a fixed schedule (no drift): update i is due at start + i / rate
            if self.stop.wait(max(0.0, start + index / self.rate - time.monotonic())):
                break
            spec = dict(self.template)
            spec['text'] = str(spec.get('text', 'load {n}')).replace('{n}', str(index + 1))
            self.produced.append(self.fake.queue_message(self.token, spec)['update_id'])
        log('generator %d for %s finished: %d of %d updates' % (self.id, short(self.token), len(self.produced),
                                                                 self.count))

    def describe(self):
        return {'id': self.id, 'token': short(self.token), 'rate': self.rate, 'count': self.count,
                'produced': len(self.produced), 'first_update_id': self.produced[0] if self.produced else None,
                'last_update_id': self.produced[-1] if self.produced else None,
                'done': not self.thread.is_alive(), 'stopped': self.stop.is_set()}


class FakeTelegram:
    """Every token's state behind one lock; waiting polls sleep on its condition."""

    def __init__(self, first_update_id=None):
        self.cond = threading.Condition()
        self.bots = {}
        self.generators = []
        # Update ids keep growing across resets (and, by default, across restarts), so a bot that stores update_id
        # as UNIQUE never mistakes a new update for one it has seen.
        self.next_update_id = first_update_id or (int(time.time()) % 1000000) * 1000 + 1
        self.next_chat_message_id = 1

    def bot(self, token):
        state = self.bots.get(token)
        if state is None:
            state = self.bots[token] = BotState(token)
        return state

    # - control ------------------------------------------------------------------------------------------------------
    def queue_message(self, token, spec):
        text = str(spec.get('text', '/start'))
        user_id = int(spec.get('user_id', 1001))
        chat_id = int(spec.get('chat_id', user_id))
        sender = {'id': user_id, 'is_bot': False, 'first_name': str(spec.get('first_name', 'User %d' % user_id)),
                  'username': str(spec.get('username', 'user%d' % user_id)),
                  'language_code': str(spec.get('language_code', 'en'))}
        chat = ({'id': chat_id, 'type': 'private', 'first_name': sender['first_name'], 'username': sender['username']}
                if chat_id > 0 else {'id': chat_id, 'type': 'supergroup', 'title': 'Group %d' % -chat_id})
        with self.cond:
            state = self.bot(token)
            update_id = self.next_update_id
            self.next_update_id += 1
            message_id = self.next_chat_message_id
            self.next_chat_message_id += 1
            message = {'message_id': message_id, 'from': sender, 'chat': chat, 'date': int(time.time()), 'text': text}
            if text.startswith('/'):
                message['entities'] = [{'type': 'bot_command', 'offset': 0, 'length': len(text.split()[0])}]
            state.pending.append({'update_id': update_id, 'message': message})
            self.cond.notify_all()
        return {'update_id': update_id, 'message_id': message_id}

    def queue_raw(self, token, update):
        with self.cond:
            state = self.bot(token)
            update = dict(update, update_id=self.next_update_id)
            self.next_update_id += 1
            state.pending.append(update)
            self.cond.notify_all()
        return {'update_id': update['update_id']}

    def start_generator(self, token, rate, count, template):
        if not 0 < rate <= MAX_GENERATOR_RATE:
            raise ApiError(400, 'rate must be in (0, %s] updates per second' % MAX_GENERATOR_RATE)
        if not 0 < count <= MAX_GENERATOR_COUNT:
            raise ApiError(400, 'count must be in [1, %d]' % MAX_GENERATOR_COUNT)
        with self.cond:
            generator = Generator(len(self.generators) + 1, self, token, rate, count, template)
            self.generators.append(generator)
        generator.thread.start()
        return generator.describe()

    def stop_generators(self, token=None):
        for generator in self.generators:
            if token is None or generator.token == token:
                generator.stop.set()

    def reset(self, token=None):
        self.stop_generators(token)
        with self.cond:
            for state in (self.bots.values() if token is None else [self.bots.get(token)]):
                if state is not None and state.active is not None:
                    state.active.ended = 'reset'   # a poll in flight ends (empty answer) with its state
            if token is None:
                self.bots.clear()
                self.generators = [g for g in self.generators if g.thread.is_alive()]
            else:
                self.bots.pop(token, None)
                self.generators = [g for g in self.generators if g.token != token or g.thread.is_alive()]
            self.cond.notify_all()

    def state(self, token=None):
        now = time.time()
        with self.cond:
            generators = [g.describe() for g in self.generators if token is None or g.token == token]
            if token is not None:
                result = self.bot(token).describe(now)
                result['generators'] = generators
                return result
            return {'bots': {str(s.bot_id): s.describe(now, full=False) for s in self.bots.values()},
                    'generators': generators, 'next_update_id': self.next_update_id}

    # - Bot API ------------------------------------------------------------------------------------------------------
    def call(self, token, method, params, poll, encoding='none'):
        name = method.lower()
        with self.cond:
            state = self.bot(token)
            state.calls[method] = state.calls.get(method, 0) + 1
            state.encodings[encoding] = state.encodings.get(encoding, 0) + 1
            if name == 'getupdates':
                return self.get_updates(state, params, poll)
            if name == 'getme':
                return state.me()
            if name in ('deletewebhook', 'setwebhook'):
                if bool_param(params, 'drop_pending_updates'):
                    state.dropped.extend(u['update_id'] for u in state.pending)
                    state.pending = []
                state.webhook_url = str(params.get('url', '')) if name == 'setwebhook' else ''
                if state.webhook_url and state.active is not None:
                    state.active.ended = 'webhook'
                    self.cond.notify_all()
                return True
            if name == 'getwebhookinfo':
                return {'url': state.webhook_url, 'has_custom_certificate': False,
                        'pending_update_count': len(state.pending)}
            if name in ('getmycommands', 'getchatadministrators'):
                return []
            if name in MESSAGE_METHODS:
                return self.sent_message(state, method, params)
            if name == 'copymessage':
                return {'message_id': self.sent_message(state, method, params)['message_id']}
            return True

    def sent_message(self, state, method, params):
        chat_id = decoded(params.get('chat_id', 0))
        chat = ({'id': chat_id, 'type': 'private' if chat_id > 0 else 'supergroup'} if isinstance(chat_id, int)
                else {'id': -1000000000000 - len(str(chat_id)), 'type': 'channel', 'title': str(chat_id)})
        if chat['type'] == 'private':
            chat['first_name'] = 'User %d' % chat_id
        elif 'title' not in chat:
            chat['title'] = 'Group %d' % -chat_id
        message_id = state.next_message_id
        state.next_message_id += 1
        text = params.get('text', params.get('caption'))
        message = {'message_id': message_id, 'from': state.me(), 'chat': chat, 'date': int(time.time())}
        if text is not None:
            message['text' if 'caption' not in params else 'caption'] = str(text)
        state.sent.append({'method': method, 'message_id': message_id, 'chat_id': chat_id,
                           'text': None if text is None else str(text), 'date': message['date'],
                           'reply_to_message_id': decoded(params.get('reply_to_message_id')),
                           'files': {k: v for k, v in params.items() if isinstance(v, dict) and 'filename' in v}})
        return message

    def get_updates(self, state, params, poll):
        """Called with self.cond held. Returns the updates, or raises ApiError (409) / returns None (client gone)."""
        offset = int_param(params, 'offset', 0)
        limit = int_param(params, 'limit', 100, 1, 100)
        timeout = int_param(params, 'timeout', 0, 0, MAX_POLL_TIMEOUT)
        if 'allowed_updates' in params:
            state.allowed_updates = decoded(params['allowed_updates'])
        now = time.time()
        state.polls += 1
        state.last_poll = now
        seen = state.pollers.setdefault(poll.peer, {'polls': 0, 'first': now, 'last': now, 'user_agent': poll.agent})
        seen['polls'] += 1
        seen['last'] = now
        if state.webhook_url:
            state.webhook_conflicts += 1
            raise ApiError(409, WEBHOOK_CONFLICT)
        state.confirm(offset)
        while state.active is not None:
            older = state.active
            # A client that stops polling closes its connection; give that close a moment to arrive, so a bot that
            # restarts (or cancels a poll and sends the next) is not mistaken for a second bot.
            grace = time.monotonic() + CONFLICT_GRACE
            while state.active is older and not older.client_gone() and time.monotonic() < grace:
                self.cond.wait(0.05)
            if state.active is not older:
                continue        # it ended by itself meanwhile (or yet another poll took its place)
            if older.client_gone():
                older.ended = 'gone'
            else:
                # Telegram's rule (telegram-bot-api, Client::abort_long_poll): the NEW request wins and the pending
                # older one is answered 409 at once.
                older.ended = 'conflict'
                state.conflicts += 1
                state.conflict_events.append({'time': now, 'terminated': older.peer, 'by': poll.peer})
                log('409 conflict for %s: the poll from %s was terminated by a poll from %s'
                    % (short(state.token), older.peer, poll.peer))
            state.active = None
            self.cond.notify_all()
        state.active = poll
        deadline = time.monotonic() + timeout
        try:
            while True:
                if poll.ended is None and poll.client_gone():
                    poll.ended = 'gone'
                if poll.ended == 'conflict':
                    raise ApiError(409, CONFLICT)
                if poll.ended == 'webhook':
                    raise ApiError(409, 'Conflict: terminated by setWebhook request')
                if poll.ended == 'gone':
                    state.abandoned_polls += 1
                    return None
                batch = [] if poll.ended == 'reset' else state.pending[:limit]
                remaining = deadline - time.monotonic()
                if batch or remaining <= 0 or poll.ended == 'reset':
                    break
                self.cond.wait(min(POLL_SLICE, remaining))
        finally:
            if state.active is poll:
                state.active = None
        for update in batch:
            state.delivered[update['update_id']] = state.delivered.get(update['update_id'], 0) + 1
        return [dict(update) for update in batch]


# -- HTTP -----------------------------------------------------------------------------------------------------------
class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, fake, ssl_context=None, control_only=False):
        self.fake, self.ssl_context, self.control_only = fake, ssl_context, control_only
        super().__init__(address, Handler)

    def get_request(self):
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs in the request's own thread (Handler.handle), never in the accept loop.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'fake-telegram/1'
    timeout = IDLE_TIMEOUT

    def handle(self):
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log('%s TLS handshake failed: %s' % (self.client_address[0], exc))
                return
        try:
            super().handle()
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True

    def log_message(self, format, *args):
        """http.server's own lines (errors) go through log() without the request line (it may carry a token)."""
        log('%s %s' % (self.client_address[0], (format % args).split(' /bot')[0]))

    def log_request(self, code='-', size='-'):
        pass   # one line per request is written by finish_request_line()

    def finish_request_line(self, status, shown_path):
        log('%s %s %s %s %.3fs' % (self.client_address[0], self.command, shown_path, status,
                                   time.monotonic() - self._started))

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def read_body(self):
        if 'chunked' in self.headers.get('Transfer-Encoding', '').lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b';', 1)[0].strip() or b'0', 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    return b''.join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ApiError(413, 'Request Entity Too Large')
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get('Content-Length') or 0)
        if length > MAX_BODY:
            raise ApiError(413, 'Request Entity Too Large')
        return self.rfile.read(length) if length else b''

    def params(self, query):
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        body = self.read_body()
        params.update(parse_body(body, self.headers.get('Content-Type', '')))
        kind = self.headers.get('Content-Type', '').split(';', 1)[0].strip().lower()
        self.encoding = ({'application/json': 'json', 'multipart/form-data': 'multipart'}.get(kind, 'form') if body
                         else 'query' if query else 'none')
        return params

    def reply(self, status, payload, shown_path, quiet=False):
        body = json.dumps(payload, ensure_ascii=False).encode('utf-8')
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if not quiet:
            self.finish_request_line(status, shown_path)

    def dispatch(self):
        self._started = time.monotonic()
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        fake = self.server.fake
        if path.startswith('/_fake/'):
            return self.control(path[len('/_fake/'):].strip('/'), url.query, path)
        parts = path.split('/')
        if self.server.control_only or len(parts) != 3 or not parts[1].startswith('bot') or len(parts[1]) < 4:
            self.read_body()
            return self.reply(404, {'ok': False, 'error_code': 404, 'description': 'Not Found'}, '(not found)')
        token, method = parts[1][3:], parts[2]
        shown = '/bot%s/%s' % (short(token), method)
        try:
            params = self.params(url.query)
            poll = Poll(self.client_address[0], self.headers.get('User-Agent', ''), self.connection)
            result = fake.call(token, method, params, poll, self.encoding)
        except ApiError as exc:
            return self.reply(exc.code, {'ok': False, 'error_code': exc.code, 'description': exc.description}, shown)
        if result is None:   # a long poll whose client went away: nothing to answer
            self.close_connection = True
            return self.finish_request_line('abandoned', shown)
        return self.reply(200, {'ok': True, 'result': result}, shown)

    def control(self, action, query, path):
        fake = self.server.fake
        try:
            params = self.params(query)
            token = params.get('token')
            if action == 'health':
                result = {'status': 'ok'}
            elif action == 'state' and self.command == 'GET':
                result = fake.state(token)
            elif action == 'updates' and self.command == 'POST':
                if not token:
                    raise ApiError(400, 'token is required')
                result = (fake.queue_raw(token, params['update']) if isinstance(params.get('update'), dict)
                          else fake.queue_message(token, params))
            elif action == 'generate' and self.command == 'POST':
                if not token:
                    raise ApiError(400, 'token is required')
                template = {k: params[k] for k in ('text', 'user_id', 'chat_id', 'first_name', 'username')
                            if k in params}
                result = fake.start_generator(token, float(params.get('rate', 10)), int(params.get('count', 10)),
                                              template)
            elif action == 'generate/stop' and self.command == 'POST':
                fake.stop_generators(token)
                result = True
            elif action == 'reset' and self.command == 'POST':
                fake.reset(token)
                result = True
            else:
                raise ApiError(404, 'unknown control call %s %s' % (self.command, path))
        except ApiError as exc:
            return self.reply(exc.code, {'ok': False, 'error_code': exc.code, 'description': exc.description}, path)
        except (TypeError, ValueError) as exc:
            return self.reply(400, {'ok': False, 'error_code': 400, 'description': str(exc)}, path)
        # the health check (every few seconds from Docker) is not logged
        return self.reply(200, {'ok': True, 'result': result}, path, quiet=action == 'health')


# -- command line ---------------------------------------------------------------------------------------------------
def env(name, default):
    return os.environ.get('FAKE_TELEGRAM_' + name, default)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog='Every option also reads FAKE_TELEGRAM_<NAME> from the environment.')
    parser.add_argument('--listen', default=env('LISTEN', '0.0.0.0'), help='address of the Bot API listener')
    parser.add_argument('--port', type=int, default=int(env('PORT', '443')))
    parser.add_argument('--cert', default=env('CERT', '/certs/server.crt'), help='server certificate (PEM)')
    parser.add_argument('--key', default=env('KEY', '/certs/server.key'), help='its private key (PEM)')
    parser.add_argument('--no-tls', action='store_true', default=env('NO_TLS', '') == '1',
                        help='plain HTTP on --port (unit tests, a TLS-terminating proxy)')
    parser.add_argument('--control-listen', default=env('CONTROL_LISTEN', '127.0.0.1'),
                        help='address of the optional plain-HTTP control listener')
    parser.add_argument('--control-port', type=int, default=int(env('CONTROL_PORT', '0')),
                        help='plain-HTTP port serving /_fake/ only (0: none; /_fake/ is on --port anyway)')
    parser.add_argument('--first-update-id', type=int, default=int(env('FIRST_UPDATE_ID', '0')),
                        help='first update_id handed out (default: derived from the clock, growing across restarts)')
    parser.add_argument('--check', action='store_true',
                        help='health check: ask the running server (control port if any, else --port) and exit 0/1')
    return parser.parse_args(argv)


def check(args):
    """Liveness of a server started with the same options (HEALTHCHECK). Loopback only, so the certificate is not
    verified here - clients verify it; this asks only whether the listener answers."""
    if args.control_port:
        url = 'http://127.0.0.1:%d/_fake/health' % args.control_port
        context = None
    else:
        url = '%s://127.0.0.1:%d/_fake/health' % ('http' if args.no_tls else 'https', args.port)
        context = None if args.no_tls else ssl._create_unverified_context()   # loopback liveness only
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:
            return 0 if json.load(response).get('ok') else 1
    except (OSError, ValueError) as exc:
        print('fake-telegram health check failed: %s' % exc, file=sys.stderr)
        return 1


def main(argv=None):
    args = parse_args(argv)
    if args.check:
        return check(args)
    context = None
    if not args.no_tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.cert, args.key)
        context.set_alpn_protocols(['http/1.1'])
    fake = FakeTelegram(args.first_update_id or None)
    server = Server((args.listen, args.port), fake, context)
    servers = [server]
    if args.control_port:
        control = Server((args.control_listen, args.control_port), fake, control_only=True)
        servers.append(control)
        threading.Thread(target=control.serve_forever, name='control', daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log('listening on %s://%s:%d%s' % ('http' if args.no_tls else 'https', args.listen, server.server_address[1],
                                        ' (control: http://%s:%d/_fake/)' % (args.control_listen,
                                                                            servers[-1].server_address[1])
                                        if args.control_port else ''))
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for each in servers:
            each.server_close()
        log('stopped')
    return 0


if __name__ == '__main__':
    sys.exit(main())
