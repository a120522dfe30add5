-- Schema version 6: manifest format 2 gives no SHA-256 per resource. The frames' hashes, from
-- the signed manifest, cover every byte a resource is read from, and are checked on every read
-- (daemon/reader.py); the per-resource hashes were half of a large book's manifest.
ALTER TABLE resources DROP COLUMN sha256;
