-- The group commit no longer calls emporium_write_batch (0005): its JSON_TABLE expansion
-- cost the server many times what the same rows cost as prepared multi-row statements,
-- which is what src/persistence/sql/write_sets.rs now sends (docs/write-path.md).
DROP PROCEDURE IF EXISTS emporium_write_batch;
