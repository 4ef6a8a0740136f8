# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bot's lease in PostgreSQL: which bot host may run the bot (issue 25). A Telegram bot polling getUpdates may
run once per token; the one thing every bot host shares is the database, so the lease lives there.

One row per lease in the table soulnear_leader_lease (in the bot's database, next to the migrations' table; the
data-loss guard counts it as bookkeeping, not data):

    name         the lease (the deployment's name)
    holder       the bot host that may run the bot, NULL when nobody holds it (released, never taken)
    generation   grows by one at every take, renewal and release: every write is a compare-and-set on it
    acquired_at, renewed_at, expires_at   the database's clock (now()): for people and reports only
    ttl_seconds  the holder's lease time
    released_by, released_at, offered_to  a release, and the host it is offered to ('*': any host but the releaser)
    handover_to, handover_by, handover_at a failover asked of the holder ('*': any other host)

What decides who may run the bot is never a clock reading compared across machines: the holder renews with a
compare-and-set on (holder, generation) and measures the age of its last successful renewal on its own monotonic
(boot-time) clock; a standby takes a lease only after it has watched the same (holder, generation) for the lease
time on its own monotonic clock (leader.py). The database's timestamps only describe the lease to people.

Every function takes an open psycopg2 connection in autocommit mode and runs one statement: a write either
happened completely (and RETURNING says so) or not at all.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from .pg import psycopg2

TABLE = 'soulnear_leader_lease'
NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}$')
ANY = '*'

_DDL = ('CREATE TABLE IF NOT EXISTS %s (\n'
        '    name text PRIMARY KEY,\n'
        '    holder text,\n'
        '    generation bigint NOT NULL DEFAULT 0,\n'
        '    acquired_at timestamptz,\n'
        '    renewed_at timestamptz,\n'
        '    expires_at timestamptz,\n'
        '    ttl_seconds double precision,\n'
        '    released_by text,\n'
        '    released_at timestamptz,\n'
        '    offered_to text,\n'
        '    handover_to text,\n'
        '    handover_by text,\n'
        '    handover_at timestamptz\n'
        ')' % TABLE)

_FIELDS = ('holder', 'generation', 'acquired_at', 'renewed_at', 'expires_at', 'ttl_seconds', 'released_by',
           'released_at', 'offered_to', 'handover_to', 'handover_by', 'handover_at')
_AGES = ('now', 'renewed_age', 'expires_in', 'released_age', 'held_for', 'handover_age')


class LeaseError(Exception):
    """The lease table cannot be read or written; the message names the cause and the fix."""


def valid_name(name):
    return bool(NAME.match(str(name or '')))


def ensure(conn, name):
    """The table and the lease's row (nobody holding it). Two hosts creating the table at once: one wins, the other
    finds it."""
    with conn.cursor() as cur:
        try:
            cur.execute(_DDL)
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateTable):
            pass  # created by another host in the same moment
        except psycopg2.errors.InsufficientPrivilege as exc:
            raise LeaseError('the app role may not create the lease table %s in the bot\'s database (%s). Fix: the '
                             'app role must own its database (the postgres role sets it up so), or create the table '
                             'as the owner: %s' % (TABLE, str(exc).strip(), ' '.join(_DDL.split()))) from None
        cur.execute('INSERT INTO %s (name) VALUES (%%s) ON CONFLICT (name) DO NOTHING' % TABLE, (name,))


def read(conn, name):
    """The lease as a dict (the columns, and the database's view of time: now, renewed_age, expires_in,
    released_age, held_for, handover_age in seconds); None when the table or the row does not exist yet."""
    sql = ('SELECT %s, now(), extract(epoch FROM now() - renewed_at), extract(epoch FROM expires_at - now()), '
           'extract(epoch FROM now() - released_at), extract(epoch FROM now() - acquired_at), '
           'extract(epoch FROM now() - handover_at) FROM %s WHERE name = %%s' % (', '.join(_FIELDS), TABLE))
    with conn.cursor() as cur:
        try:
            cur.execute(sql, (name,))
        except psycopg2.errors.UndefinedTable:
            return None
        row = cur.fetchone()
    if row is None:
        return None
    lease = dict(zip(_FIELDS + _AGES, row))
    for key in _AGES[1:]:
        if lease[key] is not None:
            lease[key] = round(float(lease[key]), 3)
    lease['name'] = name
    return lease


