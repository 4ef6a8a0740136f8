"""Other migration tools, as far as the tests need them: applying a directory the way the tool does (with psql),
the history table the tool keeps (created with the tool's own DDL), and a schema dump to compare results.

The emulations are written from each tool's documented behaviour, independently of pg_migrate's code:

- golang-migrate sends each up file as ONE query (PostgreSQL runs a multi-statement query as one implicit
  transaction): psql -c <file>.
- sqlx runs each up file inside BEGIN/COMMIT, or as one query when its first line is "-- no-transaction".
- dbmate runs the text from "-- migrate:up" to "-- migrate:down" inside a transaction, or as one query with
  "transaction:false".
- goose and sql-migrate run the statements of the up section one by one inside a transaction (psql -1), or one
  by one in autocommit with "-- +goose NO TRANSACTION" / "-- +migrate Up notransaction".
- Prisma sends migration.sql as one query; Diesel runs up.sql inside a transaction unless metadata.toml says
  run_in_transaction = false.
- Flyway replaces ${placeholders}, runs beforeMigrate, then per migration beforeEachMigrate + script +
  afterEachMigrate in one transaction (statement by statement in autocommit with executeInTransaction=false),
  repeatables after versions, afterMigrate last; on a fresh database the newest B file replaces the versions up
  to its own; U files never run.
"""

import glob
import hashlib
import os
import re
import subprocess
import tempfile
import uuid

import pytest

from pgcluster import SUPERUSER_PASSWORD

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fixtures', 'migrations')
HISTORY_TABLES = ('schema_migrations', 'pg_schema_migrations', 'flyway_schema_history', 'goose_db_version',
                  'gorp_migrations', '_sqlx_migrations', '_prisma_migrations', '__diesel_schema_migrations')


def fixture(style):
    return os.path.join(FIXTURES, style)


@pytest.fixture
def other_db(pg_server):
    """A second empty database on the test server (the first one is pg_db)."""
    name = 'other_' + uuid.uuid4().hex[:12]
    pg_server.query('CREATE DATABASE %s' % name)
    yield pg_server.params(db=name)
    pg_server.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s '
                    'AND pid <> pg_backend_pid()', (name,))
    pg_server.query('DROP DATABASE IF EXISTS %s' % name)


