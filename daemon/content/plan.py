"""What to fetch, keep and evict (pure: no I/O; `now` and every measurement are arguments).

Policy, in priority order (docs/PLANNING.md says why):
1. Fresh orders: books bought or sent in the last FRESH_WINDOW_S that are not readable yet. They
   carry the 60-second promise: first, those still within it (ordered less than PROMISE_S ago)
   before those that broke it already, and within each the smallest first, so that ten
   purchases at once keep as many promises as the link allows (the largest first broke all
   ten); they may use one slot beyond the
   profile's concurrency (the express lane), they run on a low battery, and they may evict any
   book that is not protected to make room.
   (Pending annotations and shared highlights are next in the product's order; they have their
   own workers, which always run: a note push is tiny, and it is what the reader cannot redo.)
2. Wanted books: ordered since this device joined the account (a purchase made while the device
   was off) or asked for by the reader, oldest first.
3. Books the reader is likely to open next: the service's hints (a sample, a wish-list item, the
   next book of a series the reader is in) and books the reader opened lately that were evicted.
   A hint is never a new purchase nor a wanted book, however recent, unless the reader asks
   for it; while a new purchase is on its way, nothing below the wanted books starts, and any
   such download already running is paused (it resumes at its first missing frame later).
4. Refreshes: new versions of books that are readable in an older version.
5. The archive: books bought before this device joined, never opened here. They stay in the
   cloud, but for the `archive_slots` most recently ordered (trip mode sets it).
A book whose last attempt failed waits for its backoff. Below the profile's battery threshold,
and not charging, only fresh orders start.

Storage: books on the device never take more than the quota, nor push the file system's free
space below the reserve. A book that does not fit may evict books that are less likely to be read
(lower class; hints the reader never opened first, then least recently opened or ordered); a
book that is pinned, open now, or has notes not yet synced is never evicted. Nothing is evicted
for a book whose size only the unsigned changes feed claims: it first fetches its signed
manifest alone (a probe), and the size that proves is planned for.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

from daemon.models import DeliveryCandidate, FrameRow, HeldBook

FRESH_WINDOW_S = 600.0
PROMISE_S = 60.0  # a purchase is complete on the device within this (DESIGN.md, promise 1)
RECENTLY_OPENED_S = 30 * 86400.0
OPEN_NOW_S = 30 * 60.0  # opened in the last half hour: the book in the reader's hands
LIKELY_NEXT_REASONS = frozenset({"sample", "wishlist", "series_next"})

FRESH, WANTED, LIKELY_NEXT, REFRESH, ARCHIVE = range(5)
_CLASS_NAMES = ("new purchase", "wanted", "likely next", "new version", "archive")
PAUSED_FOR_PURCHASE = "paused: a new purchase is downloading"
PROVING_SIZE = "fetching its signed manifest first: the size it needs is not yet known"


@dataclass(frozen=True, slots=True)
class Budget:
    quota_bytes: int  # the profile's storage quota for books
    fs_free_bytes: int  # what the file system has free now
    reserve_bytes: int  # free space never used by books
    battery_restricted: bool  # below the threshold and not charging


@dataclass(frozen=True, slots=True)
class Plan:
    start: list[str]  # deliveries to start now, in order
    evict: list[str]  # books to remove from the device first, to make room
    waiting: dict[str, str] = field(default_factory=dict)  # book -> why it does not start
    pause: list[str] = field(default_factory=list)  # running deliveries to stop, keeping frames
    # A book waits on something that changes without an event (space freeing, a charger): the
    # caller looks again later. Books queued, retrying or in the cloud wait for an event.
    recheck: bool = False
    # Deliveries to start for their manifest only: books that would need room their signed
    # manifest has not yet proven (a forged feed entry once claimed the quota less 1 MB, and
    # every retry of it evicted every book the reader had)
    probe: list[str] = field(default_factory=list)


def is_fresh(c: DeliveryCandidate, now: float) -> bool:
    """A new order on its way for the first time (an evicted book is not new again: two fresh
    orders on a full device would otherwise evict each other in turn). A hint is no order: it
    carries no promise, and must not take a purchase's place or room."""
    return (
        c.reason not in LIKELY_NEXT_REASONS
        and not c.has_readable_version
        and not c.evicted
        and now - c.ordered_at <= FRESH_WINDOW_S
    )


def _wanted(reason: str, wanted: bool, requested: bool) -> bool:
    """Ordered since this device joined, or asked for; a hint only once the reader asks."""
    return requested or (wanted and reason not in LIKELY_NEXT_REASONS)


