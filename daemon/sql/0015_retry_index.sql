-- Schema version 15: the books waiting out a failed delivery, by when each is due again.
--
-- The delivery worker's look took every failing book (and widened its window by as many), so a
-- library whose thousands of books failed (a feed ahead of the catalog) cost each scheduling
-- step thousands of candidates (issue 22 #2). It now takes only the failing books due soonest:
-- a range of this index, whatever the number failing.
CREATE INDEX deliveries_retrying ON deliveries (retry_at) WHERE completed_at IS NULL AND retries > 0;
