"""Exactly one poller per token across the two bot hosts (issue 25), on the converged VPSes: vps (the database host)
and vps-bot are both in soulnear_bot. The scenario's inventory runs them with app_instances: all (the tests before
this one check each bot host's own bot); this module deploys a polling bot to both with the default,
app_instances: one, proves it, and puts the scenario back as it found it.

- A fake Telegram Bot API (images/fake-telegram) runs on vps with its port published on
  the private network; both bots reach it as api.telegram.org (app_extra_hosts) and trust its CA (app_ca_file). It
  answers 409 to a second concurrent getUpdates and counts it: every test ends with 0 conflicts.
- The bot (molecule/default/poller-bot) only polls getUpdates.
- Both deploy; exactly one polls. The active host's bot container is killed and its leader stopped: the standby
  polls within 30 s (printed), and every update the fake generated meanwhile (5/s for 60 s) is processed - the table
  of generated, confirmed, redelivered, processed, duplicated and lost is printed; lost must be 0. A redeploy
  updates both without a second poller. make failover moves it.

test_deploy_topologies.py moved vps-bot to a managed PostgreSQL that is gone by now; the deploy here brings it back
to the database host, after dropping the data-loss guard's record of that removed database (what make guard-clear
would accept, were that database still there to connect to).
"""

import json
import os
import shutil
import subprocess
import threading
import time

import pytest
import testinfra
import yaml
from conftest import DB_HOST_IP, PROJECT, bot_instance_name, instance_name, operator_inventory

pytestmark = pytest.mark.skipif(
    not os.environ.get('SOULNEAR_TEST_FULL'),
    reason='make test-full (SOULNEAR_TEST_FULL=1): both bot hosts deployed with app_instances: one and back, 15 min')

TOKEN = '424242:POLLER-LEADER-TEST'
GOAL = 30.0
FAKE = 'fake-telegram-poller'
FAKE_IMAGE = 'soulnear-test/fake-telegram-poller'
FAKE_DIR = '/opt/soulnear-test-poller-fake'
CONTROL = 'http://127.0.0.1:18443/_fake/'
SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'poller-bot')
BOT = 'soulnear_bot'


def vps(name):
    return testinfra.get_host('docker://' + name)


@pytest.fixture(scope='module')
def hosts():
    return {instance_name(): vps(instance_name()), bot_instance_name(): vps(bot_instance_name())}


def fake_state(hosts):
    code = ('import json, urllib.request; print(urllib.request.urlopen(%r, timeout=10).read().decode())'
            % (CONTROL + 'state?token=' + TOKEN))
    out = hosts[instance_name()].check_output('python3 -c %s', code)
    return json.loads(out)['result']


def fake_generate(hosts, rate, count):
    """A bounded update generator on the fake (count updates at rate per second); returns its description."""
    code = ('import json, urllib.request; print(urllib.request.urlopen(urllib.request.Request(%r, method="POST"), '
            'timeout=10).read().decode())' % (CONTROL + 'generate?token=%s&rate=%s&count=%d' % (TOKEN, rate, count)))
    return json.loads(hosts[instance_name()].check_output('python3 -c %s', code))['result']


def generated(state, gen_id):
    """The generator's description in the fake's state, and the ids of its updates confirmed so far."""
    described = [g for g in state['generators'] if g['id'] == gen_id][0]
    first = described['first_update_id']
    return described, [n for n in state['confirmed'] if first is not None and n >= first]


def processed(hosts, first, last):
    """How many times each update id in [first, last] was processed, over both hosts' bot logs."""
    counts = dict.fromkeys(range(first, last + 1), 0)
    for host in hosts.values():
        for line in host.run('docker logs %s 2>&1', BOT).stdout.splitlines():
            if line.startswith('processed update '):
                number = int(line.split()[-1])
                if number in counts:
                    counts[number] += 1
    return counts


