"""The library changes feed: each change to what an account's devices hold, in sequence order.

The catalog appends to it when a book is revised and the library when a book is added or removed;
devices read it from a cursor (PROTOCOL.md "Library changes feed")."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from server_stub.store.database import Database


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    account_id: str
    device_id: str | None  # None: every device of the account
    book_id: str
    action: str  # add | remove | update
    reason: str
    version: int
    at: float
    package_size: int | None = None  # of that version, when the catalog has it
    # What a library view shows before the book's manifest arrives, when the catalog has it.
    title: str | None = None
    authors: tuple[str, ...] = ()
    cover_size: int | None = None  # bytes of its cover (GET /v1/books/{id}/cover), if any

    def to_doc(self) -> dict[str, Any]:
        """The feed's JSON shape (PROTOCOL.md "Library changes feed")."""
        doc: dict[str, Any] = {
            "seq": self.seq,
            "book_id": self.book_id,
            "action": self.action,
            "reason": self.reason,
            "version": self.version,
            "at": self.at,
        }
        if self.package_size is not None:
            doc["package_size"] = self.package_size  # so a device plans its space up front
        if self.title is not None:
            doc["title"] = self.title
            doc["authors"] = list(self.authors)
        if self.cover_size is not None:
            doc["cover_size"] = self.cover_size
        return doc


_CHANGE_COLUMNS = "seq, account_id, device_id, book_id, action, reason, version, at"


def _change(row: Any) -> Change:
    seq, account_id, device_id, book_id, action, reason, version, at = row
    return Change(seq, account_id, device_id, book_id, action, reason, version, at)


class ChangesFeed(Database):
    def _append_change(
        self,
        account_id: str,
        device_id: str | None,
        book_id: str,
        action: str,
        reason: str,
        version: int,
        at: float,
    ) -> Change:
        self._db.execute(
            "INSERT INTO changes (account_id, device_id, book_id, action, reason, version, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (account_id, device_id, book_id, action, reason, version, at),
        )
        seq = self._db.last_insert_rowid()
        return Change(seq, account_id, device_id, book_id, action, reason, version, at)

    def changes(self, account_id: str, device_id: str, cursor: int, limit: int) -> list[Change]:
        """The device's changes after `cursor`, oldest first (an index range scan)."""
        rows = self._query(
            f"SELECT {_CHANGE_COLUMNS}, (SELECT v.package_size FROM book_versions v"
            "   WHERE v.book_id = c.book_id AND v.version = c.version),"
            " (SELECT b.title FROM books b WHERE b.book_id = c.book_id),"
            " (SELECT b.authors FROM books b WHERE b.book_id = c.book_id),"
            " (SELECT length(k.data) FROM book_covers k WHERE k.book_id = c.book_id)"
            " FROM changes c WHERE c.account_id = ? AND c.seq > ?"
            " AND (c.device_id IS NULL OR c.device_id = ?) ORDER BY c.seq LIMIT ?",
            (account_id, cursor, device_id, limit),
        )
        return [
            dataclasses.replace(
                _change(r[:8]),
                package_size=r[8],
                title=r[9],
                authors=tuple(json.loads(r[10])) if r[10] else (),
                cover_size=r[11],
            )
            for r in rows
        ]

    def latest_seq(self, account_id: str, device_id: str) -> int:
        """The newest change the device can see, 0 if none."""
        row = self._one(
            "SELECT seq FROM changes WHERE account_id = ? AND (device_id IS NULL OR device_id = ?)"
            " ORDER BY seq DESC LIMIT 1",
            (account_id, device_id),
        )
        return int(row[0]) if row else 0
