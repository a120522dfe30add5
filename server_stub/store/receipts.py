"""Delivery receipts, the promise verdicts and the notices feed (server_stub/receipts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server_stub.store.accounts import Device
from server_stub.store.database import Database


@dataclass(frozen=True, slots=True)
class JudgedReceipt:
    """A delivery receipt with the service's verdict (server_stub/receipts.py `judge`)."""

    receipt_id: str
    book_id: str
    ordered_at: float
    outcome: str  # complete | failed
    reason: str
    link_class: str
    verdict: str  # kept | broken | pending | not_promised
    first_chapter_s: float | None
    complete_s: float | None
    first_chapter_bound_s: float
    complete_bound_s: float
    retries: int
    why: str | None
    apology: str | None  # the notice for the reader when the promise was broken
    body: str  # JSON, as sent


class Receipts(Database):
    def order_reason(self, account_id: str, device_id: str, book_id: str, at: float) -> str | None:
        """The reason of the change that put `book_id` on the device at `at` (a receipt's
        ordered_at), or None if the service made no such change for this device."""
        row = self._one(
            "SELECT reason FROM changes WHERE account_id = ? AND book_id = ? AND at = ?"
            " AND action IN ('add', 'update') AND (device_id IS NULL OR device_id = ?)"
            " ORDER BY seq DESC LIMIT 1",
            (account_id, book_id, at, device_id),
        )
        return None if row is None else str(row[0])

    def receipt_known(self, device_id: str, receipt_id: str) -> bool:
        return bool(
            self._one(
                "SELECT 1 FROM receipts WHERE device_id = ? AND receipt_id = ?",
                (device_id, receipt_id),
            )
        )

    def record_receipt(self, device: Device, r: JudgedReceipt, at: float) -> int | None:
        """Store a judged receipt and its delivery's verdict, and the apology if it has one and
        the delivery has none yet, in one transaction; returns the new notice's seq, if any."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO receipts (device_id, receipt_id, book_id, ordered_at, outcome, body,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device.device_id, r.receipt_id, r.book_id, r.ordered_at, r.outcome, r.body, at),
            )
            db.execute(
                "INSERT INTO promises (device_id, book_id, ordered_at, account_id, reason,"
                " link_class, verdict, first_chapter_s, complete_s, first_chapter_bound_s,"
                " complete_bound_s, retries, why, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (device_id, book_id, ordered_at) DO UPDATE SET"
                " verdict = CASE WHEN verdict = 'broken' THEN 'broken' ELSE excluded.verdict END,"
                " why = CASE WHEN verdict = 'broken' THEN why ELSE excluded.why END,"
                " first_chapter_s = coalesce(excluded.first_chapter_s, first_chapter_s),"
                " complete_s = coalesce(excluded.complete_s, complete_s),"
                " first_chapter_bound_s = excluded.first_chapter_bound_s,"
                " complete_bound_s = excluded.complete_bound_s,"
                " retries = max(retries, excluded.retries), updated_at = excluded.updated_at",
                (
                    device.device_id,
                    r.book_id,
                    r.ordered_at,
                    device.account_id,
                    r.reason,
                    r.link_class,
                    r.verdict,
                    r.first_chapter_s,
                    r.complete_s,
                    r.first_chapter_bound_s,
                    r.complete_bound_s,
                    r.retries,
                    r.why,
                    at,
                ),
            )
            if r.apology is None:
                return None
            row = self._one(
                "INSERT INTO notices (device_id, kind, book_id, ordered_at, message, at)"
                " VALUES (?, 'apology', ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING seq",
                (device.device_id, r.book_id, r.ordered_at, r.apology, at),
            )
            return None if row is None else int(row[0])

    def notices(
        self, device_id: str, cursor: int, limit: int
    ) -> list[tuple[int, str, str | None, str, float]]:
        """The device's notices after `cursor`, oldest first: (seq, kind, book_id, message, at)."""
        rows = self._query(
            "SELECT seq, kind, book_id, message, at FROM notices WHERE device_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (device_id, cursor, limit),
        )
        return [(int(s), str(k), b, str(m), float(a)) for s, k, b, m, a in rows]

    def promise_report(self, recent: int) -> dict[str, Any]:
        """Promises kept and broken: totals, by link class, and the latest broken ones."""
        verdicts = ("kept", "broken", "pending", "not_promised")
        totals = dict.fromkeys(verdicts, 0)
        classes: dict[str, dict[str, int]] = {}
        for link_class, verdict, n in self._query(
            "SELECT link_class, verdict, count(*) FROM promises GROUP BY link_class, verdict"
        ):
            totals[verdict] += n
            classes.setdefault(link_class, dict.fromkeys(verdicts, 0))[verdict] = n
        broken = self._query(
            "SELECT p.device_id, p.book_id, p.ordered_at, p.link_class, p.first_chapter_s,"
            " p.complete_s, p.first_chapter_bound_s, p.complete_bound_s, p.retries, p.why,"
            " (SELECT message FROM notices n WHERE n.device_id = p.device_id"
            "   AND n.book_id = p.book_id AND n.ordered_at = p.ordered_at AND n.kind = 'apology')"
            " FROM promises p WHERE p.verdict = 'broken' ORDER BY p.updated_at DESC LIMIT ?",
            (recent,),
        )
        keys = (
            "device_id",
            "book_id",
            "ordered_at",
            "link_class",
            "first_chapter_s",
            "complete_s",
            "first_chapter_bound_s",
            "complete_bound_s",
            "retries",
            "why",
            "apology",
        )
        return {
            "deliveries": sum(totals.values()),
            **totals,
            "by_link_class": [{"link_class": c, **v} for c, v in sorted(classes.items())],
            "broken_recent": [dict(zip(keys, row, strict=True)) for row in broken],
        }
