-- Refunds of payments captured for orders that were cancelled meanwhile (docs/design.md,
-- "Refunds"). One row per order at most: the primary key is what makes requesting a
-- refund idempotent (a redelivered payment event, a restart, a retry ask again and find
-- the row). The refunder works through `status = 'requested'` rows whose
-- `next_attempt_at` has come.
CREATE TABLE refunds (
    order_id         VARCHAR(36) PRIMARY KEY,
    amount           BIGINT NOT NULL,
    currency         CHAR(3) NOT NULL,
    payment_token    VARCHAR(64) NOT NULL,
    status           VARCHAR(16) NOT NULL,
    attempts         BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    requested_at     BIGINT NOT NULL,
    finished_at      BIGINT,
    KEY refunds_due (status, next_attempt_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
