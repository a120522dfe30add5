-- Since when the device has been in contact with the service, for the receipts' clock
-- (0005_receipts.sql). 0005 took "the previous library sync failed" for "out of contact until
-- this very sync", even when notes and receipts had gone through since (the link was back, and
-- only the library sync still sat in its backoff): a purchase made then and told 116 s later
-- was judged from the late pull, "kept", and got no apology (issue 23). Now meta
-- 'contact_lost_at' is set when a library sync fails and cleared by the first exchange that
-- succeeds afterwards (a library sync, receipts, the push channel), which also moves
-- 'link_up_at' to that moment (daemon/content/receipt_store.py): an order told while contact
-- is lost counts from this very sync; any other from the order, or from when contact returned.
DROP TRIGGER deliveries_link_up_new;
DROP TRIGGER deliveries_link_up_renotified;
CREATE TRIGGER deliveries_link_up_new AFTER INSERT ON deliveries
BEGIN
    UPDATE deliveries SET link_up_at = CASE
        WHEN coalesce((SELECT value FROM meta WHERE key = 'contact_lost_at'), '') <> ''
            THEN NEW.notified_at
        ELSE coalesce(CAST((SELECT value FROM meta WHERE key = 'link_up_at') AS REAL),
                      NEW.notified_at) END
    WHERE book_id = NEW.book_id;
END;
CREATE TRIGGER deliveries_link_up_renotified AFTER UPDATE OF notified_at ON deliveries
BEGIN
    UPDATE deliveries SET link_up_at = CASE
        WHEN coalesce((SELECT value FROM meta WHERE key = 'contact_lost_at'), '') <> ''
            THEN NEW.notified_at
        ELSE coalesce(CAST((SELECT value FROM meta WHERE key = 'link_up_at') AS REAL),
                      NEW.notified_at) END
    WHERE book_id = NEW.book_id;
END;
-- A device that was failing when it was upgraded: out of contact, as 0005 would have said.
INSERT OR IGNORE INTO meta (key, value)
    SELECT 'contact_lost_at', '0' FROM meta
    WHERE key = 'last_sync_error' AND value <> '';
