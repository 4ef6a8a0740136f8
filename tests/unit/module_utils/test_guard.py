"""The data-loss guard's record and decision (guard.py) without a database: one entry per database name, older
flat records read and taken over, events kept per database, and the verdicts on observations as observe() returns
them. The observations against real PostgreSQL are in tests/integration/module_utils/test_guard.py."""

import json
import time

import pytest
from ansible.module_utils.soulnear import guard

SYSTEM = '7313214194725303163'


def observed(database='soul_bot', tables=None, holding=None, required=(), system=SYSTEM, next_xid=100, empty=None):
    tables = dict(tables or {})
    holding = sorted(k for k, rows in tables.items() if rows) if holding is None else holding
    if empty is None:
        empty = not holding or bool(required) and not any(tables.get(k) for k in required)
    return dict(database=database, system_identifier=system, database_oid=1, tables=tables, holding=holding,
                bookkeeping=[], required=list(required), empty=empty, tables_total=len(tables), cap=guard.COUNT_CAP,
                timeline=1, next_xid=next_xid)


def write(path, record):
    path.write_text(json.dumps(record))


def test_entries_are_kept_per_database_name(tmp_path):
    path = tmp_path / 'data-guard.json'
    assert guard.check(str(path), observed(tables={'public.users': 3}), by='t')['status'] == 'recorded'
    # Another database on the same host: a first record of its own, whatever the first one holds.
    other = guard.check(str(path), observed('soul_bot_v2'), by='t')
    assert other['ok'] and other['status'] == 'recorded' and other['record']['database'] == 'soul_bot_v2'
    refused = guard.check(str(path), observed(tables={'public.users': 0}), by='t')
    assert refused['problem'] == 'empty'
    record = json.loads(path.read_text())
    assert sorted(record['databases']) == ['soul_bot', 'soul_bot_v2']
    assert record['databases']['soul_bot']['flag']['problem'] == 'empty'
    assert record['databases']['soul_bot_v2']['flag'] is None
    assert guard.check(str(path), observed('soul_bot_v2'), by='t')['ok'], 'the flag belongs to soul_bot only'
    both = guard.status(str(path))
    assert both['databases'] == ['soul_bot', 'soul_bot_v2'] and both['flag']['problem'] == 'empty'
    assert 'database soul_bot_v2: cluster' in both['message'] and both['message'].startswith('FLAG RAISED')
    assert guard.status(str(path), 'soul_bot_v2')['message'].startswith('database soul_bot_v2: cluster')
    assert guard.entry(str(path), 'nope') is None
    cleared = guard.accept(str(path), observed(tables={'public.users': 0}), by='operator')
    assert cleared['previous_flag']['problem'] == 'empty' and cleared['record']['flag'] is None
    assert [e['database'] for e in guard.entry(str(path), 'soul_bot')['events']] == ['soul_bot'] * 3


def test_an_older_flat_record_is_the_entry_of_its_database_and_is_rewritten(tmp_path):
    path = tmp_path / 'data-guard.json'
    old = dict(database='soul_bot', system_identifier=SYSTEM, database_oid=1, had_data=True,
               tables={'aiogram_states': 12, 'schema_migrations': 3}, recorded_at=time.time() - 60,
               recorded_by='monitor', progress=[[time.time() - 60, SYSTEM, 1, 90]], flag=None,
               events=[dict(at=1.0, by='ansible', what='first record')])
    write(path, old)
    found = guard.entry(str(path), 'soul_bot')
    assert found['had_data'] and found['progress'] == old['progress'] and found['events'][0]['database'] == 'soul_bot'
    assert guard.entry(str(path), 'soul_bot_v2') is None, 'the old record names its database'
    assert guard.load(str(path))['databases']['soul_bot']['tables'] == old['tables']
    # A database that lost its rows against the old record: refused, naming the old record's tables.
    refused = guard.check(str(path), observed(tables={'public.aiogram_states': 0, 'public.schema_migrations': 3},
                                              holding=[]), by='t')
    assert refused['problem'] == 'empty'
    assert 'the 1 table(s) that held rows' in refused['msg'] and 'aiogram_states 0 rows, 12 rows before' in \
        refused['msg'], refused['msg']
    record = json.loads(path.read_text())
    assert set(record) == {'databases', 'events'} and record['databases']['soul_bot']['flag']['problem'] == 'empty'
    assert record['databases']['soul_bot']['progress'] == old['progress']


