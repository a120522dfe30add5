-- Schema version 2: the reader's annotations (highlights, notes, bookmarks), reading positions,
-- the outbox that carries their edits to the service, and the shared ("popular") highlights.
-- Only daemon/notes_store.py reads and writes these tables, on its own connection with
-- synchronous=FULL: a note accepted by the local API survives a power cut (DESIGN.md promise 3).

-- One row per annotation: the join of every edit this device has seen (daemon/merge.py).
-- A deleted annotation keeps its row (a tombstone): an edit made elsewhere without seeing the
-- delete revives it whole, and the device can tell "deleted" from "never received".
CREATE TABLE annotations (
    item_id  TEXT PRIMARY KEY,
    book_id  TEXT NOT NULL,
    state    TEXT NOT NULL,      -- JSON, merge.item_to_doc
    created  INTEGER NOT NULL,   -- its creation has arrived (kind and anchor are known)
    deleted  INTEGER NOT NULL,   -- merge.is_deleted, kept here to list without parsing
    updated  TEXT NOT NULL       -- greatest edit or delete stamp
) STRICT;
CREATE INDEX annotations_by_book ON annotations (book_id, deleted, updated);

-- Reading positions, one row per book: each device's last place and the furthest place read.
CREATE TABLE positions (
    book_id TEXT PRIMARY KEY,
    state   TEXT NOT NULL        -- JSON, merge.position_to_doc
) STRICT;

-- Edits not yet acknowledged by the service, in the order they were made. A row is written in
-- the same transaction as the edit it carries and deleted only once the service acknowledged
-- its op_id (the service applies each op_id once, so a re-send after a crash changes nothing).
-- A reading position op still waiting is replaced by the next one for the same book.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id      TEXT NOT NULL UNIQUE,
    target     TEXT NOT NULL,    -- the annotation's id, or 'position:' || book_id
    body       TEXT NOT NULL,    -- the op as sent (JSON, docs/PROTOCOL.md "Annotation sync")
    created_at REAL NOT NULL,
    rejected   TEXT              -- NULL while pending; the service's reason if it refused the op
) STRICT;
CREATE INDEX outbox_by_target ON outbox (target);

-- Small facts of annotation sync: the hybrid clock, the feed cursors, the last sync.
CREATE TABLE notes_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Popular passages of the books on the device, as the service last described them.
CREATE TABLE popular_passages (
    book_id    TEXT NOT NULL,
    passage_id TEXT NOT NULL,
    readers    INTEGER NOT NULL,  -- distinct readers who highlighted it; never who
    anchor     TEXT NOT NULL,     -- JSON, merge.parse_anchor
    PRIMARY KEY (book_id, passage_id)
) STRICT;

-- Books whose popular passages the device holds in full; the account-wide feed keeps them
-- current from its cursor, and a book added later is fetched whole once before joining it.
CREATE TABLE popular_books (
    book_id TEXT PRIMARY KEY
) STRICT;
