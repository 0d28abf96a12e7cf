-- The relay marks a row published by flipping a flag, not by writing a time: the same
-- schema as SQLite's, where a mark that keeps the row's size is written in place (see
-- migrations/sqlite/0007_outbox_published_flag.sql). InnoDB keeps a long `body` off the
-- row either way.
ALTER TABLE outbox ADD COLUMN published TINYINT NOT NULL DEFAULT 0;
UPDATE outbox SET published = 1 WHERE published_at IS NOT NULL;
ALTER TABLE outbox DROP INDEX outbox_pending, DROP COLUMN published_at, ADD INDEX outbox_pending (published, id);
