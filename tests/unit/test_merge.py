"""The pure merge of annotations: convergence, no lost text, edit beats delete, positions.

The property test plays 2-4 devices and the service with the real merge code, over a network
that partitions, reorders, duplicates and delays every message, and devices whose clocks are
skewed (minutes, hours, a day, or stuck at 1970). After everything is finally delivered, every
replica holds the same state, and an independent oracle (sets of op ids, not stamps or version
vectors) says which note texts must be live and which annotations deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import AnnotationError
from daemon.protocol import annotation_input, hlc, merge
from daemon.protocol.hlc import HybridClock
from daemon.protocol.ids import ITEM_ID
from daemon.protocol.merge import Edit, Item, NewAnnotation, Position

BOOK = "bk_0123456789abcdef"
NOW_MS = 1_764_000_000_000
DAY_MS = 86_400_000
ANCHOR = annotation_input.parse_anchor(
    {"resource": "OPS/ch1.xhtml", "start": 10, "end": 20, "quote": {"exact": "Call me"}}
)
PLACE = {"resource": "OPS/ch1.xhtml", "start": 0, "progress": 0.5}


# -- a model of devices, service and network ----------------------------------------------------


@dataclass(frozen=True)
class OpRecord:
    """What the oracle knows of an op: who made it, in which order, what it saw."""

    op_id: str
    node: str
    seq: int  # the op's place among its node's ops
    target: str
    kind: str  # create, edit, delete, position
    stamp: str
    text: str | None = None  # a new note version (its stamp is the op's stamp)
    replaces: frozenset[str] = frozenset()  # note versions (op ids) it replaced
    saw: frozenset[str] = frozenset()  # deletes: the op ids of the item the device held
    progress: float = 0.0  # positions


@dataclass
class Replica:
    node: str
    skew_ms: int
    clock: HybridClock
    items: dict[str, Item] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    known: dict[str, set[str]] = field(default_factory=dict)  # target -> op ids merged
    outbox: dict[str, tuple[str, Item | Position]] = field(default_factory=dict)
    made: int = 0


@dataclass
class World:
    devices: list[Replica]
    service: Replica
    ops: dict[str, OpRecord] = field(default_factory=dict)
    stamp_to_op: dict[str, str] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)
    in_flight: list[tuple[str, int, Any]] = field(default_factory=list)  # (kind, device, payload)
    now: int = NOW_MS
    next_item: int = 0

    def physical(self, device: Replica) -> int:
        if device.skew_ms == EPOCH:  # a clock reset to 1970 that runs from there
            return self.now - NOW_MS
        return self.now + device.skew_ms

    # Local edits, as the local API makes them.
    def local(self, device: Replica, target: str, delta: Item | Position, record: OpRecord) -> None:
        device.made += 1
        self.ops[record.op_id] = record
        self.stamp_to_op[record.stamp] = record.op_id
        join_into(device, target, delta, {record.op_id})
        device.outbox[record.op_id] = (target, delta)

    def op_id(self, device: Replica) -> str:
        return f"op_{device.node}_{device.made:04d}"

    def live_items(self, device: Replica) -> list[Item]:
        return [
            i
            for _, i in sorted(device.items.items())
            if merge.is_created(i) and not merge.is_deleted(i)
        ]


def join_into(replica: Replica, target: str, state: Item | Position, ops: set[str]) -> None:
    if isinstance(state, Item):
        mine = replica.items.get(target)
        replica.items[target] = state if mine is None else merge.join_item(mine, state)
        replica.clock.observe(merge.max_stamp(state))
    else:
        have = replica.positions.get(target)
        replica.positions[target] = state if have is None else merge.join_position(have, state)
        replica.clock.observe(merge.position_max_stamp(state))
    replica.known.setdefault(target, set()).update(ops)


def snapshot(world: World, targets: list[str]) -> list[tuple[str, Item | Position, set[str]]]:
    service = world.service
    out: list[tuple[str, Item | Position, set[str]]] = []
    for target in targets:
        state: Item | Position | None = service.items.get(target) or service.positions.get(target)
        if state is not None:
            out.append((target, state, set(service.known.get(target, ()))))
    return out


# Weighted so that the interesting interleavings (an edit racing a delete, a conflict edited
# again) come up within a few dozen steps: few annotations, many edits and exchanges.
ACTIONS = (
    ["note"] * 4
    + ["color"] * 2
    + ["resolve"] * 2
    + ["dismiss", "create", "position", "wait"]
    + ["delete"] * 2
    + ["sync"] * 4
    + ["push", "pull"] * 2
    + ["deliver"] * 3
)


def step(world: World, data: st.DataObject) -> None:
    action = data.draw(st.sampled_from(ACTIONS))
    device = world.devices[data.draw(st.integers(0, len(world.devices) - 1))]
    live = world.live_items(device)
    if action == "wait":
        world.now += data.draw(st.integers(0, 3_600_000))
        return
    if action in ("color", "note", "resolve", "dismiss", "delete") and not live:
        # Nothing to edit here yet: learn what exists, or make the first annotation.
        action = "create" if world.next_item == 0 else "sync"
    if action == "create":
        stamp = device.clock.tick(world.physical(device))
        item_id = f"an_item{world.next_item:04d}"
        world.next_item += 1
        note = data.draw(st.sampled_from([None, "first words"]))
        new = NewAnnotation(None, "highlight", ANCHOR, "yellow", note)
        record = OpRecord(
            world.op_id(device), device.node, device.made, item_id, "create", stamp, note
        )
        world.local(device, item_id, merge.create_delta(item_id, BOOK, stamp, new), record)
        return
    if action == "position":
        stamp = device.clock.tick(world.physical(device))
        progress = data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
        place = {**PLACE, "progress": progress}
        record = OpRecord(
            world.op_id(device),
            device.node,
            device.made,
            "pos",
            "position",
            stamp,
            None,
            progress=progress,
        )
        world.local(device, "pos", merge.position_delta(BOOK, stamp, place), record)
        return
    if action in ("color", "note", "resolve", "dismiss", "delete"):
        item = live[data.draw(st.integers(0, len(live) - 1))]
        stamp = device.clock.tick(world.physical(device))
        op_id = world.op_id(device)
        versions = merge.note_versions(item)
        if action == "delete":
            saw = frozenset(device.known.get(item.item_id, set()))
            record = OpRecord(
                op_id, device.node, device.made, item.item_id, "delete", stamp, saw=saw
            )
            world.local(device, item.item_id, merge.delete_delta(item, stamp), record)
            return
        replaces: tuple[str, ...] | None = None
        text: str | None = None
        changes: dict[str, Any] = {}
        intended: list[str] = []  # what the reader saw and meant to replace (the oracle's view)
        if action == "color":
            changes["color"] = data.draw(st.sampled_from(list(annotation_input.COLORS)))
        elif action == "note":
            text = f"{device.node} wrote {device.made}"
            intended = [versions[0][0]] if versions else []  # the note shown, not conflicts
        elif action == "resolve":
            text = f"{device.node} resolved {device.made}"
            replaces = tuple(s for s, _ in versions)
            intended = list(replaces)
        elif len(versions) > 1:  # dismiss a conflict
            replaces = (versions[-1][0],)
            intended = list(replaces)
        else:
            changes["color"] = None
        edit = Edit(changes, text, replaces)
        delta = merge.edit_delta(item, stamp, edit)
        replaced = frozenset(world.stamp_to_op[s] for s in intended)
        record = OpRecord(
            op_id, device.node, device.made, item.item_id, "edit", stamp, text, replaced
        )
        world.local(device, item.item_id, delta, record)
        return
    index = world.devices.index(device)
    if action == "sync":
        # Push some ops and pull some states at once; the acknowledgement may be lost.
        chosen = (
            data.draw(st.lists(st.sampled_from(sorted(device.outbox)), unique=True))
            if device.outbox
            else []
        )
        deliver(world, ("push", index, [(o, *device.outbox[o]) for o in chosen]))
        ack = world.in_flight.pop()
        if data.draw(st.booleans()):
            deliver(world, ack)
        targets = sorted(set(world.service.items) | set(world.service.positions))
        pulled = data.draw(st.lists(st.sampled_from(targets), unique=True)) if targets else []
        deliver(world, ("state", index, snapshot(world, pulled)))
        return
    if action == "push" and device.outbox:
        # Any subset of the outbox, in any order: a partition, a retry, a reordering.
        chosen = data.draw(st.lists(st.sampled_from(sorted(device.outbox)), unique=True))
        world.in_flight.append(
            ("push", world.devices.index(device), [(o, *device.outbox[o]) for o in chosen])
        )
        return
    if action == "pull":
        targets = sorted(set(world.service.items) | set(world.service.positions))
        chosen = data.draw(st.lists(st.sampled_from(targets), unique=True)) if targets else []
        world.in_flight.append(("state", world.devices.index(device), snapshot(world, chosen)))
        return
    if action == "deliver" and world.in_flight:
        index = data.draw(st.integers(0, len(world.in_flight) - 1))
        message = world.in_flight[index]
        if not data.draw(st.booleans()):  # else it stays in flight: delivered again later
            world.in_flight.pop(index)
        deliver(world, message)


def deliver(world: World, message: tuple[str, int, Any]) -> None:
    kind, index, payload = message
    device = world.devices[index]
    if kind == "push":
        acked = []
        for op_id, target, delta in payload:
            if op_id not in world.applied:
                world.applied.add(op_id)
                join_into(world.service, target, delta, {op_id})
            acked.append(op_id)
        world.in_flight.append(("ack", index, acked))
    elif kind == "ack":
        for op_id in payload:
            device.outbox.pop(op_id, None)
    else:
        for target, state, ops in payload:
            join_into(device, target, state, ops)


def settle(world: World) -> None:
    """Deliver everything still in flight, push every outbox, pull everything everywhere."""
    while world.in_flight:
        deliver(world, world.in_flight.pop())
    for index, device in enumerate(world.devices):
        deliver(world, ("push", index, [(o, *device.outbox[o]) for o in sorted(device.outbox)]))
    while world.in_flight:
        deliver(world, world.in_flight.pop())
    targets = sorted(set(world.service.items) | set(world.service.positions))
    for index in range(len(world.devices)):
        deliver(world, ("state", index, snapshot(world, targets)))


def canonical(replica: Replica) -> str:
    return json.dumps(
        {
            "items": {k: merge.item_to_doc(v) for k, v in sorted(replica.items.items())},
            "positions": {k: merge.position_to_doc(v) for k, v in replica.positions.items()},
        },
        sort_keys=True,
    )


def covered(edit: OpRecord, saw: frozenset[str], ops: dict[str, OpRecord]) -> bool:
    """The delete saw this edit, or a later edit of the same item by the same device (which
    that device made having seen its own earlier one)."""
    return any(
        ops[o].node == edit.node and ops[o].seq >= edit.seq and ops[o].kind != "delete" for o in saw
    )


EPOCH = -(2**62)  # marks a device whose clock was reset to 1970
SKEWS = [0, 5 * 60_000, -3_600_000, 3_600_000, DAY_MS, -DAY_MS, EPOCH]


@pytest.mark.faults(27, 28)
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_interleaving_converges_without_losing_text(data: st.DataObject) -> None:
    count = data.draw(st.integers(2, 4))
    devices = [
        Replica(f"dev{i}", data.draw(st.sampled_from(SKEWS)), HybridClock(f"dev{i}"))
        for i in range(count)
    ]
    world = World(devices, Replica("service", 0, HybridClock("service")))
    for _ in range(data.draw(st.integers(1, 60))):
        step(world, data)
    settle(world)

    # 1. One state everywhere, and the service holds each op exactly once.
    expected = canonical(world.service)
    for device in devices:
        assert canonical(device) == expected
        assert not device.outbox
    assert world.applied == set(world.ops)

    for item_id, item in world.service.items.items():
        ops = [o for o in world.ops.values() if o.target == item_id]
        # 2. No text lost: live versions are exactly those no reader replaced.
        written = {o.op_id: o.text for o in ops if o.text is not None}
        replaced = set().union(*(o.replaces for o in ops))
        live = {world.stamp_to_op[s]: t for s, t in item.texts.items()}
        assert live == {o: t for o, t in written.items() if o not in replaced}
        # 3. Deleted exactly when every edit was seen by some delete (edit beats delete).
        deletes = [o for o in ops if o.kind == "delete"]
        edits = [o for o in ops if o.kind != "delete"]
        should_be_deleted = bool(deletes) and all(
            any(covered(e, d.saw, world.ops) for d in deletes) for e in edits
        )
        assert merge.is_deleted(item) == should_be_deleted
        # 4. The note shown is the greatest stamp among the live versions, on every device.
        versions = merge.note_versions(item)
        if versions:
            assert versions[0][0] == max(item.texts)

    # 5. Reading position: each device's last place, and the furthest anywhere.
    positions = [o for o in world.ops.values() if o.kind == "position"]
    if positions:
        state = world.service.positions["pos"]
        for device in devices:
            mine = [o for o in positions if o.node == device.node]
            if mine:
                assert state.devices[device.node][0] == max(o.stamp for o in mine)
        assert state.furthest is not None
        assert state.furthest[0] == max(o.progress for o in positions)


# -- examples -----------------------------------------------------------------------------------


def test_concurrent_note_edits_keep_the_losing_text_as_a_conflict() -> None:
    a, b = HybridClock("dev_a"), HybridClock("dev_b")
    created = merge.create_delta(
        "an_00000001", BOOK, a.tick(NOW_MS), NewAnnotation(None, "note", ANCHOR, None, "draft")
    )
    b.observe(merge.max_stamp(created))
    edit_a = merge.edit_delta(created, a.tick(NOW_MS + 10), Edit({}, "from A", None))
    edit_b = merge.edit_delta(created, b.tick(NOW_MS + 5), Edit({}, "from B", None))
    left = merge.join_item(merge.join_item(created, edit_a), edit_b)
    right = merge.join_item(merge.join_item(created, edit_b), edit_a)
    assert left == right
    view = merge.item_view(left, pending=False)
    assert view["note"] == "from A"  # the greater stamp
    assert [c["note"] for c in view["conflicts"]] == ["from B"]
    assert view["conflicts"][0]["device_id"] == "dev_b"

    # Resolving names every version the reader saw; the conflict is gone everywhere after.
    resolve = merge.edit_delta(
        left,
        b.tick(NOW_MS + 20),
        Edit({}, "from A and B", tuple(s for s, _ in merge.note_versions(left))),
    )
    resolved = merge.join_item(left, resolve)
    assert merge.item_view(resolved, False)["note"] == "from A and B"
    assert merge.item_view(resolved, False)["conflicts"] == []


def test_an_edit_keeps_the_conflicts_it_did_not_show() -> None:
    a, b = HybridClock("dev_a"), HybridClock("dev_b")
    created = merge.create_delta(
        "an_00000001", BOOK, a.tick(NOW_MS), NewAnnotation(None, "note", ANCHOR, None, "x")
    )
    both = merge.join_item(
        merge.join_item(
            created, merge.edit_delta(created, a.tick(NOW_MS + 1), Edit({}, "a", None))
        ),
        merge.edit_delta(created, b.tick(NOW_MS + 2), Edit({}, "b", None)),
    )
    again = merge.join_item(both, merge.edit_delta(both, a.tick(NOW_MS + 3), Edit({}, "b2", None)))
    assert [t for _, t in merge.note_versions(again)] == ["b2", "a"]


@pytest.mark.faults(27)
def test_edit_beats_a_concurrent_delete_and_loses_to_a_later_one() -> None:
    a, b = HybridClock("dev_a"), HybridClock("dev_b")
    created = merge.create_delta(
        "an_00000001", BOOK, a.tick(NOW_MS), NewAnnotation(None, "highlight", ANCHOR, "blue", None)
    )
    b.observe(merge.max_stamp(created))
    deleted = merge.delete_delta(created, a.tick(NOW_MS + 60_000))  # later by the clock
    edited = merge.edit_delta(created, b.tick(NOW_MS + 1), Edit({"color": "pink"}, None, None))
    both = merge.join_item(merge.join_item(created, deleted), edited)
    assert not merge.is_deleted(both)
    assert merge.item_view(both, False)["color"] == "pink"
    # ... and says so (issue 23 #6): the delete that did not take, by whom and when.
    overruled = merge.item_view(both, False)["delete_overruled"]
    assert overruled == {"device_id": "dev_a", "at": hlc.seconds_of(deleted.deleted or "")}
    assert merge.item_view(created, False)["delete_overruled"] is None
    # A delete made after seeing the edit wins.
    b.observe(merge.max_stamp(both))
    again = merge.join_item(both, merge.delete_delta(both, b.tick(NOW_MS + 2)))
    view = merge.item_view(again, False)
    assert view["deleted"]
    assert view["deleted_by"] == "dev_b"
    assert view["delete_overruled"] is None  # this delete took


@pytest.mark.faults(26, 29)
def test_a_device_at_1970_orders_its_edit_after_what_it_had_seen() -> None:
    right, wrong = HybridClock("dev_right"), HybridClock("dev_1970")
    created = merge.create_delta(
        "an_00000001",
        BOOK,
        right.tick(NOW_MS),
        NewAnnotation(None, "highlight", ANCHOR, "blue", None),
    )
    wrong.observe(merge.max_stamp(created))
    recolored = merge.edit_delta(created, wrong.tick(0), Edit({"color": "green"}, None, None))
    assert merge.item_view(merge.join_item(created, recolored), False)["color"] == "green"


def test_reading_position_keeps_here_latest_and_furthest() -> None:
    a, b = HybridClock("dev_a"), HybridClock("dev_b")
    far = merge.position_delta(BOOK, a.tick(NOW_MS), {**PLACE, "progress": 0.8})
    b.observe(merge.position_max_stamp(far))
    # B's clock is a day behind, but it reads after syncing: its place is the latest.
    back = merge.position_delta(BOOK, b.tick(NOW_MS - DAY_MS), {**PLACE, "progress": 0.3})
    state = merge.join_position(far, back)
    assert state == merge.join_position(back, far)
    view = merge.position_view(state, BOOK, "dev_a")
    assert view["here"]["position"]["progress"] == 0.8
    assert view["latest"]["device_id"] == "dev_b"
    assert view["furthest"]["device_id"] == "dev_a"
    assert view["furthest"]["position"]["progress"] == 0.8
    assert annotation_input.position_from_doc(merge.position_to_doc(state)) == state


# -- join laws on arbitrary deltas --------------------------------------------------------------


NOTES = st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), max_size=5)


@st.composite
def deltas(draw: st.DrawFn) -> list[Item]:
    nodes = [HybridClock(f"n{i}") for i in range(3)]
    base = merge.create_delta(
        "an_00000001",
        BOOK,
        nodes[0].tick(NOW_MS),
        NewAnnotation(None, "note", ANCHOR, None, draw(NOTES)),
    )
    out = [base]
    for _ in range(draw(st.integers(0, 8))):
        clock = draw(st.sampled_from(nodes))
        seen = draw(st.sampled_from(out))
        state = merge.join_item(base, seen)
        stamp = clock.tick(NOW_MS + draw(st.integers(-DAY_MS, DAY_MS)))
        if draw(st.booleans()):
            out.append(merge.delete_delta(state, stamp))
        else:
            out.append(merge.edit_delta(state, stamp, Edit({}, draw(NOTES), None)))
    return out


@pytest.mark.faults(28)
@given(deltas(), st.randoms(use_true_random=False))
def test_join_is_commutative_associative_and_idempotent(parts: list[Item], rnd: Any) -> None:
    def fold(items: list[Item]) -> Item:
        state = items[0]
        for item in items[1:]:
            state = merge.join_item(state, item)
        return state

    shuffled = list(parts)
    rnd.shuffle(shuffled)
    doubled = shuffled + rnd.sample(parts, k=len(parts) // 2)
    assert fold(parts) == fold(shuffled) == fold(doubled)
    assert annotation_input.item_from_doc(
        json.loads(json.dumps(merge.item_to_doc(fold(parts))))
    ) == fold(parts)


# -- the same passage highlighted on several devices (issue 23 #10) -----------------------------

ranges = st.fixed_dictionaries(
    {
        "resource": st.sampled_from(["OPS/ch1.xhtml", "OPS/ch2.xhtml"]),
        "start": st.integers(0, 50),
        "length": st.integers(1, 30),
        "book_version": st.none() | st.integers(1, 3),
    }
)
readers_marks = st.lists(
    st.tuples(
        st.sampled_from(["dev_kindle", "dev_phone", "dev_tablet"]),
        st.sampled_from(annotation_input.COLORS),
        st.text("abc ", max_size=5),  # quote context: readers' software differs
        st.integers(-DAY_MS, DAY_MS),  # clock skew
    ),
    min_size=1,
    max_size=5,
)


def _anchor_of(r: dict[str, Any], context: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resource": r["resource"],
        "start": r["start"],
        "end": r["start"] + r["length"],
        "quote": {"exact": "x" * r["length"], "prefix": context, "suffix": context[::-1]},
    }
    if r["book_version"] is not None:
        doc["book_version"] = r["book_version"]
    return annotation_input.parse_anchor(doc)


@given(ranges, readers_marks, st.randoms(use_true_random=False))
def test_one_range_highlighted_anywhere_is_one_highlight(
    r: dict[str, Any], marks: list[tuple[str, str, str, int]], rnd: Any
) -> None:
    clocks = {node: HybridClock(node) for node, *_ in marks}
    deltas = []
    for node, color, context, skew in marks:
        anchor = _anchor_of(r, context)
        item_id = merge.highlight_id(BOOK, anchor)
        new = NewAnnotation(None, "highlight", anchor, color, None)
        deltas.append(merge.create_delta(item_id, BOOK, clocks[node].tick(NOW_MS + skew), new))
    assert len({d.item_id for d in deltas}) == 1  # one id, whoever highlighted, however
    assert ITEM_ID.match(deltas[0].item_id)
    shuffled = list(deltas)
    rnd.shuffle(shuffled)
    states = []
    for order in (deltas, shuffled, shuffled + deltas):
        state = order[0]
        for delta in order[1:]:
            state = merge.join_item(state, delta)
        states.append(state)
    assert states[0] == states[1] == states[2]
    view = merge.item_view(states[0], False)
    assert view["kind"] == "highlight"
    latest = max(deltas, key=lambda d: d.fields["color"][0])
    assert view["color"] == latest.fields["color"][1]  # the later colour, on every replica


def test_highlighting_a_range_again_replaces_its_note_and_revives_a_deleted_one_clean() -> None:
    clock = HybridClock("dev_kindle")
    item_id = merge.highlight_id(BOOK, ANCHOR)
    first = merge.create_delta(
        item_id, BOOK, clock.tick(NOW_MS), NewAnnotation(None, "highlight", ANCHOR, "blue", "one")
    )
    again = merge.recreate_delta(
        first, clock.tick(NOW_MS), NewAnnotation(None, "highlight", ANCHOR, "pink", "two")
    )
    view = merge.item_view(merge.join_item(first, again), False)
    assert (view["color"], view["note"], view["conflicts"]) == ("pink", "two", [])
    gone = merge.join_item(first, merge.delete_delta(first, clock.tick(NOW_MS)))
    back = merge.join_item(
        gone,
        merge.recreate_delta(
            gone, clock.tick(NOW_MS), NewAnnotation(None, "highlight", ANCHOR, "green", None)
        ),
    )
    view = merge.item_view(back, False)
    assert (view["deleted"], view["color"], view["note"]) == (False, "green", None)


@given(ranges, ranges)
def test_different_ranges_are_different_highlights(a: dict[str, Any], b: dict[str, Any]) -> None:
    same = (a["resource"], a["start"], a["length"], a["book_version"]) == (
        b["resource"],
        b["start"],
        b["length"],
        b["book_version"],
    )
    ids = {merge.highlight_id(BOOK, _anchor_of(x, "")) for x in (a, b)}
    assert len(ids) == (1 if same else 2)
    assert merge.highlight_id("bk_other", _anchor_of(a, "")) not in ids


# -- validation (FAULTS.md #32, #33) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "scribble", "anchor": ANCHOR}, "kind"),
        ({"kind": "highlight", "anchor": {**ANCHOR, "quote": None}}, "anchor.quote"),
        ({"kind": "highlight", "anchor": {"resource": "OPS/a", "start": 1}}, "anchor.quote"),
        ({"kind": "note", "anchor": {**ANCHOR, "resource": "../etc/passwd"}}, "anchor.resource"),
        ({"kind": "note", "anchor": {**ANCHOR, "end": 2}}, "anchor.end"),
        ({"kind": "note", "anchor": ANCHOR, "note": "x" * 8193}, "note"),
        ({"kind": "note", "anchor": ANCHOR, "note": "bad \ud800 half"}, "note"),
        ({"kind": "note", "anchor": ANCHOR, "note": "bell \x07"}, "note"),
        ({"kind": "note", "anchor": ANCHOR, "colour": "red"}, "body"),
        ({"kind": "note", "anchor": ANCHOR, "color": "red"}, "color"),
        ({"kind": "note", "anchor": ANCHOR, "id": "../../x"}, "id"),
        ({"kind": "note", "anchor": {**ANCHOR, "cfi": "é"}}, "anchor.cfi"),
        ({"kind": "note", "anchor": {**ANCHOR, "start": True}}, "anchor.start"),
        ([], "body"),
    ],
)
@pytest.mark.faults(33)
def test_malformed_or_oversized_annotations_are_refused(body: Any, field: str) -> None:
    with pytest.raises(AnnotationError) as caught:
        annotation_input.parse_new(body)
    assert caught.value.field == field


@given(st.text(max_size=300))
def test_any_valid_text_round_trips_exactly(text: str) -> None:
    try:
        annotation_input.check_text(text, "note", annotation_input.MAX_NOTE_CHARS)
    except AnnotationError:
        return
    new = annotation_input.parse_new({"kind": "note", "anchor": ANCHOR, "note": text})
    item = merge.create_delta("an_00000001", BOOK, hlc.encode(NOW_MS, 0, "d"), new)
    doc = json.loads(json.dumps(merge.item_to_doc(item)))
    assert merge.item_view(annotation_input.item_from_doc(doc), False)["note"] == text


def test_wire_documents_are_checked() -> None:
    item = merge.create_delta(
        "an_00000001",
        BOOK,
        hlc.encode(NOW_MS, 0, "dev_a"),
        NewAnnotation(None, "note", ANCHOR, None, "x"),
    )
    doc = merge.item_to_doc(item)
    with pytest.raises(AnnotationError):
        annotation_input.item_from_doc({**doc, "edits": {"dev_b": hlc.encode(NOW_MS, 0, "dev_a")}})
    with pytest.raises(AnnotationError):
        annotation_input.item_from_doc({**doc, "texts": {"not a stamp": "x"}})
    with pytest.raises(AnnotationError):
        annotation_input.item_from_doc({**doc, "extra": 1})
    with pytest.raises(AnnotationError):
        merge.join_item(item, merge.Item("an_00000001", "bk_other"))
    assert merge.author_nodes(item) == {"dev_a"}
