"""Hybrid logical clocks: stamps order edits causally whatever the devices' wall clocks say."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.protocol import hlc
from daemon.protocol.hlc import HybridClock

DAY_MS = 86_400_000
NOW_MS = 1_764_000_000_000
# Wall clocks as devices have them: right, minutes or hours or a day off, ten years ahead, 1970.
SKEWS = st.sampled_from([0, 5 * 60_000, -5 * 60_000, 3_600_000, -3_600_000, DAY_MS, -DAY_MS])
PHYSICAL = st.one_of(
    st.integers(0, 10_000),  # a clock at 1970
    st.integers(NOW_MS - DAY_MS, NOW_MS + DAY_MS),
    st.just(NOW_MS + 10 * 365 * DAY_MS),
)


def test_stamps_sort_as_strings_in_clock_order() -> None:
    a = hlc.encode(999, 5, "zz")
    b = hlc.encode(1000, 0, "aa")
    c = hlc.encode(1000, 1, "aa")
    d = hlc.encode(1000, 1, "ab")
    assert a < b < c < d
    assert hlc.parse(d) == (1000, 1, "ab")
    assert hlc.node_of(d) == "ab"
    assert hlc.seconds_of(b) == 1.0


@pytest.mark.parametrize(
    "bad", ["", "1-2-x", "000000000001000-000001-", "000000000001000-000001-a-b", 7, None]
)
def test_anything_else_is_not_a_stamp(bad: object) -> None:
    assert not hlc.is_stamp(bad)
    with pytest.raises(ValueError, match="not a clock stamp"):
        hlc.parse(bad)  # type: ignore[arg-type]


@given(st.lists(PHYSICAL, min_size=1, max_size=50))
def test_a_nodes_stamps_strictly_increase_whatever_its_clock_does(readings: list[int]) -> None:
    clock = HybridClock("dev_a")
    stamps = [clock.tick(t) for t in readings]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    for t, stamp in zip(readings, stamps, strict=True):
        assert hlc.parse(stamp)[0] >= t  # never behind the physical clock


@settings(max_examples=200)
@given(
    st.lists(SKEWS, min_size=2, max_size=4),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 120_000)), max_size=60),
)
def test_a_stamp_made_after_seeing_another_is_greater(
    skews: list[int], messages: list[tuple[int, int, int]]
) -> None:
    """Nodes with skewed clocks exchange stamps; every stamp a node makes after receiving a
    message is greater than everything in that message's causal past."""
    clocks = [HybridClock(f"n{i}") for i in range(len(skews))]
    past: list[str] = ["" for _ in skews]  # the greatest stamp each node has seen or made
    now = NOW_MS
    for sender, receiver, elapsed in messages:
        sender %= len(clocks)
        receiver %= len(clocks)
        now += elapsed
        sent = clocks[sender].tick(now + skews[sender])
        assert sent > past[sender]
        past[sender] = sent
        clocks[receiver].observe(sent)
        past[receiver] = max(past[receiver], sent)
        made = clocks[receiver].tick(now + skews[receiver])
        assert made > past[receiver]
        past[receiver] = made


@pytest.mark.faults(26)
def test_a_clock_at_1970_stamps_after_what_it_saw() -> None:
    """The device's clock was reset to 1970: what it writes after syncing still comes after."""
    right = HybridClock("right")
    wrong = HybridClock("wrong")
    seen = right.tick(NOW_MS)
    wrong.observe(seen)
    assert wrong.tick(0) > seen
    assert hlc.parse(wrong.tick(0))[0] == NOW_MS  # carried on from the stamp, not from 1970


def test_a_restart_from_the_saved_stamp_stays_monotonic() -> None:
    clock = HybridClock("dev_a")
    before = clock.tick(NOW_MS)
    restarted = HybridClock("dev_a", last=clock.last)
    assert restarted.tick(NOW_MS - DAY_MS) > before  # the clock was set back meanwhile


def test_a_million_stamps_in_one_millisecond_borrow_the_next() -> None:
    clock = HybridClock("dev_a", last=hlc.encode(NOW_MS, hlc.MAX_COUNTER, "dev_a"))
    assert hlc.parse(clock.tick(NOW_MS)) == (NOW_MS + 1, 0, "dev_a")


def test_the_last_millisecond_is_the_end() -> None:
    clock = HybridClock("dev_a", last=hlc.encode(hlc.MAX_WALL_MS, hlc.MAX_COUNTER, "x"))
    with pytest.raises(OverflowError):
        clock.tick(0)


def test_node_names_are_checked() -> None:
    with pytest.raises(ValueError, match="bad node"):
        HybridClock("a-b")
