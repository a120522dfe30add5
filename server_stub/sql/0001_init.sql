-- Accounts, devices, the catalog, libraries and the changes feed.
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE books (
    book_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    authors TEXT NOT NULL,             -- JSON list of strings
    language TEXT NOT NULL,
    version INTEGER NOT NULL,          -- the current version
    epub_sha256 TEXT NOT NULL,         -- of the file the current version came from
    epub_size INTEGER NOT NULL,
    source TEXT NOT NULL               -- that file's name, for operators
);
CREATE INDEX books_by_epub ON books(epub_sha256);
CREATE TABLE book_versions (
    id INTEGER PRIMARY KEY,            -- the rowid blob_open needs
    book_id TEXT NOT NULL REFERENCES books(book_id),
    version INTEGER NOT NULL,
    manifest BLOB NOT NULL,            -- template bytes (protocol.manifest.encode_manifest)
    package BLOB NOT NULL,
    package_sha256 TEXT NOT NULL,
    package_size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (book_id, version)
);
-- What each account owns now; device_id '' means every device of the account.
CREATE TABLE library (
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    book_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    added_at REAL NOT NULL,
    PRIMARY KEY (account_id, book_id, device_id)
);
CREATE INDEX library_by_book ON library(book_id);
-- The changes feed. book_id is not a foreign key: the feed is a log, and tests seed
-- libraries of 20,000 books that the catalog does not hold.
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    device_id TEXT REFERENCES devices(device_id),  -- NULL: every device of the account
    book_id TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('add', 'remove', 'update')),
    reason TEXT NOT NULL,
    version INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX changes_by_account ON changes(account_id, seq);
