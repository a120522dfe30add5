-- Encryption and dictionaries. Packages from version 1 were not encrypted: drop the
-- catalog so the next import repackages it (libraries and accounts stay).
ALTER TABLE devices ADD COLUMN public_key TEXT NOT NULL DEFAULT '';  -- base64 X25519
-- One content key per book, kept across versions so unchanged frames keep their bytes.
-- A real service keeps these in a KMS; the stub keeps them here.
CREATE TABLE content_keys (
    book_id TEXT PRIMARY KEY,
    key BLOB NOT NULL
);
-- Compression dictionaries by content address; the current one packages new versions.
CREATE TABLE dictionaries (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    current INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
DELETE FROM book_versions;
DELETE FROM books;
