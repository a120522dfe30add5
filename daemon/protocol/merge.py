"""Annotation merge (pure): how edits from devices and the service combine.

Every annotation is a state in a join-semilattice. `join_item` is commutative, associative and
idempotent, so replicas that have seen the same edits hold the same state whatever the order,
duplication or delay of the messages that carried them. An edit is a small state (a delta) joined
into the item; the service and every device store the join of all the deltas they have seen, and
the service's changes feed sends whole item states, which join the same way.

An item state holds:
- `fields`: last-writer-wins registers (kind, anchor, color), each (stamp, value);
- `texts`: the note's live versions, stamp -> text, and `replaced`: the versions an edit replaced
  after the reader saw them. Two concurrent edits both stay live: the greater stamp is the note
  and the other is shown as a conflict until a reader resolves it. A text leaves the state only
  when a reader replaced it having seen it; nothing else drops one.
- `edits`: node -> greatest stamp of that node's edits (a version vector of the item's edits);
- `deleted`, `observed`: the greatest delete stamp, and the join of the edit vectors the deletes
  had seen. The item is deleted while every edit was observed by some delete; an edit no delete
  saw (a concurrent one) keeps the item alive: edit beats delete (FAULTS.md #27).

Highlights the device names itself are named by their range (`highlight_id`: the book, the
resource, the start and end offsets and the book version), so the same passage highlighted on
two devices is one item on every replica: the two creates join as any two edits do (the colour
is the later's), never two highlights side by side.

An edit that beats a delete leaves a trace: the view's `delete_overruled` names the device and
time of the delete that did not take, as `conflicts` names the losing note texts.

A reading position holds each device's last place (last-writer-wins per device) and the furthest
place read on any device (the greatest progress; the stamp breaks ties).

Stamps come from daemon.protocol.hlc: a node's stamps strictly increase and a stamp made after
seeing another is greater, so one vector entry per node covers all of that node's earlier edits, and
the order never depends on a device's wall clock alone (FAULTS.md #29).

Everything that enters a state is checked first, by daemon.protocol.annotation_input; this module
trusts the states and requests it is given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.errors import AnnotationError
from daemon.protocol import hlc

# -- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewAnnotation:
    """A create request of the local API, as annotation_input.parse_new validated it."""

    item_id: str | None
    kind: str
    anchor: dict[str, Any]
    color: str | None
    note: str | None


@dataclass(frozen=True, slots=True)
class Edit:
    """A validated edit request (annotation_input.parse_edit): `changes` of fields, a new note
    text, versions it replaces."""

    changes: dict[str, Any]
    note: str | None
    replaces: tuple[str, ...] | None


# -- items --------------------------------------------------------------------------------------


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    book_id: str
    fields: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    texts: Mapping[str, str] = field(default_factory=dict)
    replaced: frozenset[str] = frozenset()
    edits: Mapping[str, str] = field(default_factory=dict)
    deleted: str | None = None
    observed: Mapping[str, str] = field(default_factory=dict)


def _max_vector(a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, str]:
    out = dict(a)
    for node, stamp in b.items():
        if stamp > out.get(node, ""):
            out[node] = stamp
    return out


def join_item(a: Item, b: Item) -> Item:
    """The least state that includes both (commutative, associative, idempotent)."""
    if (a.item_id, a.book_id) != (b.item_id, b.book_id):
        raise AnnotationError("book_id", f"annotation {a.item_id} belongs to another book")
    fields = dict(a.fields)
    for name, (stamp, value) in b.fields.items():
        mine = fields.get(name)
        if mine is None or (stamp, _canon(value)) > (mine[0], _canon(mine[1])):
            fields[name] = (stamp, value)
    replaced = a.replaced | b.replaced
    texts = {s: t for s, t in a.texts.items() if s not in replaced}
    for stamp, text in b.texts.items():
        if stamp not in replaced:
            # One stamp, two texts only from a corrupt peer: still pick the same one everywhere.
            texts[stamp] = max(text, texts.get(stamp, text))
    deleted = max(filter(None, (a.deleted, b.deleted)), default=None)
    return Item(
        a.item_id,
        a.book_id,
        fields,
        texts,
        replaced,
        _max_vector(a.edits, b.edits),
        deleted,
        _max_vector(a.observed, b.observed),
    )


def is_created(item: Item) -> bool:
    """The creation has arrived: the item has a kind and an anchor to show."""
    return "kind" in item.fields and "anchor" in item.fields


def is_deleted(item: Item) -> bool:
    return item.deleted is not None and all(
        item.observed.get(node, "") >= stamp for node, stamp in item.edits.items()
    )


def overruled_delete(item: Item) -> str | None:
    """The stamp of a delete that did not take because an edit it had not seen beat it (edit
    beats delete), or None."""
    return item.deleted if item.deleted is not None and not is_deleted(item) else None


def note_versions(item: Item) -> list[tuple[str, str]]:
    """Live note versions, the winner (greatest stamp) first, then the conflicts."""
    return sorted(item.texts.items(), reverse=True)


def known_versions(item: Item) -> set[str]:
    return set(item.texts) | set(item.replaced)


def updated_stamp(item: Item) -> str:
    return max((*item.edits.values(), item.deleted or ""))


def _seconds(stamp: str | None) -> float | None:
    return hlc.seconds_of(stamp) if stamp else None


def max_stamp(item: Item) -> str:
    """The greatest stamp anywhere in the state: the local clock must move past it."""
    return max(
        (
            *(s for s, _ in item.fields.values()),
            *item.texts,
            *item.replaced,
            *item.edits.values(),
            *item.observed.values(),
            item.deleted or "",
        ),
        default="",
    )


def author_nodes(item: Item) -> set[str]:
    """The nodes whose stamps mark new content in this state (a delta's author)."""
    return {
        *(hlc.node_of(s) for s, _ in item.fields.values()),
        *(hlc.node_of(s) for s in item.texts),
        *item.edits,
        *((hlc.node_of(item.deleted),) if item.deleted else ()),
    }


def highlight_id(book_id: str, anchor: Mapping[str, Any]) -> str:
    """The id of the highlight of this exact range: the same on every device, so two devices
    highlighting the same passage make one item. Quote context, colour and cfi are not part of
    it: they may differ between readers' software for the same offsets."""
    key = [book_id, anchor["resource"], anchor["start"], anchor["end"], anchor.get("book_version")]
    return "hl_" + hashlib.sha256(_canon(key).encode()).hexdigest()[:32]


def create_delta(item_id: str, book_id: str, stamp: str, new: NewAnnotation) -> Item:
    fields = {"kind": (stamp, new.kind), "anchor": (stamp, new.anchor), "color": (stamp, new.color)}
    texts = {stamp: new.note} if new.note is not None else {}
    return Item(item_id, book_id, fields, texts, edits={hlc.node_of(stamp): stamp})


def recreate_delta(item: Item, stamp: str, new: NewAnnotation) -> Item:
    """A create for an id this device holds already (a highlight of a range highlighted
    before, here or elsewhere): the reader's new colour and anchor, and their note replacing
    the one they see. A deleted one comes back as new: its old texts are not revived."""
    delta = create_delta(item.item_id, item.book_id, stamp, new)
    if is_deleted(item):
        replaced = frozenset(item.texts)
    else:
        versions = note_versions(item)
        replaced = frozenset([versions[0][0]] if new.note is not None and versions else [])
    return Item(delta.item_id, delta.book_id, delta.fields, delta.texts, replaced, delta.edits)


def edit_delta(item: Item, stamp: str, edit: Edit) -> Item:
    """The delta of `edit` made on `item` as this device sees it.

    A new note replaces the versions named in `edit.replaces`, by default the note the reader
    sees (the winner); conflicts stay until named, so an edit never drops text unseen."""
    replaces: Iterable[str]
    if edit.replaces is not None:
        replaces = edit.replaces
    else:
        versions = note_versions(item)
        replaces = [versions[0][0]] if edit.note is not None and versions else []
    return Item(
        item.item_id,
        item.book_id,
        {name: (stamp, value) for name, value in edit.changes.items()},
        {stamp: edit.note} if edit.note is not None else {},
        frozenset(replaces),
        {hlc.node_of(stamp): stamp},
    )


def delete_delta(item: Item, stamp: str) -> Item:
    """A delete that removes the edits this device has seen, and no others."""
    return Item(item.item_id, item.book_id, deleted=stamp, observed=dict(item.edits))


def item_view(item: Item, pending: bool) -> dict[str, Any]:
    """What the local API shows of an item."""
    versions = note_versions(item)
    kind_stamp = item.fields["kind"][0] if "kind" in item.fields else None
    deleted = is_deleted(item)
    return {
        "id": item.item_id,
        "book_id": item.book_id,
        "kind": item.fields.get("kind", ("", None))[1],
        "color": item.fields.get("color", ("", None))[1],
        "anchor": item.fields.get("anchor", ("", None))[1],
        "note": versions[0][1] if versions else None,
        "note_version": versions[0][0] if versions else None,
        "conflicts": [
            {
                "version": stamp,
                "note": text,
                "device_id": hlc.node_of(stamp),
                "at": hlc.seconds_of(stamp),
            }
            for stamp, text in versions[1:]
        ],
        "created_at": _seconds(kind_stamp),
        "created_by": hlc.node_of(kind_stamp) if kind_stamp else None,
        "updated_at": _seconds(updated_stamp(item)),
        "deleted": deleted,
        "deleted_at": _seconds(item.deleted) if deleted else None,
        "deleted_by": hlc.node_of(item.deleted) if deleted and item.deleted else None,
        # Edit beat delete: the delete that did not take, so the reader knows the note came
        # back because it was edited elsewhere meanwhile (FAULTS.md #27).
        "delete_overruled": (
            {"device_id": hlc.node_of(overruled), "at": hlc.seconds_of(overruled)}
            if (overruled := overruled_delete(item)) is not None
            else None
        ),
        "pending": pending,
    }


def item_to_doc(item: Item) -> dict[str, Any]:
    return {
        "id": item.item_id,
        "book_id": item.book_id,
        "fields": {name: [stamp, value] for name, (stamp, value) in sorted(item.fields.items())},
        "texts": dict(sorted(item.texts.items())),
        "replaced": sorted(item.replaced),
        "edits": dict(sorted(item.edits.items())),
        "deleted": item.deleted,
        "observed": dict(sorted(item.observed.items())),
    }


# -- reading positions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    book_id: str
    devices: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    furthest: tuple[float, str, Mapping[str, Any]] | None = None


def join_position(a: Position, b: Position) -> Position:
    if a.book_id != b.book_id:
        raise AnnotationError("book_id", "reading positions of two books cannot merge")
    devices = dict(a.devices)
    for node, (stamp, place) in b.devices.items():
        mine = devices.get(node)
        if mine is None or (stamp, _canon(place)) > (mine[0], _canon(mine[1])):
            devices[node] = (stamp, place)
    candidates = [f for f in (a.furthest, b.furthest) if f is not None]
    furthest = max(candidates, key=lambda f: (f[0], f[1], _canon(f[2])), default=None)
    return Position(a.book_id, devices, furthest)


def position_delta(book_id: str, stamp: str, place: Mapping[str, Any]) -> Position:
    return Position(
        book_id, {hlc.node_of(stamp): (stamp, place)}, (float(place["progress"]), stamp, place)
    )


def position_max_stamp(position: Position) -> str:
    stamps = [s for s, _ in position.devices.values()]
    if position.furthest is not None:
        stamps.append(position.furthest[1])
    return max(stamps, default="")


def position_author_nodes(position: Position) -> set[str]:
    nodes = set(position.devices)
    if position.furthest is not None:
        nodes.add(hlc.node_of(position.furthest[1]))
    return nodes


def position_view(position: Position | None, book_id: str, this_node: str) -> dict[str, Any]:
    """Last read here, on each device, most recently anywhere, and furthest anywhere."""

    def entry(stamp: str, place: Mapping[str, Any]) -> dict[str, Any]:
        node = hlc.node_of(stamp)
        return {
            "device_id": node,
            "this_device": node == this_node,
            "at": hlc.seconds_of(stamp),
            "position": dict(place),
        }

    entries = sorted(position.devices.values() if position else (), key=lambda e: e[0])[::-1]
    here = position.devices.get(this_node) if position else None
    furthest = position.furthest if position else None
    return {
        "book_id": book_id,
        "here": entry(*here) if here else None,
        "latest": entry(*entries[0]) if entries else None,
        "furthest": entry(furthest[1], furthest[2]) if furthest else None,
        "devices": [entry(stamp, place) for stamp, place in entries],
    }


def position_to_doc(position: Position) -> dict[str, Any]:
    f = position.furthest
    return {
        "book_id": position.book_id,
        "devices": {
            node: [stamp, dict(place)] for node, (stamp, place) in sorted(position.devices.items())
        },
        "furthest": None if f is None else [f[0], f[1], dict(f[2])],
    }
