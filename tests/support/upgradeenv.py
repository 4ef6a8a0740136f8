"""A PostgreSQL 15 deployment laid out like the postgres role lays it out, for the major upgrade's tests
(tests/integration/module_utils/test_upgrade.py) and benchmark (bench/bench_upgrade.py): PitrLab's container (volume,
pgBackRest's repository and configuration, log directory, healthcheck with the checkpointer's wake-up, a bot stand-in)
with the role's secrets file (POSTGRES_PASSWORD_FILE), labels and app role, and a bot-like schema with data.

    lab = UpgradeLab(tmp_path).start()
    lab.load(users=20000, messages=60000)      # a few MB of bot-like rows
    settings = lab.upgrade_settings()          # for module_utils/soulnear/upgrade.py
    ...
    lab.remove()
"""

import hashlib
import os

from ansible.module_utils.soulnear import pgserver, upgrade
from pgcontainer import docker
from pitrenv import DB, PASSWORD, STANZA, UID, PitrLab, healthcheck, run_sql

OLD_IMAGE = os.environ.get('SOULNEAR_TEST_PG_IMAGE', 'soulnear/postgres:15')
NEW_IMAGE = os.environ.get('SOULNEAR_TEST_PG_NEW_IMAGE', 'soulnear/postgres:17')
APP_USER, APP_PASSWORD = 'soulnear', 'upgrade-test-app-secret'

# The bot's schema: what a Telegram bot keeps (users, their messages, FSM states, payments), with the kinds of
# objects a dump must carry: sequences, a foreign key, indexes (one on text, built under the new version's
# collation), an enum, jsonb, a view, a function, a trigger, an extension, a comment, grants to the app role.
SCHEMA = """
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TYPE plan AS ENUM ('free', 'premium', 'vip');
CREATE TABLE users (id bigserial PRIMARY KEY, telegram_id bigint UNIQUE NOT NULL, username text,
                    language text NOT NULL DEFAULT 'en', plan plan NOT NULL DEFAULT 'free',
                    settings jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(),
                    last_seen timestamptz);
CREATE INDEX users_username ON users (username);
CREATE TABLE messages (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id),
                       body text NOT NULL, sent_at timestamptz NOT NULL DEFAULT now(), digest bytea);
CREATE INDEX messages_user_sent ON messages (user_id, sent_at);
CREATE TABLE payments (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id bigint REFERENCES users (id),
                       amount numeric(12, 2) NOT NULL, paid_at timestamptz NOT NULL DEFAULT now());
CREATE VIEW active_users AS SELECT id, username FROM users WHERE last_seen > now() - interval '30 days';
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.last_seen := now(); RETURN NEW; END $$;
CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION touch();
COMMENT ON TABLE users IS 'Telegram users of the bot';
"""

# A checksum of a table's content in a stable order: equal on both versions when every row came over.
CHECKSUM = "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM %s t"


