-- One outbox row per committed transaction's events (at most 64 events a row), not one
-- per event: a group commit of 60 orders wrote 300 rows, each with three index entries
-- (the clustered key, event_id's unique index, outbox_pending), and the relay updated
-- each of them again. The events are the same, in the same order, as a JSON array in
-- `body`; `events` counts them (the backlog gauge sums it). Event ids, types and
-- aggregates live in the events themselves: nothing looked rows up by them. Rows already
-- there become arrays of one event.
ALTER TABLE outbox
    DROP INDEX event_id,
    DROP COLUMN event_id,
    DROP COLUMN event_type,
    DROP COLUMN aggregate_id,
    ADD COLUMN events INT NOT NULL DEFAULT 1 AFTER id;
UPDATE outbox SET body = CONCAT('[', body, ']');
ALTER TABLE outbox ALTER COLUMN events DROP DEFAULT;
