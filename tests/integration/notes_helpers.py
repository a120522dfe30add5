"""Helpers shared by the annotation tests: a one-book stub, polling, and a bare device client."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from daemon.client import AccountClient, ClientLimits, DeviceCredentials, ServiceClient
from daemon.device_key import load_or_create_device_key
from daemon.protocol import annotation_input, merge
from daemon.protocol.crypto import x25519_public_text
from daemon.protocol.hlc import HybridClock
from tests.conftest import StubImport, import_into_stub

BOOK_FILE = "calibre_quick_start_eng.epub"  # 22 KB: delivered in a blink
T = TypeVar("T")


def import_one_book(library: Path, data_dir: Path, corpus_dir: Path) -> StubImport:
    shutil.copy(corpus_dir / BOOK_FILE, library / BOOK_FILE)
    report = import_into_stub(data_dir, library)
    return StubImport(data_dir, report, {b.path.name: b.book_id for b in report.imported})


async def eventually(check: Callable[[], Awaitable[T | None]], timeout_s: float = 20) -> T:
    """Poll `check` until it returns something truthy; fail with its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"condition never held; last: {result!r}"
        await asyncio.sleep(0.02)


def anchor(exact: str = "Calibre is a library manager", start: int = 100) -> dict[str, Any]:
    return {
        "resource": "text/the_main_gui_window.xhtml",
        "start": start,
        "end": start + len(exact),
        "quote": {"exact": exact, "prefix": "intro: ", "suffix": " and more"},
    }


class BareDevice:
    """A device of another reader, talking to the service through the daemon's own client but
    without a daemon: it makes ops with the merge code, as the local API would."""

    def __init__(self, client: ServiceClient, device_id: str) -> None:
        self.client = client
        self.device_id = device_id
        self.clock = HybridClock(device_id)
        self.made = 0

    @classmethod
    async def register(cls, url: str, account: AccountClient, key_dir: Path) -> BareDevice:
        key = load_or_create_device_key(key_dir / "device.key")
        credentials: DeviceCredentials = await account.register_device(
            "bare", x25519_public_text(key)
        )
        client = ServiceClient(url, credentials, ClientLimits())
        return cls(client, credentials.device_id)

    def op(self, key: str, delta: merge.Item | merge.Position) -> str:
        self.made += 1
        doc = (
            merge.item_to_doc(delta)
            if isinstance(delta, merge.Item)
            else merge.position_to_doc(delta)
        )
        return merge_op(f"op_{self.device_id}_{self.made:05d}", key, doc)

    def highlight(self, item_id: str, book_id: str, exact: str) -> tuple[merge.Item, str]:
        new = annotation_input.parse_new({"kind": "highlight", "anchor": anchor(exact)})
        delta = merge.create_delta(item_id, book_id, self.clock.tick(int(time.time() * 1000)), new)
        return delta, self.op("item", delta)


def merge_op(op_id: str, key: str, doc: dict[str, Any]) -> str:
    return json.dumps({"op_id": op_id, key: doc})
