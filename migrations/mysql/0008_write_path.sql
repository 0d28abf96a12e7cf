-- The group commit no longer calls emporium_write_batch (0005): its JSON_TABLE expansion
-- cost the server many times what the same rows cost as prepared multi-row statements,
-- which is what src/persistence/sql/write_sets.rs now sends (docs/write-path.md).
DROP PROCEDURE IF EXISTS emporium_write_batch;

-- The relay reads `WHERE published_at IS NULL ORDER BY id LIMIT n`. With next_attempt_at
-- between the two columns MariaDB could not read that order from the index and walked the
-- primary key through every published row instead (measured: ~30,000 rows examined per
-- read after 15,000 orders). No query filters on next_attempt_at (the relay checks it per
-- row), so the index becomes SQLite's: (published_at, id).
ALTER TABLE outbox DROP INDEX outbox_pending, ADD INDEX outbox_pending (published_at, id);
