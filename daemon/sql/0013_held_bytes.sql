-- Schema version 13: the bytes of books on the device, kept as frames arrive and go.
--
-- The delivery worker planned each step with every held book and their frames summed: a
-- library the device owns, delivered book by book, cost each step what was delivered before
-- it (80 books/s at 1,000 books, 5 at 20,000: issue 22 #2). The total is what the planner
-- needs at every step; the books themselves only when one must be evicted to make room.
CREATE TABLE held_bytes (
    only  INTEGER PRIMARY KEY CHECK (only = 0),
    bytes INTEGER NOT NULL
) STRICT;
INSERT INTO held_bytes (only, bytes) VALUES (0, (SELECT total(length(data)) FROM frames));

CREATE TRIGGER frames_held_bytes_insert AFTER INSERT ON frames WHEN NEW.data IS NOT NULL
BEGIN
    UPDATE held_bytes SET bytes = bytes + length(NEW.data);
END;
CREATE TRIGGER frames_held_bytes_update AFTER UPDATE OF data ON frames
BEGIN
    UPDATE held_bytes SET bytes = bytes + coalesce(length(NEW.data), 0)
        - coalesce(length(OLD.data), 0);
END;
CREATE TRIGGER frames_held_bytes_delete AFTER DELETE ON frames WHEN OLD.data IS NOT NULL
BEGIN
    UPDATE held_bytes SET bytes = bytes - length(OLD.data);
END;
