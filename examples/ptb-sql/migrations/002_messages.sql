-- Every message the bot handled, once: Telegram may deliver an update again (until the bot confirms it),
-- so the update id is unique and a second delivery is not stored twice.
CREATE TABLE messages (
    id          bigserial PRIMARY KEY,
    update_id   bigint NOT NULL UNIQUE,
    user_id     bigint NOT NULL REFERENCES users (id),
    chat_id     bigint NOT NULL,
    text        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX messages_user_id_idx ON messages (user_id);
