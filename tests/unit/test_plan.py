"""The planner's invariants, for any library, device and moment (hypothesis), and its policy."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from daemon.content.plan import (
    ARCHIVE,
    FRESH,
    FRESH_WINDOW_S,
    LIKELY_NEXT,
    LIKELY_NEXT_REASONS,
    PAUSED_FOR_PURCHASE,
    PROMISE_S,
    PROVING_SIZE,
    WANTED,
    Budget,
    fetch_span,
    fresh_order,
    is_fresh,
    next_retry,
    plan_deliveries,
    priority_class,
    protected,
)
from daemon.models import DeliveryCandidate, FrameRow, HeldBook

NOW = 1_000_000.0
MB = 1_000_000
ids = st.text("abcdefgh", min_size=1, max_size=2)

candidates = st.lists(
    st.builds(
        DeliveryCandidate,
        book_id=ids,
        reason=st.sampled_from(["bought", "sent", "update", "sample", "wishlist", "series_next"]),
        ordered_at=st.floats(NOW - 3 * FRESH_WINDOW_S, NOW),
        retry_at=st.sampled_from([0.0, NOW - 1, NOW + 30]),
        has_readable_version=st.booleans(),
        opened_at=st.none() | st.floats(NOW - 40 * 86400, NOW),
        expected_bytes=st.integers(0, 50 * MB),
        held_bytes=st.integers(0, 5 * MB),
        wanted=st.booleans(),
        evicted=st.booleans(),
        requested=st.booleans(),
        size_proven=st.booleans(),
    ),
    unique_by=lambda c: c.book_id,
    max_size=10,
)
held_books = st.lists(
    st.builds(
        HeldBook,
        book_id=ids,
        held_bytes=st.integers(1, 40 * MB),
        complete=st.booleans(),
        pinned=st.booleans(),
        opened_at=st.none() | st.floats(NOW - 40 * 86400, NOW),
        ordered_at=st.floats(NOW - 100 * 86400, NOW),
        reason=st.sampled_from(["bought", "sample", "series_next"]),
        unsynced_notes=st.booleans(),
        wanted=st.booleans(),
        requested=st.booleans(),
    ),
    unique_by=lambda b: b.book_id,
    max_size=10,
)
budgets = st.builds(
    Budget,
    quota_bytes=st.integers(0, 200 * MB),
    fs_free_bytes=st.integers(0, 200 * MB),
    reserve_bytes=st.integers(0, 20 * MB),
    battery_restricted=st.booleans(),
)


@settings(max_examples=400)
@given(
    candidates,
    held_books,
    budgets,
    st.sets(ids, max_size=3),
    st.integers(1, 4),
    st.integers(0, 3),
)
def test_plan_invariants(
    cands: list[DeliveryCandidate],
    held: list[HeldBook],
    budget: Budget,
    running: set[str],
    concurrency: int,
    archive_slots: int,
) -> None:
    by_id = {c.book_id: c for c in cands}
    running_fresh = sum(1 for b in running if b in by_id and is_fresh(by_id[b], NOW))
    plan = plan_deliveries(
        cands, held, budget, NOW, running, running_fresh, concurrency, archive_slots
    )
    # A hint never delays a purchase: while one is on its way, nothing below the wanted books
    # is left running, and a purchase never pauses another purchase nor a wanted book.
    assert set(plan.pause) <= running
    assert all(priority_class(by_id[b], NOW) > WANTED for b in plan.pause)
    outcome = (running - set(plan.pause)) | set(plan.start)
    if any(is_fresh(c, NOW) for c in cands):
        assert all(priority_class(by_id[b], NOW) <= WANTED for b in outcome if b in by_id)
        assert all(plan.waiting[b] == PAUSED_FOR_PURCHASE for b in plan.pause)
    else:
        assert plan.pause == []
    assert not set(plan.start) & set(plan.pause), "a paused book does not start again at once"
    running = running - set(plan.pause)  # a paused book's room is planned again on resume
    archived = [b for b in plan.start if priority_class(by_id[b], NOW) == ARCHIVE]
    assert len(archived) <= archive_slots, "the archive stays in the cloud but for a trip"
    held_by_id = {b.book_id: b for b in held}

    assert len(set(plan.start)) == len(plan.start)
    assert not set(plan.start) & running, "a running delivery is never started twice"
    assert all(by_id[b].retry_at <= NOW for b in plan.start), "backoff is respected"
    # Never evicts a protected book, a partial one, or one it is about to fetch.
    for book_id in plan.evict:
        book = held_by_id[book_id]
        assert book.complete
        assert not protected(book, NOW)
        assert book_id not in plan.start
    # The quota and the reserve hold after the plan, counting what running deliveries bring.
    if plan.start:
        used = sum(b.held_bytes for b in held if b.book_id not in plan.evict)
        coming = sum(
            max(0, c.expected_bytes - c.held_bytes)
            for c in cands
            if c.book_id in running or c.book_id in plan.start
        )
        assert used + coming <= budget.quota_bytes
        freed = sum(held_by_id[b].held_bytes for b in plan.evict)
        assert budget.fs_free_bytes + freed - coming >= budget.reserve_bytes
    # On a low battery only purchases start.
    if budget.battery_restricted:
        assert all(priority_class(by_id[b], NOW) == FRESH for b in plan.start)
    # Purchases first: nothing else starts while a ready purchase is not started.
    ready_fresh = [
        c.book_id
        for c in cands
        if c.book_id not in running and c.retry_at <= NOW and is_fresh(c, NOW)
    ]
    if any(b not in plan.start for b in ready_fresh):
        assert all(is_fresh(by_id[b], NOW) for b in plan.start)
    # A hint never delays a purchase: it is no purchase, and waits while one is on its way.
    assert not any(is_fresh(c, NOW) for c in cands if c.reason in LIKELY_NEXT_REASONS)
    if any(is_fresh(c, NOW) for c in cands):
        assert all(priority_class(by_id[b], NOW) <= WANTED for b in plan.start)
    # Never beyond the concurrency, but for one express-lane purchase when none is running.
    slots = max(0, concurrency - len(running))
    assert len(plan.start) <= slots + (1 if running_fresh == 0 else 0)
    assert all(is_fresh(by_id[b], NOW) for b in plan.start[slots:])
    # Purchases still within the promise before those past it, smallest first (issue 23 #3):
    # no purchase queued for want of a slot goes before one that started.
    started = [by_id[b] for b in plan.start if is_fresh(by_id[b], NOW)]
    for c in cands:
        if is_fresh(c, NOW) and plan.waiting.get(c.book_id, "").startswith("queued"):
            assert all(fresh_order(s, NOW) <= fresh_order(c, NOW) for s in started)
    # Every candidate not started and not running says why.
    for c in cands:
        if c.book_id not in running and c.book_id not in plan.start:
            assert plan.waiting.get(c.book_id)


def candidate(book_id: str, **kw: object) -> DeliveryCandidate:
    fields: dict[str, object] = {
        "reason": "bought",
        "ordered_at": NOW - 86400,
        "retry_at": 0.0,
        "has_readable_version": False,
        "expected_bytes": 1 * MB,
    }
    fields.update(kw)
    return DeliveryCandidate(book_id, **fields)  # type: ignore[arg-type]


def held_book(book_id: str, size: int, **kw: object) -> HeldBook:
    fields: dict[str, object] = {
        "complete": True,
        "pinned": False,
        "opened_at": None,
        "ordered_at": NOW - 5 * 86400,
        "reason": "bought",
        "unsynced_notes": False,
    }
    fields.update(kw)
    return HeldBook(book_id, size, **fields)  # type: ignore[arg-type]


ROOMY = Budget(
    quota_bytes=100 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=False
)


def test_ten_purchases_at_once_start_smallest_first_within_the_promise() -> None:
    """Issue 23 #3: the two largest of ten purchases went first, and all ten broke the promise."""
    sizes = [9, 1, 7, 3, 5, 2, 8, 4, 6, 10]
    cands = [
        candidate(f"p{n}", ordered_at=NOW - 1 - n * 0.01, expected_bytes=n * MB) for n in sizes
    ]
    late = candidate("late", ordered_at=NOW - 2 * PROMISE_S, expected_bytes=MB // 2)
    plan = plan_deliveries([*cands, late], [], ROOMY, NOW, set(), 0, 2)
    assert plan.start == ["p1", "p2", "p3"]  # two slots and the express lane
    order = sorted([*cands, late], key=lambda c: fresh_order(c, NOW))
    assert [c.book_id for c in order][-1] == "late"  # its promise is broken already


def test_a_new_purchase_overtakes_a_long_download_on_a_one_slot_device() -> None:
    old, new = candidate("old"), candidate("new", ordered_at=NOW - 1)
    assert plan_deliveries([old, new], [], ROOMY, NOW, {"old"}, 0, 1).start == ["new"]
    assert plan_deliveries([old, new], [], ROOMY, NOW, set(), 0, 1).start == ["new"]


def test_purchases_then_wanted_then_likely_next_then_refreshes_then_archive() -> None:
    cands = [
        candidate("archive", ordered_at=NOW - 400 * 86400, wanted=False),
        candidate("refresh", has_readable_version=True, ordered_at=NOW - 5),
        candidate("wanted", ordered_at=NOW - 86400),
        candidate("sample", reason="sample", ordered_at=NOW - 2 * 86400, wanted=False),
    ]
    plan = plan_deliveries(cands, [], ROOMY, NOW, set(), 0, 5)
    assert plan.start == ["wanted", "sample", "refresh"]
    assert "in the cloud" in plan.waiting["archive"]
    trip = plan_deliveries(cands, [], ROOMY, NOW, set(), 0, 5, archive_slots=1)
    assert trip.start[-1] == "archive"
    # While a purchase is on its way (starting now, or already running), only it and the
    # wanted books start: a guess or a refresh must not share the purchase's link.
    fresh = candidate("fresh", ordered_at=NOW - 5)
    for running in (set(), {"fresh"}):
        plan = plan_deliveries([*cands, fresh], [], ROOMY, NOW, running, len(running), 5)
        assert plan.start == ["fresh", "wanted"][len(running) :]
        for book_id in ("sample", "refresh"):
            assert plan.waiting[book_id] == "held back: a new purchase is downloading"


def test_a_purchase_pauses_a_running_hint_refresh_or_archive_book_but_no_order() -> None:
    running = {
        "sample": candidate("sample", reason="sample", wanted=False),
        "refresh": candidate("refresh", has_readable_version=True),
        "archive": candidate("archive", wanted=False),
        "wanted": candidate("wanted"),
        "older purchase": candidate("older purchase", ordered_at=NOW - 60),
    }
    fresh = candidate("fresh", ordered_at=NOW - 1)
    plan = plan_deliveries([*running.values(), fresh], [], ROOMY, NOW, running.keys(), 1, 5, 1)
    assert plan.pause == ["archive", "refresh", "sample"]
    assert plan.start == ["fresh"]  # in a slot the paused downloads gave back
    assert all(plan.waiting[b] == PAUSED_FOR_PURCHASE for b in plan.pause)
    # Once the purchase is whole, they start again (at their first missing frame).
    plan = plan_deliveries(list(running.values())[:3], [], ROOMY, NOW, set(), 0, 5, 1)  # a trip
    assert (sorted(plan.start), plan.pause) == (["archive", "refresh", "sample"], [])


def test_a_hint_is_likely_next_however_recent_until_the_reader_asks_for_it() -> None:
    for reason in sorted(LIKELY_NEXT_REASONS):
        hint = candidate("next", reason=reason, ordered_at=NOW - 1)  # after this device joined
        assert not is_fresh(hint, NOW)
        assert priority_class(hint, NOW) == LIKELY_NEXT
        assert priority_class(candidate("n", reason=reason, requested=True), NOW) == WANTED
    bought = candidate("next", ordered_at=NOW - 1)
    assert priority_class(bought, NOW) == FRESH


def test_space_runs_short_the_unopened_hint_goes_first() -> None:
    budget = Budget(
        quota_bytes=3 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=False
    )
    held = [
        held_book("bought long ago", 1 * MB, ordered_at=NOW - 99 * 86400),
        held_book("series next", 1 * MB, reason="series_next", ordered_at=NOW - 3600),
        held_book("opened sample", 1 * MB, reason="sample", opened_at=NOW - 86400),
    ]
    purchase = [candidate("new", ordered_at=NOW - 1, expected_bytes=1 * MB)]
    plan = plan_deliveries(purchase, held, budget, NOW, set(), 0, 1)
    assert (plan.start, plan.evict) == (["new"], ["series next"])
    two = [candidate("new", ordered_at=NOW - 1, expected_bytes=2 * MB)]
    plan = plan_deliveries(two, held, budget, NOW, set(), 0, 1)
    assert plan.evict == ["series next", "bought long ago"]
    # A wanted book may push a hint out; a hint never pushes out a book the reader bought.
    wanted = [candidate("wanted", expected_bytes=1 * MB)]
    assert plan_deliveries(wanted, held, budget, NOW, set(), 0, 1).evict == ["series next"]
    hint = [candidate("wished", reason="wishlist", expected_bytes=1 * MB)]
    bought_only = [held_book("bought", 3 * MB)]
    plan = plan_deliveries(hint, bought_only, budget, NOW, set(), 0, 1)
    assert (plan.start, plan.evict) == ([], [])


def test_a_purchase_evicts_the_least_likely_book_but_never_a_protected_one() -> None:
    budget = Budget(
        quota_bytes=10 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=False
    )
    held = [
        held_book("pinned", 3 * MB, pinned=True),
        held_book("reading", 3 * MB, opened_at=NOW - 60),
        held_book("notes", 2 * MB, unsynced_notes=True),
        held_book("old", 1 * MB, ordered_at=NOW - 90 * 86400),
        held_book("older", 1 * MB, ordered_at=NOW - 99 * 86400),
    ]
    plan = plan_deliveries(
        [candidate("new", ordered_at=NOW - 1, expected_bytes=1_500_000)],
        held,
        budget,
        NOW,
        set(),
        0,
        1,
    )
    assert plan.start == ["new"]
    assert plan.evict == ["older", "old"]


def test_a_book_whose_new_version_starts_is_not_evicted_for_a_later_one() -> None:
    budget = Budget(
        quota_bytes=3 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=False
    )
    held = [held_book("a", 1 * MB, wanted=False), held_book("b", 1 * MB, wanted=False)]
    updates = [
        candidate("a", has_readable_version=True, expected_bytes=1 * MB, held_bytes=1 * MB),
        candidate("b", has_readable_version=True, expected_bytes=3 * MB),
    ]
    plan = plan_deliveries(updates, held, budget, NOW, set(), 0, 2)
    assert "a" not in plan.evict
    assert not set(plan.start) & set(plan.evict)


def test_a_book_evicted_for_a_wanted_one_does_not_start_its_new_version() -> None:
    budget = Budget(
        quota_bytes=2 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=False
    )
    held = [held_book("old", 1 * MB, wanted=False)]
    cands = [
        candidate("wanted", expected_bytes=2 * MB),
        candidate("old", has_readable_version=True, expected_bytes=1 * MB, held_bytes=1 * MB),
    ]
    plan = plan_deliveries(cands, held, budget, NOW, set(), 0, 2)
    assert (plan.start, plan.evict) == (["wanted"], ["old"])
    assert "removed to make room" in plan.waiting["old"]


def test_a_purchase_that_cannot_fit_waits_and_holds_back_the_rest() -> None:
    budget = Budget(
        quota_bytes=5 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=False
    )
    held = [held_book("pinned", 4 * MB, pinned=True)]
    cands = [
        candidate("big", ordered_at=NOW - 1, expected_bytes=3 * MB),
        candidate("small", expected_bytes=100_000),
    ]
    plan = plan_deliveries(cands, held, budget, NOW, set(), 0, 2)
    assert plan.start == []
    assert "not enough space" in plan.waiting["big"]
    assert "purchase is waiting" in plan.waiting["small"]


def test_books_of_one_class_never_evict_each_other() -> None:
    budget = Budget(
        quota_bytes=2 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=False
    )
    archived = [held_book("kept", 2 * MB, wanted=False)]
    plan = plan_deliveries(
        [candidate("next", wanted=False)], archived, budget, NOW, set(), 0, 1, archive_slots=1
    )
    assert (plan.start, plan.evict) == ([], [])
    wanted = [held_book("kept", 2 * MB)]
    plan = plan_deliveries([candidate("next")], wanted, budget, NOW, set(), 0, 1)
    assert (plan.start, plan.evict) == ([], [])
    # A wanted book does push out an archived one.
    plan = plan_deliveries([candidate("next")], archived, budget, NOW, set(), 0, 1)
    assert (plan.start, plan.evict) == (["next"], ["kept"])


def test_nothing_is_evicted_when_that_would_not_make_room() -> None:
    budget = Budget(
        quota_bytes=3 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=False
    )
    plan = plan_deliveries(
        [candidate("huge", ordered_at=NOW - 1, expected_bytes=10 * MB)],
        [held_book("a", 1 * MB), held_book("b", 1 * MB)],
        budget,
        NOW,
        set(),
        0,
        1,
    )
    assert (plan.start, plan.evict) == ([], [])


def test_the_file_systems_reserve_counts_like_the_quota() -> None:
    budget = Budget(
        quota_bytes=100 * MB, fs_free_bytes=3 * MB, reserve_bytes=2 * MB, battery_restricted=False
    )
    plan = plan_deliveries([candidate("a", expected_bytes=2 * MB)], [], budget, NOW, set(), 0, 1)
    assert "not enough space" in plan.waiting["a"]


def test_on_a_low_battery_only_purchases_start() -> None:
    budget = Budget(
        quota_bytes=100 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=True
    )
    cands = [candidate("fresh", ordered_at=NOW - 1), candidate("wanted")]
    plan = plan_deliveries(cands, [], budget, NOW, set(), 0, 2)
    assert plan.start == ["fresh"]
    assert "battery low" in plan.waiting["wanted"]


def test_next_retry_is_the_earliest_waiting_book() -> None:
    a, b = candidate("a", retry_at=NOW + 50), candidate("b", retry_at=NOW + 20)
    assert next_retry([a, b], NOW, set()) == NOW + 20
    assert next_retry([a, b], NOW, {"b"}) == NOW + 50
    assert next_retry([], NOW, set()) is None


@settings(max_examples=300)
@given(candidates, held_books, budgets, st.integers(1, 4))
def test_a_size_only_the_feed_claims_never_evicts_a_book(
    cands: list[DeliveryCandidate], held: list[HeldBook], budget: Budget, concurrency: int
) -> None:
    """The changes feed is unsigned: a book it says is huge fetches its signed manifest first,
    and nothing is evicted for it until that proves its size (issue 24 #3)."""
    used = sum(b.held_bytes for b in held)
    assume(used <= min(budget.quota_bytes, budget.fs_free_bytes - budget.reserve_bytes))
    cands = [replace(c, size_proven=False) for c in cands]
    plan = plan_deliveries(cands, held, budget, NOW, set(), 0, concurrency)
    assert plan.evict == []
    assert all(plan.waiting[b] == PROVING_SIZE for b in plan.probe)
    assert len(plan.start) + len(plan.probe) <= concurrency + 1


def test_a_purchase_claimed_at_the_quota_fetches_its_manifest_before_evicting() -> None:
    budget = Budget(
        quota_bytes=100 * MB, fs_free_bytes=1000 * MB, reserve_bytes=0, battery_restricted=False
    )
    held = [held_book(f"read{i}", 10 * MB) for i in range(9)]
    claimed = candidate("claimed", ordered_at=NOW - 1, expected_bytes=99 * MB, size_proven=False)
    plan = plan_deliveries([claimed], held, budget, NOW, set(), 0, 1)
    assert (plan.start, plan.evict, plan.probe) == ([], [], ["claimed"])
    # Its signed manifest proved it: now it may take the room it needs.
    plan = plan_deliveries([replace(claimed, size_proven=True)], held, budget, NOW, set(), 0, 1)
    assert plan.start == ["claimed"]
    assert len(plan.evict) == 9


frame_sizes = st.lists(st.tuples(st.integers(1, 5000), st.booleans()), min_size=1, max_size=40)


@given(frame_sizes, st.integers(0, 20_000))
def test_a_span_is_the_missing_frames_up_to_the_first_gap_too_wide_to_read_past(
    frames: list[tuple[int, bool]], max_gap: int
) -> None:
    rows, offset = [], 0
    for idx, (length, held) in enumerate(frames):
        rows.append((FrameRow(idx, "", offset, length, 0, length, "raw"), held))
        offset += length
    missing = [row for row, held in rows if not held]
    span = fetch_span(missing, max_gap)
    assert span == missing[: len(span)]
    assert bool(span) == bool(missing)

    def gap(a: FrameRow, b: FrameRow) -> int:
        return b.package_offset - (a.package_offset + a.length)

    assert all(gap(a, b) <= max_gap for a, b in itertools.pairwise(span))
    if len(span) < len(missing):
        assert gap(span[-1], missing[len(span)]) > max_gap
    if max_gap == 0 and span:  # reading nothing held: exactly the first run of consecutive frames
        assert [f.idx for f in span] == list(range(span[0].idx, span[0].idx + len(span)))
