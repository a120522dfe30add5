-- Schema version 9: what waits to be delivered, found without reading the whole library.
--
-- A library of 20,000 books bought before this device joined is 20,000 rows that stay in the
-- cloud. The delivery worker asked "which books are not complete at the version wanted?" with a
-- subquery per row, and the receipt worker scanned every open delivery, so each look cost the
-- whole library: a device idle for an hour spent 28 CPU-seconds on it (issue 16).

-- The newest complete version held of each book (0: none), kept by the triggers below from the
-- manifests table, so "pending" is a comparison within the row and can be indexed.
ALTER TABLE library ADD COLUMN complete_version INTEGER NOT NULL DEFAULT 0;
UPDATE library SET complete_version = coalesce(
    (SELECT max(m.version) FROM manifests m WHERE m.book_id = library.book_id AND m.complete), 0);

CREATE TRIGGER manifests_complete_version_insert AFTER INSERT ON manifests
BEGIN
    UPDATE library SET complete_version = coalesce((SELECT max(version) FROM manifests
        WHERE book_id = NEW.book_id AND complete), 0) WHERE book_id = NEW.book_id;
END;
CREATE TRIGGER manifests_complete_version_update AFTER UPDATE OF complete ON manifests
BEGIN
    UPDATE library SET complete_version = coalesce((SELECT max(version) FROM manifests
        WHERE book_id = NEW.book_id AND complete), 0) WHERE book_id = NEW.book_id;
END;
CREATE TRIGGER manifests_complete_version_delete AFTER DELETE ON manifests
BEGIN
    UPDATE library SET complete_version = coalesce((SELECT max(version) FROM manifests
        WHERE book_id = OLD.book_id AND complete), 0) WHERE book_id = OLD.book_id;
END;

-- Books in the library not complete at the version wanted, by order time: those ordered since
-- the device joined are a range of it; the archive is the rest, newest first (trip mode).
CREATE INDEX library_pending ON library (ordered_at)
    WHERE in_library AND complete_version < wanted_version;
-- Pending books the reader or the service singled out (asked for, opened, evicted, a hint, an
-- older version readable): few, and each may be planned whenever it was ordered.
CREATE INDEX library_pending_touched ON library (book_id)
    WHERE in_library AND complete_version < wanted_version
    AND (requested_at IS NOT NULL OR opened_at IS NOT NULL OR evicted_at IS NOT NULL
         OR reason IN ('sample', 'wishlist', 'series_next') OR complete_version > 0);

-- Open deliveries with failed attempts: the receipt worker's `failed` receipts come from these.
CREATE INDEX deliveries_failing ON deliveries (notified_at)
    WHERE completed_at IS NULL AND retries > 0;
-- Open deliveries by order time: "is a delivery ordered lately under way?" is one seek.
CREATE INDEX deliveries_open_by_order ON deliveries (ordered_at) WHERE completed_at IS NULL;
