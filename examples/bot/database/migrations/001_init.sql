-- Users and the aiogram FSM storage.
-- IF NOT EXISTS: databases created by the old bot already have these tables; the
-- migration then only records them (baseline) instead of failing.
-- No BEGIN/COMMIT: the migration runner wraps each file in one transaction.

CREATE TABLE IF NOT EXISTS users (
    id            bigint PRIMARY KEY,               -- Telegram user id
    username      text,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS aiogram_states (
    key        text PRIMARY KEY,                    -- aiogram storage key, e.g. fsm:<chat_id>:<user_id>
    chat_id    bigint,
    user_id    bigint,
    state      text,
    data       jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);
