#!/usr/bin/env python3
"""What the relay's mark of an outbox row costs SQLite: WAL bytes and CPU per row marked,
for the two ways of marking (docs/write-path.md, "The relay's mark is a flag").

`time`: `published_at` goes from NULL (no bytes in the record) to a six-byte integer, so
the record changes size and SQLite writes it anew, its overflow pages (the events) too.
`flag`: `published` goes from 0 to 1 (no bytes either way), so the record keeps its size
and SQLite overwrites it in place, writing only the pages whose bytes changed.

Same pragmas as the server (WAL, synchronous = FULL); 2,000 rows of 64 events (~30 KB),
marked five per transaction. Usage: python3 scripts/outbox-mark-wal.py
"""
import json
import os
import sqlite3
import tempfile
import time

ROWS = 2000
PER_TRANSACTION = 5


def measure(kind: str, directory: str) -> None:
    path = os.path.join(directory, f"{kind}.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA wal_autocheckpoint = 0")  # the WAL's growth is the measure
    mark_column = "published_at INTEGER" if kind == "time" else "published INTEGER NOT NULL DEFAULT 0"
    db.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, events INTEGER NOT NULL, "
        "body TEXT NOT NULL, created_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
        f"next_attempt_at INTEGER NOT NULL DEFAULT 0, last_error TEXT, {mark_column})"
    )
    pending = "published_at" if kind == "time" else "published"
    db.execute(f"CREATE INDEX outbox_pending ON outbox ({pending}, id)")
    body = json.dumps([{"id": "0" * 36, "type": "order_created", "data": "x" * 400}] * 64)
    db.execute("BEGIN")
    for _ in range(ROWS):
        db.execute("INSERT INTO outbox (events, body, created_at) VALUES (64, ?, 1)", (body,))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal_before = os.path.getsize(path + "-wal")
    cpu_before = time.process_time()
    for first in range(1, ROWS + 1, PER_TRANSACTION):
        db.execute("BEGIN")
        for row in range(first, first + PER_TRANSACTION):
            if kind == "time":
                db.execute("UPDATE outbox SET published_at = ? WHERE id = ?", (1_765_000_000_000, row))
            else:
                db.execute("UPDATE outbox SET published = 1 WHERE id = ?", (row,))
        db.execute("COMMIT")
    cpu = time.process_time() - cpu_before
    wal = os.path.getsize(path + "-wal") - wal_before
    print(
        f"{kind}: SQLite {sqlite3.sqlite_version}, row {len(body)} bytes: "
        f"{wal // ROWS} WAL bytes and {cpu / ROWS * 1e6:.1f} µs CPU per row marked"
    )
    db.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        measure("time", directory)
        measure("flag", directory)
