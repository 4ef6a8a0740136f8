-- Telegram users who wrote to the bot; id is the Telegram user id.
CREATE TABLE users (
    id          bigint PRIMARY KEY,
    username    text,
    first_name  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
