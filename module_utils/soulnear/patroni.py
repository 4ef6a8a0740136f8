# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Patroni cluster's state from its REST API, for db_health's `patroni` check (issue 15).

No Ansible imports and the standard library only (urllib, json, ssl): the monitoring role installs
this file on the host next to the health command, like pg.py.

check_cluster(url) reads GET <url>/cluster, which any member answers for the whole cluster
(Patroni >= 2.1; the answer lists every member with its role, state, host, port, timeline and, for
replicas, lag in bytes), and decides:

- failure (ok=False): the REST API does not answer or does not answer like Patroni; no member holds
  the leader lock or the leader is not running; a member is not running or streaming (stopped,
  starting, crashed, creating replica, in archive recovery...).
- warning (ok=True, 'warning' set): a replica lags more than max_lag_bytes, or its lag is unknown;
  a replica is on an older timeline than the leader; the cluster is paused (maintenance mode: Patroni
  will not fail over); the cluster has no replica. These degrade high availability, not the
  service: the leader still accepts writes, so the bot works. Lag is a warning because it comes and
  goes with write bursts (a bulk load, a VACUUM) and a failing health check makes the monitor act;
  Patroni itself refuses to promote a replica lagging over maximum_lag_on_failover, so the risk is
  a failover that does not happen, which the warning names.

Every answer is {'ok': bool, 'value': {...}, 'message': str} plus 'warning' when there is one;
every failure message names the cause and a fix ("Fix: ..."). check_cluster never raises.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import ssl

try:  # Python 3
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen
except ImportError:  # pragma: no cover - Python 2 is not supported by the project
    HTTPError = URLError = Request = urlopen = None

from .results import check

DEFAULT_MAX_LAG_BYTES = 16 * 1024 * 1024
LEADER_ROLES = ('leader', 'master', 'primary', 'standby_leader')
# 'streaming' since Patroni 3.0.4 for a replica receiving WAL from its upstream; older versions say
# 'running' for every healthy member.
HEALTHY_STATES = ('running', 'streaming')


def format_bytes(value):
    """1536 -> '1.5 KiB'; None -> 'unknown'."""
    if value is None:
        return 'unknown'
    size = float(value)
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(size) < 1024 or unit == 'GiB':
            return ('%d %s' % (size, unit)) if unit == 'B' else ('%.1f %s' % (size, unit))
        size /= 1024.0
    return '%d B' % value  # pragma: no cover - the loop always returns


def base_url(url):
    """The REST base URL: 'pg1:8008/' -> 'http://pg1:8008'; a trailing /cluster is dropped."""
    url = (url or '').strip().rstrip('/')
    if url and '://' not in url:
        url = 'http://' + url
    for suffix in ('/cluster', '/patroni', '/health'):
        if url.endswith(suffix):
            url = url[:-len(suffix)]
    return url


def _ssl_context(url, ca_cert):
    if not url.startswith('https://'):
        return None
    return ssl.create_default_context(cafile=ca_cert) if ca_cert else ssl.create_default_context()


def get_cluster(url, timeout=5, ca_cert=None):
    """(body, None) with GET <url>/cluster's parsed JSON, or (None, failure message with a fix)."""
    url = base_url(url)
    endpoint = url + '/cluster'
    if not url:
        return None, 'no Patroni REST API URL given. Fix: set patroni_url to a member\'s REST API, e.g. http://10.0.0.5:8008'
    try:
        req = Request(endpoint, headers={'Accept': 'application/json'})
        resp = urlopen(req, timeout=timeout, context=_ssl_context(url, ca_cert))
        try:
            raw = resp.read()
        finally:
            resp.close()
    except HTTPError as exc:
        fix = ('Fix: the REST API asks for credentials; GET /cluster needs none unless restapi.authentication '
               'and restapi.allowlist restrict it - allow this host' if exc.code in (401, 403) else
               'Fix: point patroni_url at a member\'s REST API base (http://<host>:8008), not at a path below it'
               if exc.code == 404 else 'Fix: read the patroni log on that member')
        return None, 'Patroni REST API at %s answered HTTP %s %s. %s' % (endpoint, exc.code, exc.reason, fix)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        return None, ('Patroni REST API at %s: TLS failed (%s). Fix: give ca_cert the CA that signed the REST API\'s '
                      'certificate (restapi.certfile) and use the host name the certificate names' % (endpoint, exc))
    except URLError as exc:
        reason = exc.reason
        if isinstance(reason, (ssl.SSLError, ssl.CertificateError)):
            return None, ('Patroni REST API at %s: TLS failed (%s). Fix: give ca_cert the CA that signed the REST '
                          'API\'s certificate (restapi.certfile) and use the host name the certificate names'
                          % (endpoint, reason))
        return None, ('Patroni REST API at %s did not answer (%s). Fix: check patroni_url and that port 8008 is '
                      'reachable from this host (patroni running, restapi.listen, firewall)' % (endpoint, reason))
    except (socket.timeout, OSError, ValueError) as exc:
        return None, ('Patroni REST API at %s did not answer (%s). Fix: check patroni_url and that port 8008 is '
                      'reachable from this host (patroni running, restapi.listen, firewall)'
                      % (endpoint, exc or exc.__class__.__name__))
    try:
        body = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get('members'), list):
        return None, ('%s did not answer like Patroni\'s /cluster endpoint (no members list). Fix: point patroni_url '
                      'at a Patroni member\'s REST API (port 8008), Patroni >= 2.1' % endpoint)
    return body, None


