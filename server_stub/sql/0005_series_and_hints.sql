-- Series in the catalog, and the service's hints in libraries (docs/PLANNING.md).
-- Each series a book belongs to, as its package document says (server_stub/epub.py).
CREATE TABLE book_series (
    book_id TEXT NOT NULL REFERENCES books(book_id),
    series_key TEXT NOT NULL,          -- the name casefolded, spacing collapsed
    name TEXT NOT NULL,                -- as the publisher wrote it
    position REAL,                     -- 1 for the first book; NULL when none was given
    PRIMARY KEY (book_id, series_key)
);
CREATE INDEX book_series_by_position ON book_series(series_key, position);
-- 0 for books imported before this migration: the next import reads their series.
ALTER TABLE books ADD COLUMN series_read INTEGER NOT NULL DEFAULT 0;
-- NULL: the account owns the book. Else the hint that put it in the library (sample,
-- wishlist, series_next): suggested, not bought; a later order turns it into a purchase.
ALTER TABLE library ADD COLUMN hint TEXT;
