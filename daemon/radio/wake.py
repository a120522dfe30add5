"""Wake windows (pure): when the radio next wakes, and which pending network work rides in it.

Each piece of network work a worker wants to do is a `Want`: its kind (who wants it), a
not-before time and a latest acceptable time, in monotonic seconds. Urgent work (a purchase, a
push message, the reader asking) has latest = not_before = now; deferrable work (a refresh,
receipts, a note push, a retry after backoff) has a range, and rides any window opening in it.

`next_window` decides:
- while the radio is awake anyway (it carried something within its tail), the window opens at
  the earliest not-before that falls before the radio sleeps: an awake radio costs little more;
- otherwise it opens at the earliest latest time, the last moment the most pressing want
  accepts, so that as many wants as possible are due by then and share the wake-up;
- it serves every want whose not-before has come by the time it opens.

Invariants (tests/unit/test_wake.py): no want is served before its not-before, nor after its
latest time (or `now`, when that has already passed); the answer depends only on the
arguments; with the radio asleep, wants are served in as few windows as the largest set of
them whose ranges are pairwise disjoint (each of those needs a window of its own, so no plan
has fewer); in particular two wants whose ranges overlap share a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Want:
    kind: str  # who wants the radio: "keepalive", "poll", "popular", "receipts", ...
    not_before: float  # monotonic s: never earlier (a backoff, a settle delay)
    latest: float  # monotonic s: never later; a latest before not_before counts as not_before

    @property
    def deadline(self) -> float:
        return max(self.latest, self.not_before)


@dataclass(frozen=True, slots=True)
class Window:
    opens_at: float  # monotonic s
    serves: tuple[int, ...]  # indexes into the wants given, ascending
    wakes_radio: bool  # False when it rides a radio that is awake anyway


def next_window(wants: Sequence[Want], now: float, awake_until: float) -> Window | None:
    """The next window for `wants` (None if there are none), given that the radio stays awake
    until `awake_until` (in the past when it sleeps)."""
    if not wants:
        return None
    deadline = max(now, min(w.deadline for w in wants))
    # The earliest not-before is never after the earliest deadline (each want's not-before is
    # at most its own deadline), so riding never delays the most pressing want.
    earliest = max(now, min(w.not_before for w in wants))
    riding = earliest <= awake_until
    opens_at = earliest if riding else deadline
    serves = tuple(i for i, w in enumerate(wants) if w.not_before <= opens_at)
    return Window(opens_at, serves, wakes_radio=not riding)
