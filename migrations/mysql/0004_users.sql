-- User accounts on MySQL/MariaDB. Same shapes as migrations/sqlite/0004_users.sql.
-- Emails are stored normalised; the binary collation makes the unique key compare
-- exactly what the application normalised (no second, collation-made notion of "same").
CREATE TABLE users (
    id              VARCHAR(36) PRIMARY KEY,
    email           VARCHAR(254) NOT NULL,
    name            VARCHAR(100) NOT NULL,
    password_hash   VARCHAR(255) NOT NULL,
    created_at      BIGINT NOT NULL,
    last_login_at   BIGINT,
    last_active_at  BIGINT NOT NULL,
    dormant_since   BIGINT,
    UNIQUE KEY users_by_email (email),
    KEY users_awake_by_activity (dormant_since, last_active_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
