-- Core schema on MySQL/MariaDB (InnoDB, utf8mb4). Same shapes as migrations/sqlite.

CREATE TABLE products (
    id          VARCHAR(36) PRIMARY KEY,
    doc         LONGTEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE skus (
    sku           VARCHAR(64) PRIMARY KEY,
    product_id    VARCHAR(36) NOT NULL,
    price_amount  BIGINT NOT NULL CHECK (price_amount >= 0),
    currency      CHAR(3) NOT NULL,
    CONSTRAINT skus_product FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE inventory (
    sku         VARCHAR(64) PRIMARY KEY,
    stock       BIGINT NOT NULL,
    reserved    BIGINT NOT NULL DEFAULT 0,
    seq         BIGINT NOT NULL DEFAULT 0,
    updated_at  BIGINT NOT NULL,
    CONSTRAINT inventory_bounds CHECK (reserved >= 0 AND reserved <= stock),
    CONSTRAINT inventory_sku FOREIGN KEY (sku) REFERENCES skus (sku)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE reservations (
    sku         VARCHAR(64) NOT NULL,
    order_id    VARCHAR(36) NOT NULL,
    qty         BIGINT NOT NULL CHECK (qty > 0),
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (sku, order_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE inventory_journal (
    sku             VARCHAR(64) NOT NULL,
    seq             BIGINT NOT NULL,
    kind            VARCHAR(16) NOT NULL,
    order_id        VARCHAR(36),
    qty             BIGINT NOT NULL,
    stock_delta     BIGINT NOT NULL,
    reserved_delta  BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (sku, seq),
    KEY inventory_journal_by_order (order_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE orders (
    id             VARCHAR(36) PRIMARY KEY,
    user_id        VARCHAR(128) NOT NULL,
    status         VARCHAR(16) NOT NULL,
    total_amount   BIGINT NOT NULL,
    currency       CHAR(3) NOT NULL,
    payment_token  VARCHAR(64) NOT NULL,
    cancel_reason  VARCHAR(32),
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    KEY orders_by_user (user_id, id),
    KEY orders_by_status (status, expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE order_items (
    order_id     VARCHAR(36) NOT NULL,
    line         BIGINT NOT NULL,
    sku          VARCHAR(64) NOT NULL,
    qty          BIGINT NOT NULL CHECK (qty > 0),
    unit_amount  BIGINT NOT NULL,
    PRIMARY KEY (order_id, line)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE idempotency_keys (
    user_id       VARCHAR(128) NOT NULL,
    idem_key      VARCHAR(255) NOT NULL,
    request_hash  CHAR(64) NOT NULL,
    order_id      VARCHAR(36) NOT NULL,
    response      LONGTEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE outbox (
    id               BIGINT AUTO_INCREMENT PRIMARY KEY,
    event_id         VARCHAR(36) NOT NULL UNIQUE,
    event_type       VARCHAR(32) NOT NULL,
    aggregate_id     VARCHAR(128) NOT NULL,
    body             LONGTEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    published_at     BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT,
    KEY outbox_pending (published_at, next_attempt_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE failed_events (
    id            BIGINT AUTO_INCREMENT PRIMARY KEY,
    event_id      VARCHAR(36) NOT NULL UNIQUE,
    event_type    VARCHAR(32) NOT NULL,
    aggregate_id  VARCHAR(128) NOT NULL,
    body          LONGTEXT NOT NULL,
    error         TEXT NOT NULL,
    attempts      BIGINT NOT NULL,
    failed_at     BIGINT NOT NULL,
    replayed_at   BIGINT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
