-- Packages in chunks of 64 KiB (server_stub/store/catalog.py PACKAGE_CHUNK), one row each.
-- A package was one blob: SQLite reaches byte N of a blob by walking its chain of overflow
-- pages from the start, and each read of a response opened the blob anew, so serving a 300 MB
-- package cost a walk per 64 KiB: 2.4 MB/s against 107 MB/s for a 6 MB one (issue 22 #6).
-- Reaching any chunk is one index seek, whatever the package's size. Versions packaged before
-- keep their blob (splitting it here would load it whole once per chunk); new ones store an
-- empty one.
CREATE TABLE package_chunks (
    version_id INTEGER NOT NULL REFERENCES book_versions(id),
    idx        INTEGER NOT NULL,   -- the chunk's offset in the package / PACKAGE_CHUNK
    data       BLOB NOT NULL,      -- PACKAGE_CHUNK bytes, the last chunk fewer
    PRIMARY KEY (version_id, idx)
);
