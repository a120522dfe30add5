"""Which deliveries to start next (pure: no I/O, `now` is an argument).

Policy, in priority order:
1. Fresh orders: books bought or sent in the last FRESH_WINDOW_S that are not readable yet. They
   carry the 60-second promise, so they go first, oldest order first (each promise is as urgent
   as the others, and the oldest has the least time left), and they may use one slot beyond the
   profile's concurrency (the express lane), so a purchase never waits behind a long download.
2. Other books never delivered, most recently ordered first: what was bought last is what the
   reader is likeliest to open next.
3. Updates of books that are already readable in an older version.
A book whose last attempt failed waits until its backoff `retry_at` has passed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from daemon.models import DeliveryCandidate

FRESH_WINDOW_S = 600.0


def is_fresh(c: DeliveryCandidate, now: float) -> bool:
    return not c.has_readable_version and now - c.ordered_at <= FRESH_WINDOW_S


def _priority(c: DeliveryCandidate, now: float) -> tuple[int, float]:
    if is_fresh(c, now):
        return (0, c.ordered_at)
    if not c.has_readable_version:
        return (1, -c.ordered_at)
    return (2, -c.ordered_at)


def next_deliveries(
    candidates: Sequence[DeliveryCandidate],
    now: float,
    running: Collection[str],
    running_fresh: int,
    concurrency: int,
) -> list[str]:
    """Book ids to start now, in order, given the deliveries already running.

    `running_fresh` is how many of `running` are fresh orders.
    """
    ready = sorted(
        (c for c in candidates if c.book_id not in running and c.retry_at <= now),
        key=lambda c: (*_priority(c, now), c.book_id),
    )
    slots = max(0, concurrency - len(running))
    express = 1 if running_fresh == 0 else 0
    chosen = []
    for c in ready:
        if slots > 0:
            slots -= 1
        elif express and is_fresh(c, now):
            express = 0
        else:
            break
        chosen.append(c.book_id)
    return chosen


def next_retry(
    candidates: Sequence[DeliveryCandidate], now: float, running: Collection[str]
) -> float | None:
    """The earliest future time at which a waiting book becomes ready again."""
    waiting = [c.retry_at for c in candidates if c.book_id not in running and c.retry_at > now]
    return min(waiting, default=None)
