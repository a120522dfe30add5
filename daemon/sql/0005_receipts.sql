-- Schema version 5: delivery receipts on their way to the service, and the service's notices
-- (daemon/receipts.py, daemon/receipt_store.py; docs/PROTOCOL.md "Delivery receipts").

-- How each delivery went, as sent to the service: an outbox. A row stays unsent until the
-- service acknowledged its receipt_id; a crash before that re-sends it, and the service knows
-- the id. The id is made from the delivery (book, version, the service's order time in ms) and
-- the outcome, so making a receipt twice is a no-op. `failed` is a delivery still not complete
-- after the promise (60 s) with failed attempts; `complete` follows when it completes.
-- `reason` is 'archived' for a book ordered before this device joined the account and fetched
-- later on request: the 60-second promise is for new orders only.
CREATE TABLE receipts (
    receipt_id       TEXT PRIMARY KEY,
    outcome          TEXT NOT NULL CHECK (outcome IN ('complete', 'failed')),
    book_id          TEXT NOT NULL,
    version          INTEGER NOT NULL,
    reason           TEXT NOT NULL,   -- bought, sent, revised ... (the library's reason)
    ordered_at       REAL NOT NULL,   -- service clock: when the 60 s clock started
    notified_at      REAL NOT NULL,   -- device clock, as are the times below
    link_up_at       REAL,            -- the device's contact with the service began (see below)
    started_at       REAL,
    first_chapter_at REAL,
    completed_at     REAL,
    bytes_fetched    INTEGER NOT NULL,
    retries          INTEGER NOT NULL,  -- failed attempts of this delivery
    last_error       TEXT,
    made_at          REAL NOT NULL,
    sent_at          REAL,              -- when the service acknowledged it; NULL: to send
    rejected         TEXT               -- the service refused it as malformed: never re-sent
) STRICT;
CREATE INDEX receipts_unsent ON receipts (made_at) WHERE sent_at IS NULL AND rejected IS NULL;

-- When the device learned of an order, since when had it been in contact with the service? The
-- promise counts from the order only if the device was reachable then: a book bought while the
-- device was off or out of coverage is judged from the moment it came back. meta 'link_up_at' is
-- set by the receipt worker when the daemon starts and whenever the push channel connects; if
-- the previous library sync failed (meta 'last_sync_error', written by daemon/library_sync.py
-- after each sync, so still the previous one's while a page is applied), the device was out of
-- contact until this very sync. Captured here, in the transaction that records the order.
ALTER TABLE deliveries ADD COLUMN link_up_at REAL;
CREATE TRIGGER deliveries_link_up_new AFTER INSERT ON deliveries
BEGIN
    UPDATE deliveries SET link_up_at = CASE
        WHEN coalesce((SELECT value FROM meta WHERE key = 'last_sync_error'), '') <> ''
            THEN NEW.notified_at
        ELSE coalesce(CAST((SELECT value FROM meta WHERE key = 'link_up_at') AS REAL),
                      NEW.notified_at) END
    WHERE book_id = NEW.book_id;
END;
CREATE TRIGGER deliveries_link_up_renotified AFTER UPDATE OF notified_at ON deliveries
BEGIN
    UPDATE deliveries SET link_up_at = CASE
        WHEN coalesce((SELECT value FROM meta WHERE key = 'last_sync_error'), '') <> ''
            THEN NEW.notified_at
        ELSE coalesce(CAST((SELECT value FROM meta WHERE key = 'link_up_at') AS REAL),
                      NEW.notified_at) END
    WHERE book_id = NEW.book_id;
END;

-- A completed delivery makes its receipt in the very transaction that records the completion
-- (daemon/store.py sets completed_at once per delivery), so no completion can go unreported.
-- The completing UPDATE also clears last_error: the receipt keeps the error it had before.
CREATE TRIGGER deliveries_complete_receipt AFTER UPDATE OF completed_at ON deliveries
WHEN OLD.completed_at IS NULL AND NEW.completed_at IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO receipts (receipt_id, outcome, book_id, version, reason, ordered_at,
        notified_at, link_up_at, started_at, first_chapter_at, completed_at, bytes_fetched,
        retries, last_error, made_at)
    VALUES (
        NEW.book_id || '.v' || NEW.version || '.' || CAST(round(NEW.ordered_at * 1000) AS INTEGER)
            || '.complete',
        'complete', NEW.book_id, NEW.version,
        CASE WHEN NEW.ordered_at < CAST(coalesce((SELECT value FROM meta
                                                  WHERE key = 'registered_at'), 0) AS REAL)
            THEN 'archived'
            ELSE coalesce((SELECT reason FROM library WHERE book_id = NEW.book_id), 'unknown')
        END,
        NEW.ordered_at, NEW.notified_at, NEW.link_up_at, NEW.started_at, NEW.first_chapter_at,
        NEW.completed_at,
        NEW.bytes_fetched, NEW.retries, substr(coalesce(NEW.last_error, OLD.last_error), 1, 200),
        NEW.completed_at);
END;

-- Deliveries not complete yet: the receipt worker looks for failing ones past the promise.
CREATE INDEX deliveries_open ON deliveries (notified_at) WHERE completed_at IS NULL;

-- Notices from the service (an apology for a broken promise), by the service's sequence; the
-- newest 100 are kept. The feed's cursor is meta 'notice_cursor'.
CREATE TABLE notices (
    seq         INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    book_id     TEXT,
    message     TEXT NOT NULL,
    at          REAL NOT NULL,   -- service clock: when the service made it
    received_at REAL NOT NULL
) STRICT;
