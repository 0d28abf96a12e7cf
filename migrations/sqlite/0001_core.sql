-- Core schema for the embedded default. Times are Unix milliseconds (INTEGER),
-- ids are UUID text; the same shapes are used on MySQL (migrations/mysql).

CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    doc         TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE skus (
    sku           TEXT PRIMARY KEY,
    product_id    TEXT NOT NULL REFERENCES products(id),
    price_amount  INTEGER NOT NULL CHECK (price_amount >= 0),
    currency      TEXT NOT NULL
);

-- The coalesced snapshot of each SKU, updated once per SKU per group commit.
CREATE TABLE inventory (
    sku         TEXT PRIMARY KEY REFERENCES skus(sku),
    stock       INTEGER NOT NULL,
    reserved    INTEGER NOT NULL DEFAULT 0,
    seq         INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL,
    CHECK (reserved >= 0 AND reserved <= stock)
);

CREATE TABLE reservations (
    sku         TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    qty         INTEGER NOT NULL CHECK (qty > 0),
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (sku, order_id)
);

-- Every accepted inventory operation, as deltas (see src/domain/inventory.rs).
CREATE TABLE inventory_journal (
    sku             TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    order_id        TEXT,
    qty             INTEGER NOT NULL,
    stock_delta     INTEGER NOT NULL,
    reserved_delta  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (sku, seq)
);
CREATE INDEX inventory_journal_by_order ON inventory_journal (order_id);

CREATE TABLE orders (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    status         TEXT NOT NULL,
    total_amount   INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    payment_token  TEXT NOT NULL,
    cancel_reason  TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id, id);
CREATE INDEX orders_by_status ON orders (status, expires_at);

CREATE TABLE order_items (
    order_id     TEXT NOT NULL,
    line         INTEGER NOT NULL,
    sku          TEXT NOT NULL,
    qty          INTEGER NOT NULL CHECK (qty > 0),
    unit_amount  INTEGER NOT NULL,
    PRIMARY KEY (order_id, line)
);

CREATE TABLE idempotency_keys (
    user_id       TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    order_id      TEXT NOT NULL,
    response      TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);

CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL UNIQUE,
    event_type       TEXT NOT NULL,
    aggregate_id     TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    published_at     INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT
);
CREATE INDEX outbox_pending ON outbox (published_at, id);

CREATE TABLE failed_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE,
    event_type    TEXT NOT NULL,
    aggregate_id  TEXT NOT NULL,
    body          TEXT NOT NULL,
    error         TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    failed_at     INTEGER NOT NULL,
    replayed_at   INTEGER
);