class Psql:
    """psql against one database, stopping at the first error (ON_ERROR_STOP)."""

    def __init__(self, server, params):
        self.server = server
        self.params = params

    def _run(self, args):
        env = dict(os.environ, PGPASSWORD=self.params['login_password'])
        cmd = [self.server.bin('psql'), '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', self.params['login_host'],
               '-p', str(self.params['login_port']), '-U', self.params['login_user'], '-d', self.params['login_db']]
        proc = subprocess.run(cmd + args, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (args, proc.stderr)

    def file(self, path, single_transaction=False):
        self._run((['-1'] if single_transaction else []) + ['-f', path])

    def text(self, text, single_transaction=False):
        with tempfile.NamedTemporaryFile('w', suffix='.sql', delete=False) as handle:
            handle.write(text)
        try:
            self.file(handle.name, single_transaction)
        finally:
            os.unlink(handle.name)

    def query(self, text):
        """The text as ONE query (a multi-statement query is one implicit transaction)."""
        self._run(['-c', text])

    def in_transaction(self, text):
        self._run(['-c', 'BEGIN', '-c', text, '-c', 'COMMIT'])


def _read(path):
    with open(path, encoding='utf-8-sig') as handle:
        return handle.read()


def _key(version):
    return tuple(int(p) for p in re.split(r'[._]', version))


def _section(text, up, down):
    start = re.search(up, text, re.M | re.I)
    stop = re.search(down, text, re.M | re.I)
    return text[start.start():stop.start() if stop and stop.start() > start.start() else len(text)]


# -- applying a directory the way each tool does ---------------------------------------------------------
def migrations_of(tool, directory):
    """[(name, path)] in the order the tool applies them (only what runs forward)."""
    names = sorted(os.listdir(directory))
    if tool in ('golang-migrate', 'sqlx'):
        ups = [n for n in names if n.endswith('.up.sql')]
        return [(n, os.path.join(directory, n)) for n in sorted(ups, key=lambda n: int(n.split('_')[0]))]
    if tool in ('dbmate', 'goose', 'sql-migrate'):
        files = [n for n in names if n.endswith('.sql')]
        return [(n, os.path.join(directory, n)) for n in sorted(files, key=lambda n: int(re.match(r'\d+', n).group()))]
    if tool == 'prisma':
        return [(n, os.path.join(directory, n, 'migration.sql')) for n in names
                if os.path.isdir(os.path.join(directory, n))]
    if tool == 'diesel':
        folders = [n for n in names if os.path.isdir(os.path.join(directory, n))]
        return [(n, os.path.join(directory, n, 'up.sql'))
                for n in sorted(folders, key=lambda n: int(n.split('_')[0].replace('-', '')))]
    if tool == 'plain':
        versioned = [(n, _key(re.match(r'^V?(\d+(?:[._]\d+)*)', n).group(1))) for n in names
                     if re.match(r'^(\d+[_\-.]|V\d)', n) and n.endswith('.sql')]
        repeatable = [n for n in names if n.startswith('R__')]
        return [(n, os.path.join(directory, n)) for n, _ in sorted(versioned, key=lambda v: v[1])] + \
            [(n, os.path.join(directory, n)) for n in repeatable]
    raise ValueError(tool)


def apply_like(tool, directory, server, params, count=None, placeholders=None, start=0):
    """Apply migrations start..count-1 of the directory as the tool would; returns their names."""
    psql = Psql(server, params)
    if tool == 'flyway':
        return _apply_like_flyway(directory, psql, count, placeholders or {})
    done = []
    for name, path in migrations_of(tool, directory)[start:count]:
        text = _read(path)
        if tool == 'golang-migrate' or tool == 'prisma':
            psql.query(text)
        elif tool == 'sqlx':
            psql.query(text) if text.startswith('-- no-transaction') else psql.in_transaction(text)
        elif tool == 'dbmate':
            up = _section(text, r'^--\s*migrate:up', r'^--\s*migrate:down')
            psql.query(up) if 'transaction:false' in up.split('\n')[0] else psql.in_transaction(up)
        elif tool == 'goose':
            up = _section(text, r'^--\s*\+goose Up', r'^--\s*\+goose Down')
            psql.text(up, single_transaction='+goose NO TRANSACTION' not in text)
        elif tool == 'sql-migrate':
            up = _section(text, r'^--\s*\+migrate Up', r'^--\s*\+migrate Down')
            psql.text(up, single_transaction='notransaction' not in up.split('\n')[0])
        elif tool == 'diesel':
            meta = os.path.join(os.path.dirname(path), 'metadata.toml')
            outside = os.path.exists(meta) and 'run_in_transaction = false' in _read(meta)
            psql.query(text) if outside else psql.in_transaction(text)
        elif tool == 'plain':
            lines = [line for line in text.splitlines() if line.strip() and not line.startswith('--')]
            outside = text.startswith('-- pg_migrate: no-transaction') or all(
                line.startswith('CREATE INDEX CONCURRENTLY') for line in lines)
            psql.text(text, single_transaction=not outside and not text.startswith('BEGIN'))
        done.append(name)
    return done


_FLYWAY_NAME = re.compile(r'^([VBR])((?:\d+(?:[._]\d+)*)?)__.+\.sql$')


def _apply_like_flyway(directory, psql, count, placeholders):
    names = sorted(os.listdir(directory))
    values = dict((k.lower(), v) for k, v in placeholders.items())
    values.update({'flyway:defaultschema': 'public', 'flyway:user': psql.params['login_user'],
                   'flyway:table': 'flyway_schema_history'})

    def text_of(name):
        local = dict(values, **{'flyway:filename': name})
        return re.sub(r'\$\{([^}]+)\}', lambda m: local[m.group(1).lower()], _read(os.path.join(directory, name)))

    def callbacks(event):
        return [n for n in names if n == event + '.sql' or n.startswith(event + '__')]

    scripts = [(m.group(1), _key(m.group(2)) if m.group(2) else None, n)
               for n in names for m in [_FLYWAY_NAME.match(n)] if m]
    versioned = sorted((s for s in scripts if s[0] == 'V'), key=lambda s: s[1])
    baselines = sorted((s for s in scripts if s[0] == 'B'), key=lambda s: s[1])
    if baselines and count is None:  # a fresh database: the newest B file replaces the versions up to its own
        newest = baselines[-1]
        versioned = [newest] + [s for s in versioned if s[1] > newest[1]]
    order = [s[2] for s in versioned] + [s[2] for s in scripts if s[0] == 'R']
    order = order[:count]
    for name in callbacks('beforeMigrate'):
        psql.text(text_of(name), single_transaction=True)
    for name in order:
        conf = os.path.join(directory, name + '.conf')
        outside = os.path.exists(conf) and 'executeInTransaction=false' in _read(conf)
        body = '\n'.join([text_of(n) for n in callbacks('beforeEachMigrate')] + [text_of(name)]
                         + [text_of(n) for n in callbacks('afterEachMigrate')])
        psql.text(body, single_transaction=not outside)
    for name in callbacks('afterMigrate'):
        psql.text(text_of(name), single_transaction=True)
    return order


# -- the history tables, created with each tool's DDL ----------------------------------------------------
def _version_of(tool, name):
    if tool == 'flyway':
        return re.match(r'^[VB](\d+(?:[._]\d+)*)__', name).group(1).replace('_', '.')
    if tool == 'diesel':
        return name.split('_')[0].replace('-', '')
    return re.match(r'\d+', name).group()


def record_history(tool, server, params, names, directory):
    """Create the tool's history table as the tool does and record `names` as applied."""
    from pgclient import connect
    conn = connect(params)
    try:
        with conn.cursor() as cur:
            if tool == 'flyway':
                cur.execute('CREATE TABLE "public"."flyway_schema_history" ("installed_rank" INT NOT NULL, '
                            '"version" VARCHAR(50), "description" VARCHAR(200) NOT NULL, "type" VARCHAR(20) NOT NULL, '
                            '"script" VARCHAR(1000) NOT NULL, "checksum" INTEGER, "installed_by" VARCHAR(100) '
                            'NOT NULL, "installed_on" TIMESTAMP NOT NULL DEFAULT now(), "execution_time" INTEGER '
                            'NOT NULL, "success" BOOLEAN NOT NULL)')
                cur.execute('ALTER TABLE "public"."flyway_schema_history" ADD CONSTRAINT "flyway_schema_history_pk" '
                            'PRIMARY KEY ("installed_rank")')
                cur.execute('CREATE INDEX "flyway_schema_history_s_idx" ON "public"."flyway_schema_history" '
                            '("success")')
                for rank, name in enumerate(names, 1):
                    version = None if name.startswith('R__') else _version_of(tool, name)
                    description = name.split('__', 1)[1][:-4].replace('_', ' ')
                    kind = 'SQL_BASELINE' if name.startswith('B') else 'SQL'
                    cur.execute('INSERT INTO flyway_schema_history (installed_rank, version, description, type, '
                                'script, checksum, installed_by, execution_time, success) '
                                'VALUES (%s, %s, %s, %s, %s, %s, %s, %s, true)',
                                (rank, version, description, kind, name, -1234567 + rank, 'postgres', 12))
            elif tool == 'golang-migrate':
                cur.execute('CREATE TABLE IF NOT EXISTS "public"."schema_migrations" (version bigint not null primary '
                            'key, dirty boolean not null)')
                if names:
                    cur.execute('INSERT INTO "public"."schema_migrations" (version, dirty) VALUES (%s, false)',
                                (int(_version_of(tool, names[-1])),))
            elif tool == 'dbmate':
                cur.execute('create table if not exists "public"."schema_migrations" (version varchar primary key)')
                for name in names:
                    cur.execute('insert into "public"."schema_migrations" (version) values (%s)',
                                (_version_of(tool, name),))
            elif tool == 'goose':
                cur.execute('CREATE TABLE goose_db_version (id integer PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, '
                            'version_id bigint NOT NULL, is_applied boolean NOT NULL, '
                            'tstamp timestamp NOT NULL DEFAULT now())')
                cur.execute('INSERT INTO goose_db_version (version_id, is_applied) VALUES (0, true)')
                for name in names:
                    cur.execute('INSERT INTO goose_db_version (version_id, is_applied) VALUES (%s, true)',
                                (int(_version_of(tool, name)),))
            elif tool == 'sql-migrate':
                cur.execute('create table if not exists "gorp_migrations" ("id" varchar(255) not null primary key, '
                            '"applied_at" timestamp with time zone)')
                for name in names:
                    cur.execute('insert into "gorp_migrations" ("id","applied_at") values (%s, now())', (name,))
            elif tool == 'sqlx':
                cur.execute('CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT '
                            'NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, '
                            'checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)')
                for name in names:
                    body = open(os.path.join(directory, name), 'rb').read()
                    cur.execute('INSERT INTO _sqlx_migrations (version, description, success, checksum, '
                                'execution_time) VALUES (%s, %s, TRUE, %s, 1000000)',
                                (int(_version_of(tool, name)), name.split('_', 1)[1].split('.')[0].replace('_', ' '),
                                 hashlib.sha384(body).digest()))
            elif tool == 'prisma':
                cur.execute('CREATE TABLE "_prisma_migrations" ("id" VARCHAR(36) NOT NULL, "checksum" VARCHAR(64) '
                            'NOT NULL, "finished_at" TIMESTAMPTZ, "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, '
                            '"rolled_back_at" TIMESTAMPTZ, "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(), '
                            '"applied_steps_count" INTEGER NOT NULL DEFAULT 0, PRIMARY KEY ("id"))')
                for name in names:
                    body = open(os.path.join(directory, name, 'migration.sql'), 'rb').read()
                    cur.execute('INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, '
                                'applied_steps_count) VALUES (%s, %s, now(), %s, 1)',
                                (str(uuid.uuid4()), hashlib.sha256(body).hexdigest(), name))
            elif tool == 'diesel':
                cur.execute('CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY '
                            'NOT NULL, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)')
                for name in names:
                    cur.execute('INSERT INTO __diesel_schema_migrations (version) VALUES (%s)',
                                (_version_of(tool, name),))
            else:
                raise ValueError(tool)
    finally:
        conn.close()


# -- comparing results -----------------------------------------------------------------------------------
def _restrict_key(server):
    """pg_dump 15.14+/16.10+ writes a random \\restrict key unless given one; older ones know no such option."""
    if not hasattr(server, '_restrict_key'):
        proc = subprocess.run([server.bin('pg_dump'), '--help'], capture_output=True, text=True)
        server._restrict_key = ['--restrict-key=soulnear'] if '--restrict-key' in proc.stdout else []
    return server._restrict_key


def schema(server, params, exclude=HISTORY_TABLES):
    """pg_dump --schema-only of a database without the migration tools' own tables, comments stripped."""
    args = [server.bin('pg_dump'), '--schema-only', '--no-owner', '--no-privileges'] + _restrict_key(server) + [
        '-h', params['login_host'], '-p', str(params['login_port']), '-U', params['login_user']]
    for table in exclude:
        args += ['-T', table, '-T', table + '_*']
    proc = subprocess.run(args + [params['login_db']], env=dict(os.environ, PGPASSWORD=SUPERUSER_PASSWORD),
                          capture_output=True, text=True, check=True)
    return '\n'.join(line for line in proc.stdout.splitlines() if line.strip() and not line.startswith('--'))


def table_dump(server, params, table):
    """DDL and rows of one table, to show it was not touched."""
    args = [server.bin('pg_dump'), '--no-owner', '--no-privileges', '--inserts'] + _restrict_key(server) + [
        '-h', params['login_host'], '-p', str(params['login_port']), '-U', params['login_user'], '-t', table,
        params['login_db']]
    proc = subprocess.run(args, env=dict(os.environ, PGPASSWORD=SUPERUSER_PASSWORD), capture_output=True,
                          text=True, check=True)
    return proc.stdout


def sql_files(directory):
    return sorted(glob.glob(os.path.join(directory, '**', '*.sql'), recursive=True))
