-- Catalog (issue 7) on MySQL/MariaDB: the same shapes as migrations/sqlite/0003_catalog.sql.
-- Filtered columns are generated from the document (VIRTUAL, indexed); a JSON null
-- becomes SQL NULL, not the string 'null'.

ALTER TABLE products
    ADD COLUMN version BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN deleted_at BIGINT NULL,
    ADD COLUMN brand VARCHAR(100) AS (IF(JSON_TYPE(JSON_EXTRACT(doc, '$.brand')) = 'NULL', NULL, JSON_UNQUOTE(JSON_EXTRACT(doc, '$.brand')))) VIRTUAL,
    ADD COLUMN category_path VARCHAR(320) AS (IF(JSON_TYPE(JSON_EXTRACT(doc, '$.category_path')) = 'NULL', NULL, JSON_UNQUOTE(JSON_EXTRACT(doc, '$.category_path')))) VIRTUAL,
    ADD COLUMN price_amount BIGINT AS (CAST(JSON_EXTRACT(doc, '$.price.amount') AS SIGNED)) VIRTUAL,
    ADD COLUMN status VARCHAR(16) AS (JSON_UNQUOTE(JSON_EXTRACT(doc, '$.status'))) VIRTUAL;

CREATE INDEX products_by_category ON products (category_path, id);
CREATE INDEX products_by_brand ON products (brand, id);
CREATE INDEX products_by_price ON products (price_amount, id);
CREATE INDEX products_by_status ON products (status, id);

CREATE TABLE categories (
    id          BIGINT PRIMARY KEY AUTO_INCREMENT,
    name        VARCHAR(100) NOT NULL,
    parent_id   BIGINT NULL,
    path        VARCHAR(320) NOT NULL,
    depth       BIGINT NOT NULL CHECK (depth >= 0),
    created_at  BIGINT NOT NULL,
    CONSTRAINT categories_parent FOREIGN KEY (parent_id) REFERENCES categories (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX categories_by_path ON categories (path);
CREATE INDEX categories_by_parent ON categories (parent_id, id);

CREATE TABLE catalog_projection (
    seq          BIGINT PRIMARY KEY AUTO_INCREMENT,
    product_id   VARCHAR(36) NULL,
    category_id  BIGINT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE catalog_bulk_loads (
    id             BIGINT PRIMARY KEY AUTO_INCREMENT,
    products       BIGINT NOT NULL,
    loaded_at      BIGINT NOT NULL,
    reindexed_at   BIGINT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
