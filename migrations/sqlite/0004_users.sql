-- User accounts (sign-up, login, dormancy). `id` is the JWT subject and the `user_id`
-- of the account's orders. `email` is stored normalised (trimmed, lower-cased), so the
-- unique index is the "one account per address" rule. `last_active_at` is the last
-- login, or the sign-up for an account that never logged in, kept as its own column so
-- the dormancy sweep is one index range over the accounts still awake (dormant ones are
-- not scanned again every day).
CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    email           TEXT NOT NULL,
    name            TEXT NOT NULL,
    password_hash   TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    last_login_at   INTEGER,
    last_active_at  INTEGER NOT NULL,
    -- NULL while active; when the sweep marked the account dormant otherwise.
    dormant_since   INTEGER
);

CREATE UNIQUE INDEX users_by_email ON users (email);
CREATE INDEX users_awake_by_activity ON users (dormant_since, last_active_at);
