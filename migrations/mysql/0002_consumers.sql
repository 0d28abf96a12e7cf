-- Idempotent consumers (issue 6). A consumer records each event id it applied in the
-- same transaction as the effect, so a redelivered event finds its id here and has no
-- second effect.
CREATE TABLE processed_events (
    consumer      VARCHAR(64) NOT NULL,
    event_id      VARCHAR(36) NOT NULL,
    processed_at  BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- failed_events now also holds messages a consumer gave up on (they went to
-- emporium.dlq too): which consumer, the topic they came from, their original headers
-- (JSON), and whether the body is an event that `replay` can publish again.
ALTER TABLE failed_events
    ADD COLUMN source VARCHAR(64) NOT NULL DEFAULT 'outbox',
    ADD COLUMN topic VARCHAR(128) NULL,
    ADD COLUMN headers TEXT NULL,
    ADD COLUMN replayable TINYINT NOT NULL DEFAULT 1;
