"""Plain value types passed between the store, the pure planner and the workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.protocol.manifest import WrappedKey


@dataclass(frozen=True, slots=True)
class LibraryChange:
    """One entry of the service's library changes feed."""

    seq: int
    book_id: str
    action: str  # "add", "update" or "remove"
    reason: str  # "bought", "sent", "returned", or a hint: "sample", "wishlist", "series_next"
    version: int
    at: float  # service time of the purchase / send / return
    package_size: int | None = None  # of that version, when the service says
    # What a library view shows before the manifest arrives (the manifest's, once held).
    title: str | None = None
    authors: tuple[str, ...] = ()
    cover_size: int | None = None  # bytes of the service's cover image, if it has one


@dataclass(frozen=True, slots=True)
class Notice:
    """One notice of the service's feed for the reader (an apology for a late delivery, a note
    kept although another device deleted it)."""

    seq: int  # the service's notice sequence
    kind: str  # apology, kept_despite_delete
    book_id: str | None
    message: str  # for the reader, as the service wrote it
    at: float  # service clock


@dataclass(frozen=True, slots=True)
class DeliveryCandidate:
    """A book in the library that is not complete on the device at the version wanted."""

    book_id: str
    reason: str
    ordered_at: float
    retry_at: float  # do not try again before this wall time
    has_readable_version: bool  # an older complete version is readable meanwhile
    opened_at: float | None = None  # when the reader last opened it (evicted books keep it)
    expected_bytes: int = 0  # the package's size, or an estimate before the manifest is known
    held_bytes: int = 0  # frames already on the device
    wanted: bool = True  # ordered since this device joined, or asked for: not just archived
    evicted: bool = False  # it was on the device and was removed to make room
    requested: bool = False  # the reader asked for it on this device (a hint they want now)
    # expected_bytes is a signed manifest's, not only what the unsigned feed claims (or a guess)
    size_proven: bool = True


@dataclass(frozen=True, slots=True)
class FrameRow:
    idx: int
    sha256: str
    package_offset: int
    length: int
    plain_offset: int
    plain_size: int
    codec: str


@dataclass(frozen=True, slots=True)
class ManifestSealing:
    """How a held version's frames are sealed and compressed, from its manifest row."""

    content_key: WrappedKey | None  # wrapped for this device
    dictionary_sha256: str | None
    sealed_in_chunks: bool  # False: sealed whole, by a daemon before manifest format 2


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """Where a committed frame's bytes lie in the store, for incremental reads."""

    blob_id: int  # the frames row's rowid
    size: int  # bytes stored


@dataclass(frozen=True, slots=True)
class ResourceRow:
    book_id: str
    version: int
    path: str
    media_type: str
    size: int
    offset: int
    first_frame: int
    last_frame: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    first_chapter_ready: bool  # this commit made the first chapter readable
    complete: bool  # this commit completed the book version


@dataclass(frozen=True, slots=True)
class HeldBook:
    """A book with bytes on the device (complete or partial)."""

    book_id: str
    held_bytes: int
    complete: bool
    pinned: bool
    opened_at: float | None
    ordered_at: float
    reason: str
    unsynced_notes: bool
    wanted: bool = True  # ordered since this device joined, or asked for
    requested: bool = False  # asked for on this device


@dataclass(frozen=True, slots=True)
class Receipt:
    receipt_id: str
    outcome: str  # complete | failed
    book_id: str
    version: int
    reason: str
    ordered_at: float  # service clock
    notified_at: float  # device clock, as are the rest
    link_up_at: float | None  # since when the device had been in contact when it was notified
    started_at: float | None
    first_chapter_at: float | None
    completed_at: float | None
    bytes_fetched: int
    retries: int
    last_error: str | None

    def to_doc(self) -> dict[str, Any]:
        """The receipt's JSON shape (docs/PROTOCOL.md "Delivery receipts")."""
        return {
            "receipt_id": self.receipt_id,
            "outcome": self.outcome,
            "book_id": self.book_id,
            "version": self.version,
            "reason": self.reason,
            "ordered_at": self.ordered_at,
            "notified_at": self.notified_at,
            "link_up_at": self.link_up_at,
            "started_at": self.started_at,
            "first_chapter_at": self.first_chapter_at,
            "completed_at": self.completed_at,
            "bytes_fetched": self.bytes_fetched,
            "retries": self.retries,
            "last_error": self.last_error,
        }
