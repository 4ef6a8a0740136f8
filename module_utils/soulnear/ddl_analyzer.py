# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules of pg_migrate's lint of locking DDL (ddl_lint.py), applied to statements in run order: which
statement each rule catches and what it locks, and what earlier statements of the run did (tables created,
renamed or dropped, columns added, constraints added and validated, functions and domains created).

They read SQL text only (ddl_tokens.py); what only the database knows comes from a Facts object (ddl_facts.py).
No Ansible imports: the host commands import this file too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from .ddl_facts import _SYNTAX_CALLS, Facts
from .ddl_tokens import (_BUILTIN_TYPES, _SERIAL, _ends_not_valid, _Reader, _split_top, _text, _top_words, display,
                         parse_type, tokens, type_change_rewrites)
from .sql import first_word_upper


# -- what earlier statements of the run did ---------------------------------------------------------------------
class RunState:
    """What the statements linted so far did, by bare (unqualified) name: a table created earlier in the run is
    new, a renamed one is the old table under its new name."""

    def __init__(self):
        self.created = {}        # table -> file that created it
        self.maybe_created = {}  # CREATE TABLE IF NOT EXISTS: new only when the database does not have it
        self.dropped = set()
        self.renamed = {}        # new name -> old parts
        self.indexes = {}        # index -> table parts (created in this run)
        self.columns = {}        # (table, column) -> type tokens (added in this run)
        self.not_null = set()    # (table, column) with a validated CHECK (col IS NOT NULL) from this run
        self.constraints = {}    # constraint -> (table, rule, column or None, validated)
        self.functions = {}      # function -> 'v' | 's'
        self.domains = {}        # domain -> has constraints


class FileState:
    def __init__(self, label, transactional):
        self.label = label
        self.transactional = transactional
        self.search_path = None
        self.not_valid = set()   # constraints added NOT VALID by this file
        self.locked = {}         # table -> line of the ALTER TABLE that locked it (in this transaction)


class Hit:
    """A statement a rule catches, before sizes: the target it locks and what about it."""

    def __init__(self, rule, target, detail='', only_parent=False, index=None, lock=None):
        self.rule = rule
        self.lock = lock          # when the statement takes another lock than the rule's usual one
        self.target = target      # ('table', parts) | ('index', parts) | ('scope', kind, name)
        self.detail = detail
        self.only_parent = only_parent
        self.index = index


# -- the rules ----------------------------------------------------------------------------------------------------
LINT_WORDS = frozenset(('ALTER', 'CREATE', 'DROP', 'VACUUM', 'CLUSTER', 'REINDEX', 'LOCK', 'REFRESH', 'SET',
                        'UPDATE', 'DELETE'))
_INITIALS = frozenset(w[0] for w in LINT_WORDS) | frozenset(w[0].lower() for w in LINT_WORDS)  # INSERT: no
_COLUMN_STOP = frozenset(('constraint', 'not', 'null', 'check', 'default', 'generated', 'unique', 'primary',
                          'references', 'collate', 'compression', 'storage', 'deferrable', 'initially'))
_WRITE_BLOCKING = ('share', 'share row exclusive', 'exclusive', 'access exclusive')


def _blocks_writes(action):
    """True when an ALTER TABLE action takes SHARE ROW EXCLUSIVE or stronger, held until the transaction ends (so a
    later UPDATE of the table runs while the bot's writes wait). VALIDATE, SET STATISTICS, SET/RESET (storage
    parameters), CLUSTER ON, SET WITHOUT CLUSTER and ATTACH PARTITION (on the parent) take less."""
    words = [t.value for t in action[:6] if t.kind == 'w']
    first = words[0] if words else ''
    if first in ('validate', 'cluster', 'attach'):
        return False
    if first in ('set', 'reset') and ((len(action) > 1 and action[1].kind == 'o' and action[1].value == '(')
                                      or words[1:3] == ['without', 'cluster']):
        return False
    return not (first == 'alter' and 'statistics' in words)


def _option_on(reader, name):
    """Read the parenthesised options starting here (VACUUM (FULL, ANALYZE), REINDEX (CONCURRENTLY true)): True
    when they turn the option on (the last mention counts)."""
    on = False
    start = reader.i
    reader.skip_group()
    for option in _split_top(reader.toks[start + 1:reader.i - 1]):
        words = [t.value for t in option if t.kind in ('w', 'n')]
        if words and words[0] == name:
            on = len(words) == 1 or words[1] in ('true', 'on', '1')
    return on


