-- The group commit of one batch as ONE round trip (issue 18): the same set-based
-- statements as src/persistence/sql/write_sets.rs (keep the two in step), each taking
-- one JSON array of positional rows, run inside the caller's transaction. A NULL array
-- skips its statement. The guards raise SQLSTATE 45000, which fails the batch exactly
-- like the statement-by-statement path (the write-behind then retries one by one).
CREATE PROCEDURE emporium_write_batch(
    IN p_orders LONGTEXT, IN p_items LONGTEXT, IN p_keys LONGTEXT,
    IN p_status LONGTEXT, IN p_status_n BIGINT,
    IN p_journal LONGTEXT, IN p_reserve LONGTEXT,
    IN p_settle LONGTEXT, IN p_settle_n BIGINT,
    IN p_snapshots LONGTEXT, IN p_snapshots_n BIGINT,
    IN p_outbox LONGTEXT, IN p_processed LONGTEXT)
BEGIN
    IF p_orders IS NOT NULL THEN
        INSERT INTO orders (id, user_id, status, total_amount, currency, payment_token, cancel_reason, created_at, updated_at, expires_at)
        SELECT j.id, j.user_id, j.status, j.total_amount, j.currency, j.payment_token, j.cancel_reason, j.created_at, j.updated_at, j.expires_at
        FROM JSON_TABLE(p_orders, '$[*]' COLUMNS (n FOR ORDINALITY, id TEXT PATH '$[0]', user_id TEXT PATH '$[1]', status TEXT PATH '$[2]',
            total_amount BIGINT PATH '$[3]', currency TEXT PATH '$[4]', payment_token TEXT PATH '$[5]', cancel_reason TEXT PATH '$[6]',
            created_at BIGINT PATH '$[7]', updated_at BIGINT PATH '$[8]', expires_at BIGINT PATH '$[9]')) AS j ORDER BY j.n;
    END IF;
    IF p_items IS NOT NULL THEN
        INSERT INTO order_items (order_id, line, sku, qty, unit_amount)
        SELECT j.order_id, j.line, j.sku, j.qty, j.unit_amount
        FROM JSON_TABLE(p_items, '$[*]' COLUMNS (n FOR ORDINALITY, order_id TEXT PATH '$[0]', line BIGINT PATH '$[1]',
            sku TEXT PATH '$[2]', qty BIGINT PATH '$[3]', unit_amount BIGINT PATH '$[4]')) AS j ORDER BY j.n;
    END IF;
    IF p_keys IS NOT NULL THEN
        INSERT INTO idempotency_keys (user_id, idem_key, request_hash, order_id, response, created_at)
        SELECT j.user_id, j.idem_key, j.request_hash, j.order_id, j.response, j.created_at
        FROM JSON_TABLE(p_keys, '$[*]' COLUMNS (n FOR ORDINALITY, user_id TEXT PATH '$[0]', idem_key TEXT PATH '$[1]',
            request_hash TEXT PATH '$[2]', order_id TEXT PATH '$[3]', response LONGTEXT PATH '$[4]', created_at BIGINT PATH '$[5]')) AS j ORDER BY j.n;
    END IF;
    IF p_status IS NOT NULL THEN
        UPDATE orders o JOIN JSON_TABLE(p_status, '$[*]' COLUMNS (id VARCHAR(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]',
            from_status VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[1]', to_status TEXT PATH '$[2]',
            cancel_reason TEXT PATH '$[3]', at BIGINT PATH '$[4]')) AS j ON o.id = j.id AND o.status = j.from_status
        SET o.status = j.to_status, o.cancel_reason = j.cancel_reason, o.updated_at = j.at;
        IF ROW_COUNT() <> p_status_n THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'an order of the batch is not in its expected status any more';
        END IF;
    END IF;
    IF p_journal IS NOT NULL THEN
        INSERT INTO inventory_journal (sku, seq, kind, order_id, qty, stock_delta, reserved_delta, created_at)
        SELECT j.sku, j.seq, j.kind, j.order_id, j.qty, j.stock_delta, j.reserved_delta, j.created_at
        FROM JSON_TABLE(p_journal, '$[*]' COLUMNS (n FOR ORDINALITY, sku TEXT PATH '$[0]', seq BIGINT PATH '$[1]', kind TEXT PATH '$[2]',
            order_id TEXT PATH '$[3]', qty BIGINT PATH '$[4]', stock_delta BIGINT PATH '$[5]', reserved_delta BIGINT PATH '$[6]',
            created_at BIGINT PATH '$[7]')) AS j ORDER BY j.n;
    END IF;
    IF p_reserve IS NOT NULL THEN
        INSERT INTO reservations (sku, order_id, qty, expires_at) SELECT j.sku, j.order_id, j.qty, j.expires_at
        FROM JSON_TABLE(p_reserve, '$[*]' COLUMNS (n FOR ORDINALITY, sku TEXT PATH '$[0]', order_id TEXT PATH '$[1]',
            qty BIGINT PATH '$[2]', expires_at BIGINT PATH '$[3]')) AS j ORDER BY j.n;
    END IF;
    IF p_settle IS NOT NULL THEN
        DELETE r FROM reservations r JOIN JSON_TABLE(p_settle, '$[*]' COLUMNS (
            sku VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]',
            order_id VARCHAR(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[1]')) AS j
            ON r.sku = j.sku AND r.order_id = j.order_id;
        IF ROW_COUNT() <> p_settle_n THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'a confirm or release has no stored reservation';
        END IF;
    END IF;
    IF p_snapshots IS NOT NULL THEN
        UPDATE inventory i JOIN JSON_TABLE(p_snapshots, '$[*]' COLUMNS (sku VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]',
            stock_delta BIGINT PATH '$[1]', reserved_delta BIGINT PATH '$[2]', seq BIGINT PATH '$[3]', at BIGINT PATH '$[4]')) AS j
            ON i.sku = j.sku
        SET i.stock = i.stock + j.stock_delta, i.reserved = i.reserved + j.reserved_delta,
            i.seq = CASE WHEN i.seq > j.seq THEN i.seq ELSE j.seq END, i.updated_at = j.at;
        IF ROW_COUNT() <> p_snapshots_n THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no inventory row for a SKU of the batch';
        END IF;
    END IF;
    IF p_outbox IS NOT NULL THEN
        INSERT INTO outbox (event_id, event_type, aggregate_id, body, created_at)
        SELECT j.event_id, j.event_type, j.aggregate_id, j.body, j.created_at
        FROM JSON_TABLE(p_outbox, '$[*]' COLUMNS (n FOR ORDINALITY, event_id TEXT PATH '$[0]', event_type TEXT PATH '$[1]',
            aggregate_id TEXT PATH '$[2]', body LONGTEXT PATH '$[3]', created_at BIGINT PATH '$[4]')) AS j ORDER BY j.n;
    END IF;
    IF p_processed IS NOT NULL THEN
        INSERT INTO processed_events (consumer, event_id, processed_at) SELECT j.consumer, j.event_id, j.processed_at
        FROM JSON_TABLE(p_processed, '$[*]' COLUMNS (n FOR ORDINALITY, consumer TEXT PATH '$[0]', event_id TEXT PATH '$[1]',
            processed_at BIGINT PATH '$[2]')) AS j ORDER BY j.n;
    END IF;
END
