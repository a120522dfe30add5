-- Delivery receipts, the promise verdicts and the notices feed (server_stub/receipts.py).
-- Every receipt judged, by the device's receipt id: one sent again is acknowledged only.
CREATE TABLE receipts (
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    receipt_id TEXT NOT NULL,
    book_id TEXT NOT NULL,
    ordered_at REAL NOT NULL,
    outcome TEXT NOT NULL,             -- complete | failed
    body TEXT NOT NULL,                -- JSON, as the device sent it (for operators)
    received_at REAL NOT NULL,
    PRIMARY KEY (device_id, receipt_id)
);
-- One row per delivery (a device, a book, the order that started the clock): its verdict.
-- A broken promise stays broken when a later receipt (the completion) arrives.
CREATE TABLE promises (
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    book_id TEXT NOT NULL,
    ordered_at REAL NOT NULL,
    account_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    link_class TEXT NOT NULL,          -- the device's profile name
    verdict TEXT NOT NULL CHECK (verdict IN ('kept', 'broken', 'pending', 'not_promised')),
    first_chapter_s REAL,              -- seconds from the order, service clock
    complete_s REAL,
    first_chapter_bound_s REAL NOT NULL,
    complete_bound_s REAL NOT NULL,
    retries INTEGER NOT NULL,
    why TEXT,                          -- a broken promise: which bound, by how much
    updated_at REAL NOT NULL,
    PRIMARY KEY (device_id, book_id, ordered_at)
);
CREATE INDEX promises_by_verdict ON promises(verdict, updated_at);
-- Notices to one device (an apology for a broken promise), as a feed it pulls by seq.
CREATE TABLE notices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    kind TEXT NOT NULL,
    book_id TEXT,
    ordered_at REAL,
    message TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX notices_by_device ON notices(device_id, seq);
-- One apology per delivery, however many of its receipts find the promise broken.
CREATE UNIQUE INDEX notices_one_apology ON notices(device_id, book_id, ordered_at)
    WHERE kind = 'apology';