def priority_class(c: DeliveryCandidate, now: float) -> int:
    if is_fresh(c, now):
        return FRESH
    if c.has_readable_version:
        return REFRESH
    if _wanted(c.reason, c.wanted, c.requested):
        return WANTED
    recently_opened = c.opened_at is not None and now - c.opened_at <= RECENTLY_OPENED_S
    if c.reason in LIKELY_NEXT_REASONS or recently_opened:
        return LIKELY_NEXT
    return ARCHIVE


def fresh_order(c: DeliveryCandidate, now: float) -> tuple[bool, int, float]:
    """Among fresh orders: those still within the promise, smallest (left to fetch) first."""
    past_promise = now - c.ordered_at > PROMISE_S
    return (past_promise, max(0, c.expected_bytes - c.held_bytes), c.ordered_at)


def _order(c: DeliveryCandidate, now: float) -> tuple[int, tuple[bool, int, float], str]:
    cls = priority_class(c, now)
    if cls == FRESH:
        return (cls, fresh_order(c, now), c.book_id)
    # Wanted books oldest first (waiting longest); the rest newest first (likeliest read).
    when = c.ordered_at if cls == WANTED else -(c.opened_at or c.ordered_at)
    return (cls, (False, 0, when), c.book_id)


def protected(book: HeldBook, now: float) -> bool:
    open_now = book.opened_at is not None and now - book.opened_at <= OPEN_NOW_S
    return book.pinned or open_now or book.unsynced_notes


def _eviction_order(book: HeldBook) -> tuple[int, float, str]:
    # Least likely to be read first: a hint the reader never opened nor asked for is only the
    # service's guess; then the least recently opened (or ordered).
    guess = book.reason in LIKELY_NEXT_REASONS and book.opened_at is None and not book.requested
    return (0 if guess else 1, book.opened_at or book.ordered_at, book.book_id)


def plan_deliveries(
    candidates: Sequence[DeliveryCandidate],
    held: Sequence[HeldBook],
    budget: Budget,
    now: float,
    running: Collection[str],
    running_fresh: int,
    concurrency: int,
    archive_slots: int = 0,
    used_bytes: int | None = None,
) -> Plan:
    """The deliveries to start now, the running ones to pause, and the evictions that make
    room for them. `used_bytes` is what the `held` books hold, if the caller knows it: then
    `held` is read only if a book must be evicted (it may be a sequence that loads lazily)."""
    # A purchase running, starting or retrying: what is only likely to be read must not share
    # its link (the 60-second promise); it starts, or resumes, once the purchase is in.
    purchase_on_its_way = any(is_fresh(c, now) for c in candidates)
    pause = sorted(
        c.book_id
        for c in candidates
        if purchase_on_its_way and c.book_id in running and priority_class(c, now) > WANTED
    )
    running = {b for b in running if b not in pause}
    used = sum(b.held_bytes for b in held) if used_bytes is None else used_bytes
    room = min(budget.quota_bytes - used, budget.fs_free_bytes - budget.reserve_bytes)
    evictable = _Evictable(held, now)
    candidate_ids = {c.book_id for c in candidates}
    # What running deliveries will still bring is spoken for already.
    room -= sum(max(0, c.expected_bytes - c.held_bytes) for c in candidates if c.book_id in running)
    evict: list[str] = []
    waiting: dict[str, str] = {}

    # Over the quota already (the profile changed, a book grew): shed the least likely first.
    while room < 0 and evictable:
        shed = evictable.pop(0)
        if shed.book_id in candidate_ids:
            continue  # a refresh in progress: its old version is what the reader reads
        evict.append(shed.book_id)
        room += shed.held_bytes

    slots = max(0, concurrency - len(running))
    express = 1 if running_fresh == 0 else 0
    start: list[str] = []
    probe: list[str] = []
    purchase_blocked = False  # a purchase waiting for room: nothing else may take that room
    recheck = False
    waiting.update((b, PAUSED_FOR_PURCHASE) for b in pause)
    for c in sorted(candidates, key=lambda c: _order(c, now)):
        if c.book_id in running or c.book_id in pause:
            continue
        if c.book_id in evict:
            # Its old version makes room for a likelier book: fetching the new one now would
            # take that room back.
            waiting[c.book_id] = "removed to make room: in the cloud, ask for it to bring it back"
            continue
        cls = priority_class(c, now)
        if purchase_blocked and cls != FRESH:
            waiting[c.book_id] = "held back: a new purchase is waiting for space"
            recheck = True
            continue
        if purchase_on_its_way and cls > WANTED:
            # Partly on the device: a download paused for the purchase, resumed after it.
            waiting[c.book_id] = (
                PAUSED_FOR_PURCHASE if c.held_bytes else "held back: a new purchase is downloading"
            )
            continue
        if c.retry_at > now:
            waiting[c.book_id] = "retrying after a failure"
            continue
        if cls == ARCHIVE:
            if archive_slots <= 0:
                waiting[c.book_id] = "in the cloud: ask for it, or plan a trip"
                continue
            archive_slots -= 1
        if budget.battery_restricted and cls != FRESH:
            waiting[c.book_id] = "battery low: only new purchases download until charging"
            recheck = True
            continue
        need = max(0, c.expected_bytes - c.held_bytes)
        victims: list[HeldBook] = []
        freed = 0
        for book in evictable if need > room else ():
            if need <= room + freed:
                break
            if book.book_id in evict or book.book_id == c.book_id or book.book_id in start:
                continue  # a book starting now keeps its old version for the reader meanwhile
            if cls == FRESH or _victim_class(book, now) > cls:
                victims.append(book)
                freed += book.held_bytes
        if need > room + freed:
            purchase_blocked = purchase_blocked or cls == FRESH
            recheck = True
            waiting[c.book_id] = (
                f"not enough space: needs {need / 1e6:.1f} MB, {max(room, 0) / 1e6:.1f} MB free"
                " within the storage quota"
            )
            continue  # evicting would not make room: keep every book
        if slots > 0:
            slots -= 1
        elif express and cls == FRESH:
            express = 0
        else:
            waiting[c.book_id] = f"queued ({_CLASS_NAMES[cls]})"
            continue
        if victims and not c.size_proven:
            probe.append(c.book_id)  # its manifest alone: it takes no room yet
            waiting[c.book_id] = PROVING_SIZE
            continue
        evict.extend(b.book_id for b in victims)
        room += freed - need
        start.append(c.book_id)
    return Plan(start, evict, waiting, pause, recheck, probe)


