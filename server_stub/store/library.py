"""Libraries: which books each account holds, for every device or one, bought or only hinted."""

from __future__ import annotations

from collections.abc import Iterable

from server_stub.store.catalog import Catalog
from server_stub.store.feed import Change

EVERY_DEVICE = ""  # library.device_id for a book on all of an account's devices
ORDER_REASONS = frozenset({"bought", "sent"})  # the account owns the book
# The service suggests the book; the device fetches it when nothing more urgent waits.
HINT_REASONS = frozenset({"sample", "wishlist", "series_next"})

# Is the book in the library for every device or for the given scope?
_HELD = "SELECT 1 FROM library WHERE account_id = ? AND book_id = ? AND device_id IN (?, ?)"


class Library(Catalog):
    def add_to_library(
        self, account_id: str, book_id: str, device_id: str | None, reason: str, at: float
    ) -> list[Change]:
        """Add a book for every device (device_id None) or one device, in one transaction.

        An order (ORDER_REASONS) of a book the account holds only as a hint makes it a
        purchase; an order of book n of a series also hints book n+1 (`series_next`). A hint
        (HINT_REASONS) adds a book the account does not hold yet. Returns the changes made,
        the order's first; none if the book was there already (owned, or hinted for a hint)."""
        scope = device_id or EVERY_DEVICE
        with self._transaction() as db:
            held = self._query(
                "SELECT hint FROM library WHERE account_id = ? AND book_id = ?"
                " AND device_id IN (?, ?)",
                (account_id, book_id, EVERY_DEVICE, scope),
            )
            owned = any(hint is None for (hint,) in held)
            if owned or (held and reason in HINT_REASONS):
                return []
            hint = reason if reason in HINT_REASONS else None
            if hint is None:
                # Owned now: a hint in this scope (or, for every device, in any) is superseded.
                db.execute(
                    "DELETE FROM library WHERE account_id = ? AND book_id = ?"
                    " AND hint IS NOT NULL AND (? = '' OR device_id = ?)",
                    (account_id, book_id, scope, scope),
                )
            db.execute(
                "INSERT INTO library (account_id, book_id, device_id, added_at, hint)"
                " VALUES (?, ?, ?, ?, ?)",
                (account_id, book_id, scope, at, hint),
            )
            added = [
                self._append_change(
                    account_id,
                    device_id,
                    book_id,
                    "add",
                    reason,
                    self._current_version(book_id),
                    at,
                )
            ]
            following = self._next_in_series(book_id) if hint is None else None
            if following is not None and not self._one(
                _HELD, (account_id, following, EVERY_DEVICE, scope)
            ):
                db.execute(
                    "INSERT INTO library (account_id, book_id, device_id, added_at, hint)"
                    " VALUES (?, ?, ?, ?, 'series_next')",
                    (account_id, following, scope, at),
                )
                added.append(
                    self._append_change(
                        account_id,
                        device_id,
                        following,
                        "add",
                        "series_next",
                        self._current_version(following),
                        at,
                    )
                )
            return added

    def remove_from_library(
        self, account_id: str, book_id: str, reason: str, at: float
    ) -> Change | None:
        """Remove a book from every device of the account; None if it was not there."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM library WHERE account_id = ? AND book_id = ?", (account_id, book_id)
            )
            if not db.changes():
                return None
            return self._append_change(
                account_id, None, book_id, "remove", reason, self._current_version(book_id), at
            )

    def seed_library(
        self, account_id: str, book_ids: Iterable[str], at: float, reason: str = "seeded"
    ) -> int:
        """Add many books to an account's library (all devices) in one transaction: for tests
        and demos of large libraries. The books need not be in the catalog. Returns the last seq."""
        with self._transaction() as db:
            rows = [(account_id, b, EVERY_DEVICE, at) for b in book_ids]
            db.executemany(
                "INSERT OR IGNORE INTO library (account_id, book_id, device_id, added_at)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT INTO changes (account_id, device_id, book_id, action, reason, version, at)"
                " SELECT ?, NULL, ?, 'add', ?, coalesce(("
                "   SELECT version FROM books WHERE book_id = ?), 1), ?",
                ((account_id, b, reason, b, at) for _, b, _, _ in rows),
            )
            row = self._one("SELECT max(seq) FROM changes WHERE account_id = ?", (account_id,))
        return int(row[0] or 0)

    def in_library(self, account_id: str, device_id: str, book_id: str) -> bool:
        return bool(
            self._one(
                _HELD,
                (account_id, book_id, EVERY_DEVICE, device_id),
            )
        )
