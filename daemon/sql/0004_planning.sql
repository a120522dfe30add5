-- Schema version 4: what the planner needs to keep, fetch and evict well.

-- The reader pinned the book: it is never evicted.
ALTER TABLE library ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
-- When the reader last opened the book (the local API is told): the book open now is never
-- evicted, and a book opened lately is likely to be opened again.
ALTER TABLE library ADD COLUMN opened_at REAL;
-- When the reader asked for the book to be on the device (an archived book, say).
ALTER TABLE library ADD COLUMN requested_at REAL;
-- When its frames were removed to make room; it stays in the library, in the cloud.
ALTER TABLE library ADD COLUMN evicted_at REAL;
-- The package's size as the changes feed gave it: the planner's room check before the manifest.
ALTER TABLE library ADD COLUMN expected_size INTEGER;
