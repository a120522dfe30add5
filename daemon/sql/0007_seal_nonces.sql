-- Schema version 7: frames sealed in chunks, and read without hashing them whole.
--
-- Manifest format 2 seals each frame in 64 KiB chunks (daemon/crypto.py), so a read
-- authenticates only the chunks it needs; frames stored before were sealed whole, and keep being
-- read that way (`sealed_in_chunks` 0).
ALTER TABLE manifests ADD COLUMN sealed_in_chunks INTEGER NOT NULL DEFAULT 0;
--
-- What binds a stored frame's bytes to its row is their first 12 bytes (the frame's nonce),
-- recorded when the frame was committed, right after its SHA-256 matched the signed manifest. A
-- read compares them and lets the AEAD tags vouch for the rest, instead of hashing the whole frame
-- again: on a slow ARM core, SHA-256 of a 2 MiB frame costs more than its decryption. Blobs
-- swapped between frames of one book at rest begin with another frame's nonce and are refused;
-- an altered byte fails its tag.
ALTER TABLE frames ADD COLUMN seal_nonce BLOB;
UPDATE frames SET seal_nonce = substr(data, 1, 12) WHERE data IS NOT NULL;
