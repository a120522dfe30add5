-- Schema version 7: what binds a stored frame's bytes to its row is the nonce its sealed bytes
-- begin with, recorded when the frame was committed (its SHA-256 against the signed manifest
-- had just been checked). A read compares those 12 bytes and lets the AEAD tag vouch for the
-- rest, instead of hashing the whole frame again: on a slow ARM core, SHA-256 of a 2 MiB frame
-- costs more than the decryption. Blobs swapped between frames of one book at rest carry
-- another frame's nonce and are refused; an altered byte fails the tag.
ALTER TABLE frames ADD COLUMN seal_nonce BLOB;
UPDATE frames SET seal_nonce = substr(data, 1, 12) WHERE data IS NOT NULL;
