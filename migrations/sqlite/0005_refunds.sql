-- Refunds of payments captured for orders that were cancelled meanwhile (docs/design.md,
-- "Refunds"). One row per order at most: the primary key is what makes requesting a
-- refund idempotent (a redelivered payment event, a restart, a retry ask again and find
-- the row). The refunder works through `status = 'requested'` rows whose
-- `next_attempt_at` has come.
CREATE TABLE refunds (
    order_id         TEXT PRIMARY KEY,
    amount           INTEGER NOT NULL,
    currency         TEXT NOT NULL,
    payment_token    TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    requested_at     INTEGER NOT NULL,
    finished_at      INTEGER
);

CREATE INDEX refunds_due ON refunds (status, next_attempt_at);
