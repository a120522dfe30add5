"""What enters an annotation state, checked (pure): a reader's requests and the wire documents.

The local API's bodies (a new annotation, an edit, an anchor, a reading place) and the item and
position states the service or a device sends are parsed here into canonical values and
daemon.protocol.merge's types, or refused with AnnotationError naming the field. The device and
the service both check with this code, so both apply the same limits (FAULTS.md #32, #33).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from daemon.errors import AnnotationError
from daemon.protocol import hlc
from daemon.protocol.ids import BOOK_ID, ITEM_ID
from daemon.protocol.manifest import check_resource_path
from daemon.protocol.merge import Edit, Item, NewAnnotation, Position

KINDS = ("highlight", "note", "bookmark")
COLORS = ("yellow", "green", "blue", "pink", "orange", "purple")
FIELDS = ("kind", "anchor", "color")
MAX_NOTE_CHARS = 8192
MAX_QUOTE_CHARS = 4096
MAX_CONTEXT_CHARS = 256  # quote prefix and suffix
MAX_CFI_CHARS = 512
MAX_OFFSET = 2**40
# Wire-document caps: far above anything a reader makes, low enough to bound a parse.
MAX_LIVE_TEXTS = 1024
MAX_REPLACED = 100_000
MAX_NODES = 1024

# \A and \Z, never ^ and $: $ also matches before a final newline ("X\n" would pass).
_CFI = re.compile(r"\A[\x20-\x7e]+\Z")


# -- validation ---------------------------------------------------------------------------------


def _fail(where: str, reason: str) -> AnnotationError:
    return AnnotationError(where, reason)


def check_text(value: Any, where: str, max_chars: int, *, allow_empty: bool = True) -> str:
    """A string a reader wrote or quoted: capped, valid Unicode, no control characters but
    tab and newlines. Stored and served as text, never as markup."""
    if not isinstance(value, str):
        raise _fail(where, "must be a string")
    if len(value) > max_chars:
        raise _fail(where, f"is {len(value)} characters, over the limit of {max_chars}")
    if not value and not allow_empty:
        raise _fail(where, "must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _fail(where, "is not valid Unicode (a lone surrogate)") from e
    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in value):
        raise _fail(where, "contains a control character")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, f"must be an integer in [{low}, {high}]")
    return value


def _progress(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, "must be a number in [0, 1]")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise _fail(where, "must be a number in [0, 1]")
    return number


def _object(value: Any, where: str, allowed: Iterable[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, "must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _fail(where, f"unknown field {str(unknown[0])[:40]!r}")
    return value


def check_item_id(value: Any, where: str = "id") -> str:
    if not isinstance(value, str) or not ITEM_ID.match(value):
        raise _fail(where, "must be 8-64 letters, digits, '_' or '-'")
    return value


def check_book_id(value: Any, where: str = "book_id") -> str:
    if not isinstance(value, str) or not BOOK_ID.match(value):
        raise _fail(where, "must be 1-64 letters, digits, '_' or '-'")
    return value


def _stamp(value: Any, where: str) -> str:
    if not hlc.is_stamp(value):
        raise _fail(where, "is not a clock stamp")
    return str(value)


def _resource(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, "must be a string")
    try:
        return check_resource_path(value)
    except ValueError as e:
        raise _fail(where, f"is not a path inside a book ({e})") from e


def _cfi(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CFI_CHARS or not _CFI.match(value):
        raise _fail(where, f"must be 1-{MAX_CFI_CHARS} printable ASCII characters")
    return value


def parse_anchor(doc: Any, where: str = "anchor", *, need_quote: bool = False) -> dict[str, Any]:
    """An anchor in canonical form (docs/ANNOTATIONS.md "Anchors")."""
    doc = _object(doc, where, ("resource", "start", "end", "cfi", "quote", "book_version"))
    anchor: dict[str, Any] = {"resource": _resource(doc.get("resource"), f"{where}.resource")}
    anchor["start"] = _int(doc.get("start"), f"{where}.start", 0, MAX_OFFSET)
    anchor["end"] = _int(
        doc.get("end", anchor["start"]), f"{where}.end", anchor["start"], MAX_OFFSET
    )
    if "cfi" in doc:
        anchor["cfi"] = _cfi(doc["cfi"], f"{where}.cfi")
    if "book_version" in doc:
        anchor["book_version"] = _int(doc["book_version"], f"{where}.book_version", 1, 2**53)
    if "quote" in doc:
        quote = _object(doc["quote"], f"{where}.quote", ("exact", "prefix", "suffix"))
        anchor["quote"] = {
            "exact": check_text(
                quote.get("exact"), f"{where}.quote.exact", MAX_QUOTE_CHARS, allow_empty=False
            ),
            "prefix": check_text(
                quote.get("prefix", ""), f"{where}.quote.prefix", MAX_CONTEXT_CHARS
            ),
            "suffix": check_text(
                quote.get("suffix", ""), f"{where}.quote.suffix", MAX_CONTEXT_CHARS
            ),
        }
    elif need_quote:
        raise _fail(f"{where}.quote", "a highlight needs the quoted text")
    return anchor


def parse_place(doc: Any, where: str = "position") -> dict[str, Any]:
    """A reading position in canonical form: resource, start, optional cfi, progress (0..1)."""
    doc = _object(doc, where, ("resource", "start", "cfi", "progress"))
    place: dict[str, Any] = {
        "resource": _resource(doc.get("resource"), f"{where}.resource"),
        "start": _int(doc.get("start", 0), f"{where}.start", 0, MAX_OFFSET),
        "progress": _progress(doc.get("progress"), f"{where}.progress"),
    }
    if "cfi" in doc:
        place["cfi"] = _cfi(doc["cfi"], f"{where}.cfi")
    return place


def _color(value: Any, where: str) -> str | None:
    if value is not None and value not in COLORS:
        raise _fail(where, f"must be null or one of {', '.join(COLORS)}")
    return None if value is None else str(value)


def _field_value(name: str, value: Any, where: str) -> Any:
    if name == "kind":
        if value not in KINDS:
            raise _fail(where, f"must be one of {', '.join(KINDS)}")
        return value
    if name == "anchor":
        return parse_anchor(value, where)
    return _color(value, where)


def parse_new(doc: Any) -> NewAnnotation:
    doc = _object(doc, "body", ("id", "kind", "anchor", "color", "note"))
    kind = _field_value("kind", doc.get("kind"), "kind")
    anchor = parse_anchor(doc.get("anchor"), need_quote=kind == "highlight")
    color = _color(doc.get("color", "yellow" if kind == "highlight" else None), "color")
    note = check_text(doc["note"], "note", MAX_NOTE_CHARS) if "note" in doc else None
    item_id = check_item_id(doc["id"]) if "id" in doc else None
    return NewAnnotation(item_id, kind, anchor, color, note)


def parse_edit(doc: Any) -> Edit:
    doc = _object(doc, "body", ("color", "anchor", "note", "replaces"))
    changes: dict[str, Any] = {}
    if "color" in doc:
        changes["color"] = _color(doc["color"], "color")
    if "anchor" in doc:
        changes["anchor"] = parse_anchor(doc["anchor"])
    note = check_text(doc["note"], "note", MAX_NOTE_CHARS) if "note" in doc else None
    replaces = None
    if "replaces" in doc:
        raw = doc["replaces"]
        if not isinstance(raw, list) or len(raw) > MAX_LIVE_TEXTS:
            raise _fail("replaces", f"must be a list of at most {MAX_LIVE_TEXTS} note versions")
        replaces = tuple(sorted({_stamp(v, "replaces[]") for v in raw}))
        if not replaces and note is None:
            raise _fail("replaces", "must name a version when no new note is given")
    if not changes and note is None and replaces is None:
        raise _fail("body", "nothing to change (give color, anchor, note or replaces)")
    return Edit(changes, note, replaces)


# -- wire documents -----------------------------------------------------------------------------


def _vector(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_NODES:
        raise _fail(where, f"must be an object of at most {MAX_NODES} nodes")
    for node, stamp in value.items():
        if hlc.node_of(_stamp(stamp, f"{where}[]")) != node:
            raise _fail(where, "maps a node to another node's stamp")
    return dict(value)


def item_from_doc(doc: Any) -> Item:
    """Parse and validate an item state or delta from the wire; AnnotationError if malformed."""
    doc = _object(
        doc,
        "item",
        ("id", "book_id", "fields", "texts", "replaced", "edits", "deleted", "observed"),
    )
    raw_fields = _object(doc.get("fields", {}), "item.fields", FIELDS)
    fields = {}
    for name, pair in raw_fields.items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise _fail(f"item.fields.{name}", "must be [stamp, value]")
        fields[name] = (
            _stamp(pair[0], f"item.fields.{name}"),
            _field_value(name, pair[1], f"item.fields.{name}"),
        )
    raw_texts = doc.get("texts", {})
    if not isinstance(raw_texts, dict) or len(raw_texts) > MAX_LIVE_TEXTS:
        raise _fail("item.texts", f"must be an object of at most {MAX_LIVE_TEXTS} versions")
    texts = {
        _stamp(s, "item.texts"): check_text(t, "item.texts[]", MAX_NOTE_CHARS)
        for s, t in raw_texts.items()
    }
    raw_replaced = doc.get("replaced", [])
    if not isinstance(raw_replaced, list) or len(raw_replaced) > MAX_REPLACED:
        raise _fail("item.replaced", f"must be a list of at most {MAX_REPLACED} stamps")
    replaced = frozenset(_stamp(s, "item.replaced[]") for s in raw_replaced)
    deleted = doc.get("deleted")
    item = Item(
        check_item_id(doc.get("id"), "item.id"),
        check_book_id(doc.get("book_id"), "item.book_id"),
        fields,
        {s: t for s, t in texts.items() if s not in replaced},
        replaced,
        _vector(doc.get("edits", {}), "item.edits"),
        None if deleted is None else _stamp(deleted, "item.deleted"),
        _vector(doc.get("observed", {}), "item.observed"),
    )
    return item


def position_from_doc(doc: Any) -> Position:
    doc = _object(doc, "position", ("book_id", "devices", "furthest"))
    raw = doc.get("devices", {})
    if not isinstance(raw, dict) or len(raw) > MAX_NODES:
        raise _fail("position.devices", f"must be an object of at most {MAX_NODES} devices")
    devices = {}
    for node, pair in raw.items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise _fail("position.devices", "each device must map to [stamp, place]")
        stamp = _stamp(pair[0], "position.devices[]")
        if hlc.node_of(stamp) != node:
            raise _fail("position.devices", "maps a device to another device's stamp")
        devices[node] = (stamp, parse_place(pair[1], "position.devices[]"))
    furthest = None
    raw_furthest = doc.get("furthest")
    if raw_furthest is not None:
        if not isinstance(raw_furthest, list) or len(raw_furthest) != 3:
            raise _fail("position.furthest", "must be null or [progress, stamp, place]")
        place = parse_place(raw_furthest[2], "position.furthest")
        if _progress(raw_furthest[0], "position.furthest") != place["progress"]:
            raise _fail("position.furthest", "progress differs from its place")
        furthest = (place["progress"], _stamp(raw_furthest[1], "position.furthest"), place)
    return Position(check_book_id(doc.get("book_id"), "position.book_id"), devices, furthest)