@pytest.fixture(scope='module')
def fake(hosts, tmp_path_factory):
    """The fake (images/fake-telegram) on vps: its image built there from the bot's base image (no registry), a
    test CA and certificate (its make-certs.sh), its port published on the private network (443) and the control
    API on vps's loopback. Returns the CA's path here (app_ca_file)."""
    host = hosts[instance_name()]
    source = os.path.join(PROJECT, 'images', 'fake-telegram')
    subprocess.run('tar -C %s -c Dockerfile server.py make-certs.sh | docker exec -i %s sh -c "rm -rf %s/src && '
                   'mkdir -p %s/src && tar -x -C %s/src"' % (source, instance_name(), FAKE_DIR, FAKE_DIR, FAKE_DIR),
                   shell=True, check=True, timeout=120)
    host.check_output('docker build -q --network none --build-arg BASE_IMAGE=soulnear/python:3-bookworm -t %s '
                      '%s/src', FAKE_IMAGE, FAKE_DIR)
    # The fake runs as uid 10001 and must read its key (as PostgreSQL, uid 999, must read its own).
    host.check_output('d=%s && $d/src/make-certs.sh $d/certs && mkdir -p $d/serve && install -m 0644 -o 10001 -g '
                      '10001 $d/certs/server.crt $d/serve/ && install -m 0600 -o 10001 -g 10001 $d/certs/server.key '
                      '$d/serve/', FAKE_DIR)
    ca = tmp_path_factory.mktemp('fake-ca') / 'ca.crt'
    ca.write_text(host.check_output('cat %s/certs/ca.crt', FAKE_DIR) + '\n')
    host.run('docker rm -f %s', FAKE)
    host.check_output('docker run -d --name %s -p 443:443 -p 127.0.0.1:18443:8080 --sysctl '
                      'net.ipv4.ip_unprivileged_port_start=0 -v %s/serve:/certs:ro %s', FAKE, FAKE_DIR, FAKE_IMAGE)
    deadline = time.time() + 90
    while 'healthy' not in host.run('docker inspect -f "{{.State.Health.Status}}" %s', FAKE).stdout:
        assert time.time() < deadline, host.run('docker logs --tail 20 %s', FAKE).stdout
        time.sleep(1)
    yield str(ca)
    # The certificates stay (make-certs.sh keeps them): a bot that still mounts the bundle with this CA (a rerun's
    # deploy that finds nothing to change) keeps trusting the fake.
    host.run('docker rm -f %s', FAKE)
    host.run('docker image rm %s', FAKE_IMAGE)


def version_dir(base, number):
    path = os.path.join(str(base), 'v%d' % number)
    shutil.copytree(SOURCE, path)
    with open(os.path.join(path, 'VERSION'), 'w') as handle:
        handle.write('%d\n' % number)
    return path


@pytest.fixture(scope='module')
def inventory(fake, tmp_path_factory):
    """The operator's inventory of both VPSes plus what the polling bot needs, with app_instances: one."""
    full, _password = operator_inventory(both=True)
    work = tmp_path_factory.mktemp('poller')
    directory = work / 'inventory'
    shutil.copytree(os.path.dirname(full), str(directory))
    settings = dict(app_instances='one', app_source_dir=version_dir(work, 1), app_migrations='none',
                    app_ca_file=fake, app_env={'BOT_TOKEN': TOKEN},
                    app_extra_hosts=['api.telegram.org:%s' % DB_HOST_IP], app_settle_seconds=3)
    (directory / 'group_vars' / 'soulnear' / 'zz_poller.yml').write_text(yaml.safe_dump(settings))
    return dict(hosts=str(directory / 'hosts.yml'), work=work)


