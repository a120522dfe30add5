"""Wake windows: every want served within its range, as few wake-ups as possible, deterministic."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given
from hypothesis import strategies as st

from daemon.radio.wake import Want, next_window

NOW = 10_000.0
ASLEEP = float("-inf")


@st.composite
def wants(draw: st.DrawFn, max_size: int = 8) -> list[Want]:
    """Wants from a little before now to an hour ahead; some urgent, some with long ranges."""
    found = []
    for i in range(draw(st.integers(0, max_size))):
        not_before = NOW + draw(st.integers(-60, 3600))
        spread = draw(st.sampled_from([0, 0, 5, 60, 600, 1800]) | st.integers(-10, 3600))
        found.append(Want(f"w{i}", float(not_before), float(not_before + spread)))
    return found


def simulate(
    pending: list[Want], now: float, tail_s: float | None
) -> list[tuple[float, list[Want], bool]]:
    """Open window after window until every want is served, as the daemon's owner does: each
    window keeps the radio awake for `tail_s` (None: the radio never stays awake)."""
    awake_until = ASLEEP
    windows = []
    while (window := next_window(pending, now, awake_until)) is not None:
        assert window.opens_at >= now  # time only moves forward
        served = [pending[i] for i in window.serves]
        assert served, "a window that serves nothing would loop for ever"
        windows.append((window.opens_at, served, window.wakes_radio))
        pending = [w for i, w in enumerate(pending) if i not in window.serves]
        now = window.opens_at
        if tail_s is not None:
            awake_until = now + tail_s
    return windows


def pairwise_disjoint_max(pending: list[Want], now: float) -> int:
    """The largest number of wants no two of which could share a window (brute force); a want
    can go no earlier than `now`, so one already late when asked ranges over `now` alone."""
    ranges = [(max(w.not_before, now), max(w.deadline, now)) for w in pending]
    for size in range(len(ranges), 0, -1):
        for group in combinations(ranges, size):
            if all(a[1] < b[0] or b[1] < a[0] for a, b in combinations(group, 2)):
                return size
    return 0


@given(wants(), st.sampled_from([None, 0.0, 5.0, 30.0]))
def test_every_want_is_served_once_within_its_range(
    pending: list[Want], tail_s: float | None
) -> None:
    windows = simulate(pending, NOW, tail_s)
    served = [w for _, group, _ in windows for w in group]
    assert sorted(served, key=lambda w: w.kind) == sorted(pending, key=lambda w: w.kind)
    for opens_at, group, _ in windows:
        for want in group:
            assert opens_at >= want.not_before
            # A want already late when asked is served at once; any other by its latest time.
            assert opens_at <= max(want.deadline, NOW)


@given(wants())
def test_windows_are_as_few_as_the_ranges_allow(pending: list[Want]) -> None:
    windows = simulate(pending, NOW, None)
    assert len(windows) == pairwise_disjoint_max(pending, NOW)


@given(st.floats(0, 3000), st.floats(0, 3000), st.floats(0, 600), st.floats(0, 600))
def test_two_wants_whose_ranges_overlap_share_a_window(
    start_a: float, start_b: float, spread_a: float, spread_b: float
) -> None:
    a = Want("a", NOW + start_a, NOW + start_a + spread_a)
    b = Want("b", NOW + start_b, NOW + start_b + spread_b)
    overlap = a.not_before <= b.deadline and b.not_before <= a.deadline
    assert len(simulate([a, b], NOW, None)) == (1 if overlap else 2)


@given(wants(), st.floats(NOW - 100, NOW + 100))
def test_the_answer_depends_only_on_the_arguments(pending: list[Want], awake_until: float) -> None:
    assert next_window(pending, NOW, awake_until) == next_window(list(pending), NOW, awake_until)


@given(wants(), st.floats(0, 120))
def test_an_awake_radio_never_delays_anything_and_never_wakes_it(
    pending: list[Want], tail_s: float
) -> None:
    asleep = next_window(pending, NOW, ASLEEP)
    awake = next_window(pending, NOW, NOW + tail_s)
    if asleep is None or awake is None:
        assert asleep == awake
        return
    assert awake.opens_at <= asleep.opens_at
    if awake.opens_at <= NOW + tail_s:
        assert not awake.wakes_radio


def test_deferrable_work_rides_the_keepalive() -> None:
    # A popular-highlights refresh that may wait 10 minutes and receipts that may wait 5 go out
    # with the keep-alive due in 4 minutes: one wake-up, not three.
    keepalive = Want("keepalive", NOW + 120, NOW + 240)
    popular = Want("popular", NOW, NOW + 600)
    receipts = Want("receipts", NOW + 10, NOW + 310)
    window = next_window([popular, keepalive, receipts], NOW, ASLEEP)
    assert window is not None
    assert (window.opens_at, window.serves, window.wakes_radio) == (NOW + 240, (0, 1, 2), True)


def test_urgent_work_opens_a_window_now_and_what_is_due_rides_it() -> None:
    purchase = Want("library", NOW, NOW)
    receipts = Want("receipts", NOW - 5, NOW + 300)
    later = Want("popular", NOW + 60, NOW + 600)
    window = next_window([later, purchase, receipts], NOW, ASLEEP)
    assert window is not None
    assert (window.opens_at, window.serves) == (NOW, (1, 2))


def test_work_due_while_the_radio_is_awake_goes_then() -> None:
    # The radio carried a push message a moment ago and stays up 10 s: a note push due in 3 s
    # goes then, without waiting for its latest time.
    note = Want("annotations", NOW + 3, NOW + 120)
    window = next_window([note], NOW, NOW + 10)
    assert window is not None
    assert (window.opens_at, window.wakes_radio) == (NOW + 3, False)
    assert next_window([note], NOW, NOW + 2) == next_window([note], NOW, ASLEEP)
