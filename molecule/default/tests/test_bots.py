"""Any team's bot deploys: two framework bots (examples/aiogram-alembic: aiogram 3, SQLAlchemy, Alembic;
examples/ptb-sql: python-telegram-bot, asyncpg, its own migrate.py and schema_migrations), each deployed onto the
converged VPS with the operator's inventory plus examples/<bot>/deploy.yml (only what the bot's README says a
deployment needs) plus the test's own settings (its own database, the fake Telegram API's CA, a token), with the
project's defaults otherwise (no success markers, no required tables). The bot's variables go where a team puts them,
the inventory's group_vars/soulnear/main.yml (of a copy), so deploy.yml and every make target see the same. The bots
talk to the fake Telegram Bot API (scripts/fake-telegram.sh: on the VPS's deployment network as api.telegram.org),
never to Telegram.

For each bot, in order: deploy (runs, /start stored and answered); a redeploy with a new migration (a pre-deploy
backup, the migration applied once: schema and the tool's own table); a version crashing at import rolled back (the
previous one answers); make rollback to the first version (an older image on the newer schema: nothing migrates
backwards); make restart-bot; make health green; make backup, a row deleted, make restore, the row back; no 409 ever.
The redeploy, the crash, the rollback and the restart each run while the fake's generator queues updates (3/s,
bounded, stopped when the operation ends): afterwards every generated update must be confirmed by offset and stored
exactly once (lost == 0, duplicated == 0); the table (also .cache/test-bots-table.md) shows delivered, redelivered,
processed, duplicated and lost per bot and operation. The last test puts the VPS back as deploy.yml leaves it (the
example bot on soul_bot, healthy; the fake and the bots' databases removed) for the tests after this module.

Against the local sandbox while developing (scripts/sandbox.sh, deployed; the fake is started by the test):
    SOULNEAR_BOTLAB_HOST=soulnear-sandbox SOULNEAR_BOTLAB_INVENTORY=inventory/sandbox/hosts.yml \\
        .venv/bin/pytest -p no:cacheprovider molecule/default/tests/test_bots.py -s
"""

import os
import re
import sys
import time

import pytest
from conftest import PROJECT

pytestmark = pytest.mark.skipif(
    not (os.environ.get('SOULNEAR_TEST_FULL') or os.environ.get('SOULNEAR_BOTLAB_HOST')),
    reason='make test-full (SOULNEAR_TEST_FULL=1): two framework bots, ten deploys each, about 40 min')

sys.path.insert(0, os.path.join(PROJECT, 'tests', 'support'))
import botlab  # noqa: E402

RESULTS = []       # rows of the loss table
TIMINGS = []       # (bot, step, seconds)
LABS = []
# FATAL lines PostgreSQL may log while these operations run, as test_deploy.py allows them.
EXPECTED_FATAL = re.compile(r'the database system is (starting up|shutting down)|terminating connection due to '
                            r'administrator command')
TABLE_FILE = os.path.join(PROJECT, '.cache', 'test-bots-table.md')
STARTED = time.monotonic()


@pytest.fixture(scope='module')
def target():
    if os.environ.get('SOULNEAR_BOTLAB_HOST'):
        inventory = os.environ.get('SOULNEAR_BOTLAB_INVENTORY', 'inventory/sandbox/hosts.yml')
        return botlab.Target(os.environ['SOULNEAR_BOTLAB_HOST'], os.path.abspath(inventory),
                             os.environ.get('SOULNEAR_BOTLAB_VAULT_PASSWORD_FILE'))
    from conftest import instance_name, operator_inventory
    return botlab.Target(instance_name(), *operator_inventory())


@pytest.fixture(scope='module')
def fake(target):
    """The bots' wheelhouses (offline builds: the VPS's engine cannot reach PyPI) and the fake API on the VPS."""
    started = time.monotonic()
    botlab.run([os.path.join(PROJECT, 'scripts', 'bot-wheels.sh')] + [os.path.join('examples', b) for b in botlab.BOTS],
               timeout=900, check=True, cwd=PROJECT)
    fake = botlab.Fake(target).up()
    TIMINGS.append(('-', 'wheels and the fake API', round(time.monotonic() - started, 1)))
    return fake


@pytest.fixture(scope='module')
def before(target):
    """What runs before this module: the example bot's version, to be running again at the end."""
    return dict(version=target.bot_version(), log_offset=target.postgres_log_size())


class Steps:
    def __init__(self, bot):
        self.bot = bot

    def __call__(self, name):
        steps = self

        class Step:
            def __enter__(self):
                self.started = time.monotonic()

            def __exit__(self, *exc):
                TIMINGS.append((steps.bot, name, round(time.monotonic() - self.started, 1)))
                return False
        return Step()