class UpgradeLab(PitrLab):
    """PitrLab's deployment of PostgreSQL 15 with what the postgres role adds (see the module docstring)."""

    def __init__(self, tmp, image=OLD_IMAGE, new_image=NEW_IMAGE, archive_timeout='10s', **kwargs):
        PitrLab.__init__(self, tmp, archive_timeout=archive_timeout, image=image, **kwargs)
        self.new_image = new_image
        self.secrets_dir = os.path.join(self.tmp, 'secrets')
        self.state_file = os.path.join(self.tmp, 'state', 'postgres-upgrade.json')
        self.backup_dir = os.path.join(self.tmp, 'backups')

    def create_container(self, start=True):
        """The database container as the postgres role runs it: the superuser password from a file, the labels."""
        os.makedirs(self.secrets_dir, exist_ok=True)
        path = os.path.join(self.secrets_dir, 'superuser_password')
        with open(path, 'w') as handle:
            handle.write(PASSWORD)
        os.chown(self.secrets_dir, UID, 0)
        os.chmod(self.secrets_dir, 0o700)
        os.chown(path, UID, 0)
        os.chmod(path, 0o600)
        args = ['--name', self.name, '--network', self.network, '--restart', 'unless-stopped',
                '--shm-size', self.shm, '-e', 'POSTGRES_PASSWORD_FILE=/run/secrets/soulnear/superuser_password',
                '-e', 'POSTGRES_USER=postgres', '-e', 'POSTGRES_DB=%s' % DB,
                '-e', 'POSTGRES_INITDB_ARGS=--auth-host=scram-sha-256', '-e', 'PGDATA=/var/lib/postgresql/data',
                '--label', 'soulnear.component=database', '--label', 'soulnear.deployment=%s' % self.name,
                '-p', '127.0.0.1:%d:5432' % self.port,
                '--health-cmd', healthcheck(self.wake), '--health-interval', '2s', '--health-timeout', '5s',
                '--health-retries', '5', '--stop-timeout', '60']
        self.run_container(args, start, mounts=['type=bind,source=%s,target=/run/secrets/soulnear,readonly'
                                                % self.secrets_dir])

    def init_database(self):
        """The deploy's cluster: WAL archiving converged (pg_server's code, then the restart it reports), the app
        role owning the bot's database (the entrypoint made it, POSTGRES_DB) and its first tables."""
        result = pgserver.converge(self.params('postgres'), settings=dict(
            archive_mode='on', archive_command='pgbackrest --stanza=%s archive-push %%p' % STANZA,
            archive_timeout=self.archive_timeout, logging_collector='on', log_directory='/var/log/postgresql',
            log_filename='postgresql.log', log_statement='ddl', idle_in_transaction_session_timeout='5min'))
        assert 'archive_mode' in result['restart_required'], result
        docker('restart', '-t', '60', self.name)
        self.wait_ready()
        self.sql("CREATE ROLE %s LOGIN PASSWORD '%s'" % (APP_USER, APP_PASSWORD), db='postgres')
        self.sql('ALTER DATABASE %s OWNER TO %s' % (DB, APP_USER), db='postgres')
        self.sql('ALTER SCHEMA public OWNER TO %s' % APP_USER)
        self.app_sql('CREATE TABLE aiogram_states (key text PRIMARY KEY, state text, data jsonb); '
                     'CREATE TABLE schema_migrations (version text PRIMARY KEY); '
                     "INSERT INTO aiogram_states VALUES ('user:1', 'menu', '{}'); "
                     "INSERT INTO schema_migrations VALUES ('001')")
        return self

    def app_kwargs(self):
        return dict(host='127.0.0.1', port=self.port, user=APP_USER, password=APP_PASSWORD, dbname=DB,
                    connect_timeout=5)

    def app_sql(self, statement, args=None):
        return run_sql(self.app_kwargs(), statement, args)

    def load(self, users=20000, messages=60000):
        """The bot's schema (as the app role) and its rows: about 1 MB per 10,000 messages."""
        self.sql('CREATE EXTENSION IF NOT EXISTS pgcrypto')
        self.app_sql(SCHEMA.replace('CREATE EXTENSION IF NOT EXISTS pgcrypto;', ''))
        self.app_sql("INSERT INTO users (telegram_id, username, language, plan, settings, last_seen) "
                     "SELECT 100000 + g, 'user_' || g, (ARRAY['en', 'ru', 'de', 'es'])[1 + g %% 4], "
                     "(ARRAY['free', 'premium', 'vip'])[1 + g %% 3]::plan, "
                     "jsonb_build_object('notify', g %% 2 = 0, 'tz', 'UTC+' || (g %% 12)), "
                     "now() - (g %% 90) * interval '1 day' FROM generate_series(1, %s) g", (users,))
        self.app_sql("INSERT INTO messages (user_id, body, sent_at, digest) SELECT 1 + g %% %s, "
                     "repeat(md5(g::text), 2) || ' ünïcødé ' || g, now() - (g %% 1000) * interval '1 minute', "
                     "digest(g::text, 'sha256') FROM generate_series(1, %s) g", (users, messages))
        self.app_sql("INSERT INTO payments (user_id, amount) SELECT 1 + g %% %s, (g %% 500) / 7.0 "
                     "FROM generate_series(1, %s) g", (users, max(1, users // 10)))
        self.app_sql("INSERT INTO aiogram_states SELECT 'fsm:' || g, 'menu', jsonb_build_object('step', g) "
                     "FROM generate_series(2, 500) g")
        self.sql('ANALYZE')
        return self

    def snapshot(self, tables=('users', 'messages', 'payments', 'aiogram_states')):
        """Row count and content checksum of the given tables, and the server's major version."""
        found = {}
        for table in tables:
            count = self.sql('SELECT count(*) FROM %s' % table)[0][0]
            digest = self.sql(CHECKSUM % table)[0][0]
            found[table] = (count, digest)
        found['version'] = int(self.sql("SELECT current_setting('server_version_num')::int")[0][0]) // 10000
        return found

    def upgrade_settings(self, **options):
        options.setdefault('container', self.name)
        options.setdefault('image', self.new_image)
        options.setdefault('to_version', 17)
        options.setdefault('state_file', self.state_file)
        options.setdefault('backup_dir', self.backup_dir)
        options.setdefault('bot_container', self.bot)
        options.setdefault('bot_healthy_timeout', 60)
        options.setdefault('stanza', 'soulnear')
        options.setdefault('repo_dir', self.repo_dir)
        options.setdefault('data_guard_file', self.guard_file)
        options.setdefault('start_timeout', 180)
        return upgrade.make_settings(self.params(), **options)

    def containers(self):
        """Every container of this lab (by its name prefix), with its image."""
        out = docker('ps', '-a', '--filter', 'name=' + self.name, '--format', '{{.Names}} {{.Image}}').stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())

    def remove(self):
        for name in [line.split()[0] for line in self.containers()]:
            docker('rm', '-f', '-v', name, check=False)
        PitrLab.remove(self)


def digest_of(values):
    return hashlib.sha256(repr(sorted(values)).encode()).hexdigest()
