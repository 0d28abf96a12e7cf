-- The group commit no longer calls emporium_write_batch (0005): its JSON_TABLE expansion
-- cost the server many times what the same rows cost as prepared multi-row statements,
-- which is what src/persistence/sql/write_sets.rs now sends (docs/write-path.md).
DROP PROCEDURE IF EXISTS emporium_write_batch;

-- The relay reads `WHERE published_at IS NULL ORDER BY id LIMIT n`. outbox_pending has
-- next_attempt_at between the two, so MariaDB walked the primary key through every
-- published row instead (the whole table per relay round, measured: ~30,000 rows examined
-- per read after 15,000 orders). SQLite's outbox_pending already is (published_at, id).
CREATE INDEX outbox_unpublished ON outbox (published_at, id);
