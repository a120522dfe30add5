"""Receipts measure from the purchase once the link is back (issue 23 #4, the receipts' half).

After an outage the library sync sat in its backoff while receipts (and notes) went through; a
purchase made then was told 116 s later, and its receipt counted from that late pull (the
previous pull had failed), so the service judged it "kept" and sent no apology. Contact is back
from the first exchange that succeeds, and the receipt's clock starts at the purchase."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import apsw

from daemon.models import LibraryChange
from daemon.store import Store

T0 = 1_764_000_000.0


def told(store: Store, book_id: str, ordered_at: float, notified_at: float, seq: int) -> float:
    """The order reaches the device's store; its delivery's contact-since time."""
    change = LibraryChange(seq, book_id, "add", "bought", 1, ordered_at)
    store.library.apply_library_changes([change], seq, notified_at)
    with closing(apsw.Connection(str(store.path))) as db:  # a look beside the store's own
        query = "SELECT link_up_at FROM deliveries WHERE book_id = ?"
        return float(next(db.execute(query, (book_id,)))[0])


def test_after_an_outage_the_clock_starts_at_the_purchase_once_contact_is_back(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "db")
    store.set_meta("registered_at", repr(T0 - 86400))
    store.receipts.mark_link_up(T0)  # the daemon starts, online
    # The outage: a library sync fails.
    store.set_meta("last_sync_error", "TransportError: GET /v1/library/changes: reset")
    store.receipts.mark_contact_lost(T0 + 10)
    # Bought while out of reach: counts from the pull that brings it (the reader was away).
    assert told(store, "bk_away", T0 + 20, T0 + 500, 1) == T0 + 500
    # The link returns: receipts go through at T0 + 600; the library sync still waits.
    store.receipts.mark_contact_lost(T0 + 550)
    store.receipts.mark_contact(T0 + 600)
    # Bought at T0 + 602, told at T0 + 718: the clock starts at the purchase, not the pull.
    link_up_at = told(store, "bk_late", T0 + 602, T0 + 718, 2)
    assert max(T0 + 602, link_up_at) == T0 + 602
    store.close()
