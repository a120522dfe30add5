"""One shape for every answer of the local API, and the one way a request body is read.

Every error is `{"error": code, "detail": sentence}` (plus fields that help, such as `field`),
whatever refused the request: a route, the guard, the router (404, 405) or the HTTP parser
(400). Every JSON answer escapes <, > and & so a quote holding markup stays text wherever a
reader pastes it (FAULTS.md #33).

A body is refused before it is read when it declares more than MAX_BODY_BYTES (a client that
declares 10 MB and sends 2 bytes gets its 413 at once instead of holding the connection), and
refused unparsed when its JSON nests deeper than MAX_JSON_DEPTH (Python's parser recurses). A
body that trickles in slower than BODY_TIMEOUT_S for the whole of it is refused with 408, so a
client cannot hold a connection and its handler open by sending a byte at a time.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # an annotation's anchor is four deep; nothing the API takes is deeper
BODY_TIMEOUT_S = 10.0  # 64 KiB in 10 s is 6.5 KB/s: far below any local client


def safe_dumps(doc: Any) -> str:
    """JSON with <, > and & escaped: quoted markup stays text wherever a reader puts it."""
    text = _dumps(doc, _SPLIT_DEPTH)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# Lists and objects this deep are encoded item by item: a book's resources and its table of
# contents are lists at depth 1, each of their entries encoded in one go. Deeper costs a call
# per field and lowers the peak no further.
_SPLIT_DEPTH = 2


def _dumps(doc: Any, depth: int) -> str:
    """`json.dumps(doc, ensure_ascii=False)`, the same text, with large lists and objects
    encoded an item at a time. The C encoder, in one shot, peaked at 7 times its text: 4 MiB
    for the 0.56 MiB answer about a book of 2,020 resources, on a device whose daemon has
    64 MiB in all; item by item the peak is about twice the text."""
    if depth and doc and type(doc) is list:
        return "[" + ", ".join([_dumps(item, depth - 1) for item in doc]) + "]"
    if depth and doc and type(doc) is dict and all(type(key) is str for key in doc):
        return (
            "{"
            + ", ".join(
                [f"{_ENCODE(key)}: {_dumps(value, depth - 1)}" for key, value in doc.items()]
            )
            + "}"
        )
    return _ENCODE(doc)


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # what json.dumps builds on every call


def json_answer(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(doc, status=status, headers=headers, dumps=safe_dumps)


def error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return json_answer({"error": code, "detail": detail, **extra}, status, headers)


class Refused(Exception):
    """A request refused before anything changed; carries the answer. The API's guard turns
    it into the response, so a route can refuse from any depth."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def too_large() -> Refused:
    return Refused(error(413, "body_too_large", f"bodies are at most {MAX_BODY_BYTES} bytes"))


async def read_json(request: web.Request, default: Any = None) -> Any:
    """The request's JSON body (`default` when it is empty), or Refused with the 4xx."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise too_large()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise too_large() from e
    except TimeoutError as e:
        slow = error(408, "body_too_slow", f"the body did not arrive within {BODY_TIMEOUT_S:g} s")
        slow.force_close()
        raise Refused(slow) from e
    if not raw.strip() and default is not None:
        return default
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise Refused(error(400, "bad_json", f"the body nests deeper than {MAX_JSON_DEPTH} levels"))
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise Refused(error(400, "bad_json", "the body is not JSON")) from e


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, strings skipped (a bound checked
    before parsing: one pass, no recursion). Malformed text is left to the parser."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest
