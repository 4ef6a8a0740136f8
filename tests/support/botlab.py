"""Deploy framework bots (examples/aiogram-alembic, examples/ptb-sql) onto a deployment host and drive them through
the fake Telegram Bot API (scripts/fake-telegram.sh), for molecule/default/tests/test_bots.py; it also works against
the local sandbox (see that module's docstring).

- Target: the deployment host's container on this machine's Docker engine (a Molecule VPS, a sandbox), reached with
  docker exec, and the operator's inventory (and vault password file) the playbooks and make targets run with.
- Fake: the fake API on the host's deployment network; its control API is called from the host (the container's
  address is reachable there only).
- Lab: one framework bot deployed with the operator's inventory plus examples/<bot>/deploy.yml (what its README says a
  deployment needs) plus the test's own settings (its own database, the fake's CA, a token), all in a copy of the
  inventory, so deploy.yml and the make targets see the same; its versions (a new migration, a crash at import), and
  the queries of its tables.
- Traffic: the fake's generator queueing updates during an operation, and the count afterwards of what the fake
  generated, delivered and had confirmed against what the bot's database holds (lost, duplicated).

Every wait is bounded; every generator is bounded in rate and count and stopped when its operation ends.
"""

import json
import os
import random
import shlex
import shutil
import subprocess
import time
import uuid

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOTS = ('aiogram-alembic', 'ptb-sql')
DB_CONTAINER = 'soulnear_postgres'
BOT_CONTAINER = 'soulnear_bot'
# The revision the first version of examples/aiogram-alembic ends at, and the one its next version adds.
ALEMBIC_HEAD = '8b2e4d6f0a31'
ALEMBIC_NEXT = '5d7e9f1a2b3c'

# A new migration in each framework's own form: a table for settings with one seeded row, so "applied exactly once"
# is visible in the data as well as in the tool's own table.
ALEMBIC_REVISION = '''"""bot_settings: settings the team changes without a release

Revision ID: %(rev)s
Revises: %(down)s
Create Date: 2026-12-01 09:00:00.000000

"""
from collections.abc import Sequence
from typing import Union

import sqlalchemy as sa
from alembic import op

revision: str = '%(rev)s'
down_revision: Union[str, Sequence[str], None] = '%(down)s'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    settings = op.create_table(
        'bot_settings',
        sa.Column('id', sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('value', sa.Text(), nullable=False),
    )
    op.bulk_insert(settings, [{'name': 'greeting', 'value': 'Hello'}])


def downgrade() -> None:
    op.drop_table('bot_settings')
''' % dict(rev=ALEMBIC_NEXT, down=ALEMBIC_HEAD)
SQL_MIGRATION = ('CREATE TABLE bot_settings (\n'
                 '    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n'
                 '    name text NOT NULL,\n'
                 '    value text NOT NULL\n'
                 ');\n'
                 "INSERT INTO bot_settings (name, value) VALUES ('greeting', 'Hello');\n")
CRASH = 'raise RuntimeError("v3 cannot start: simulated crash at import")\n'
# Settings a team would not need once the roles handle them (molecule/default/tests/test_bots.py's report names the
# change each waits for): {variable: (bots, value, why)}. Each only spells out what the deploy would otherwise work out.
WORKAROUNDS = {
    # make rollback starts the older image without the CA bundle over certifi's file: app_ca_bundle_paths "auto" is
    # resolved in roles/app/tasks/image.yml, which rollback.yml does not run, so the rollback's container lacks the
    # mount and aiogram (which trusts certifi's file only) fails TLS. The path README.md names, given explicitly:
    'app_ca_bundle_paths': (('aiogram-alembic',), ['/opt/venv/lib/python3.11/site-packages/certifi/cacert.pem'],
                            'roles/app/tasks/rollback.yml does not resolve app_ca_bundle_paths auto'),
    # playbooks/health.yml (make health) loads the monitoring role only, where app_env_file (an app role default) is
    # undefined, and the command-mode migrations probe needs it: its default value, given explicitly.
    'app_env_file': (BOTS, '/etc/soulnear/app.env',
                     'roles/monitoring/tasks/health_check.yml reads app_env_file, undefined in playbooks/health.yml'),
}


