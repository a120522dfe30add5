-- Annotation sync and popular highlights (server_stub/annotations.py).
-- Each annotation (or an account's reading position in a book: target 'position:<book>')
-- as the join of every op applied to it (daemon/protocol/merge.py). seq orders the changes
-- feed; last_device/other_seq let the feed skip what a device itself sent and already holds.
CREATE TABLE annotation_items (
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    target TEXT NOT NULL,
    book_id TEXT NOT NULL,
    state TEXT NOT NULL,               -- JSON: merge.item_to_doc / merge.position_to_doc
    seq INTEGER NOT NULL,              -- the feed sequence of its last change
    last_device TEXT NOT NULL,         -- the device whose op made that change
    other_seq INTEGER NOT NULL,        -- the last change made by any other device (0: none)
    PRIMARY KEY (account_id, target)
);
CREATE INDEX annotation_items_feed ON annotation_items(account_id, seq);
-- Every op applied, by its client-made id: an op sent again is acknowledged, not reapplied.
CREATE TABLE annotation_ops (
    account_id TEXT NOT NULL,
    op_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    target TEXT NOT NULL,
    seq INTEGER NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (account_id, op_id)
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters (name, value) VALUES ('annotations', 0), ('popular', 0);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Accounts that let their highlights count towards popular passages (default: no).
CREATE TABLE sharing (
    account_id TEXT PRIMARY KEY REFERENCES accounts(account_id),
    share INTEGER NOT NULL
);
-- One row per live highlight of any account, by passage; counted only while shared.
CREATE TABLE shared_marks (
    account_id TEXT NOT NULL,
    target TEXT NOT NULL,
    book_id TEXT NOT NULL,
    passage_id TEXT NOT NULL,
    anchor TEXT NOT NULL,              -- JSON: the passage's anchor (book text, no note)
    PRIMARY KEY (account_id, target)
);
CREATE INDEX shared_marks_by_passage ON shared_marks(book_id, passage_id);
-- Popular passages as published: readers is 0 once a passage fell below the threshold,
-- so devices holding it learn to drop it.
CREATE TABLE popular_passages (
    book_id TEXT NOT NULL,
    passage_id TEXT NOT NULL,
    readers INTEGER NOT NULL,
    anchor TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (book_id, passage_id)
);
CREATE INDEX popular_passages_feed ON popular_passages(seq);
