-- Schema version 12: what a library view shows of a book before its manifest arrives.
-- A first sync of 20,000 books listed them all as `title: null` until each manifest came; the
-- changes feed now says what the catalog knows (NULL / '[]' when it did not say).
ALTER TABLE library ADD COLUMN title TEXT;
ALTER TABLE library ADD COLUMN authors TEXT NOT NULL DEFAULT '[]';  -- JSON list
ALTER TABLE library ADD COLUMN cover_size INTEGER;  -- bytes of the service's cover, if any