def make(target, inventory_file, *variables, timeout=1500):
    _inventory, password = operator_inventory(both=True)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_FORCE_COLOR='0')
    started = time.time()
    proc = subprocess.run(['make', '-s', target, 'INVENTORY=' + inventory_file, 'VAULT_PASSWORD_FILE=' + password]
                          + list(variables), cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    print('\nmake %s: %.0f s' % (' '.join([target] + list(variables)), time.time() - started))
    return proc


def running(hosts):
    """The hosts whose bot container runs."""
    return sorted(name for name, host in hosts.items()
                  if host.run('docker inspect -f "{{.State.Running}}" %s', BOT).stdout.strip() == 'true')


def leader_status(host):
    return json.loads(host.check_output('/opt/soulnear/bin/soulnear-health leader status --json || true'))


def active(hosts):
    holders = set(leader_status(host)['holder'] for host in hosts.values())
    assert len(holders) == 1, holders
    return holders.pop()


class Sampler:
    """Both bot containers' running states every half second, from this machine (docker exec into each VPS)."""

    def __init__(self):
        self.both, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            states = [subprocess.run(['docker', 'exec', name, 'docker', 'inspect', '-f', '{{.State.Running}}', BOT],
                                     capture_output=True, text=True, timeout=60).stdout.strip()
                      for name in (instance_name(), bot_instance_name())]
            if states == ['true', 'true']:
                self.both.append(time.time())
            self.stop.wait(0.5)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=120)


def only_one_polls(hosts, who, seconds=6):
    end = time.time() + seconds
    while time.time() < end:
        assert running(hosts) == [who]
        time.sleep(1)
    state = fake_state(hosts)
    assert state['last_poll_age'] is not None and state['last_poll_age'] < 5, state
    assert state['conflicts'] == 0, state['conflict_events']


@pytest.fixture(scope='module')
def deployed(hosts, inventory):
    """Both bot hosts deployed with app_instances: one (vps-bot brought back to the database host first)."""
    bot_host = hosts[bot_instance_name()]
    config = json.loads(bot_host.check_output('cat /etc/soulnear/soulnear.json'))
    if config['db']['host'] != DB_HOST_IP:
        bot_host.run('rm -f /var/lib/soulnear/data-guard.json')
    proc = make('deploy', inventory['hosts'])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    yield proc
    # As the scenario found it: every bot host runs the scenario's own bot, no leader.
    full, _password = operator_inventory(both=True)
    back = make('redeploy', full)
    assert back.returncode == 0, back.stdout[-4000:] + back.stderr[-2000:]
    for host in hosts.values():
        assert host.run('systemctl is-active soulnear-leader').stdout.strip() != 'active'


def test_both_deploy_and_exactly_one_polls(hosts, deployed, inventory):
    who = active(hosts)
    assert who in hosts
    standby = [name for name in hosts if name != who][0]
    assert hosts[standby].run('docker inspect -f "{{.State.Status}}" %s', BOT).stdout.strip() in ('created', 'exited')
    only_one_polls(hosts, who)
    versions = set()
    for host in hosts.values():
        assert host.service('soulnear-leader').is_running and host.service('soulnear-leader').is_enabled
        versions.add(host.check_output('docker inspect -f %s %s', '{{index .Config.Labels "soulnear.version"}}', BOT))
        assert host.check_output('docker inspect -f "{{.HostConfig.RestartPolicy.Name}}" %s', BOT) == 'no'
    assert len(versions) == 1, versions
    # The deploy's health report: the leader's lines on both hosts.
    assert 'leader        ok   bot lease soulnear active on %s' % who in deployed.stdout, deployed.stdout[-4000:]
    assert 'stands by (' in deployed.stdout
    ps = make('ps', inventory['hosts'])
    assert ps.returncode == 0 and 'bot lease soulnear: bot lease soulnear active on %s' % who in ps.stdout, ps.stdout