def run(argv, timeout=900, check=False, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError('%s exited %d:\n%s%s' % (' '.join(argv[:6]), proc.returncode, proc.stdout[-3000:],
                                                      proc.stderr[-3000:]))
    return proc


def wait_for(what, predicate, timeout, interval=1.0):
    """predicate() until it returns something true (returned), at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError('%s: not within %ss' % (what, timeout))
        time.sleep(interval)


def flat(proc):
    """A play's output on one line per paragraph (the YAML callback wraps long messages)."""
    return ' '.join((proc.stdout + proc.stderr).split())


class Target:
    """The deployment host (a container here, with its nested Docker engine) and the inventory that deploys it."""

    def __init__(self, container, inventory, vault_password_file=None):
        self.container = container
        self.inventory = inventory
        self.vault_password_file = vault_password_file

    def sh(self, command, timeout=300, check=True):
        """A shell command on the host as root: stdout (stripped)."""
        proc = run(['docker', 'exec', self.container, 'timeout', str(int(timeout)), 'bash', '-c', command],
                   timeout=timeout + 30)
        if check and proc.returncode != 0:
            raise AssertionError('on %s: %s exited %d: %s%s' % (self.container, command[:200], proc.returncode,
                                                                proc.stdout[-2000:], proc.stderr[-2000:]))
        return proc.stdout.strip()

    def psql(self, sql, db):
        """SQL as postgres in the database container, over TCP with the superuser's mounted secret (as conftest)."""
        script = ('PGPASSWORD="$(cat /run/secrets/soulnear/superuser_password)" '
                  'psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d "$0" -Atc "$1"')
        return self.sh('docker exec %s sh -c %s %s %s' % (DB_CONTAINER, shlex.quote(script), shlex.quote(db),
                                                          shlex.quote(sql)))

    def ansible_env(self):
        return dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
                    ANSIBLE_FORCE_COLOR='0')

    def vault_args(self):
        return ['--vault-password-file', self.vault_password_file] if self.vault_password_file else []

    def playbook(self, playbook, *args, inventory=None, timeout=900):
        argv = [os.path.join(ROOT, '.venv', 'bin', 'ansible-playbook'), '-i', inventory or self.inventory] \
            + self.vault_args() + [os.path.join(ROOT, playbook)] + list(args)
        return run(argv, timeout=timeout, cwd=ROOT, env=self.ansible_env())

    def make(self, target, *variables, inventory=None, timeout=900):
        """make TARGET against the inventory, with the vault password file."""
        argv = ['make', '-s', target, 'INVENTORY=' + (inventory or self.inventory)] + list(variables)
        if self.vault_password_file:
            argv.append('VAULT_PASSWORD_FILE=' + self.vault_password_file)
        return run(argv, timeout=timeout, cwd=ROOT, env=self.ansible_env())

    def bot_containers(self):
        return self.sh('docker ps --filter label=soulnear.component=bot --format "{{.Names}}"').split()

    def bot_version(self):
        return self.sh('docker inspect -f %s %s' % (shlex.quote('{{index .Config.Labels "soulnear.version"}}'),
                                                     BOT_CONTAINER))

    def bot_state(self):
        return self.sh('docker inspect -f "{{.State.Status}} {{.RestartCount}}" %s' % BOT_CONTAINER, check=False)

    def audit(self):
        text = self.sh('cat /var/log/soulnear/audit.log', check=False)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def postgres_log_size(self):
        return int(self.sh('stat -c %s /var/log/soulnear/postgres/postgresql.log 2>/dev/null || echo 0'))

    def postgres_log_since(self, offset):
        return self.sh('tail -c +%d /var/log/soulnear/postgres/postgresql.log' % (offset + 1), check=False)


# The fake's control API from the host: the address of its container on the deployment network is reachable there.
_CONTROL = r'''
import sys, urllib.error, urllib.request
url, body = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, data=body.encode() if body else None,
                                 headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        sys.stdout.write(response.read().decode())
except urllib.error.HTTPError as exc:
    sys.stdout.write(exc.read().decode())
'''