class _Evictable:
    """The held books that may be evicted, least likely to be read first: sorted (and `held`
    read) only once the plan needs room it does not have."""

    def __init__(self, held: Sequence[HeldBook], now: float) -> None:
        self._held, self._now = held, now
        self._books: list[HeldBook] | None = None

    def _sorted(self) -> list[HeldBook]:
        if self._books is None:
            books = (b for b in self._held if b.complete and not protected(b, self._now))
            self._books = sorted(books, key=_eviction_order)
        return self._books

    def __bool__(self) -> bool:
        return bool(self._sorted())

    def __iter__(self) -> Iterator[HeldBook]:
        return iter(self._sorted())

    def pop(self, index: int) -> HeldBook:
        return self._sorted().pop(index)


def _victim_class(book: HeldBook, now: float) -> int:
    """The class a held book would have if it were fetched again. Books of one class never
    evict each other, so two wanted books cannot take turns pushing each other out."""
    if _wanted(book.reason, book.wanted, book.requested):
        return WANTED
    recently_opened = book.opened_at is not None and now - book.opened_at <= RECENTLY_OPENED_S
    return LIKELY_NEXT if book.reason in LIKELY_NEXT_REASONS or recently_opened else ARCHIVE


def next_retry(
    candidates: Sequence[DeliveryCandidate], now: float, running: Collection[str]
) -> float | None:
    """The earliest future time at which a waiting book becomes ready again."""
    waiting = [c.retry_at for c in candidates if c.book_id not in running and c.retry_at > now]
    return min(waiting, default=None)


def fetch_span(missing: Sequence[FrameRow], max_gap_bytes: int) -> list[FrameRow]:
    """The missing frames (in package order) that the next Range request brings: the first run
    of consecutive missing frames, joined with each following run whose gap of frames already
    held is at most `max_gap_bytes`, which the request reads past. The caller passes the link's
    bandwidth-delay product: a gap that small costs less to read than the idle round trip of
    one more request (a revision's changed frames, scattered, then arrive at the link's rate)."""
    span = list(missing[:1])
    for frame in missing[1:]:
        previous = span[-1]
        if frame.package_offset - (previous.package_offset + previous.length) > max_gap_bytes:
            break
        span.append(frame)
    return span
