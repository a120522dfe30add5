"""Hybrid logical clocks (pure): the stamps that order every annotation edit.

A stamp is the string `WWWWWWWWWWWWWWW-CCCCCC-node`: wall milliseconds (15 digits), a counter
(6 digits) and the node that made it (a device id, or "service"). The fixed widths make string
order equal to (wall, counter, node) order, so stamps compare as plain strings in Python, in SQL
and on the wire, and two nodes never make the same stamp.

Invariants (Kulkarni et al., "Logical Physical Clocks", 2014), whatever the physical clock does
(set back, stuck at 1970, hours ahead):
- a node's stamps strictly increase;
- a stamp made after observing another stamp is greater than it (happens-before implies <);
- the wall part never falls behind the physical clock given, and runs ahead of it only as far as
  stamps observed from a faster clock (plus 1 ms per million stamps made within one ms).

No I/O: the caller passes the physical time in, and persists `last` if it must survive restarts.
"""

from __future__ import annotations

import re

WALL_DIGITS = 15
COUNTER_DIGITS = 6
MAX_WALL_MS = 10**WALL_DIGITS - 1  # the year 33658
MAX_COUNTER = 10**COUNTER_DIGITS - 1
NODE_PATTERN = r"[A-Za-z0-9_]{1,64}"
_STAMP = re.compile(rf"\A([0-9]{{{WALL_DIGITS}}})-([0-9]{{{COUNTER_DIGITS}}})-({NODE_PATTERN})\Z")
_NODE = re.compile(rf"\A{NODE_PATTERN}\Z")
_NODE_AT = WALL_DIGITS + 1 + COUNTER_DIGITS + 1


def encode(wall_ms: int, counter: int, node: str) -> str:
    if not 0 <= wall_ms <= MAX_WALL_MS or not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"stamp out of range: wall {wall_ms}, counter {counter}")
    if not _NODE.match(node):
        raise ValueError(f"bad node name {node[:80]!r}")
    return f"{wall_ms:0{WALL_DIGITS}d}-{counter:0{COUNTER_DIGITS}d}-{node}"


def parse(stamp: str) -> tuple[int, int, str]:
    """(wall_ms, counter, node) of a stamp; ValueError if it is not one."""
    match = _STAMP.match(stamp) if isinstance(stamp, str) else None
    if match is None:
        raise ValueError(f"not a clock stamp: {str(stamp)[:80]!r}")
    return int(match[1]), int(match[2]), match[3]


def is_stamp(value: object) -> bool:
    return isinstance(value, str) and _STAMP.match(value) is not None


def is_node(value: object) -> bool:
    """A device id as stamps carry it (the service's node is "service")."""
    return isinstance(value, str) and _NODE.match(value) is not None


def node_of(stamp: str) -> str:
    return stamp[_NODE_AT:]


def seconds_of(stamp: str) -> float:
    """The wall part of a stamp in seconds since the epoch (for display, never for ordering)."""
    return int(stamp[:WALL_DIGITS]) / 1000


class HybridClock:
    """One node's clock. `tick` stamps a local event; `observe` takes in a stamp seen elsewhere."""

    def __init__(self, node: str, last: str | None = None) -> None:
        encode(0, 0, node)  # validates the node name
        self.node = node
        self._wall = 0
        self._counter = -1
        if last is not None:
            self.observe(last)

    @property
    def last(self) -> str | None:
        """The greatest stamp made or observed; persist it to stay monotonic across restarts."""
        return None if self._counter < 0 else encode(self._wall, self._counter, self.node)

    def tick(self, physical_ms: int) -> str:
        physical = min(max(int(physical_ms), 0), MAX_WALL_MS)
        if physical > self._wall:
            wall, counter = physical, 0
        else:
            wall, counter = self._wall, self._counter + 1
        if counter > MAX_COUNTER:
            # A million stamps in one millisecond (or a clock stuck for that long): borrow the
            # next millisecond rather than wrap, so stamps keep increasing.
            wall, counter = wall + 1, 0
        if wall > MAX_WALL_MS:
            raise OverflowError("the hybrid clock reached its last representable millisecond")
        self._wall, self._counter = wall, counter
        return encode(wall, counter, self.node)

    def observe(self, stamp: str) -> None:
        """Move past `stamp` (made anywhere): every later tick is greater than it."""
        wall, counter, _ = parse(stamp)
        if (wall, counter) > (self._wall, self._counter):
            self._wall, self._counter = wall, counter