def succeeded(proc, what):
    assert proc.returncode == 0, '%s failed:\n%s\n%s' % (what, proc.stdout[-5000:], proc.stderr[-2000:])


def no_loss(row):
    assert row['generated'] > 0 and row['known'] == row['generated'], row
    assert row['lost'] == 0 and row['duplicated'] == 0, row
    assert row['confirmed'] == row['generated'] and row['unconfirmed'] == 0, row


def under_load(lab, operation, user_id, action):
    with botlab.Traffic(lab, operation, user_id) as traffic:
        proc = action()
    row = traffic.account()
    row['downtime'] = (re.findall(r'downtime (\d+\.\d+)s', proc.stdout) or ['-'])[-1]
    RESULTS.append(row)
    return proc, row


def scenario(lab):
    """Every step for one bot (the steps depend on each other: one test per bot)."""
    t, fake, step = lab.target, lab.fake, Steps(lab.bot)
    LABS.append(lab)
    log_offset = t.postgres_log_size()

    lab.create_database()  # a workaround: see its docstring
    with step('deploy.yml (first deploy of the bot)'):
        proc = lab.deploy()
    succeeded(proc, 'deploy.yml with examples/%s/deploy.yml' % lab.bot)
    assert re.search(r'Deployed \w+ -> \w+: applied command: ', proc.stdout), proc.stdout[-3000:]
    v1 = t.bot_version()
    assert t.bot_containers() == [botlab.BOT_CONTAINER]
    assert lab.migration_record() == lab.expected_record('v1')
    with step('/start stored and answered'):
        first = lab.start_and_answer(1001)
    answer = [m for m in lab.answers(fake.state(lab.token), 1001) if m['method'] == 'sendMessage']
    assert answer and answer[0]['text'].startswith('Hello, User 1001'), answer

    # A new migration, shipped while updates arrive: a pre-deploy backup, the migration applied exactly once.
    with step('make redeploy v2 (new migration) under load'):
        proc, row = under_load(lab, 'redeploy', 2001, lambda: lab.make('redeploy', 'SOURCE=' + lab.sources['v2']))
    succeeded(proc, 'make redeploy of v2')
    assert re.search(r'Deployed %s -> \w+: applied command: ' % v1, proc.stdout), proc.stdout[-3000:]
    v2 = t.bot_version()
    assert v2 != v1 and t.bot_containers() == [botlab.BOT_CONTAINER]
    line = t.audit()[-1]
    assert (line['event'], line['from_version'], line['to_version'], line['result']) == ('deploy', v1, v2, 'success')
    backup = line['backup']
    assert os.path.basename(backup).startswith('pre_deploy_%s_' % v2), line
    assert t.sh('cd %s && sha256sum -c %s.sha256 >/dev/null && echo ok' % (os.path.dirname(backup),
                                                                        os.path.basename(backup))) == 'ok'
    header = t.sh('docker exec -i %s pg_restore --list < %s | head -n 20' % (botlab.DB_CONTAINER, backup))
    assert re.search(r'dbname: %s\b' % lab.db, header), header
    assert lab.migration_record() == lab.expected_record('v2')
    assert lab.sql('SELECT count(*) FROM bot_settings') == '1'
    no_loss(row)

    # A version that crashes at import: rolled back, the previous version answers; nothing migrates again.
    with step('make redeploy v3 (crashes at import) under load'):
        proc, row = under_load(lab, 'crash, rolled back', 2002,
                               lambda: lab.make('redeploy', 'SOURCE=' + lab.sources['v3']))
    assert proc.returncode != 0, proc.stdout[-3000:]
    output = botlab.flat(proc)
    assert 'Rolled back: the previous bot (%s) runs again' % v2 in output, output[-3000:]
    assert 'simulated crash at import' in output
    assert t.bot_version() == v2 and t.bot_containers() == [botlab.BOT_CONTAINER]
    assert lab.migration_record() == lab.expected_record('v2')
    assert lab.sql('SELECT count(*) FROM bot_settings') == '1'
    no_loss(row)
    lab.start_and_answer(1002)

    # make rollback to v1: the older image runs on the newer schema; nothing migrates backwards.
    with step('make rollback to v1 under load'):
        proc, row = under_load(lab, 'make rollback', 2003, lambda: lab.make('rollback'))
    succeeded(proc, 'make rollback')
    assert t.bot_version() == v1 and t.bot_containers() == [botlab.BOT_CONTAINER]
    assert (t.audit()[-1]['event'], t.audit()[-1]['to_version']) == ('rollback', v1)
    assert lab.migration_record() == lab.expected_record('v2')
    assert lab.sql('SELECT count(*) FROM bot_settings') == '1'
    no_loss(row)
    lab.start_and_answer(1003)

    with step('make restart-bot under load'):
        proc, row = under_load(lab, 'make restart-bot', 2004, lambda: lab.make('restart-bot'))
    succeeded(proc, 'make restart-bot')
    assert t.bot_version() == v1 and t.bot_containers() == [botlab.BOT_CONTAINER]
    no_loss(row)

    with step('make health'):
        proc = lab.make('health')
    succeeded(proc, 'make health')

    # Backup and restore round trip: the first /start's row, deleted after the backup, comes back.
    with step('make backup'):
        proc = lab.make('backup')
    succeeded(proc, 'make backup')
    lab.sql('DELETE FROM messages WHERE update_id = %d' % first)
    assert first not in lab.stored(1001)[2]
    with step('make restore BACKUP=latest'):
        proc = lab.make('restore', 'BACKUP=latest', 'CONFIRM=' + lab.db, timeout=1200)
    succeeded(proc, 'make restore')
    assert first in lab.stored(1001)[2], 'the deleted row did not come back'
    assert t.bot_containers() == [botlab.BOT_CONTAINER]
    lab.start_and_answer(1004)

    state = fake.state(lab.token)
    assert state['conflicts'] == 0 and state['webhook_conflicts'] == 0, state['conflict_events']
    assert len({p for p in state['pollers']}) >= 1
    fatal = [line for line in t.postgres_log_since(log_offset).splitlines()
             if 'FATAL' in line and not EXPECTED_FATAL.search(line)]
    assert fatal == [], fatal


