-- Idempotent consumers (issue 6). A consumer records each event id it applied in the
-- same transaction as the effect, so a redelivered event finds its id here and has no
-- second effect.
CREATE TABLE processed_events (
    consumer      TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    processed_at  INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- failed_events now also holds messages a consumer gave up on (they went to
-- emporium.dlq too): which consumer, the topic they came from, their original headers
-- (JSON), and whether the body is an event that `replay` can publish again.
ALTER TABLE failed_events ADD COLUMN source TEXT NOT NULL DEFAULT 'outbox';
ALTER TABLE failed_events ADD COLUMN topic TEXT;
ALTER TABLE failed_events ADD COLUMN headers TEXT;
ALTER TABLE failed_events ADD COLUMN replayable INTEGER NOT NULL DEFAULT 1;