def test_an_older_record_without_a_name_is_taken_over_by_the_database_that_asks(tmp_path):
    path = tmp_path / 'data-guard.json'
    write(path, dict(system_identifier='1', had_data=True, tables={}, flag=dict(
        raised_at=time.time(), by='deploy', reason='test flag', problem='empty')))
    assert guard.entry(str(path), 'anything')['flag']['reason'] == 'test flag'
    done = guard.accept(str(path), observed(tables={'public.users': 1}), by='pg_restore')
    assert done['previous_flag']['reason'] == 'test flag'
    record = json.loads(path.read_text())
    assert list(record['databases']) == ['soul_bot'] and record['events'][-1]['database'] == 'soul_bot'
    assert guard.entry(str(path), 'anything') is None


def test_a_damaged_record_is_an_error(tmp_path):
    path = tmp_path / 'data-guard.json'
    for text, match in (('{oops', 'cannot be read'), ('[1]', 'not a JSON object'),
                        ('{"databases": 3}', 'no valid "databases"')):
        path.write_text(text)
        with pytest.raises(guard.GuardError, match=match):
            guard.entry(str(path), 'soul_bot')


def test_events_are_kept_per_database(tmp_path):
    path = tmp_path / 'data-guard.json'
    runs = max(guard.EVENTS_KEPT, guard.PROGRESS_KEPT) + 5
    for i in range(runs):
        guard.accept(str(path), observed(tables={'public.users': 1}, next_xid=100 + i), by='t', reason='a%d' % i)
    guard.accept(str(path), observed('other'), by='t', reason='other')
    events = json.loads(path.read_text())['events']
    assert len(events) == guard.EVENTS_KEPT + 1 and events[-1]['database'] == 'other'
    assert events[0]['what'] == 'a%d' % (runs - guard.EVENTS_KEPT)
    progress = guard.entry(str(path), 'soul_bot')['progress']
    assert len(progress) == guard.PROGRESS_KEPT and progress[-1][3] == 100 + runs - 1
    assert len(guard.entry(str(path), 'other')['progress']) == 1, 'samples are kept per database'


def test_the_verdicts():
    held = dict(had_data=True, system_identifier=SYSTEM, held=['public.a', 'public.b'],
                tables={'public.a': 5, 'public.b': 7, 'public.c': 0}, recorded_at=time.time())
    assert guard.evaluate(None, observed(tables={}))['ok'], 'nothing recorded: nothing to lose'
    assert guard.evaluate(dict(held, had_data=False), observed(tables={}))['ok'], 'never held data'
    # One table dropped on purpose, the other holds rows.
    assert guard.evaluate(held, observed(tables={'public.b': 7, 'public.c': 0}))['ok']
    # The rows moved to another table (a migration renamed it): not data loss.
    assert guard.evaluate(held, observed(tables={'public.renamed': 12}))['ok']
    lost = guard.evaluate(held, observed(tables={'public.a': 0, 'public.c': 0}))
    assert lost['problem'] == 'empty'
    assert 'the 2 table(s) that held rows' in lost['reason'] and 'public.a 0 rows, 5 rows before' in lost['reason']
    assert 'public.b missing, 7 rows before' in lost['reason']
    other = guard.evaluate(held, observed(tables={'public.a': 5}, system='42'))
    assert other['problem'] == 'identity' and 'system identifier %s, now 42' % SYSTEM in other['reason']
    allowed = guard.evaluate(held, observed(tables={}), allow_empty=True)
    assert allowed['ok'] and allowed['allowed'] and allowed['problem'] == 'empty'
    assert not guard.evaluate(held, observed(tables={'public.a': 5}, system='42'), allow_empty=True)['ok']
    # Required tables, all empty while another table holds rows: empty too.
    required = guard.evaluate(held, observed(tables={'public.a': 5, 'public.orders': 0}, required=['public.orders']))
    assert required['problem'] == 'empty' and 'every required table is missing or without rows (public.orders ' \
        '0 rows)' in required['reason']


def test_a_refusal_names_a_few_tables_and_how_many_more():
    held = ['public.t%02d' % i for i in range(12)]
    found = dict(had_data=True, system_identifier=SYSTEM, held=held, tables=dict((k, 3) for k in held))
    verdict = guard.evaluate(found, observed(tables=dict((k, 0) for k in held)))
    assert 'the 12 table(s) that held rows' in verdict['reason']
    assert 'public.t04 0 rows, 3 rows before and 7 more)' in verdict['reason'] and 'public.t05' not in \
        verdict['reason']
    assert guard.describe_counts({'a': 1, 'b': None, 'c': guard.COUNT_CAP}) == \
        '3 table(s), 2 with rows: c 10000+ rows, a 1 row, b missing'
