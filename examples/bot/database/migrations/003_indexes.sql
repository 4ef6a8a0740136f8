-- Lookups by user and by age (retention jobs, "last activity" queries).

CREATE INDEX IF NOT EXISTS events_user_id_created_at_idx ON events (user_id, created_at);
CREATE INDEX IF NOT EXISTS aiogram_states_user_id_idx ON aiogram_states (user_id);
CREATE INDEX IF NOT EXISTS aiogram_states_updated_at_idx ON aiogram_states (updated_at);