class Analyzer:
    """Applies the rules to statements in run order, keeping the RunState."""

    def __init__(self, facts=None, state=None):
        self.facts = facts or Facts()
        self.state = state or RunState()

    # -- entry ------------------------------------------------------------------------
    def statement(self, statement, fstate, word=None):
        word = word or first_word_upper(statement)
        if word not in LINT_WORDS:
            return []
        if word in ('UPDATE', 'DELETE') and not fstate.locked:
            return []
        toks = tokens(statement)
        self.source = statement
        reader = _Reader(toks)
        reader.i = 1
        handler = getattr(self, '_' + word.lower())
        return handler(reader, fstate) or []

    # -- helpers ------------------------------------------------------------------------
    def _forget(self, bare):
        self.state.created.pop(bare, None)
        self.state.maybe_created.pop(bare, None)
        self.state.renamed.pop(bare, None)

    def _volatile_calls(self, toks):
        """(volatile names, unknown names) of the functions an expression calls."""
        calls = []
        for k, tok in enumerate(toks[:-1]):
            nxt = toks[k + 1]
            if tok.kind in ('w', 'i') and nxt.kind == 'o' and nxt.value == '(':
                before = toks[k - 1] if k else None
                if before is not None and before.value in ('::', 'as') and before.kind in ('o', 'w'):
                    continue  # a type: x::numeric(10,2), CAST(x AS varchar(5))
                if tok.kind == 'w' and tok.value in _SYNTAX_CALLS:
                    continue
                calls.append(tok.value)
        if not calls:
            return [], []
        known = dict((n, self.state.functions[n]) for n in calls if n in self.state.functions)
        asked = self.facts.volatility(sorted(set(calls) - set(known)))
        asked.update(known)
        volatile = sorted(set(n for n in calls if asked.get(n) == 'v'))
        unknown = sorted(set(n for n in calls if asked.get(n) is None))
        return volatile, unknown

    # -- SET search_path ------------------------------------------------------------------
    def _set(self, reader, fstate):
        reader.accept('session') or reader.accept('local')
        if not reader.accept('search_path'):
            return []
        reader.accept('to') or reader.op('=')
        values = []
        for part in _split_top(reader.rest()):
            if len(part) == 1 and part[0].kind == 'w' and part[0].value == 'default':
                fstate.search_path = None
                return []
            if len(part) == 1:
                tok = part[0]
                value = tok.value[1:-1].replace("''", "'") if tok.kind == 's' else tok.value
                values.extend(v.strip().strip('"') for v in value.split(',') if v.strip())
        fstate.search_path = values or None
        return []

    # -- CREATE ---------------------------------------------------------------------------
    def _create(self, reader, fstate):
        reader.accept('or', 'replace')
        unique = reader.accept('unique')
        if reader.accept('index'):
            return self._create_index(reader, fstate, unique)
        for word in ('global', 'local', 'temp', 'temporary', 'unlogged'):
            reader.accept(word)
        if reader.accept('table') or reader.accept('materialized', 'view'):
            maybe = reader.accept('if', 'not', 'exists')
            parts = reader.name()
            if parts:
                bare = parts[-1]
                self.state.dropped.discard(bare)
                self.state.renamed.pop(bare, None)
                if maybe:
                    self.state.maybe_created[bare] = fstate.label
                else:
                    self.state.created[bare] = fstate.label
        elif reader.accept('function') or reader.accept('procedure'):
            parts = reader.name()
            if parts:
                reader.skip_group()
                words = _top_words(reader.rest())
                volatility = 'v'
                for word in words:
                    if word in ('immutable', 'stable'):
                        volatility = 's'
                    elif word == 'volatile':
                        volatility = 'v'
                self.state.functions[parts[-1]] = volatility
        elif reader.accept('domain'):
            parts = reader.name()
            if parts:
                words = _top_words(reader.rest())
                self.state.domains[parts[-1]] = 'check' in words or ('not' in words and 'null' in words)
        return []

    def _create_index(self, reader, fstate, unique):
        concurrently = reader.accept('concurrently')
        maybe = reader.accept('if', 'not', 'exists')
        name = None
        if reader.word() != 'on':
            name = reader.name()
        if not reader.accept('on'):
            return []
        only = reader.accept('only')
        table = reader.name()
        if not table:
            return []
        if name:
            if maybe and name[-1] not in self.state.indexes and self.facts.live \
                    and self.facts.relation(name, fstate.search_path) is not None:
                return []  # IF NOT EXISTS of an index that exists: nothing is built
            self.state.indexes[name[-1]] = table
        if concurrently:
            return []
        return [Hit('create-index', ('table', table), '%sindex%s' % ('unique ' if unique else '',
                                                                     ' ' + display(name) if name else ''),
                    only_parent=only)]

    # -- DROP -----------------------------------------------------------------------------
    def _drop(self, reader, fstate):
        if reader.accept('index'):
            concurrently = reader.accept('concurrently')
            reader.accept('if', 'exists')
            hits = []
            for part in _split_top(reader.rest()):
                sub = _Reader(part)
                parts = sub.name()
                if not parts:
                    continue
                table = self.state.indexes.pop(parts[-1], None)
                if not concurrently:
                    target = ('table', table) if table else ('index', parts)
                    hits.append(Hit('drop-index', target, 'index %s' % display(parts), index=parts))
            return hits
        if reader.accept('table') or reader.accept('materialized', 'view') or reader.accept('view'):
            reader.accept('if', 'exists')
            for part in _split_top(reader.rest()):
                parts = _Reader(part).name()
                if parts:
                    self._forget(parts[-1])
                    self.state.dropped.add(parts[-1])
        return []

    # -- VACUUM, CLUSTER, REINDEX, LOCK, REFRESH ------------------------------------------------
    def _vacuum(self, reader, fstate):
        full = False
        if reader.peek() is not None and reader.peek().kind == 'o' and reader.peek().value == '(':
            full = _option_on(reader, 'full')
        else:
            while reader.word() in ('full', 'freeze', 'verbose', 'analyze', 'analyse'):
                full = full or reader.word() == 'full'
                reader.i += 1
        if not full:
            return []
        tables = [_Reader(p).name() for p in _split_top(reader.rest())]
        tables = [t for t in tables if t]
        if not tables:
            return [Hit('vacuum-full', ('scope', 'database', None), 'every table of the database')]
        return [Hit('vacuum-full', ('table', t)) for t in tables]

    def _cluster(self, reader, fstate):
        if reader.peek() is not None and reader.peek().kind == 'o' and reader.peek().value == '(':
            reader.skip_group()
        reader.accept('verbose')
        first = reader.name()
        if not first:
            return [Hit('cluster', ('scope', 'clustered', None), 'every table clustered before')]
        if reader.accept('on'):  # CLUSTER index ON table (the old syntax)
            table = reader.name()
            return [Hit('cluster', ('table', table))] if table else []
        return [Hit('cluster', ('table', first))]

    def _reindex(self, reader, fstate):
        concurrently = False
        if reader.peek() is not None and reader.peek().kind == 'o' and reader.peek().value == '(':
            concurrently = _option_on(reader, 'concurrently')
        kind = reader.word()
        if kind not in ('index', 'table', 'schema', 'database', 'system'):
            return []
        reader.i += 1
        concurrently = reader.accept('concurrently') or concurrently
        if concurrently:
            return []
        name = reader.name()
        if kind == 'index' and name:
            table = self.state.indexes.get(name[-1])
            target = ('table', table) if table else ('index', name)
            return [Hit('reindex', target, 'index %s' % display(name), index=name)]
        if kind == 'table' and name:
            return [Hit('reindex', ('table', name), 'every index of the table')]
        if kind == 'schema' and name:
            return [Hit('reindex', ('scope', 'schema', name[-1]), 'every index of schema %s' % display(name))]
        return [Hit('reindex', ('scope', 'system' if kind == 'system' else 'database', None),
                    'every index of the %s' % ('system catalogs' if kind == 'system' else 'database'))]

    def _lock(self, reader, fstate):
        reader.accept('table')
        reader.accept('only')
        rest = reader.rest()
        words = _top_words(rest)
        mode = 'access exclusive'
        if 'in' in words and 'mode' in words:
            mode = ' '.join(words[words.index('in') + 1:words.index('mode')])
        if mode not in _WRITE_BLOCKING:
            return []
        cut = next((k for k, t in enumerate(rest) if t.kind == 'w' and t.value in ('in', 'nowait')), len(rest))
        hits = []
        for part in _split_top(rest[:cut]):
            parts = _Reader(part).name()
            if parts:
                hits.append(Hit('lock-table', ('table', parts), 'in %s mode' % mode.upper()))
                fstate.locked.setdefault(parts[-1], 'LOCK TABLE')
        return hits

    def _refresh(self, reader, fstate):
        if not reader.accept('materialized', 'view') or reader.accept('concurrently'):
            return []
        name = reader.name()
        if not name or 'no' in _top_words(reader.rest()):  # WITH NO DATA empties it: no query runs
            return []
        return [Hit('refresh-materialized-view', ('table', name))]

    def _update(self, reader, fstate):
        reader.accept('only')
        name = reader.name()
        return self._backfill(name, fstate, 'UPDATE')

    def _delete(self, reader, fstate):
        if not reader.accept('from'):
            return []
        reader.accept('only')
        return self._backfill(reader.name(), fstate, 'DELETE')

    def _backfill(self, name, fstate, what):
        if not name or name[-1] not in fstate.locked or not fstate.transactional:
            return []
        return [Hit('backfill-under-lock', ('table', name), '%s after %s of the same table in this transaction'
                    % (what, fstate.locked[name[-1]]))]

    # -- ALTER ----------------------------------------------------------------------------
    def _alter(self, reader, fstate):
        if reader.accept('table'):
            if reader.accept('all', 'in', 'tablespace'):
                return [Hit('set-tablespace', ('scope', 'database', None), 'every table of a tablespace')] \
                    if 'set' in _top_words(reader.rest()) else []
            reader.accept('if', 'exists')
            reader.accept('only')
            table = reader.name()
            if not table:
                return []
            reader.op('*')
            return self._alter_table(table, reader.rest(), fstate)
        if reader.accept('index'):
            if reader.accept('all', 'in', 'tablespace'):
                return [Hit('set-tablespace', ('scope', 'database', None), 'every index of a tablespace')]
            reader.accept('if', 'exists')
            name = reader.name()
            if name and reader.accept('set', 'tablespace'):
                table = self.state.indexes.get(name[-1])
                return [Hit('set-tablespace', ('table', table) if table else ('index', name),
                            'index %s' % display(name), index=name)]
            if name and reader.accept('rename', 'to'):
                new = reader.name()
                if new and name[-1] in self.state.indexes:
                    self.state.indexes[new[-1]] = self.state.indexes.pop(name[-1])
            return []
        if reader.accept('materialized', 'view') or reader.accept('view'):
            reader.accept('if', 'exists')
            name = reader.name()
            if not name:
                return []
            if reader.accept('set', 'tablespace'):
                return [Hit('set-tablespace', ('table', name))]
            return self._rename(name, reader, fstate)
        return []

    def _rename(self, table, reader, fstate):
        if not reader.accept('rename'):
            return []
        bare = table[-1]
        if reader.accept('constraint'):
            return []
        if reader.accept('to'):
            new = reader.name()
            if not new:
                return []
            hits = [Hit('rename', ('table', new), 'renamed to %s' % display(new))]
            if bare in self.state.created:
                self.state.created[new[-1]] = self.state.created.pop(bare)
            else:
                self.state.renamed[new[-1]] = self.state.renamed.pop(bare, table)
                self.state.dropped.add(bare)
            self.state.dropped.discard(new[-1])
            if bare in fstate.locked:
                fstate.locked[new[-1]] = fstate.locked.pop(bare)
            for key in [k for k in self.state.columns if k[0] == bare]:
                self.state.columns[(new[-1], key[1])] = self.state.columns.pop(key)
            return hits
        reader.accept('column')
        old = reader.name()
        if not old or not reader.accept('to'):
            return []
        new = reader.name()
        if (bare, old[-1]) in self.state.columns:  # added by this run: the running bot does not use it
            self.state.columns[(bare, new[-1] if new else old[-1])] = self.state.columns.pop((bare, old[-1]))
            return [Hit('rename', ('new-column', table), 'column %s (added by this run) renamed' % display(old))]
        return [Hit('rename', ('table', table), 'column %s renamed to %s' % (display(old),
                                                                             display(new) if new else '?'))]

    def _alter_table(self, table, toks, fstate):
        reader = _Reader(toks)
        if reader.word() == 'rename':
            return self._rename(table, reader, fstate)
        hits = []
        bare = table[-1]
        for action in _split_top(toks):
            if fstate.transactional and _blocks_writes(action):
                fstate.locked.setdefault(bare, 'ALTER TABLE')
            hits.extend(self._action(table, action, fstate))
        return hits

    def _action(self, table, action, fstate):
        reader = _Reader(action)
        bare = table[-1]
        if reader.accept('add'):
            if reader.word() in ('constraint', 'check', 'unique', 'primary', 'foreign', 'exclude'):
                return self._add_constraint(table, reader, fstate)
            reader.accept('column')
            maybe = reader.accept('if', 'not', 'exists')
            return self._add_column(table, reader, fstate, maybe)
        if reader.accept('alter'):
            reader.accept('column')
            column = reader.name()
            if not column:
                return []
            column = column[-1]
            if reader.accept('type') or reader.accept('set', 'data', 'type'):
                return self._alter_type(table, column, reader.rest(), fstate)
            if reader.accept('set', 'not', 'null'):
                return self._set_not_null(table, column, fstate)
            if reader.accept('set', 'expression'):
                return [Hit('add-column-rewrite', ('table', table), 'SET EXPRESSION of the generated column %s '
                            'recomputes every row' % display((column,)))]
            return []
        if reader.accept('validate', 'constraint'):
            name = reader.name()
            if not name:
                return []
            known = self.state.constraints.get(name[-1])
            if known is not None:
                self.state.constraints[name[-1]] = known[:3] + (True,)
                if known[2] is not None and known[1] == 'add-check':
                    self.state.not_null.add((bare, known[2]))
                if name[-1] in fstate.not_valid and fstate.transactional:
                    return [Hit(known[1], ('table', table), 'VALIDATE CONSTRAINT %s in the transaction that added it '
                                'NOT VALID: the scan runs under the ADD\'s lock' % display(name))]
            return []
        if reader.accept('set'):
            if reader.accept('tablespace'):
                return [Hit('set-tablespace', ('table', table))]
            if reader.word() in ('logged', 'unlogged'):
                return [Hit('set-logged', ('table', table), 'SET %s' % reader.word().upper())]
            if reader.accept('access', 'method'):
                return [Hit('set-access-method', ('table', table))]
            if reader.accept('schema'):
                schema = reader.name()
                return [Hit('rename', ('table', table), 'moved to schema %s' % (display(schema) if schema else '?'))]
            return []
        if reader.accept('attach', 'partition'):
            partition = reader.name()
            return [Hit('attach-partition', ('table', partition), 'attached to %s' % display(table))] \
                if partition else []
        if reader.accept('drop'):
            reader.accept('column')
            reader.accept('if', 'exists')
            column = reader.name()
            if column:
                self.state.columns.pop((bare, column[-1]), None)
                self.state.not_null.discard((bare, column[-1]))
        return []

    def _add_column(self, table, reader, fstate, maybe):
        bare = table[-1]
        column = reader.name()
        if not column:
            return []
        column = column[-1]
        rest = reader.rest()
        cut = len(rest)
        depth = 0
        for k, tok in enumerate(rest):
            if tok.kind == 'o' and tok.value in '([':
                depth += 1
            elif tok.kind == 'o' and tok.value in ')]':
                depth -= 1
            elif depth == 0 and tok.kind == 'w' and tok.value in _COLUMN_STOP:
                cut = k
                break
        type_toks, constraints = rest[:cut], rest[cut:]
        if maybe and bare not in self.state.created and self.facts.live:
            rel = self._rel(table, fstate)[0]
            if rel is not None and rel.oid is not None and self.facts.column(rel, column) is not None:
                return []  # ADD COLUMN IF NOT EXISTS of a column that exists: nothing happens
        self.state.columns[(bare, column)] = type_toks
        ctype = parse_type(type_toks)
        name = display((column,))
        hits = []
        if ctype.base in _SERIAL:
            hits.append(Hit('add-column-volatile-default', ('table', table), 'column %s %s: every row gets nextval() '
                            'of its sequence' % (name, ctype.base)))
        words = _top_words(constraints)
        default = self._default_expr(constraints)
        if 'generated' in words:
            at = words.index('generated')
            if 'identity' in words[at:]:
                hits.append(Hit('add-column-volatile-default', ('table', table), 'identity column %s: every row gets '
                                'a value of its sequence' % name))
            elif 'stored' in words[at:]:
                hits.append(Hit('add-column-rewrite', ('table', table), 'stored generated column %s is computed '
                                'for every row' % name))
        if default:
            volatile, unknown = self._volatile_calls(default)
            if volatile or unknown:
                why = 'volatile: %s()' % '(), '.join(volatile) if volatile else \
                    'calls %s(), whose volatility is not known: assumed volatile' % '(), '.join(unknown)
                hits.append(Hit('add-column-volatile-default', ('table', table), 'column %s DEFAULT %s is %s'
                                % (name, _text(default, self.source), why)))
        if ctype.base not in _BUILTIN_TYPES and type_toks and not ctype.array:
            parts = tuple(t.value for t in type_toks if t.kind in ('w', 'i'))
            constrained = self.state.domains.get(parts[-1]) if parts and parts[-1] in self.state.domains \
                else self.facts.domain_constraints(parts) if parts else None
            if constrained:
                hits.append(Hit('add-column-rewrite', ('table', table), 'column %s of domain %s, which has '
                                'constraints: every row is checked and rewritten' % (name, display(parts))))
        if 'primary' in words or 'unique' in words:
            hits.append(Hit('add-unique', ('table', table), 'column %s %s builds an index' % (
                name, 'PRIMARY KEY' if 'primary' in words else 'UNIQUE')))
        if 'check' in words:
            hits.append(Hit('add-check', ('table', table), 'column %s CHECK is verified on every row' % name))
        if 'references' in words and default and not (len(default) == 1 and default[0].value == 'null'):
            hits.append(Hit('add-foreign-key', ('table', table), 'column %s REFERENCES with a DEFAULT: every row '
                            'is validated' % name, lock='ACCESS EXCLUSIVE (ADD COLUMN)'))
        return hits

    def _default_expr(self, constraints):
        depth, start = 0, None
        for k, tok in enumerate(constraints):
            if tok.kind == 'o' and tok.value in '([':
                depth += 1
            elif tok.kind == 'o' and tok.value in ')]':
                depth -= 1
            elif depth == 0 and tok.kind == 'w':
                if start is None and tok.value == 'default':
                    start = k + 1
                elif start is not None and k > start and tok.value in _COLUMN_STOP:
                    return constraints[start:k]
        return constraints[start:] if start is not None else []

    def _add_constraint(self, table, reader, fstate):
        bare = table[-1]
        name = None
        if reader.accept('constraint'):
            name = reader.name()
        kind = reader.word()
        rest = reader.rest()
        not_valid = _ends_not_valid(rest)
        label = 'constraint %s' % display(name) if name else ''
        if kind == 'check':
            column = None
            inner = rest[1:]
            if inner and inner[0].kind == 'o' and inner[0].value == '(':
                body = [t for t in inner if not (t.kind == 'o' and t.value in '()')]
                values = [t.value for t in body[:4]]
                if len(body) >= 4 and body[0].kind in ('w', 'i') and values[1:4] == ['is', 'not', 'null'] \
                        and not any(t.kind == 'w' and t.value == 'or' for t in body):
                    column = body[0].value
            if name:
                self.state.constraints[name[-1]] = (bare, 'add-check', column, not not_valid)
            if not_valid:
                if name:
                    fstate.not_valid.add(name[-1])
                return []
            if column is not None:
                self.state.not_null.add((bare, column))
            return [Hit('add-check', ('table', table), '%s without NOT VALID' % (label or 'CHECK'))]
        if kind == 'foreign':
            if name:
                self.state.constraints[name[-1]] = (bare, 'add-foreign-key', None, not not_valid)
            if not_valid:
                if name:
                    fstate.not_valid.add(name[-1])
                return []
            words = [t.value for t in rest if t.kind in ('w', 'i')]
            referenced = ''
            if 'references' in words:
                ref = _Reader(rest[[t.value for t in rest].index('references') + 1:]).name()
                referenced = ' (references %s)' % display(ref) if ref else ''
            return [Hit('add-foreign-key', ('table', table), '%s without NOT VALID%s'
                        % (label or 'FOREIGN KEY', referenced))]
        if kind in ('unique', 'primary'):
            values = [t.value for t in rest if t.kind == 'w']
            for k in range(len(values) - 2):
                if values[k:k + 2] == ['using', 'index'] and values[k + 2] != 'tablespace':
                    return []
            if len(values) >= 2 and values[-2:] == ['using', 'index']:
                return []
            return [Hit('add-unique', ('table', table), ('%s %s without USING INDEX' % (
                'PRIMARY KEY' if kind == 'primary' else 'UNIQUE', label)).replace('  ', ' '))]
        if kind == 'exclude':
            return [Hit('add-unique', ('table', table), 'exclusion constraint %sbuilds an index (it cannot be '
                        'built concurrently)' % (display(name) + ' ' if name else ''))]
        return []

    def _alter_type(self, table, column, toks, fstate):
        bare = table[-1]
        cut = len(toks)
        using = None
        for k, tok in enumerate(toks):
            if tok.kind == 'w' and tok.value in ('collate', 'using'):
                cut = min(cut, k)
                if tok.value == 'using':
                    using = toks[k + 1:]
                    break
        new = parse_type(toks[:cut])
        if using is not None and not (len(using) == 1 and using[0].kind in ('w', 'i') and using[0].value == column):
            return [Hit('alter-column-type', ('table', table), 'column %s TYPE %s USING %s recomputes every row'
                        % (display((column,)), new, _text(using, self.source)))]
        old_toks = self.state.columns.get((bare, column))
        if old_toks is not None:
            old = parse_type(old_toks)
            self.state.columns[(bare, column)] = toks[:cut]
        else:
            rel = self._rel(table, fstate)[0]
            known = self.facts.column(rel, column) if rel is not None else None
            if known is None:
                return [Hit('alter-column-type', ('table', table), 'column %s TYPE %s (its current type is not '
                            'known here: assumed a rewrite)' % (display((column,)), new))]
            old = parse_type(known[0])
        rewrites, why = type_change_rewrites(old, new, self.facts.utc())
        if not rewrites:
            return []
        return [Hit('alter-column-type', ('table', table), 'column %s: %s' % (display((column,)), why))]

    def _set_not_null(self, table, column, fstate):
        bare = table[-1]
        if (bare, column) in self.state.not_null:
            return []
        if (bare, column) not in self.state.columns:
            rel = self._rel(table, fstate)[0]
            known = self.facts.column(rel, column) if rel is not None else None
            if known is not None and known[1]:
                return []
        return [Hit('set-not-null', ('table', table), 'column %s has no validated CHECK (%s IS NOT NULL)'
                    % (display((column,)), display((column,))))]

    # -- the table a hit locks ---------------------------------------------------------------------
    def _rel(self, parts, fstate):
        """(Rel or None, why it is new or missing) for a table name, given what this run did before."""
        bare = parts[-1]
        state = self.state
        if bare in state.created:
            return None, 'new: created by %s in this run' % state.created[bare]
        if bare in state.renamed:  # the table of the old name (a chain of renames is collapsed to it)
            rel = self.facts.relation(state.renamed[bare], fstate.search_path)
            return rel, None if rel is not None else 'does not exist yet'
        if bare in state.dropped:
            return None, 'dropped earlier in this run'
        rel = self.facts.relation(parts, fstate.search_path)
        if rel is None:
            if bare in state.maybe_created:
                return None, 'new: created by %s in this run' % state.maybe_created[bare]
            return None, 'does not exist yet'
        return rel, None

    def resolve(self, hit, fstate):
        """(Rel or None, note, index display) of what a hit locks."""
        kind = hit.target[0]
        if kind == 'scope':
            return self.facts.scope(hit.target[1], hit.target[2]), None, None
        if kind == 'new-column':
            rel, note = self._rel(hit.target[1], fstate)
            return None, note or 'new: the column was added by this run', None
        if kind == 'index':
            found = self.facts.index_table(hit.target[1], fstate.search_path)
            if found is None:
                return None, 'does not exist yet', None
            return found[1], None, display(hit.target[1])
        rel, note = self._rel(hit.target[1], fstate)
        return rel, note, None