class Fake:
    """The fake Telegram Bot API on the target's deployment network (scripts/fake-telegram.sh)."""

    def __init__(self, target):
        self.target = target
        self.script = os.path.join(ROOT, 'scripts', 'fake-telegram.sh')
        self.address = None
        self.ca_file = None

    def up(self):
        run([self.script, 'up', self.target.container], timeout=600, check=True, cwd=ROOT)
        self.ca_file = run([self.script, 'ca', self.target.container], timeout=120, check=True,
                           cwd=ROOT).stdout.strip()
        self.address = self.target.sh('docker inspect -f %s fake-telegram' % shlex.quote(
            '{{with index .NetworkSettings.Networks "soulnear_net"}}{{.IPAddress}}{{end}}'))
        assert self.address and os.path.isfile(self.ca_file), (self.address, self.ca_file)
        return self

    def purge(self):
        return run([self.script, 'purge', self.target.container], timeout=300, cwd=ROOT)

    def call(self, path, body=None):
        out = self.target.sh('python3 -c %s %s %s' % (
            shlex.quote(_CONTROL), shlex.quote('http://%s:8080/_fake/%s' % (self.address, path)),
            shlex.quote(json.dumps(body) if body is not None else '')), timeout=60)
        payload = json.loads(out)
        assert payload.get('ok'), payload
        return payload['result']

    def state(self, token):
        return self.call('state?token=' + token)

    def queue(self, token, text, user_id):
        return self.call('updates', dict(token=token, text=text, user_id=user_id))['update_id']

    def generate(self, token, rate, count, text, user_id):
        return self.call('generate', dict(token=token, rate=rate, count=count, text=text, user_id=user_id))

    def stop_generators(self, token):
        return self.call('generate/stop', dict(token=token))

    def generator(self, token, gen_id):
        return next(g for g in self.state(token)['generators'] if g['id'] == gen_id)


