-- Schema version 3: frames are sealed with a per-book content key and may need a dictionary.

-- Frames stored before this version were not sealed and cannot be read by this shelfsync:
-- forget them (the library stays; the books are delivered again in the new format).
DELETE FROM manifests;

-- The content key wrapped for this device, as the signed manifest carried it (JSON); it is
-- unwrapped with the device key only while a frame of the book is being read.
ALTER TABLE manifests ADD COLUMN content_key TEXT NOT NULL DEFAULT '';
-- The dictionary the manifest's zstd-dict frames need, by SHA-256 (NULL: none).
ALTER TABLE manifests ADD COLUMN dictionary TEXT;

-- Compression dictionaries by content address, shared by every book that names them.
CREATE TABLE dictionaries (
    sha256 TEXT PRIMARY KEY,
    data   BLOB NOT NULL
) STRICT;
