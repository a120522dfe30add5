"""The delivery planner's invariants, for any library and any moment."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemon.models import DeliveryCandidate
from daemon.plan import FRESH_WINDOW_S, is_fresh, next_deliveries, next_retry

NOW = 1_000_000.0

candidates = st.lists(
    st.builds(
        DeliveryCandidate,
        book_id=st.text("abcdefgh", min_size=1, max_size=3),
        reason=st.sampled_from(["bought", "sent", "update"]),
        ordered_at=st.floats(NOW - 3 * FRESH_WINDOW_S, NOW),
        retry_at=st.sampled_from([0.0, NOW - 1, NOW + 30]),
        has_readable_version=st.booleans(),
    ),
    unique_by=lambda c: c.book_id,
    max_size=12,
)


@given(
    candidates, st.sets(st.text("abcdefgh", min_size=1, max_size=3), max_size=4), st.integers(1, 4)
)
def test_plan_invariants(
    cands: list[DeliveryCandidate], running: set[str], concurrency: int
) -> None:
    by_id = {c.book_id: c for c in cands}
    running_fresh = sum(1 for b in running if b in by_id and is_fresh(by_id[b], NOW))
    chosen = next_deliveries(cands, NOW, running, running_fresh, concurrency)
    ready = [c for c in cands if c.book_id not in running and c.retry_at <= NOW]

    slots = max(0, concurrency - len(running))
    assert len(set(chosen)) == len(chosen)
    assert not set(chosen) & running, "a running delivery is never started twice"
    assert all(by_id[b].retry_at <= NOW for b in chosen), "backoff is respected"
    # Never beyond the concurrency, but for one express-lane purchase when none is running.
    assert len(chosen) <= slots + (1 if running_fresh == 0 else 0)
    assert all(is_fresh(by_id[b], NOW) for b in chosen[slots:])
    # Fresh purchases come first, oldest order first; nothing else while one is left waiting.
    fresh = [b for b in chosen if is_fresh(by_id[b], NOW)]
    assert chosen[: len(fresh)] == fresh
    assert [by_id[b].ordered_at for b in fresh] == sorted(by_id[b].ordered_at for b in fresh)
    if len(fresh) < len(chosen):
        assert len(fresh) == sum(1 for c in ready if is_fresh(c, NOW))
    # A slot is never left idle while something is ready.
    assert len(chosen) >= min(len(ready), slots)


def test_a_new_purchase_overtakes_a_long_download_on_a_one_slot_device() -> None:
    old = DeliveryCandidate("old", "bought", NOW - 86400, 0.0, False)
    new = DeliveryCandidate("new", "bought", NOW - 1, 0.0, False)
    assert next_deliveries([old, new], NOW, {"old"}, 0, 1) == ["new"]
    assert next_deliveries([old, new], NOW, set(), 0, 1)[0] == "new"


def test_purchases_come_before_updates_and_older_backlog() -> None:
    update = DeliveryCandidate("upd", "update", NOW - 5, 0.0, True)
    backlog = DeliveryCandidate("backlog", "bought", NOW - 86400, 0.0, False)
    fresh = DeliveryCandidate("fresh", "bought", NOW - 5, 0.0, False)
    assert next_deliveries([update, backlog, fresh], NOW, set(), 0, 3) == [
        "fresh",
        "backlog",
        "upd",
    ]


def test_next_retry_is_the_earliest_waiting_book() -> None:
    a = DeliveryCandidate("a", "bought", NOW, NOW + 50, False)
    b = DeliveryCandidate("b", "bought", NOW, NOW + 20, False)
    assert next_retry([a, b], NOW, set()) == NOW + 20
    assert next_retry([a, b], NOW, {"b"}) == NOW + 50
    assert next_retry([], NOW, set()) is None
