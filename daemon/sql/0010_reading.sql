-- How to lay each book version out (the manifest's `reading`: direction, layout, spread, cover,
-- spine, landmarks, page list, series), as JSON for the book API; '{}' for manifests recorded
-- before this migration, whose packages carried none.
ALTER TABLE manifests ADD COLUMN reading TEXT NOT NULL DEFAULT '{}';
