-- Catalog (issue 7): products become queryable documents, categories a tree with
-- materialized paths. The product document (`doc`) stays the one truth: the columns a
-- query filters on are generated from it (VIRTUAL: computed on read, stored only in
-- their indexes), so they can never disagree with the document.

ALTER TABLE products ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
-- Soft delete: the row (and its SKUs, which own inventory history) stays.
ALTER TABLE products ADD COLUMN deleted_at INTEGER;
ALTER TABLE products ADD COLUMN brand TEXT GENERATED ALWAYS AS (json_extract(doc, '$.brand')) VIRTUAL;
ALTER TABLE products ADD COLUMN category_path TEXT GENERATED ALWAYS AS (json_extract(doc, '$.category_path')) VIRTUAL;
ALTER TABLE products ADD COLUMN price_amount INTEGER GENERATED ALWAYS AS (json_extract(doc, '$.price.amount')) VIRTUAL;
ALTER TABLE products ADD COLUMN status TEXT GENERATED ALWAYS AS (json_extract(doc, '$.status')) VIRTUAL;

-- "This category and below" is a range on category_path (see src/domain/catalog.rs).
CREATE INDEX products_by_category ON products (category_path, id);
CREATE INDEX products_by_brand ON products (brand, id);
CREATE INDEX products_by_price ON products (price_amount, id);
CREATE INDEX products_by_status ON products (status, id);

CREATE TABLE categories (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    parent_id   INTEGER REFERENCES categories (id),
    path        TEXT NOT NULL,
    depth       INTEGER NOT NULL CHECK (depth >= 0),
    created_at  INTEGER NOT NULL
);
CREATE INDEX categories_by_path ON categories (path);
CREATE INDEX categories_by_parent ON categories (parent_id, id);

-- Changes committed here that a projected catalog (MongoDB) has not applied yet. Written
-- in the same transaction as the change, deleted once the projection applied it, so a
-- crash between the SQL commit and the MongoDB write loses nothing (see
-- src/persistence/catalog_mongo.rs). Unused by the embedded catalog.
CREATE TABLE catalog_projection (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id   TEXT,
    category_id  INTEGER
);

-- `emporium seed` loads products without one event each; it leaves this marker, and
-- search rebuilds from the catalog (`emporium reindex`) instead of from events.
CREATE TABLE catalog_bulk_loads (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    products       INTEGER NOT NULL,
    loaded_at      INTEGER NOT NULL,
    reindexed_at   INTEGER
);
