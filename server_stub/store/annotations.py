"""Annotation sync and popular passages (server_stub/annotations.py): each op applied once per
account, states joined with the devices' own merge (daemon.protocol.merge), and the count of
distinct sharing readers per passage."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.protocol import annotation_input, hlc, merge
from daemon.protocol.merge import Item, Position
from server_stub.store.database import Database
from server_stub.store.library import EVERY_DEVICE

POPULAR_THRESHOLD = 3  # distinct readers before a passage is shown (settings may override)


@dataclass(frozen=True, slots=True)
class AnnotationOp:
    """One op of a push batch, validated: the target row and the delta to join into it."""

    op_id: str
    target: str  # the annotation id, or 'position:' + book_id
    delta: Item | Position


@dataclass(slots=True)
class AppliedOps:
    applied: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # applied before: acknowledged again
    rejected: dict[str, str] = field(default_factory=dict)  # op_id -> reason
    seq: int = 0  # the feed sequence of the last change made, 0 if none
    # Each device's newest notice that an edit kept a note another device deleted (edit beats
    # delete, issue 23 #6): device_id -> the notice's seq.
    notices: dict[str, int] = field(default_factory=dict)
    # Accounts holding a book whose popular passages these ops changed: their devices are told
    # (popular_changed), so a passage shared now reaches a device online in seconds.
    popular_readers: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class AnnotationChanges:
    entries: list[tuple[int, str, str]]  # (seq, target, state JSON)
    cursor: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class PopularChanges:
    entries: list[tuple[int, str, str, int, str]]  # (seq, book_id, passage_id, readers, anchor)
    cursor: int
    has_more: bool


class Annotations(Database):
    def apply_annotation_ops(
        self,
        account_id: str,
        device_id: str,
        ops: list[AnnotationOp],
        at: float,
        passage_of: Callable[[Item], tuple[str, str] | None],
    ) -> AppliedOps:
        """Apply a batch of ops in one transaction, each op_id once per account ever.

        An op already applied is acknowledged again and changes nothing; an op for an
        annotation the account holds for another book is refused. `passage_of` says which
        popular passage (id, anchor JSON) a live highlight counts towards, if any."""
        result = AppliedOps()
        with self._transaction() as db:
            threshold = self.popular_threshold()
            for op in ops:
                if self._one(
                    "SELECT 1 FROM annotation_ops WHERE account_id = ? AND op_id = ?",
                    (account_id, op.op_id),
                ):
                    result.duplicates.append(op.op_id)
                    continue
                row = self._one(
                    "SELECT book_id, state, seq, last_device, other_seq FROM annotation_items"
                    " WHERE account_id = ? AND target = ?",
                    (account_id, op.target),
                )
                if row is not None and row[0] != op.delta.book_id:
                    result.rejected[op.op_id] = f"{op.target} belongs to another book"
                    continue
                stored = None if row is None else json.loads(row[1])
                before = (
                    annotation_input.item_from_doc(stored)
                    if stored and isinstance(op.delta, Item)
                    else None
                )
                merged = _join_state(op.delta, stored)
                seq = self._next_seq("annotations")
                # The feed skips, for device D, an item whose changes since D's cursor are all
                # D's own: other_seq is the last change made by anyone but the last device.
                other_seq = 0 if row is None else (row[4] if row[3] == device_id else row[2])
                db.execute(
                    "INSERT INTO annotation_items (account_id, target, book_id, state, seq,"
                    " last_device, other_seq) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (account_id, target) DO UPDATE SET state = excluded.state,"
                    " seq = excluded.seq, last_device = excluded.last_device,"
                    " other_seq = excluded.other_seq",
                    (
                        account_id,
                        op.target,
                        op.delta.book_id,
                        json.dumps(_state_doc(merged), ensure_ascii=False),
                        seq,
                        device_id,
                        other_seq,
                    ),
                )
                db.execute(
                    "INSERT INTO annotation_ops (account_id, op_id, device_id, target, seq,"
                    " applied_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (account_id, op.op_id, device_id, op.target, seq, at),
                )
                if isinstance(merged, Item):
                    if self._mark(
                        account_id, op.target, merged.book_id, passage_of(merged), threshold
                    ):
                        result.popular_readers.update(self._holders(merged.book_id))
                    overruled = merge.overruled_delete(merged)
                    if overruled is not None and (
                        before is None or merge.overruled_delete(before) != overruled
                    ):
                        self._tell_kept(account_id, merged, overruled, at, result.notices)
                result.applied.append(op.op_id)
                result.seq = seq
        return result

    def _tell_kept(
        self, account_id: str, item: Item, deleted: str, at: float, told: dict[str, int]
    ) -> None:
        """A notice to each of the account's devices: the note one of them deleted was kept,
        because another edited it meanwhile (the item's `delete_overruled` says the same)."""
        title = self._one("SELECT title FROM books WHERE book_id = ?", (item.book_id,))
        names = dict(
            self._query("SELECT device_id, name FROM devices WHERE account_id = ?", (account_id,))
        )
        deleter = names.get(hlc.node_of(deleted), "another device")
        kind = item.fields.get("kind", ("", "note"))[1]
        where = f" in '{title[0]}'" if title else ""
        message = (
            f"A {kind}{where} deleted on {deleter} was kept: it had been edited on another"
            " device before that device saw the delete."
        )
        for device_id in names:
            row = self._one(
                "INSERT INTO notices (device_id, kind, book_id, message, at)"
                " VALUES (?, 'kept_despite_delete', ?, ?, ?) RETURNING seq",
                (device_id, item.book_id, message, at),
            )
            told[device_id] = int(row[0])

    def annotation_changes(
        self, account_id: str, device_id: str, cursor: int, limit: int, max_bytes: int
    ) -> AnnotationChanges:
        """The account's annotation states changed after `cursor`, oldest change first, leaving
        out those whose every change since `cursor` came from `device_id` itself."""
        rows = self._query(
            "SELECT seq, target, state FROM annotation_items WHERE account_id = ? AND seq > ?"
            " AND NOT (last_device = ? AND other_seq <= ?) ORDER BY seq LIMIT ?",
            (account_id, cursor, device_id, cursor, limit + 1),
        )
        page: list[tuple[int, str, str]] = []
        size = 0
        for row in rows[:limit]:
            size += len(row[2])
            if page and size > max_bytes:
                break
            page.append((int(row[0]), str(row[1]), str(row[2])))
        if len(page) < len(rows):
            return AnnotationChanges(page, page[-1][0], True)
        # Everything after the cursor was read: skipped rows included, so move past them all.
        last = self._one(
            "SELECT max(seq) FROM annotation_items WHERE account_id = ?", (account_id,)
        )
        return AnnotationChanges(page, max(cursor, int(last[0] or 0)), False)

    def annotation_op_count(self, account_id: str, device_id: str | None = None) -> int:
        """Ops applied for an account (or one of its devices): each op_id counts once."""
        row = self._one(
            "SELECT count(*) FROM annotation_ops WHERE account_id = ?"
            " AND (? IS NULL OR device_id = ?)",
            (account_id, device_id, device_id),
        )
        return int(row[0])

    def annotation_state(self, account_id: str, target: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT state FROM annotation_items WHERE account_id = ? AND target = ?",
            (account_id, target),
        )
        return None if row is None else dict(json.loads(row[0]))

    def popular_threshold(self) -> int:
        row = self._one("SELECT value FROM settings WHERE key = 'popular_threshold'")
        return int(row[0]) if row else POPULAR_THRESHOLD

    def set_popular_threshold(self, readers: int) -> None:
        """Publish passages highlighted by at least `readers` distinct sharing accounts."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO settings (key, value) VALUES ('popular_threshold', ?)",
                (str(readers),),
            )
            for book_id, passage_id in self._query(
                "SELECT book_id, passage_id FROM shared_marks UNION"
                " SELECT book_id, passage_id FROM popular_passages"
            ):
                self._recount(book_id, passage_id, readers)

    def set_sharing(self, account_id: str, share: bool) -> None:
        """Let (or stop) an account's highlights count towards popular passages."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sharing (account_id, share) VALUES (?, ?)",
                (account_id, int(share)),
            )
            threshold = self.popular_threshold()
            for book_id, passage_id in self._query(
                "SELECT DISTINCT book_id, passage_id FROM shared_marks WHERE account_id = ?",
                (account_id,),
            ):
                self._recount(book_id, passage_id, threshold)

    def _mark(
        self,
        account_id: str,
        target: str,
        book_id: str,
        passage: tuple[str, str] | None,
        threshold: int,
    ) -> bool:
        """Record which passage an account's highlight counts towards; whether what is
        published of the book's passages changed."""
        old = self._one(
            "SELECT passage_id FROM shared_marks WHERE account_id = ? AND target = ?",
            (account_id, target),
        )
        if (old[0] if old else None) == (passage[0] if passage else None):
            return False
        changed = False
        self._db.execute(
            "DELETE FROM shared_marks WHERE account_id = ? AND target = ?", (account_id, target)
        )
        if passage is not None:
            self._db.execute(
                "INSERT INTO shared_marks (account_id, target, book_id, passage_id, anchor)"
                " VALUES (?, ?, ?, ?, ?)",
                (account_id, target, book_id, passage[0], passage[1]),
            )
            changed |= self._recount(book_id, passage[0], threshold)
        if old is not None:
            changed |= self._recount(book_id, old[0], threshold)
        return changed

    def _holders(self, book_id: str) -> set[str]:
        """The accounts with `book_id` in their library."""
        rows = self._query("SELECT DISTINCT account_id FROM library WHERE book_id = ?", (book_id,))
        return {str(r[0]) for r in rows}

    def _recount(self, book_id: str, passage_id: str, threshold: int) -> bool:
        """Publish a passage's count of distinct sharing readers, or 0 below the threshold;
        the feed sequence moves only when what is published changes."""
        readers = int(
            self._one(
                "SELECT count(DISTINCT m.account_id) FROM shared_marks m"
                " JOIN sharing s ON s.account_id = m.account_id AND s.share"
                " WHERE m.book_id = ? AND m.passage_id = ?",
                (book_id, passage_id),
            )[0]
        )
        published = readers if readers >= threshold else 0
        row = self._one(
            "SELECT readers, anchor FROM popular_passages WHERE book_id = ? AND passage_id = ?",
            (book_id, passage_id),
        )
        if (row[0] if row else 0) == published:
            return False
        first = self._one(
            "SELECT anchor FROM shared_marks WHERE book_id = ? AND passage_id = ?"
            " ORDER BY rowid LIMIT 1",
            (book_id, passage_id),
        )
        anchor = first[0] if first else row[1]
        self._db.execute(
            "INSERT OR REPLACE INTO popular_passages (book_id, passage_id, readers, anchor, seq)"
            " VALUES (?, ?, ?, ?, ?)",
            (book_id, passage_id, published, anchor, self._next_seq("popular")),
        )
        return True

    def popular_changes(
        self, account_id: str, device_id: str, cursor: int, limit: int, book_id: str | None
    ) -> PopularChanges:
        """Published passage changes after `cursor` for one book, or for every book in the
        device's library, oldest first."""
        if book_id is not None:
            rows = self._query(
                "SELECT seq, book_id, passage_id, readers, anchor FROM popular_passages"
                " WHERE book_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (book_id, cursor, limit + 1),
            )
        else:
            rows = self._query(
                "SELECT p.seq, p.book_id, p.passage_id, p.readers, p.anchor"
                " FROM popular_passages p WHERE p.seq > ? AND p.book_id IN (SELECT l.book_id"
                "   FROM library l WHERE l.account_id = ? AND l.device_id IN (?, ?))"
                " ORDER BY p.seq LIMIT ?",
                (cursor, account_id, EVERY_DEVICE, device_id, limit + 1),
            )
        page = [(int(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4])) for r in rows[:limit]]
        if len(rows) > limit:
            return PopularChanges(page, page[-1][0], True)
        last = self._one("SELECT value FROM counters WHERE name = 'popular'")
        return PopularChanges(page, max(cursor, int(last[0])), False)


def _join_state(delta: Item | Position, stored: dict[str, Any] | None) -> Item | Position:
    if stored is None:
        return delta
    if isinstance(delta, Item):
        return merge.join_item(annotation_input.item_from_doc(stored), delta)
    return merge.join_position(annotation_input.position_from_doc(stored), delta)


def _state_doc(state: Item | Position) -> dict[str, Any]:
    if isinstance(state, Item):
        return merge.item_to_doc(state)
    return merge.position_to_doc(state)