class Lab:
    """One framework bot on the target: its variables, versions and tables."""

    def __init__(self, bot, target, fake, workdir):
        self.bot, self.target, self.fake = bot, target, fake
        self.example = os.path.join(ROOT, 'examples', bot)
        self.deploy_vars = os.path.join(self.example, 'deploy.yml')
        # Its own database, so the deployment's (soul_bot, the example bot's) stays untouched; a new name per run, as
        # the data-loss guard keeps a record per database name (a database it saw with data must never come back
        # empty), and the run drops it at the end.
        self.db = 'lab_%s_%s' % (bot.split('-')[0], uuid.uuid4().hex[:6])
        # The form aiogram checks (digits:characters); the fake answers for any token.
        self.token = '%d:AA%s' % (random.randint(10 ** 8, 10 ** 9 - 1), uuid.uuid4().hex)
        self.workdir = str(workdir)
        self.sources = self.make_versions()
        self.inventory = self.make_inventory()
        self.versions = {}

    def make_inventory(self):
        """The operator's inventory with this bot's variables in group_vars/soulnear/main.yml, where a team puts
        them: examples/<bot>/deploy.yml, then the test's own settings. A copy next to the operator's inventory
        directory (relative paths in it keep working); every playbook and make target of this bot runs with it."""
        source = os.path.dirname(os.path.abspath(self.target.inventory))
        copy = os.path.join(os.path.dirname(source), 'botlab-' + self.db)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns('botlab-*'))
        main = os.path.join(copy, 'group_vars', 'soulnear', 'main.yml')
        with open(main) as handle:
            values = yaml.safe_load(handle) or {}
        with open(self.deploy_vars) as handle:
            values.update(yaml.safe_load(handle))
        values.update(self.test_settings())
        with open(main, 'w') as handle:
            handle.write('---\n# The operator\'s main.yml + examples/%s/deploy.yml + the test\'s own settings '
                         '(tests/support/botlab.py).\n' % self.bot)
            yaml.safe_dump(values, handle, sort_keys=False, width=1000)
        return os.path.join(copy, os.path.basename(self.target.inventory))

    def test_settings(self):
        """The test's own settings on top of examples/<bot>/deploy.yml, and the workarounds (see WORKAROUNDS)."""
        settings = {
            'soulnear_db_name': self.db,
            'app_ca_file': self.fake.ca_file,
            'app_env': {'BOT_TOKEN': self.token},
            'app_source_dir': self.sources['v1'],
        }
        for name, (bots, value, _why) in WORKAROUNDS.items():
            if self.bot in bots:
                settings[name] = value
        return settings

    # -- versions --------------------------------------------------------------------------------------------------
    def make_versions(self):
        """v1 the example as it is (its wheels/ from scripts/bot-wheels.sh), v2 with a new migration, v3 = v2 that
        crashes at import."""
        ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
        v1 = os.path.join(self.workdir, 'v1')
        shutil.copytree(self.example, v1, ignore=ignore)
        os.remove(os.path.join(v1, 'deploy.yml'))  # the inventory's variables, not part of the bot
        v2 = os.path.join(self.workdir, 'v2')
        shutil.copytree(v1, v2)
        if self.bot == 'aiogram-alembic':
            path = os.path.join(v2, 'alembic', 'versions', '20261201_%s_bot_settings.py' % ALEMBIC_NEXT)
            text, entry = ALEMBIC_REVISION, os.path.join('bot', '__main__.py')
        else:
            path = os.path.join(v2, 'migrations', '004_bot_settings.sql')
            text, entry = SQL_MIGRATION, 'bot.py'
        with open(path, 'w') as handle:
            handle.write(text)
        v3 = os.path.join(self.workdir, 'v3')
        shutil.copytree(v2, v3)
        with open(os.path.join(v3, entry)) as handle:
            code = handle.read()
        with open(os.path.join(v3, entry), 'w') as handle:
            handle.write(CRASH + code)
        return dict(v1=v1, v2=v2, v3=v3)

    # -- operations ------------------------------------------------------------------------------------------------
    def create_database(self):
        """WORKAROUND (see WORKAROUNDS): the bot's empty database, owned by the app role, before deploy.yml switches
        the host to it. The deploy writes the host's configuration (the new database name) before the postgres role
        creates the database, and recreates the database container on the way (its healthcheck names the database):
        soulnear-watch sees the container die and starts a monitor run, which connects to the database that does not
        exist yet - a FATAL line in PostgreSQL's log, which test_deploy.py's log check refuses."""
        self.target.psql('CREATE DATABASE "%s" OWNER soulnear' % self.db, 'postgres')

    def deploy(self):
        return self.target.playbook('deploy.yml', inventory=self.inventory, timeout=1500)

    def make(self, target, *variables, timeout=900):
        return self.target.make(target, *variables, inventory=self.inventory, timeout=timeout)

    def cleanup(self):
        shutil.rmtree(os.path.dirname(self.inventory), ignore_errors=True)

    # -- what the bot stored ---------------------------------------------------------------------------------------
    def sql(self, query):
        return self.target.psql(query, self.db)

    def migration_record(self):
        """The tool's own table: Alembic's version, or migrate.py's applied files."""
        if self.bot == 'aiogram-alembic':
            return self.sql('SELECT version_num FROM alembic_version ORDER BY 1').splitlines()
        return self.sql('SELECT filename FROM schema_migrations ORDER BY 1').splitlines()

    def expected_record(self, version):
        if self.bot == 'aiogram-alembic':
            return [ALEMBIC_NEXT if version >= 'v2' else ALEMBIC_HEAD]
        return ['001_users.sql', '002_messages.sql', '003_users_language.sql'] + (
            ['004_bot_settings.sql'] if version >= 'v2' else [])

    def stored(self, user_id, first=None, last=None):
        """(rows, distinct update ids, the ids) of the messages of user_id the bot stored."""
        where = 'user_id = %d' % user_id
        if first is not None:
            where += ' AND update_id BETWEEN %d AND %d' % (first, last)
        ids = [int(x) for x in self.sql('SELECT update_id FROM messages WHERE %s' % where).split()]
        return len(ids), len(set(ids)), set(ids)

    def answers(self, state, chat_id):
        return [m for m in state['sent_messages'] if m['chat_id'] == chat_id]

    def start_and_answer(self, user_id, timeout=120):
        """/start through the fake: the bot stores it and answers. Returns the update id."""
        update_id = self.fake.queue(self.token, '/start', user_id)

        def answered():
            sent = [m for m in self.answers(self.fake.state(self.token), user_id)
                    if m['method'] == 'sendMessage' and m['text'].startswith('Hello, ')]
            return sent and update_id in self.stored(user_id)[2]
        wait_for('%s to store and answer /start (update %d); bot: %s' % (self.bot, update_id, self.target.bot_state()),
                 answered, timeout)
        return update_id


