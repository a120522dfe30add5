"""Delivery receipts and the service's notices (daemon/sql/0005_receipts.sql).

Receipts and notices go through the store's one connection rather than one of their own:
completed receipts are written by a trigger inside the store's own transactions, and nothing
here needs the notes' synchronous=FULL: a power cut that loses a receipt loses the completion
it records with it (one transaction), and both happen again; a `failed` receipt is made again
by the next round; a lost page of notices loses its cursor too. Every method is one short
transaction that never awaits. Reads work on a read-only store too, and on a database
from before schema 5 (`shelfsync status` with an older daemon stopped) they report nothing.
"""

from __future__ import annotations

from typing import Any

from daemon.models import Notice, Receipt
from daemon.store.gateway import Gateway

SCHEMA_VERSION = 5  # the first schema holding these tables
KEEP_SENT_S = 30 * 86400.0  # answered receipts are kept this long, for status
KEEP_NOTICES = 100


class Receipts(Gateway):
    def _ready(self) -> bool:
        return self._schema_version() >= SCHEMA_VERSION

    def make_failed_receipts(self, now: float, promise_s: float) -> int:
        """Make a `failed` receipt for each delivery that has failed attempts and is still not
        complete `promise_s` after this device heard of it; returns how many were made.

        The deadline counts from notified_at (device clock), not ordered_at (service clock): a
        device clock set wrong cannot make a receipt early, and ordered_at <= notified_at anyway."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO receipts (receipt_id, outcome, book_id, version, reason,"
                " ordered_at, notified_at, link_up_at, started_at, first_chapter_at, completed_at,"
                " bytes_fetched, retries, last_error, made_at)"
                " SELECT d.book_id || '.v' || CASE WHEN d.version > 0 THEN d.version"
                "   ELSE coalesce(l.wanted_version, 0) END"
                "   || '.' || CAST(round(d.ordered_at * 1000) AS INTEGER) || '.failed',"
                " 'failed', d.book_id, CASE WHEN d.version > 0 THEN d.version"
                "   ELSE coalesce(l.wanted_version, 0) END,"
                " CASE WHEN d.ordered_at < CAST(coalesce((SELECT value FROM meta"
                "   WHERE key = 'registered_at'), 0) AS REAL) THEN 'archived'"
                "   ELSE coalesce(l.reason, 'unknown') END,"
                " d.ordered_at, d.notified_at, d.link_up_at, d.started_at, d.first_chapter_at,"
                " NULL, d.bytes_fetched, d.retries, substr(d.last_error, 1, 200), ?"
                " FROM deliveries d INDEXED BY deliveries_failing"
                " LEFT JOIN library l ON l.book_id = d.book_id"
                " WHERE d.completed_at IS NULL AND d.retries > 0 AND d.notified_at < ?",
                (now, now - promise_s),
            )
            return db.changes()

    def has_open_deliveries(self, notified_since: float) -> bool:
        """Whether a delivery of a book ordered for this device (since it joined the account)
        that it heard of since `notified_since` is not complete yet (so a receipt may appear at
        any moment). Older ones (books kept in the cloud, evicted, or stuck) and the archive
        bought before the device joined do not count: their receipts wait for the next link
        event. One index seek (daemon/sql/0009), whatever the size of the library."""
        row = self._one(
            "SELECT 1 FROM deliveries INDEXED BY deliveries_open_by_order"
            " WHERE completed_at IS NULL AND ordered_at >= CAST(coalesce((SELECT value FROM meta"
            " WHERE key = 'registered_at'), 0) AS REAL) AND notified_at > ? LIMIT 1",
            (notified_since,),
        )
        return row is not None

    def unsent_receipts(self, limit: int) -> list[Receipt]:
        """The oldest receipts still to send, at most `limit`."""
        rows = self._rows(
            "SELECT receipt_id, outcome, book_id, version, reason, ordered_at, notified_at,"
            " link_up_at, started_at, first_chapter_at, completed_at, bytes_fetched, retries,"
            " last_error"
            " FROM receipts WHERE sent_at IS NULL AND rejected IS NULL"
            " ORDER BY made_at, receipt_id LIMIT ?",
            (limit,),
        )
        return [Receipt(**r) for r in rows]

    def mark_sent(self, acked: list[str], rejected: dict[str, str], now: float) -> int:
        """Record the service's answer; forget receipts acknowledged long ago. Returns how many
        receipts left the outbox."""
        with self._transaction() as db:
            done = 0
            for receipt_id in acked:
                db.execute(
                    "UPDATE receipts SET sent_at = ? WHERE receipt_id = ? AND sent_at IS NULL",
                    (now, receipt_id),
                )
                done += db.changes()
            for receipt_id, detail in rejected.items():
                db.execute(
                    "UPDATE receipts SET rejected = ? WHERE receipt_id = ? AND sent_at IS NULL",
                    (detail[:500], receipt_id),
                )
                done += db.changes()
            db.execute(
                "DELETE FROM receipts WHERE sent_at < ? OR (rejected IS NOT NULL AND made_at < ?)",
                (now - KEEP_SENT_S, now - KEEP_SENT_S),
            )
        return done

    def mark_link_up(self, now: float) -> None:
        """The device's contact with the service begins now (the daemon started, push connected):
        orders learned from here on count from their order time (daemon/sql/0005_receipts.sql)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('link_up_at', ?)", (repr(now),)
            )
            db.execute("DELETE FROM meta WHERE key = 'contact_lost_at'")

    def mark_contact_lost(self, now: float) -> None:
        """A library sync could not reach the service: until an exchange succeeds again, an order
        the device learns of counts from when it learned it (daemon/sql/0012_contact_since.sql)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('contact_lost_at', ?)",
                (repr(now),),
            )

    def mark_contact(self, now: float) -> None:
        """An exchange with the service succeeded: if contact had been lost, it is back from now,
        and orders learned later count from their order (or from now), not from the late pull."""
        if self._meta_value("contact_lost_at"):
            self.mark_link_up(now)

    def notice_cursor(self) -> int:
        return int(self._meta_value("notice_cursor") or 0)

    def add_notices(self, notices: list[Notice], cursor: int, now: float) -> int:
        """Keep one page of the notices feed and advance its cursor, all or nothing; returns how
        many notices were new."""
        with self._transaction() as db:
            new = 0
            for n in notices:
                db.execute(
                    "INSERT OR IGNORE INTO notices (seq, kind, book_id, message, at, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (n.seq, n.kind, n.book_id, n.message, n.at, now),
                )
                new += db.changes()
            db.execute(
                "DELETE FROM notices WHERE seq NOT IN"
                " (SELECT seq FROM notices ORDER BY seq DESC LIMIT ?)",
                (KEEP_NOTICES,),
            )
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('notice_cursor', ?)",
                (str(cursor),),
            )
        return new

    def recent_notices(self, limit: int) -> list[dict[str, Any]]:
        """The newest notices first, as the local API and status show them."""
        if not self._ready():
            return []
        return self._rows(
            "SELECT n.seq, n.kind, n.book_id, m.title, n.message, n.at, n.received_at"
            " FROM notices n LEFT JOIN manifests m ON m.book_id = n.book_id"
            "   AND m.version = (SELECT max(version) FROM manifests WHERE book_id = n.book_id)"
            " ORDER BY n.seq DESC LIMIT ?",
            (limit,),
        )

    def receipt_status(self) -> dict[str, Any] | None:
        """Receipts as the status report shows them; None before schema 5."""
        if not self._ready():
            return None
        row = self._row(
            "SELECT count(*) FILTER (WHERE sent_at IS NULL AND rejected IS NULL) AS unsent,"
            " count(*) FILTER (WHERE rejected IS NOT NULL) AS rejected,"
            " max(sent_at) AS last_sent_at FROM receipts"
        )
        assert row is not None  # counts: always one row
        return {**row, "unsent": int(row["unsent"]), "rejected": int(row["rejected"])}
