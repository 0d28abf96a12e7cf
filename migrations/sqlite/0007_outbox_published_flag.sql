-- The relay marks a row published by flipping a flag, not by writing a time. SQLite
-- overwrites a row in place when its size does not change, writing only the pages whose
-- bytes changed. 0 and 1 take no bytes in a record (only the header's type byte differs),
-- so marking a row writes its leaf page and not its events again; `published_at` took
-- six bytes where NULL took none, so every mark rewrote the whole row, overflow pages
-- (up to ~32 KB of events) and all.
DROP INDEX outbox_pending;
ALTER TABLE outbox ADD COLUMN published INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET published = 1 WHERE published_at IS NOT NULL;
ALTER TABLE outbox DROP COLUMN published_at;
CREATE INDEX outbox_pending ON outbox (published, id);