class Traffic:
    """Updates queued by the fake's generator while an operation runs, and the account afterwards.

        with Traffic(lab, 'redeploy', user_id=2001) as traffic:
            proc = lab.make('redeploy', ...)
        row = traffic.account()
    """

    def __init__(self, lab, operation, user_id, rate=3.0, max_seconds=600):
        self.lab, self.operation, self.user_id = lab, operation, user_id
        self.rate = rate
        self.count = int(rate * max_seconds)   # the bound: the generator stops by itself after max_seconds
        self.gen_id = None
        self.started = self.ended = None

    def __enter__(self):
        fake, token = self.lab.fake, self.lab.token
        self.gen_id = fake.generate(token, self.rate, self.count, '%s {n}' % self.operation, self.user_id)['id']
        self.started = time.monotonic()
        # The operation starts while the bot is handling the stream.
        wait_for('the generator to queue its first updates',
                 lambda: fake.generator(token, self.gen_id)['produced'] >= 3, 60, interval=0.5)
        return self

    def __exit__(self, *exc):
        self.lab.fake.stop_generators(self.lab.token)
        self.ended = time.monotonic()
        return False

    def account(self, quiet_seconds=45, timeout=900):
        """Wait until every generated update is confirmed and stored, or nothing more is confirmed or stored for
        quiet_seconds (a bot that stopped handling them), then count: a row of the loss table."""
        fake, token = self.lab.fake, self.lab.token
        gen = wait_for('the generator to stop', lambda: (lambda g: g if g['done'] else None)(
            fake.generator(token, self.gen_id)), 30, interval=0.5)
        first, last = gen['first_update_id'], gen['last_update_id']
        deadline = time.monotonic() + timeout
        progress_at, seen = time.monotonic(), None
        while True:
            state = fake.state(token)
            known = {u for u in state['confirmed'] + state['queued'] + state['dropped'] if first <= u <= last}
            unconfirmed = {u for u in state['queued'] if first <= u <= last}
            rows, distinct, ids = self.lab.stored(self.user_id, first, last)
            if not unconfirmed and known <= ids:
                break
            now = time.monotonic()
            if (len(unconfirmed), distinct) != seen:
                progress_at, seen = now, (len(unconfirmed), distinct)
            elif now - progress_at >= quiet_seconds or now >= deadline:
                break
            time.sleep(1)
        delivered = {int(k): v for k, v in state['delivered'].items() if first <= int(k) <= last}
        lost = sorted(known - ids)
        return dict(bot=self.lab.bot, operation=self.operation, generated=gen['produced'], known=len(known),
                    delivered=len(delivered), redelivered=sum(1 for v in delivered.values() if v > 1),
                    confirmed=len(known) - len(unconfirmed), unconfirmed=len(unconfirmed), processed=distinct,
                    duplicated=rows - distinct, lost=len(lost), lost_ids=lost[:10],
                    answered=len(self.lab.answers(state, self.user_id)),
                    seconds=round((self.ended or time.monotonic()) - self.started, 1))


COLUMNS = ('bot', 'operation', 'seconds', 'downtime', 'generated', 'delivered', 'redelivered', 'confirmed',
           'unconfirmed', 'processed', 'duplicated', 'lost', 'answered')


def table(rows):
    """The loss table in Markdown."""
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for row in rows:
        lines.append('| ' + ' | '.join(str(row.get(c, '-')) for c in COLUMNS) + ' |')
    return '\n'.join(lines)
