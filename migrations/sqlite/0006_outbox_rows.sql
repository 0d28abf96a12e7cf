-- One outbox row per committed transaction's events (at most 64 events a row), not one
-- per event: a group commit of 60 orders wrote 300 rows, each with three index entries,
-- and the relay updated each of them again. The events are the same, in the same order,
-- as a JSON array in `body`; `events` counts them (the backlog gauge sums it). Event ids,
-- types and aggregates live in the events themselves: nothing looked rows up by them.
-- SQLite cannot drop a UNIQUE column, so the table is rebuilt; rows already there become
-- arrays of one event.
CREATE TABLE outbox_rows (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    events           INTEGER NOT NULL CHECK (events > 0),
    body             TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    published_at     INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT
);
INSERT INTO outbox_rows (id, events, body, created_at, published_at, attempts, next_attempt_at, last_error)
    SELECT id, 1, '[' || body || ']', created_at, published_at, attempts, next_attempt_at, last_error
    FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_rows RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (published_at, id);