def test_the_active_host_lost_the_standby_takes_over(hosts, deployed):
    who = active(hosts)
    standby = [name for name in hosts if name != who][0]
    # Updates keep coming before, during and after the loss (5/s for 60 s): each must be processed, none lost.
    generator = fake_generate(hosts, 5, 300)
    with Sampler() as sampler:
        # The active bot confirms some of them before it is lost.
        deadline = time.time() + 60
        while len(generated(fake_state(hosts), generator['id'])[1]) < 10:
            assert time.time() < deadline, 'the active bot %s confirmed no generated update in 60 s' % who
            time.sleep(0.5)
        lost = time.time()
        hosts[who].check_output('docker kill %s && systemctl kill --signal=SIGKILL soulnear-leader '
                                '&& systemctl stop soulnear-leader', BOT)
        # A poll after the kill returned is the standby's (the lost bot may still poll while the kill runs, and
        # counting that one measured a takeover of 0.1 s); read the state after seeing the standby's bot run.
        killed = time.time()
        deadline = lost + GOAL + 30
        took = None
        while time.time() < deadline:
            if running(hosts) == [standby]:
                state = fake_state(hosts)
                if state['last_poll'] and state['last_poll'] > killed:
                    took = state['last_poll']
                    break
            time.sleep(0.5)
        assert took, 'the standby %s did not poll within %.0f s' % (standby, GOAL + 30)
        print('\ntakeover %s -> %s after its bot was killed and its leader stopped: %.1f s (goal %.0f s; the kill '
              'took %.1f s)' % (who, standby, took - lost, GOAL, killed - lost))
        assert took - lost <= GOAL
        # The alert follows on the leader's next look at the running bot (every 2 s).
        alert, deadline = 'ALERT the bot runs on %s now' % standby, time.time() + 30
        while alert not in hosts[standby].check_output('cat /var/log/soulnear/leader.log'):
            assert time.time() < deadline, '%r not in %s\'s leader.log within 30 s' % (alert, standby)
            time.sleep(0.5)
        hosts[who].check_output('systemctl start soulnear-leader')  # back as a standby: its bot stays stopped
        only_one_polls(hosts, standby)
        # Every generated update confirmed (generator done, nothing queued), then counted in both bots' logs.
        deadline = time.time() + 180
        while True:
            state = fake_state(hosts)
            done = generated(state, generator['id'])[0]
            if done['done'] and not state['queued']:
                break
            assert time.time() < deadline, 'updates still queued: %s' % state['queued'][:20]
            time.sleep(1)
        first, last = done['first_update_id'], done['last_update_id']
        counts = processed(hosts, first, last)
        delivered = state['delivered']
        row = dict(generated=last - first + 1, produced=done['produced'],
                   confirmed=len(set(state['confirmed']) & set(counts)),
                   redelivered=sum(1 for n in counts if delivered.get(str(n), 0) > 1),
                   processed=sum(1 for n in counts.values() if n), duplicated=sum(1 for n in counts.values() if n > 1),
                   lost=sum(1 for n in counts.values() if not n))
        print('\nupdates across the takeover %s -> %s: %s' % (who, standby, json.dumps(row)))
        assert row['generated'] == row['produced'] == 300, row
        assert row['confirmed'] == row['generated'] and row['lost'] == 0, row
    assert sampler.both == []


def test_a_redeploy_updates_both_without_a_second_poller(hosts, deployed, inventory):
    who = active(hosts)
    before = fake_state(hosts)['conflicts']
    with Sampler() as sampler:
        proc = make('redeploy', inventory['hosts'], 'SOURCE=%s' % version_dir(inventory['work'], 2))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert sampler.both == []
    versions = set(hosts[name].check_output('docker inspect -f %s %s', '{{index .Config.Labels "soulnear.version"}}',
                                            BOT) for name in hosts)
    assert len(versions) == 1, versions  # the standby holds the same new version, not started
    assert 'poller bot version 2 polling' in hosts[who].check_output('docker logs %s 2>&1', BOT)
    assert 'Standby (this host stands by' in proc.stdout, '\n'.join(
        line for line in proc.stdout.splitlines() if 'tandby' in line or 'msg' in line)[-3000:]
    assert active(hosts) == who
    only_one_polls(hosts, who)
    assert fake_state(hosts)['conflicts'] == before == 0


def test_make_failover_moves_the_bot(hosts, deployed, inventory):
    who = active(hosts)
    other = [name for name in hosts if name != who][0]
    with Sampler() as sampler:
        asked = time.time()
        proc = make('failover', inventory['hosts'], 'HOST=%s' % other)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert 'The bot moved from %s to %s' % (who, other) in proc.stdout, proc.stdout[-3000:]
    assert sampler.both == []
    stopped = hosts[who].check_output('docker inspect -f "{{.State.FinishedAt}}" %s', BOT)
    print('\nmake failover %s -> %s: %.0f s for the whole playbook; the old bot stopped at %s'
          % (who, other, time.time() - asked, stopped))
    assert active(hosts) == other
    only_one_polls(hosts, other)