def take(conn, name, me, generation, ttl):
    """Take the lease when it is still at generation (what the caller watched); the new generation, or None when
    someone else wrote it in between."""
    with conn.cursor() as cur:
        cur.execute('UPDATE %s SET holder = %%s, generation = generation + 1, acquired_at = now(), renewed_at = now(), '
                    "expires_at = now() + make_interval(secs => %%s), ttl_seconds = %%s, offered_to = NULL, "
                    'handover_to = NULL, handover_by = NULL, handover_at = NULL '
                    'WHERE name = %%s AND generation = %%s RETURNING generation' % TABLE,
                    (me, float(ttl), float(ttl), name, int(generation)))
        row = cur.fetchone()
    return row[0] if row else None


def renew(conn, name, me, generation, ttl):
    """Renew a lease this host holds at generation: (new generation, handover_to, handover_by), or None when it is
    not this host's at that generation any more (taken, released, or rolled back by a database failover)."""
    with conn.cursor() as cur:
        cur.execute('UPDATE %s SET generation = generation + 1, renewed_at = now(), '
                    'expires_at = now() + make_interval(secs => %%s), ttl_seconds = %%s '
                    'WHERE name = %%s AND holder = %%s AND generation = %%s '
                    'RETURNING generation, handover_to, handover_by' % TABLE,
                    (float(ttl), float(ttl), name, me, int(generation)))
        row = cur.fetchone()
    return tuple(row) if row else None


def release(conn, name, me, generation, offer=None):
    """Give the lease up (this host's bot has stopped): nobody holds it; offer: the host it is meant for ('*' any
    host but this one). True when released, False when it was not this host's at that generation."""
    with conn.cursor() as cur:
        cur.execute('UPDATE %s SET holder = NULL, generation = generation + 1, released_by = %%s, '
                    'released_at = now(), expires_at = now(), offered_to = %%s, handover_to = NULL, '
                    'handover_by = NULL, handover_at = NULL '
                    'WHERE name = %%s AND holder = %%s AND generation = %%s RETURNING generation' % TABLE,
                    (me, offer, name, me, int(generation)))
        return cur.fetchone() is not None


def ask_handover(conn, name, to, by):
    """Ask the holder to hand the bot over (make failover): to a host, or '*' for any other. The holder stops its bot,
    then releases the lease offered to it. Does not change the generation (the holder's renewals go on). Returns the
    lease after the request, or None when nobody holds it."""
    with conn.cursor() as cur:
        cur.execute('UPDATE %s SET handover_to = %%s, handover_by = %%s, handover_at = now() '
                    'WHERE name = %%s AND holder IS NOT NULL RETURNING holder' % TABLE, (to or ANY, by, name))
        row = cur.fetchone()
    return read(conn, name) if row else None


def describe(lease, me=None):
    """One line for people: who holds the lease and how fresh it is, by the database's clock."""
    if lease is None:
        return 'no lease yet (no leader has started against this database)'

    def who(host):
        return '%s (this host)' % host if me and host == me else host
    if lease['holder']:
        text = 'active on %s: renewed %.1f s ago, expires in %.1f s by the database\'s clock, generation %d' % (
            who(lease['holder']), lease['renewed_age'] or 0.0, lease['expires_in'] or 0.0, lease['generation'])
        if lease['handover_to']:
            text += '; a failover to %s was asked %.0f s ago' % (
                'any other host' if lease['handover_to'] == ANY else who(lease['handover_to']),
                lease['handover_age'] or 0.0)
        return text
    if lease['released_by']:
        offered = lease['offered_to']
        return 'held by nobody: released by %s %.1f s ago%s' % (
            who(lease['released_by']), lease['released_age'] or 0.0,
            '' if not offered else ' for %s' % ('any other host' if offered == ANY else who(offered)))
    return 'held by nobody yet'


def jsonable(lease):
    """The lease with its timestamps as ISO text (for JSON output and state files)."""
    if lease is None:
        return None
    return dict((k, v.isoformat() if hasattr(v, 'isoformat') else v) for k, v in lease.items())
