-- The user's Telegram language and when we last heard from them.
ALTER TABLE users ADD COLUMN language_code text;
ALTER TABLE users ADD COLUMN last_seen_at timestamptz;
