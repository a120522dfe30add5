-- Schema version 8: a frame's nonce read without walking its blob.
--
-- seal_nonce was added after `data`, so it lies at the end of the row, past a blob of up to
-- 2 MiB in overflow pages: reading it walked the whole overflow chain, once per frame a read
-- opened. A covering index holds it beside the key, so a read looks it up in a few pages.
-- Building it reads every stored frame's row to its end once: on a device with a full library
-- this migration costs one read of the database (seconds per GB of flash), at the first start.
CREATE INDEX frames_nonce ON frames (book_id, version, idx, seal_nonce);
