-- A book's title and authors as the changes feed gives them, so a book not yet on the device
-- (queued, in the cloud, waiting for a retry) is named by its title in the status, the trip and
-- GET /v1/books/{id}, not by its id. NULL for books heard of before the feed carried them; a
-- verified manifest's title wins once there is one.
ALTER TABLE library ADD COLUMN title TEXT;
ALTER TABLE library ADD COLUMN authors TEXT;  -- JSON list of strings
