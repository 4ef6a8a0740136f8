"""Exactly one poller per token across bot hosts (issue 25): two leaders (`soulnear-health leader run`, processes
with their own configuration, as two bot hosts run them) and two bot containers against one real PostgreSQL and the
fake Telegram Bot API (images/fake-telegram), which answers 409 to a second concurrent getUpdates and counts it.

Each leader reaches the database through a TCP proxy of its own that the test controls (a network cut). The bots
are a few lines of Python polling getUpdates with a one-second long poll. Every scenario gets a fresh lease and a
fresh token (so the fake's pollers and conflicts are the scenario's own), starts host a, waits until a runs the bot,
then starts host b; a sampler records every moment both bot containers ran at once. The assertions: 0 conflicts at
the fake, 0 moments with both bots running, and the takeover within the goal (30 s) - the times are printed.

Failures covered: the active leader and its bot killed; the leader alone killed (SIGKILL: its watchdog stops the
bot); the leader hung (SIGSTOP: the watchdog fences at the deadline); the active host's database connection cut
(packets swallowed: no RST, no timeout of TCP's own); the database unavailable for longer than the fence time; an
asynchronous failover that lost the last lease commits (the row rolled back to what a lagging replica holds); the
database's clock jumping forward (the times in the row - never used to decide); a deliberate failover. Last, the
safe redeploy's standby mode and its start gate against a real leader.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest
from ansible.module_utils.soulnear import leader as bot_leader
from ansible.module_utils.soulnear import lock as deploy_lock
from ansible.module_utils.soulnear.checks import docker_time
from ansible.module_utils.soulnear.redeploy import Redeployer
from pgclient import query
from pgcontainer import PgContainer, docker
from redeployenv import RedeployEnv

from ansiblerun import ROOT
LIBRARY = os.path.join(ROOT, 'module_utils')
BASE_IMAGE = os.environ.get('SOULNEAR_TEST_BOT_BASE_IMAGE', 'soulnear/python:3-bookworm')
APP_USER, APP_PASSWORD, DB = 'soulnear', 'leader-test-secret', 'soul_bot'
GOAL = 30.0           # seconds from the loss of the active host to the standby polling
SETTINGS = dict(ttl_seconds=18, fence_seconds=9, renew_seconds=2, stop_grace_seconds=3)  # the role's defaults

# The bot: getUpdates with a one-second long poll, for ever; it says who it is in its User-Agent.
POLLER = r'''
import json, os, signal, sys, time, urllib.error, urllib.request
api, token, me = os.environ["API"], os.environ["TOKEN"], os.environ["BOT_NAME"]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 ignores SIGTERM unless it handles it, as bots do
offset = 0
print("polling as", me, flush=True)
while True:
    url = "%s/bot%s/getUpdates?timeout=1&offset=%d" % (api, token, offset)
    request = urllib.request.Request(url, headers={"User-Agent": "poller-" + me})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            for update in json.load(response).get("result", []):
                offset = max(offset, update["update_id"] + 1)
    except urllib.error.HTTPError as exc:
        print("HTTP %s %s" % (exc.code, exc.read()[:200]), flush=True)
        time.sleep(0.5)
    except Exception as exc:
        print("error %s" % exc, flush=True)
        time.sleep(0.5)
'''


def wait_until(what, predicate, timeout, interval=0.25):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            raise AssertionError('%s: not within %.0f s' % (what, timeout))
        time.sleep(interval)


def address(container, network):
    return docker('inspect', '-f', '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % network,
                  container).stdout.strip()


class Proxy:
    """A TCP proxy to the database that the test can cut: `blackhole` keeps every connection open and swallows what
    either side sends (a partition that drops packets: no reset, and TCP's own keepalives still answered), and
    refuses nothing - new connections hang too. `heal` lets traffic through again on new connections."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.cut = False
        self.closed = False
        self.server = socket.socket()
        self.server.bind(('127.0.0.1', 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.sockets = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def serve(self, client):
        if self.cut:
            self.swallow(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self.sockets.append(upstream)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self.pump, args=(src, dst), daemon=True).start()

    def swallow(self, sock):
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.cut:
                    continue  # swallowed: the sender's kernel acknowledged it, nobody answers
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if not self.cut:
                for sock in (src, dst):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def blackhole(self):
        self.cut = True

    def heal(self):
        """Traffic flows again; the connections that lived through the cut are closed (their streams lost bytes)."""
        self.cut = False
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets = []

    def close(self):
        self.closed = True
        self.server.close()
        self.heal()


class Lab:
    """The database, the fake Telegram API and the network shared by the module's scenarios."""

    def __init__(self, workdir):
        self.prefix = 'snld-' + uuid.uuid4().hex[:6]
        self.workdir = str(workdir)
        self.network = self.prefix + '_net'
        self.fake = self.prefix + '_fake'
        self.pg = None

    def start(self):
        docker('network', 'create', self.network)
        self.pg = PgContainer(name=self.prefix + '_pg', extra_args=['--network', self.network]).start()
        self.pg.query("CREATE ROLE %s LOGIN PASSWORD '%s'" % (APP_USER, APP_PASSWORD))
        self.pg.query('CREATE DATABASE %s OWNER %s' % (DB, APP_USER))
        source = os.path.join(ROOT, 'images', 'fake-telegram')
        digest = hashlib.sha256()
        for name in ('Dockerfile', 'server.py'):
            with open(os.path.join(source, name), 'rb') as handle:
                digest.update(handle.read())
        image = 'soulnear-test/fake-telegram:%s' % digest.hexdigest()[:12]
        if docker('image', 'inspect', image, check=False).returncode != 0:
            docker('build', '-q', '--network', 'none', '--build-arg', 'BASE_IMAGE=' + BASE_IMAGE, '-t', image,
                   source, timeout=600)
        docker('run', '-d', '--name', self.fake, '--network', self.network, '-e', 'FAKE_TELEGRAM_NO_TLS=1',
               '-e', 'FAKE_TELEGRAM_PORT=8081', '-e', 'FAKE_TELEGRAM_CONTROL_PORT=0', '--health-cmd', 'true',
               image)
        self.fake_url = 'http://%s:8081' % address(self.fake, self.network)
        wait_until('the fake Telegram API', self.fake_answers, 60)
        return self

    def fake_answers(self):
        try:
            return self.call('health')['status'] == 'ok'
        except OSError:
            return False

    def call(self, path):
        with urllib.request.urlopen('%s/_fake/%s' % (self.fake_url, path), timeout=10) as response:
            return json.load(response)['result']

    def telegram(self, token):
        return self.call('state?token=%s' % token)

    def app_params(self, port=None):
        return dict(login_host='127.0.0.1', login_port=port or self.pg.port, login_user=APP_USER,
                    login_password=APP_PASSWORD, login_db=DB, connect_timeout=5)

    def sql(self, statement, args=None):
        return query(self.app_params(), statement, args)

    def close(self):
        docker('rm', '-f', self.fake, check=False)
        if self.pg is not None:
            self.pg.remove()
        docker('network', 'rm', self.network, check=False)


class BotHost:
    """One bot host: its bot container (created, stopped), its leader's configuration and process, its proxy."""

    def __init__(self, lab, scenario, me, lease_name, token):
        self.lab, self.me, self.lease = lab, me, lease_name
        self.bot = '%s_%s_%s' % (lab.prefix, scenario, me)
        self.dir = os.path.join(lab.workdir, scenario, me)
        os.makedirs(self.dir)
        self.proxy = Proxy(('127.0.0.1', lab.pg.port))
        self.proc = None
        docker('create', '--name', self.bot, '--network', lab.network, '--restart', 'no', '-e', 'API=' + lab.fake_url,
               '-e', 'TOKEN=' + token, '-e', 'BOT_NAME=' + me, '--label', 'soulnear.test=' + lab.prefix, BASE_IMAGE,
               'python3', '-u', '-c', POLLER)
        self.state_file = os.path.join(self.dir, 'run', 'state.json')
        self.alerts = os.path.join(self.dir, 'alerts.txt')
        base = dict(name='soulnear', log_dir=os.path.join(self.dir, 'log'), backup_dir=os.path.join(self.dir, 'b'),
                    db=dict(mode='external', container='', volume='', host='127.0.0.1', port=self.proxy.port, name=DB,
                            app_user=APP_USER, app_password=APP_PASSWORD, sslmode='disable'),
                    bot=dict(container=self.bot), lock=dict(dir=os.path.join(self.dir, 'deploy.lock')),
                    alert=dict(command='{ echo "== $SOULNEAR_ALERT_SUBJECT"; cat; echo; } >> %s' % self.alerts))
        monitoring = dict(state_file=os.path.join(self.dir, 'health-state.json'),
                          maintenance_file=os.path.join(self.dir, 'maintenance.json'))
        leader = dict(SETTINGS, enabled=True, lease=lease_name, me=me, state_file=self.state_file,
                      log_file=os.path.join(self.dir, 'log', 'leader.log'), bot_stop_timeout=10)
        for name, data in (('soulnear.json', base), ('monitoring.json', monitoring), ('leader.json', leader)):
            with open(os.path.join(self.dir, name), 'w') as handle:
                json.dump(data, handle)

    def command(self, *args):
        code = ('import sys; sys.path.insert(0, %r); from soulnear.health_command import main; '
                'sys.exit(main(sys.argv[1:]))' % LIBRARY)
        return [sys.executable, '-c', code, '--config', os.path.join(self.dir, 'soulnear.json'),
                '--monitoring-config', os.path.join(self.dir, 'monitoring.json')] + list(args)

    def start_leader(self):
        log = open(os.path.join(self.dir, 'leader.out'), 'a')
        self.proc = subprocess.Popen(self.command('leader', 'run'), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def run(self, *args, timeout=180):
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout)

    def state(self):
        return bot_leader.read_state(self.state_file) or {}

    def active(self):
        return self.state().get('role') == 'active'

    def running(self):
        return docker('inspect', '-f', '{{.State.Running}}', self.bot, check=False).stdout.strip() == 'true'

    def started(self):
        """When the bot container last started (this machine's clock): polls recorded at its address before that were
        another container's."""
        return docker_time(docker('inspect', '-f', '{{.State.StartedAt}}', self.bot).stdout.strip())

    def address(self):
        proc = docker('inspect', '-f', '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % self.lab.network,
                      self.bot, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def leader_log(self):
        path = os.path.join(self.dir, 'leader.out')
        return open(path).read() if os.path.exists(path) else ''

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop_leader(self, timeout=90):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def close(self):
        self.stop_leader()
        docker('rm', '-f', self.bot, check=False)
        self.proxy.close()


class Scenario:
    """Hosts a and b on a fresh lease and token; a sampler of both bots' running states."""

    def __init__(self, lab, name):
        self.lab, self.name = lab, name
        self.token = '%d:%s' % (100000 + int(uuid.uuid4().hex[:4], 16), uuid.uuid4().hex)
        self.lease = '%s-%s' % (lab.prefix, name)
        self.a = BotHost(lab, name, 'a', self.lease, self.token)
        self.b = BotHost(lab, name, 'b', self.lease, self.token)
        self.both_running = []
        self.sampling = True
        self.sampler = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while self.sampling:
            proc = docker('inspect', '-f', '{{.State.Running}}', self.a.bot, self.b.bot, check=False)
            if proc.stdout.split() == ['true', 'true']:
                self.both_running.append(time.time())
            time.sleep(0.3)

    def start(self):
        """a first (it takes the lease and polls), then b (standby)."""
        self.sampler.start()
        self.a.start_leader()
        self.wait_polling(self.a, since=0, timeout=90)
        self.b.start_leader()
        wait_until('b watching the lease', lambda: self.b.state().get('role') == 'standby', 60)
        return self

    def pollers(self):
        """{host name: the fake's record of the poller at that host's bot's current address} (the fake knows pollers
        by address, and Docker may give a bot started later the address a stopped one had)."""
        state = self.lab.telegram(self.token)
        found = {}
        for host in (self.a, self.b):
            ip = host.address()
            if ip and ip in state['pollers']:
                found[host.me] = state['pollers'][ip]
        return found

    def stopped_at(self, host):
        """When host's bot container last stopped (Docker's FinishedAt, this machine's clock)."""
        stamp = docker('inspect', '-f', '{{.State.FinishedAt}}', host.bot).stdout.strip()
        return docker_time(stamp)

    def conflicts(self):
        return self.lab.telegram(self.token)['conflicts']

    def wait_polling(self, host, since, timeout=GOAL + 30):
        """When host's bot first polled after `since` (epoch seconds; the fake runs on this machine's clock). A poll
        records its start as the poller's `last`, and polls come every second, so the first `last` seen after
        `since` (looked at every 0.2 s) is that first poll."""
        def polled():
            started = host.started() if host.running() else None
            info = self.pollers().get(host.me) if started else None
            after = max(since, started or 0)
            return info and info['last'] >= after and (info['first'] if info['first'] >= after else info['last'])
        return wait_until('%s polling' % host.me, polled, timeout, interval=0.2)

    def only(self, host, seconds=6):
        """For `seconds`: host's bot polls, the other's does not run; no conflict."""
        other = self.b if host is self.a else self.a
        end = time.time() + seconds
        while time.time() < end:
            assert not other.running(), '%s runs its bot while %s is active' % (other.me, host.me)
            time.sleep(0.5)
        assert self.pollers()[host.me]['last'] > end - 3, self.pollers()
        assert self.conflicts() == 0

    def verdict(self):
        assert self.conflicts() == 0, (self.lab.telegram(self.token)['conflict_events'], self.logs())
        assert self.both_running == [], ('both bots ran at once at %s' % self.both_running, self.logs())

    def logs(self):
        return '\n'.join('== %s\n%s' % (h.me, h.leader_log()[-4000:]) for h in (self.a, self.b))

    def close(self):
        self.sampling = False
        for host in (self.a, self.b):
            host.close()


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp('leader')).start()
    yield lab
    lab.close()


@pytest.fixture
def scenario(lab, request):
    case = Scenario(lab, request.node.name.replace('test_', '')[:24].replace('_', '-'))
    try:
        yield case.start()
    finally:
        case.close()


def report(what, seconds, goal=GOAL):
    print('\n%s: %.1f s%s' % (what, seconds, ' (goal %.0f s)' % goal if goal else ''))


def test_exactly_one_bot_polls_and_the_reports_say_which(scenario):
    scenario.only(scenario.a, seconds=8)
    status_a = json.loads(scenario.a.run('leader', 'status', '--json').stdout)
    status_b = json.loads(scenario.b.run('leader', 'status', '--json').stdout)
    assert status_a['ok'] and status_a['active'] and status_a['holder'] == 'a', status_a
    assert status_b['ok'] and not status_b['active'] and status_b['holder'] == 'a', status_b
    assert status_b['checks']['bot_container']['message'].startswith('container %s stands by' % scenario.b.bot)
    assert 'this host (b): standby' in status_b['checks']['leader']['message']
    brief = scenario.b.run('leader', 'status', '--brief').stdout
    assert brief.startswith('bot lease %s: bot lease %s active on a: renewed' % (scenario.lease, scenario.lease))
    # The safe redeploy's gate: a may start a bot, b may not.
    assert bot_leader.may_start(scenario.a.state_file)[0] is True
    allowed, why = bot_leader.may_start(scenario.b.state_file)
    assert not allowed and 'held by a' in why
    scenario.verdict()


def test_the_active_leader_and_its_bot_killed(scenario):
    lost = time.time()
    scenario.a.signal(signal.SIGKILL)
    docker('kill', scenario.a.bot)
    took = scenario.wait_polling(scenario.b, since=lost)
    report('takeover after the active leader and its bot were killed', took - lost)
    assert took - lost <= GOAL, scenario.logs()
    scenario.only(scenario.b)
    scenario.verdict()
    assert 'the bot runs on b now' in open(scenario.b.alerts).read()  # the alert names the new active host


@pytest.mark.full
def test_the_active_leader_killed_alone_its_watchdog_stops_the_bot(scenario):
    lost = time.time()
    scenario.a.signal(signal.SIGKILL)
    wait_until('the watchdog stopping a\'s bot', lambda: not scenario.a.running(), 10, interval=0.1)
    stopped = time.time()
    took = scenario.wait_polling(scenario.b, since=lost)
    report('watchdog: the dead leader\'s bot stopped after', stopped - lost, goal=None)
    report('takeover after the active leader alone was killed', took - lost)
    assert took - lost <= GOAL, scenario.logs()
    scenario.only(scenario.b)
    scenario.verdict()


@pytest.mark.full
def test_a_hung_leader_is_fenced_by_its_watchdog(scenario):
    lost = time.time()
    scenario.a.signal(signal.SIGSTOP)
    wait_until('the watchdog fencing the hung leader\'s bot', lambda: not scenario.a.running(), 20, interval=0.1)
    fenced = time.time() - lost
    assert fenced <= SETTINGS['fence_seconds'] + SETTINGS['stop_grace_seconds'] + 2, fenced
    took = scenario.wait_polling(scenario.b, since=lost)
    report('hung leader (SIGSTOP): its bot fenced after', fenced, goal=None)
    report('takeover from the hung leader', took - lost)
    assert took - lost <= GOAL
    scenario.a.signal(signal.SIGCONT)  # it wakes up, finds the lease taken, and stands by
    wait_until('a standing by again', lambda: scenario.a.state().get('role') == 'standby'
               and scenario.a.state().get('holder') == 'b', 30)
    scenario.only(scenario.b)
    scenario.verdict()


@pytest.mark.full
def test_the_active_hosts_database_connection_cut(scenario):
    lost = time.time()
    scenario.a.proxy.blackhole()
    wait_until('a fencing its bot', lambda: not scenario.a.running(), 20, interval=0.1)
    fenced = time.time() - lost
    took = scenario.wait_polling(scenario.b, since=lost)
    report('network cut: a fenced its bot after', fenced, goal=None)
    report('takeover after the cut', took - lost)
    assert fenced <= SETTINGS['fence_seconds'] + SETTINGS['stop_grace_seconds'] + 2
    assert took - lost <= GOAL, scenario.logs()
    assert 'FENCED' in scenario.a.leader_log()
    scenario.a.proxy.heal()  # the partition ends: a sees b holding the lease and stays a standby
    wait_until('a back as a standby', lambda: scenario.a.state().get('holder') == 'b'
               and scenario.a.state().get('db_error') is None, 40)
    scenario.only(scenario.b)
    scenario.verdict()


@pytest.mark.full
def test_the_database_unavailable_longer_than_the_fence_time(scenario, lab):
    lost = time.time()
    docker('pause', lab.pg.name)  # every query and connection hangs: a hung or failing-over primary
    try:
        wait_until('a fencing its bot', lambda: not scenario.a.running(), 20, interval=0.1)
        fenced = time.time() - lost
        time.sleep(max(0.0, lost + 15 - time.time()))
    finally:
        docker('unpause', lab.pg.name)
    back = time.time()
    def polling():
        return next((h for h in (scenario.a, scenario.b)
                     if (scenario.pollers().get(h.me) or {}).get('last', 0) > back), None)
    holder = wait_until('a host polling again', polling, 60)
    report('database away 15 s: a fenced its bot after', fenced, goal=None)
    report('bot polling again after the database came back (on %s)' % holder.me,
           scenario.pollers()[holder.me]['last'] - back)
    scenario.only(holder)
    scenario.verdict()


@pytest.mark.full
def test_an_async_failover_that_lost_the_last_lease_commits(scenario, lab):
    """b takes over from a cut-off a; then the database 'fails over' to a replica that never got b's take: the row
    goes back to (a, the generation a last wrote). b's next renewal fails and it fences at once; a (its watch started
    over after the cut) waits F + G before it takes its old lease back; b waits T. Never two pollers."""
    scenario.a.proxy.blackhole()
    took = scenario.wait_polling(scenario.b, since=time.time())
    old_generation = scenario.a.state().get('generation') or 0
    (before,) = lab.sql('SELECT generation FROM soulnear_leader_lease WHERE name = %s', (scenario.lease,))
    generation = max(old_generation, before[0] - 50)
    scenario.a.proxy.heal()
    lab.sql('UPDATE soulnear_leader_lease SET holder = %s, generation = %s WHERE name = %s',
            ('a', generation, scenario.lease))
    rolled_back = time.time()
    wait_until('b fencing its bot at its next renewal', lambda: not scenario.b.running(), 15, interval=0.1)
    report('lost commits: b stopped its bot after', time.time() - rolled_back, goal=None)
    again = scenario.wait_polling(scenario.a, since=rolled_back, timeout=60)
    report('lost commits: a polls again after', again - rolled_back, goal=None)
    assert took
    scenario.only(scenario.a)
    scenario.verdict()


@pytest.mark.full
def test_the_databases_clock_jumping_forward_moves_nothing(scenario, lab):
    """The database's clock decides nothing: a row whose times say 'expired an hour ago' (the clock jumped forward)
    keeps its holder, because b waits for T of unchanged generations on its own clock."""
    lab.sql("UPDATE soulnear_leader_lease SET renewed_at = now() - interval '1 hour', "
            "expires_at = now() - interval '59 minutes' WHERE name = %s", (scenario.lease,))
    scenario.only(scenario.a, seconds=SETTINGS['ttl_seconds'] + 6)
    assert scenario.b.state().get('holder') == 'a'
    scenario.verdict()


@pytest.mark.full
def test_a_deliberate_failover_moves_the_bot_with_no_overlap(scenario):
    # A standby that has just started takes even an offered lease only after watching the database for F + G (it
    # cannot know yet whether a failover lost someone's commits); a standby of long standing takes it at once.
    settle = SETTINGS['fence_seconds'] + SETTINGS['stop_grace_seconds']
    wait_until('b watching for F + G', lambda: (scenario.b.state().get('watching_for') or 0) >= settle, 60)
    asked = time.time()
    moved = scenario.b.run('failover', '--to', 'b', '--timeout', '60', '--json')
    assert moved.returncode == 0, moved.stdout + moved.stderr + scenario.logs()
    result = json.loads(moved.stdout.strip().splitlines()[-1])
    assert result['moved'] and result['from'] == 'a' and result['to'] == 'b', result
    took = scenario.wait_polling(scenario.b, since=asked)
    report('failover a -> b: a\'s bot stopped to b\'s first poll', took - scenario.stopped_at(scenario.a), goal=None)
    report('failover a -> b: asked to b polling', took - asked)
    assert took - asked <= GOAL
    scenario.only(scenario.b)
    again = scenario.a.run('failover', '--timeout', '60')  # any other host: back to a
    assert again.returncode == 0, again.stdout + again.stderr
    scenario.wait_polling(scenario.a, since=time.time() - 1)
    scenario.only(scenario.a)
    scenario.verdict()


# -- the safe redeploy under a leader --------------------------------------------------------------------------

def test_safe_redeploy_standby_mode_and_its_start_gate(tmp_path):
    """standby: the new version is created and left stopped, the release switched, the migrations applied when no
    host runs the bot; under a leader the host is a standby unless its leader holds the lease, and a deploy on the
    active host swaps and starts the bot as always."""
    env = RedeployEnv(tmp_path).start()
    leader = None

    def bot():
        proc = docker('inspect', '-f', '{{.State.Status}} {{index .Config.Labels "soulnear.version"}}', env.bot,
                      check=False)
        status, version = proc.stdout.split() if proc.returncode == 0 else (None, None)
        return dict(status=status, version=version)
    try:
        env.version('v1')
        env.version('v2', migrations={'004_profiles.sql': 'CREATE TABLE profiles (user_id bigint PRIMARY KEY);\n'})
        state_file = str(tmp_path / 'leader' / 'state.json')
        first = Redeployer(env.deploy_params('v1', standby=True, restart_policy='no')).run()
        assert first['changed'] and first['standby'] and 'not started' in first['msg'], first
        assert bot()['status'] == 'created' and env.applied()  # no host runs the bot: migrated here
        assert os.readlink(env.current).endswith('v1')
        again = Redeployer(env.deploy_params('v1', standby=True, restart_policy='no')).run()
        assert not again['changed'], again
        gated = Redeployer(env.deploy_params('v1', leader_state_file=state_file, restart_policy='no')).run()
        assert gated['standby'] and 'no leader runs on this host' in gated['standby_reason']
        assert bot()['status'] == 'created'

        # A leader for this host: it takes the free lease and starts v1.
        config = tmp_path / 'host'
        config.mkdir()
        base = dict(name='soulnear', log_dir=str(config / 'log'), backup_dir=env.backups,
                    db=dict(mode='external', host='127.0.0.1', port=env.pg.port, name='soul_bot',
                            app_user='soulnear', app_password='test-app-secret', sslmode='disable'),
                    bot=dict(container=env.bot), lock=dict(dir=str(config / 'deploy.lock')), alert={})
        (config / 'soulnear.json').write_text(json.dumps(base))
        (config / 'monitoring.json').write_text(json.dumps(dict(state_file=str(config / 'health-state.json'))))
        (config / 'leader.json').write_text(json.dumps(dict(SETTINGS, enabled=True, lease='redeploy', me='solo',
                                                            state_file=state_file, bot_stop_timeout=10)))
        code = ('import sys; sys.path.insert(0, %r); from soulnear.health_command import main; '
                'sys.exit(main(sys.argv[1:]))' % LIBRARY)
        log = open(str(tmp_path / 'leader.out'), 'w')
        leader = subprocess.Popen([sys.executable, '-c', code, '--config', str(config / 'soulnear.json'),
                                   '--monitoring-config', str(config / 'monitoring.json'), 'leader', 'run'],
                                  stdout=log, stderr=subprocess.STDOUT)
        wait_until('the leader starting v1', lambda: bot()['status'] == 'running', 90)
        # As the app role does: the deploy holds the deploy lock, so the leader leaves the swap to it.
        lock_dir = str(config / 'deploy.lock')
        deploy_lock.acquire(lock_dir, 'run-1', 'pytest@controller', operation='redeploy')
        try:
            shipped = Redeployer(env.deploy_params('v2', leader_state_file=state_file, restart_policy='no',
                                                   lock_path=lock_dir, lock_run_id='run-1')).run()
        finally:
            deploy_lock.release(lock_dir, 'run-1')
        assert not shipped['standby'] and shipped['msg'].startswith('Deployed v1 -> v2: applied 004_profiles.sql')
        assert bot() == dict(status='running', version='v2')

        def hold():
            return (bot_leader.read_state(state_file) or {}).get('hold') or ''

        # A deploy's lock alone does not hold the leader back; the safe redeploy's swap marker does: while it swaps
        # the bot (stopped here as by the swap), the leader leaves the bot alone, and starts it once the swap ends.
        deploy_lock.acquire(lock_dir, 'run-2', 'pytest@controller', operation='redeploy')
        try:
            with bot_leader.swapping(lock_dir):
                docker('stop', env.bot)
                wait_until('the leader leaving the bot to the swap', lambda: 'a deploy swaps the bot' in hold(), 30)
                assert bot()['status'] == 'exited'
            ended = time.time()
            wait_until('the leader starting the bot after the swap', lambda: bot()['status'] == 'running', 30)
            report('swap ended -> the leader started the bot (deploy lock still held)', time.time() - ended, goal=None)

            # A killed run's marker stays behind: once its process is gone the leader ignores it.
            marker = ('import sys, time; sys.path.insert(0, %r); from soulnear import leader; '
                      'mark = leader.swapping(%r); mark.__enter__(); print("marked", flush=True); time.sleep(600)'
                      % (LIBRARY, lock_dir))
            run = subprocess.Popen([sys.executable, '-c', marker], stdout=subprocess.PIPE, text=True)
            try:
                assert run.stdout.readline().strip() == 'marked'
                assert bot_leader.swap_in_progress(lock_dir) == run.pid
                docker('stop', env.bot)
                wait_until('the leader leaving the bot to the run', lambda: 'pid %d' % run.pid in hold(), 30)
                assert bot()['status'] == 'exited'
            finally:
                run.kill()
                run.wait()
            killed = time.time()
            assert os.path.exists(bot_leader.swap_marker(lock_dir))
            assert bot_leader.swap_in_progress(lock_dir) is None
            wait_until('the leader starting the bot past a killed run', lambda: bot()['status'] == 'running', 30)
            report('swap run killed -> the leader started the bot', time.time() - killed, goal=None)
        finally:
            deploy_lock.release(lock_dir, 'run-2')
        os.unlink(bot_leader.swap_marker(lock_dir))

        # A restore holds the deploy lock and stops the bot for longer: the leader leaves it stopped until the lock
        # is released, then starts it again.
        deploy_lock.acquire(lock_dir, 'run-3', 'pytest@controller', operation='restore')
        try:
            docker('stop', env.bot)
            wait_until('the leader waiting for the restore', lambda: 'the deploy lock is held (restore' in hold(), 30)
            assert bot()['status'] == 'exited'
        finally:
            deploy_lock.release(lock_dir, 'run-3')
        wait_until('the leader starting the bot after the restore', lambda: bot()['status'] == 'running', 30)

        leader.terminate()  # the leader stops: it stops the bot, releases the lease
        leader.wait(timeout=60)
        assert bot()['status'] == 'exited'
        back = Redeployer(env.params(action='rollback', leader_state_file=state_file, restart_policy='no')).run()
        assert back['standby'] and back['to_version'] == 'v1' and 'not started' in back['msg'], back
        assert bot() == dict(status='created', version='v1')
    finally:
        if leader is not None and leader.poll() is None:
            leader.kill()
        env.close()
