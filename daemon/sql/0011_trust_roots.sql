-- The trust roots verified after the pinned one (version 1, the provisioned service key), each
-- against the one before (daemon/protocol/root.py). The newest is the one trusted. `time_floor`
-- is the floor the root started from: a root with new signing keys starts its own (its issue
-- time), so a floor pushed far ahead under the old keys stops binding. The current root's floor
-- is meta 'time_floor', which verified manifests move. Such a root also empties trusted_versions
-- (0001 keeps them "never deleted": but only while the keys that vouched for them are trusted).
CREATE TABLE trust_roots (
    version INTEGER PRIMARY KEY,
    envelope BLOB NOT NULL,
    time_floor INTEGER NOT NULL,
    trusted_at REAL NOT NULL
) STRICT;
