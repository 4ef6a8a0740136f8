-- Every processed Telegram update. update_id is the key, so processing an update
-- twice (a retry after a lost COMMIT reply) stores it once.

CREATE TABLE IF NOT EXISTS events (
    update_id  bigint PRIMARY KEY,
    user_id    bigint REFERENCES users (id) ON DELETE SET NULL,
    chat_id    bigint,
    kind       text NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
