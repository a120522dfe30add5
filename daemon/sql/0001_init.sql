-- Schema version 1: the library, verified manifests, frames, delivery receipts.

-- Small facts about this device: credentials, the library cursor, the trusted time floor.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- The library as the service last described it. A row stays after a book is returned
-- (in_library = 0) so that a late, replayed "add" cannot resurrect it: changes apply by seq.
CREATE TABLE library (
    book_id        TEXT PRIMARY KEY,
    in_library     INTEGER NOT NULL,
    wanted_version INTEGER NOT NULL,
    reason         TEXT NOT NULL,      -- bought, sent, update, returned ...
    change_seq     INTEGER NOT NULL,   -- the service's seq of the change that set this row
    ordered_at     REAL NOT NULL,      -- when bought/sent at the service: the 60 s clock starts
    notified_at    REAL NOT NULL       -- when this device learned of it
) STRICT;

-- Highest manifest version ever verified per book. Never lowered, never deleted: rollback
-- protection must survive the book's removal (TUF's "keep the highest version seen").
CREATE TABLE trusted_versions (
    book_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) STRICT;

-- One row per verified manifest held. Rows of older versions go once a newer one is complete.
CREATE TABLE manifests (
    book_id              TEXT NOT NULL,
    version              INTEGER NOT NULL,
    envelope             BLOB NOT NULL,      -- exactly as signed, for re-verification
    title                TEXT NOT NULL,
    authors              TEXT NOT NULL,      -- JSON list
    language             TEXT NOT NULL,
    toc                  TEXT NOT NULL,      -- JSON
    first_chapter        TEXT NOT NULL,
    first_chapter_frames INTEGER NOT NULL,
    frame_count          INTEGER NOT NULL,
    package_size         INTEGER NOT NULL,
    plain_size           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL,
    complete             INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (book_id, version)
) STRICT;

-- Every frame of every held manifest; data is NULL until the frame arrived and verified.
-- "Missing" is data IS NULL, so resuming after a crash needs no other bookkeeping.
CREATE TABLE frames (
    book_id        TEXT NOT NULL,
    version        INTEGER NOT NULL,
    idx            INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    package_offset INTEGER NOT NULL,
    length         INTEGER NOT NULL,
    plain_offset   INTEGER NOT NULL,
    plain_size     INTEGER NOT NULL,
    codec          TEXT NOT NULL,
    data           BLOB,
    PRIMARY KEY (book_id, version, idx),
    FOREIGN KEY (book_id, version) REFERENCES manifests ON DELETE CASCADE
) STRICT;
CREATE INDEX frames_missing ON frames (book_id, version, idx) WHERE data IS NULL;

-- Resources of each held manifest, with the frames that hold them, so a read needs no JSON.
CREATE TABLE resources (
    book_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    path        TEXT NOT NULL,
    ord         INTEGER NOT NULL,
    media_type  TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    offset      INTEGER NOT NULL,     -- in the book's plaintext stream
    first_frame INTEGER NOT NULL,
    last_frame  INTEGER NOT NULL,     -- first_frame - 1 for an empty resource
    PRIMARY KEY (book_id, version, path),
    FOREIGN KEY (book_id, version) REFERENCES manifests ON DELETE CASCADE
) STRICT;

-- Delivery receipts: how the latest delivery of each book went (DESIGN.md promise 6).
CREATE TABLE deliveries (
    book_id          TEXT PRIMARY KEY,
    version          INTEGER NOT NULL DEFAULT 0,  -- 0 until the manifest is known
    ordered_at       REAL NOT NULL,
    notified_at      REAL NOT NULL,
    started_at       REAL,
    first_chapter_at REAL,
    completed_at     REAL,
    bytes_fetched    INTEGER NOT NULL DEFAULT 0,
    failures         INTEGER NOT NULL DEFAULT 0,  -- consecutive failures without progress
    retries          INTEGER NOT NULL DEFAULT 0,  -- all failed attempts
    retry_at         REAL NOT NULL DEFAULT 0,
    last_error       TEXT
) STRICT;
