"""A push version 2 `library_changed` is checked like a page of the feed before anything of it
is applied; a malformed one is refused whole (the device then pulls the feed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from daemon.client import PushedFrames, parse_library_push, parse_push_message

ORDER = {"seq": 8, "book_id": "bk_a", "action": "add", "reason": "bought", "version": 1, "at": 1.5}


def message(header: dict[str, Any], *envelopes: bytes) -> bytes:
    doc = {"type": "library_changed", "cursor": 8, "after": 5, "changes": [ORDER], **header}
    doc.setdefault("manifests", [{"book_id": "bk_a", "length": len(e)} for e in envelopes])
    raw = json.dumps(doc).encode()
    return len(raw).to_bytes(4, "big") + raw + b"".join(envelopes)


def test_a_change_with_its_manifest_is_read_whole() -> None:
    push = parse_library_push(message({}, b"SSE3 signed bytes"))
    assert push.after == 5
    assert [c.seq for c in push.page.changes] == [8]
    assert push.page.cursor == 8
    assert push.envelopes == {"bk_a": b"SSE3 signed bytes"}


def test_an_orders_first_frames_are_announced_and_follow_in_messages_of_their_own() -> None:
    follow = [{"book_id": "bk_a", "version": 1, "length": 5}]
    push = parse_library_push(message({"frames_follow": follow}, b"SSE3 signed bytes"))
    assert push.envelopes == {"bk_a": b"SSE3 signed bytes"}
    assert push.frames_follow == {"bk_a": (1, 5)}
    header = {"type": "package_frames", "book_id": "bk_a", "version": 1, "offset": 0, "length": 5}
    raw = json.dumps(header).encode()
    frames = parse_push_message(len(raw).to_bytes(4, "big") + raw + b"frame")
    assert frames == PushedFrames("bk_a", 1, 0, b"frame")


def frames_message(header: dict[str, Any], data: bytes) -> bytes:
    doc = {"type": "package_frames", "book_id": "bk_a", "version": 1, "offset": 0, **header}
    doc.setdefault("length", len(data))
    raw = json.dumps(doc).encode()
    return len(raw).to_bytes(4, "big") + raw + data


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (frames_message({"length": 9}, b"abc"), "in a payload of"),
        (frames_message({"book_id": "../x"}, b"abc"), "is not one"),
        (frames_message({"offset": 2**20}, b"abc"), "outside"),
        (frames_message({"version": 0}, b"abc"), "outside"),
    ],
)
def test_malformed_pushed_frames_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_push_message(data)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (message({"after": 8}), "does not come after"),
        (message({"cursor": 9}), "is not where the page ends"),
        (message({"manifests": [{"book_id": "bk_b", "length": 3}]}, b"abc"), "no change orders"),
        (message({"manifests": [{"book_id": "bk_a", "length": 9}]}, b"abc"), "end at byte"),
        (message({}, b"abc") + b"trailing", "end at byte"),
        (
            message({"frames_follow": [{"book_id": "bk_a", "version": 1, "length": 2}]}),
            "whose manifest is not carried",
        ),
        (
            message({"frames_follow": [{"book_id": "bk_a", "version": 1, "length": 2**20}]}, b"x"),
            "outside",
        ),
        (message({"type": "hello"}), "binary message of type"),
        (b"\xff\xff\xff\xff{}", "a header of"),
        (message({"changes": [{**ORDER, "seq": 2**60}], "cursor": 2**60}), "outside"),
    ],
)
def test_a_malformed_push_is_refused_whole(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_library_push(data)
