-- Covers, for the device's library view: from the OPDS catalog a book was imported from when
-- it gave one, else the EPUB's own cover image (server_stub/catalog.py). At most one a book.
CREATE TABLE book_covers (
    book_id TEXT PRIMARY KEY REFERENCES books(book_id),
    origin TEXT NOT NULL,              -- 'opds' or 'epub'
    media_type TEXT NOT NULL,
    data BLOB NOT NULL,                -- at most catalog.MAX_COVER_BYTES
    sha256 TEXT NOT NULL,
    resource TEXT                      -- the cover's path in the book when origin is 'epub'
);
-- 0 for books imported before this migration: the next import reads their EPUB's cover.
ALTER TABLE books ADD COLUMN cover_read INTEGER NOT NULL DEFAULT 0;