@pytest.mark.timeout(2400)
def test_aiogram_alembic_deploys_migrates_rolls_back_and_loses_no_update(target, fake, before, tmp_path_factory):
    scenario(botlab.Lab('aiogram-alembic', target, fake, tmp_path_factory.mktemp('aiogram-alembic')))


@pytest.mark.timeout(2400)
def test_ptb_sql_deploys_migrates_rolls_back_and_loses_no_update(target, fake, before, tmp_path_factory):
    scenario(botlab.Lab('ptb-sql', target, fake, tmp_path_factory.mktemp('ptb-sql')))


def test_no_update_lost_table():
    """The table of every operation run under load (the assertions are in the bots' tests; this prints them)."""
    text = botlab.table(RESULTS)
    timing = '\n'.join('%-16s %-48s %7.1f s' % t for t in TIMINGS)
    os.makedirs(os.path.dirname(TABLE_FILE), exist_ok=True)
    with open(TABLE_FILE, 'w') as handle:
        handle.write(text + '\n')
    print('\n' + text + '\n\n' + timing)
    assert RESULTS, 'no operation ran under load'
    assert {r['bot'] for r in RESULTS} == set(botlab.BOTS), RESULTS
    assert all(r['lost'] == 0 and r['duplicated'] == 0 for r in RESULTS), text


@pytest.mark.timeout(1800)
def test_the_example_bot_is_back_for_the_tests_after_this_module(target, fake, before):
    started = time.monotonic()
    proc = target.playbook('deploy.yml', timeout=1500)
    succeeded(proc, 'deploy.yml with the standard inventory')
    botlab.wait_for('the database and the example bot to be healthy', lambda: all(
        target.sh('docker inspect -f "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}" %s'
                  % name, check=False) == 'running healthy' for name in (botlab.DB_CONTAINER, botlab.BOT_CONTAINER)),
        240, interval=2)
    assert target.bot_version() == before['version']
    assert target.bot_containers() == [botlab.BOT_CONTAINER]
    assert 'POSTGRES_DB=soul_bot' in target.sh('cat /etc/soulnear/app.env')
    purged = fake.purge()
    assert purged.returncode == 0, purged.stderr
    assert target.sh('docker ps -aq --filter label=org.soulnear.test=fake-telegram') == ''
    # The bots' databases (and the copies their restores kept) go too.
    names = target.psql("SELECT datname FROM pg_database WHERE datname LIKE 'lab\\_%'", 'postgres').split()
    for lab in LABS:
        for name in [n for n in names if n == lab.db or n.startswith(lab.db + '__')]:
            target.psql('DROP DATABASE "%s" WITH (FORCE)' % name, 'postgres')
        lab.cleanup()
    TIMINGS.append(('-', 'the example bot back, the fake removed', round(time.monotonic() - started, 1)))
    TIMINGS.append(('-', 'test_bots.py in all', round(time.monotonic() - STARTED, 1)))
    timing = '\n'.join('%-16s %-48s %7.1f s' % t for t in TIMINGS)
    with open(TABLE_FILE, 'a') as handle:
        handle.write('\n' + timing + '\n')
    print(timing)
