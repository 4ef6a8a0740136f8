"""Two bots as real teams write them (examples/aiogram-alembic: aiogram 3, SQLAlchemy, Alembic; examples/ptb-sql:
python-telegram-bot, asyncpg, plain SQL files with its own schema_migrations) built offline and run in Docker against
a real PostgreSQL and the fake Telegram Bot API (images/fake-telegram) - no mocks.

On a private --internal Docker network (the bots reach nothing else): a TLS-only PostgreSQL
(tests/support/externaldb.py) the bots verify with sslmode=verify-full, and the fake with the alias
api.telegram.org, whose test CA each bot trusts by the mechanism its README names (SSL_CERT_FILE for
python-telegram-bot/httpx; a bundle mounted over certifi's file for
aiogram/aiohttp). For each bot: pending migrations are probed, the bot's own migration command runs in a one-off
container, the bot starts, /start and a text message go through the fake's control API, and the rows and the answers
appear - with no 409. A second copy of a bot polling the same token is caught by the fake (conflicts counted).

Images are built with --network none from wheelhouses (scripts/bot-wheels.sh, which needs PyPI on its first run).
Every container and the network are named sn-fwbot-* and removed afterwards.
"""

import json
import os
import random
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest
from externaldb import ExternalPg
from pgclient import query, wait_until
from pgcontainer import docker

pytestmark = pytest.mark.slow

from ansiblerun import ROOT
BASE_IMAGE = os.environ.get('SOULNEAR_TEST_BOT_BASE_IMAGE', 'soulnear/python:3-bookworm')
PG_IMAGE = os.environ.get('SOULNEAR_TEST_PG_IMAGE', 'soulnear/postgres:15')
RUN = uuid.uuid4().hex[:8]
PREFIX = 'sn-fwbot-'
LABEL = 'org.soulnear.test=sn-fwbot-' + RUN
FAKE_IMAGE = 'sn-fwbot-fake-telegram:test'
BOTS = ('aiogram-alembic', 'ptb-sql')
DB_PASSWORD = 'fwbot-db-secret'
PG_CA = '/etc/pg-ca.crt'             # where the bots find the database's CA
TELEGRAM_CA = '/etc/telegram-ca.pem'  # python-telegram-bot: SSL_CERT_FILE points here


def image(bot):
    return '%s%s:test' % (PREFIX, bot)