def _int_or_none(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # 'unknown' (Patroni cannot tell), missing


def parse_members(body):
    """The members of a /cluster answer as plain dicts (name, role, state, host, port, lag, timeline)."""
    members = []
    for raw in body.get('members') or []:
        if not isinstance(raw, dict):
            continue
        members.append(dict(name=str(raw.get('name') or '?'), role=str(raw.get('role') or 'unknown'),
                            state=str(raw.get('state') or 'unknown'), host=raw.get('host'),
                            port=_int_or_none(raw.get('port')), lag=_int_or_none(raw.get('lag')),
                            timeline=_int_or_none(raw.get('timeline'))))
    return members


def check_cluster(url, timeout=5, max_lag_bytes=DEFAULT_MAX_LAG_BYTES, ca_cert=None):
    """Leader, members and replication of the Patroni cluster behind url; never raises."""
    value = dict(leader=None, members=[], sync_standby=[], url=base_url(url))
    try:
        return _check(url, value, timeout, max_lag_bytes, ca_cert)
    except Exception as exc:  # noqa: BLE001 - a health check reports, it does not crash
        return check(False, value,
                     'reading the Patroni cluster at %s failed unexpectedly (%s: %s). Fix: check patroni_url; '
                     'report this as a bug if the URL is right' % (value['url'], exc.__class__.__name__, exc))


def _check(url, value, timeout, max_lag_bytes, ca_cert):
    body, error = get_cluster(url, timeout=timeout, ca_cert=ca_cert)
    if error:
        return check(False, value, error)
    members = parse_members(body)
    value['members'] = members
    value['sync_standby'] = [m['name'] for m in members if m['role'] in ('sync_standby', 'synchronous_standby')]
    if body.get('pause'):
        value['paused'] = True
    warnings = []
    if value.get('paused'):
        warnings.append('the cluster is paused (maintenance mode): Patroni will not fail over. '
                        'Fix: patronictl resume once the maintenance is over')

    leaders = [m for m in members if m['role'] in LEADER_ROLES]
    if not leaders:
        listed = ', '.join('%s %s %s' % (m['name'], m['role'], m['state']) for m in members) or 'none'
        return check(False, value,
                     'the Patroni cluster has no leader (members: %s): nothing accepts writes. Fix: read '
                     '`patronictl list` and the patroni logs on the members; check that the DCS (etcd) '
                     'answers them' % listed)
    leader = leaders[0]
    value['leader'] = leader['name']
    if leader['state'] not in HEALTHY_STATES:
        return check(False, value,
                     'the leader %s is %s, not running. Fix: read the patroni and PostgreSQL logs on %s; '
                     'Patroni fails over after ttl if it cannot recover'
                     % (leader['name'], leader['state'], leader['host'] or leader['name']))

    replicas = [m for m in members if m is not leader]
    broken = [m for m in replicas if m['state'] not in HEALTHY_STATES]
    if broken:
        parts = ['%s (%s) is %s' % (m['name'], m['host'] or '?', m['state']) for m in broken]
        return check(False, value,
                     'replica %s, not streaming from the leader %s. Fix: start patroni on that host, or '
                     'rebuild the replica with `patronictl reinit <scope> <member>`; read its patroni log'
                     % ('; '.join(parts), leader['name']))

    lags = [m['lag'] for m in replicas if m['lag'] is not None]
    unknown = [m['name'] for m in replicas if m['lag'] is None]
    over = [m for m in replicas if m['lag'] is not None and m['lag'] > max_lag_bytes]
    if over:
        warnings.append('replica %s lag(s) over %s: a failover to it would lose those writes, and Patroni does not '
                        'promote a replica over maximum_lag_on_failover. Fix: find what holds it back (network, '
                        'disk, a long query on the replica with hot_standby_feedback) or raise max_lag_bytes'
                        % (', '.join('%s %s' % (m['name'], format_bytes(m['lag'])) for m in over),
                           format_bytes(max_lag_bytes)))
    if unknown:
        warnings.append('replica lag unknown for %s. Fix: check that the replica receives WAL (patronictl list)'
                        % ', '.join(unknown))
    behind = [m for m in replicas if m['timeline'] is not None and leader['timeline'] is not None
              and m['timeline'] < leader['timeline']]
    if behind:
        warnings.append('replica %s on an older timeline than the leader (%s): it has not followed the last '
                        'switchover yet. Fix: if it stays so, `patronictl reinit <scope> <member>`'
                        % (', '.join('%s (timeline %s)' % (m['name'], m['timeline']) for m in behind),
                           leader['timeline']))
    if not replicas:
        warnings.append('the cluster has no replica: no failover is possible. Fix: add a member')

    message = 'leader %s, %d replica(s) streaming (lag %s max), timeline %s' % (
        leader['name'], len(replicas), format_bytes(max(lags)) if lags else ('0 B' if not replicas else 'unknown'),
        leader['timeline'] if leader['timeline'] is not None else 'unknown')
    if value['sync_standby']:
        message += ', sync standby %s' % ', '.join(value['sync_standby'])
    if value.get('paused'):
        message += ', paused'
    return check(True, value, message, '; '.join(warnings) or None)


def leader_of(url, timeout=5, ca_cert=None):
    """The leader's name as the member at url sees it, or None (no answer, no leader); never raises."""
    try:
        body, error = get_cluster(url, timeout=timeout, ca_cert=ca_cert)
        if error:
            return None
        for member in parse_members(body):
            if member['role'] in LEADER_ROLES and member['state'] in HEALTHY_STATES:
                return member['name']
    except Exception:  # noqa: BLE001 - None means "no leader known"
        return None
    return None