def build(tag, directory):
    started = time.monotonic()
    proc = subprocess.run(['docker', 'build', '--force-rm', '--network', 'none', '--build-arg',
                           'BASE_IMAGE=' + BASE_IMAGE, '-t', tag, os.path.join(ROOT, directory)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, 'docker build %s failed:\n%s%s' % (tag, proc.stdout[-3000:], proc.stderr[-3000:])
    print('built %s in %.1fs' % (tag, time.monotonic() - started))


def create_network(name):
    """An --internal network with a subnet of its own (the database needs a fixed address for its certificate)."""
    for _ in range(20):
        subnet = '10.%d.%d.0/24' % (random.randint(200, 250), random.randint(0, 255))
        proc = docker('network', 'create', '--internal', '--subnet', subnet, '--label', LABEL, name, check=False)
        if proc.returncode == 0:
            return subnet
        if 'overlap' not in proc.stderr:
            raise RuntimeError('docker network create failed: %s' % proc.stderr)
    raise RuntimeError('no free /24 in 10.200-250.x.0 for the test network')


def address(container):
    return docker('inspect', '-f', '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}', container).stdout.strip()


class Stack:
    """The network, the database and the fake, shared by the tests of this module."""

    def __init__(self, workdir):
        self.workdir = str(workdir)
        self.network = PREFIX + 'net-' + RUN
        self.fake = PREFIX + 'fake-' + RUN
        self.containers = [self.fake]
        self.pg = None
        self.certifi = {}

    def up(self):
        certs = os.path.join(self.workdir, 'telegram-ca')
        subprocess.run([os.path.join(ROOT, 'images', 'fake-telegram', 'make-certs.sh'), certs], check=True,
                       capture_output=True, timeout=60)
        # What the fake mounts: its certificate and a key readable by its uid (10001), like PostgreSQL's for 999.
        self.fake_certs = os.path.join(self.workdir, 'fake-certs')
        os.makedirs(self.fake_certs)
        for name in ('server.crt', 'server.key'):
            shutil.copy2(os.path.join(certs, name), self.fake_certs)
        os.chown(os.path.join(self.fake_certs, 'server.key'), 10001, 10001)
        # What the bots trust: the usual roots plus the test CA (a bundle, so other HTTPS hosts would still verify).
        self.bundle = os.path.join(self.workdir, 'telegram-ca.pem')
        with open(self.bundle, 'w') as out:
            system = '/etc/ssl/certs/ca-certificates.crt'
            if os.path.exists(system):
                with open(system) as handle:
                    out.write(handle.read())
            with open(os.path.join(certs, 'ca.crt')) as handle:
                out.write(handle.read())
        os.chmod(self.bundle, 0o644)

        subnet = create_network(self.network)
        self.pg = ExternalPg(os.path.join(self.workdir, 'pg'), image=PG_IMAGE, network=self.network,
                             address=subnet.rsplit('.', 1)[0] + '.10')
        self.pg.name = PREFIX + 'pg-' + RUN
        self.containers.append(self.pg.name)
        self.pg.start()
        for role in [bot.replace('-', '_') for bot in BOTS] + ['taken']:
            self.pg.query("CREATE ROLE %s LOGIN PASSWORD '%s'" % (role, DB_PASSWORD))
            self.pg.query('CREATE DATABASE %s OWNER %s' % (role, role))

        docker('run', '-d', '--name', self.fake, '--label', LABEL, '--network', self.network,
               '--network-alias', 'api.telegram.org', '--sysctl', 'net.ipv4.ip_unprivileged_port_start=0',
               '-v', '%s:/certs:ro' % self.fake_certs, FAKE_IMAGE)
        self.control_url = 'http://%s:8080/_fake/' % address(self.fake)
        wait_until(self.fake_healthy, timeout=60, what='the fake Telegram API to answer', interval=0.5)
        return self

    def fake_healthy(self):
        try:
            return self.control('health')['status'] == 'ok'
        except OSError:
            return False

    def down(self):
        for name in reversed(self.containers):
            docker('rm', '-f', '-v', name, check=False)
        docker('network', 'rm', self.network, check=False)

    def control(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.control_url + path, data=data,
                                         headers={'Content-Type': 'application/json'})
        with urllib.request.urlopen(request, timeout=10) as response:  # the fake's control port on the test network
            payload = json.load(response)
        assert payload['ok'], payload
        return payload['result']

    def state(self, token):
        return self.control('state?token=' + urllib.parse.quote(token))

    def queue(self, token, text, user_id):
        return self.control('updates', {'token': token, 'text': text, 'user_id': user_id})['update_id']

    # - the bots ----------------------------------------------------------------------------------------------------
    def db(self, bot):
        return self.pg.params(db=bot.replace('-', '_'))

    def bot_env(self, bot, token, role=None):
        role = role or bot.replace('-', '_')
        if bot == 'aiogram-alembic':
            return {'BOT_TOKEN': token,
                    'DATABASE_URL': 'postgresql://%s:%s@%s:5432/%s?sslmode=verify-full&sslrootcert=%s'
                                    % (role, DB_PASSWORD, self.pg.address, role, PG_CA)}
        return {'BOT_TOKEN': token, 'DB_HOST': self.pg.address, 'DB_PORT': '5432', 'DB_NAME': role, 'DB_USER': role,
                'DB_PASSWORD': DB_PASSWORD, 'DB_SSLMODE': 'verify-full', 'DB_SSLROOTCERT': PG_CA,
                'SSL_CERT_FILE': TELEGRAM_CA}

    def bot_mounts(self, bot):
        mounts = ['-v', '%s:%s:ro' % (self.pg.ca_file, PG_CA)]
        if bot == 'aiogram-alembic':
            # aiogram's aiohttp session trusts certifi's file only (not SSL_CERT_FILE): the bundle goes over it
            if bot not in self.certifi:
                self.certifi[bot] = docker('run', '--rm', '--entrypoint', 'python3', image(bot), '-c',
                                           'import certifi; print(certifi.where())').stdout.strip()
            return mounts + ['-v', '%s:%s:ro' % (self.bundle, self.certifi[bot])]
        return mounts + ['-v', '%s:%s:ro' % (self.bundle, TELEGRAM_CA)]

    def run_once(self, bot, *command, token='0:unused', role=None):
        """The bot's image with another command, as a deployment runs its migrations: (exit code, output)."""
        env = [arg for key, value in self.bot_env(bot, token, role).items() for arg in ('-e', '%s=%s' % (key, value))]
        proc = docker('run', '--rm', '--name', '%s%s-once-%s' % (PREFIX, bot, uuid.uuid4().hex[:6]), '--label', LABEL,
                      '--network', self.network, *env, *self.bot_mounts(bot), image(bot), *command,
                      check=False, timeout=180)
        return proc.returncode, proc.stdout + proc.stderr

    def start_bot(self, bot, token):
        name = '%s%s-%s' % (PREFIX, bot, uuid.uuid4().hex[:6])
        env = [arg for key, value in self.bot_env(bot, token).items() for arg in ('-e', '%s=%s' % (key, value))]
        self.containers.append(name)
        docker('run', '-d', '--name', name, '--label', LABEL, '--network', self.network, *env,
               *self.bot_mounts(bot), image(bot))
        return name


@pytest.fixture(scope='module')
def stack(tmp_path_factory):
    if docker('info', check=False).returncode != 0:
        raise RuntimeError('no Docker engine answers; run scripts/docker-engine.sh (make test does)')
    for needed in (BASE_IMAGE, PG_IMAGE):
        if docker('image', 'inspect', needed, check=False).returncode != 0:
            raise RuntimeError('image %s is missing; run scripts/images.sh (make test does)' % needed)
    started = time.monotonic()
    subprocess.run([os.path.join(ROOT, 'scripts', 'bot-wheels.sh')] + [os.path.join('examples', b) for b in BOTS],
                   cwd=ROOT, check=True, timeout=900)
    build(FAKE_IMAGE, os.path.join('images', 'fake-telegram'))
    for bot in BOTS:
        build(image(bot), os.path.join('examples', bot))
    print('wheels and images ready in %.1fs' % (time.monotonic() - started))
    env = Stack(tmp_path_factory.mktemp('fwbot'))
    try:
        yield env.up()
    finally:
        env.down()


def migrate(stack, bot):
    """Probe pending migrations, migrate with the bot's own command, probe again."""
    if bot == 'aiogram-alembic':
        code, heads = stack.run_once(bot, 'alembic', 'heads')
        assert code == 0 and '(head)' in heads, heads
        head = heads.split()[0]
        code, current = stack.run_once(bot, 'alembic', 'current')
        assert code == 0, current
        pending_before = head not in current
        code, out = stack.run_once(bot, 'alembic', 'upgrade', 'head')
        assert code == 0, out
        code, current = stack.run_once(bot, 'alembic', 'current')
        assert code == 0 and '%s (head)' % head in current, current
    else:
        code, out = stack.run_once(bot, 'python3', 'migrate.py', '--check')
        pending_before = code == 1
        assert code in (0, 1), out
        code, out = stack.run_once(bot, 'python3', 'migrate.py')
        assert code == 0, out
        code, out = stack.run_once(bot, 'python3', 'migrate.py', '--check')
        assert (code, out.strip()) == (0, 'up to date'), out
    return pending_before


def rows(stack, bot, sql, args=None):
    return query(stack.db(bot), sql, args) or []


@pytest.mark.parametrize('bot', BOTS)
def test_a_framework_bot_migrates_starts_and_answers(stack, bot):
    assert migrate(stack, bot) is True          # a fresh database: the probe saw pending migrations
    tables = {r[0] for r in rows(stack, bot, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {'users', 'messages'} <= tables
    assert ('alembic_version' if bot == 'aiogram-alembic' else 'schema_migrations') in tables
    assert migrate(stack, bot) is False         # a second run finds nothing to do

    token = '%d:%s' % (random.randint(10 ** 8, 10 ** 9 - 1), uuid.uuid4().hex)
    user_id = random.randint(10 ** 6, 10 ** 7)
    container = stack.start_bot(bot, token)
    restarted = None
    try:
        # getMe over TLS, then a long poll: the bot trusts the test CA and reached "api.telegram.org"
        wait_until(lambda: stack.state(token)['polls'] >= 1, timeout=120, interval=0.5,
                   what='%s to poll the fake API (logs: %s)' % (bot, docker('logs', '--tail', '20', container,
                                                                            check=False).stderr[-2000:]))
        def answers(count):
            sent = [m for m in stack.state(token)['sent_messages'] if m['chat_id'] == user_id]
            return sent if len(sent) >= count else None

        # one after the other: the bots handle updates concurrently, and the second answer counts the first
        start_id = stack.queue(token, '/start', user_id)
        wait_until(lambda: answers(1), timeout=60, interval=0.5, what='%s to answer /start' % bot)
        text_id = stack.queue(token, 'remember this', user_id)
        sent = wait_until(lambda: answers(2), timeout=60, interval=0.5, what='%s to answer the text' % bot)
        assert sent[0]['text'].startswith('Hello, ') and sent[1]['text'] == 'Noted. That makes 2 message(s) from you.'
        stored = rows(stack, bot, 'SELECT update_id, user_id, text FROM messages WHERE user_id = %s ORDER BY id',
                      (user_id,))
        assert stored == [(start_id, user_id, '/start'), (text_id, user_id, 'remember this')]
        assert rows(stack, bot, 'SELECT count(*) FROM users WHERE id = %s', (user_id,)) == [(1,)]
        # the bot confirms what it got with its next poll's offset
        wait_until(lambda: {start_id, text_id} <= set(stack.state(token)['confirmed']), timeout=60, interval=0.5,
                   what='%s to confirm the updates' % bot)

        docker('stop', '-t', '20', container, timeout=60)
        assert docker('inspect', '-f', '{{.State.ExitCode}}', container).stdout.strip() == '0'   # stopped cleanly
        state = stack.state(token)
        assert state['conflicts'] == 0, state['conflict_events']
        assert len(state['pollers']) == 1 and state['delivered'] == {str(start_id): 1, str(text_id): 1}
        print('%s: %s; parameters sent as %s' % (bot, state['methods'], state['encodings']))
        logs = docker('logs', container, check=False)
        assert token.split(':')[1] not in logs.stdout + logs.stderr, 'the bot logged its token'

        # stopped, then started again (a redeploy done right): not a second poller, nothing lost or repeated
        polls = state['polls']
        restarted = stack.start_bot(bot, token)
        wait_until(lambda: stack.state(token)['polls'] > polls, timeout=120, interval=0.5,
                   what='the restarted %s to poll' % bot)
        later_id = stack.queue(token, 'after the restart', user_id)
        sent = wait_until(lambda: answers(3), timeout=60, interval=0.5, what='the restarted %s to answer' % bot)
        assert sent[2]['text'] == 'Noted. That makes 3 message(s) from you.'
        docker('stop', '-t', '20', restarted, timeout=60)
        state = stack.state(token)
        assert state['conflicts'] == 0, state['conflict_events']
        assert state['delivered'] == {str(start_id): 1, str(text_id): 1, str(later_id): 1}
    finally:
        docker('rm', '-f', container, *([restarted] if restarted else []), check=False)


def test_two_copies_of_a_bot_are_caught_by_the_fake(stack):
    """What a deployment must never do (start the new bot before the old one stopped) is visible: 409s, counted."""
    bot = 'ptb-sql'
    migrate(stack, bot)
    token = '%d:%s' % (random.randint(10 ** 8, 10 ** 9 - 1), uuid.uuid4().hex)
    first = stack.start_bot(bot, token)
    second = None
    try:
        wait_until(lambda: stack.state(token)['polling_now'], timeout=120, interval=0.5,
                   what='the first copy to poll')
        second = stack.start_bot(bot, token)
        state = wait_until(lambda: (lambda s: s if s['conflicts'] >= 2 and len(s['pollers']) == 2 else None)(
            stack.state(token)), timeout=90, interval=0.5, what='the fake to count the two pollers\' conflicts')
        assert {e['terminated'] for e in state['conflict_events']} == set(state['pollers'])
    finally:
        docker('rm', '-f', first, *([second] if second else []), check=False)


def test_ptb_sql_refuses_a_schema_migrations_table_that_is_not_its_own(stack):
    """The bot owns a table named schema_migrations; one of another shape (a deployment tool's) stops its migrate.py."""
    query(stack.pg.params(db='taken', user='taken', password=DB_PASSWORD),
          'CREATE TABLE schema_migrations (version text PRIMARY KEY, name text NOT NULL, success boolean NOT NULL)')
    for command in (('python3', 'migrate.py'), ('python3', 'migrate.py', '--check')):
        code, out = stack.run_once('ptb-sql', *command, role='taken')
        assert code == 2 and 'schema_migrations exists with other columns' in out, out
    tables = query(stack.pg.params(db='taken'), "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert tables == [('schema_migrations',)]
