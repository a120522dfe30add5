"""The compression dictionaries on the device: fetched once, shared by every book that names one.

A dictionary is fetched by its hash, checked against the size and hash that named it, and kept.
Two callers never fetch the same one twice: a book's delivery that needs a dictionary being
fetched waits for that fetch. The push channel's hello names the catalog's dictionaries, and
they are fetched then (`prefetch`, `run`), while the device is idle, so the first purchase does
not carry 112 KiB of dictionary before its first chapter. The hello's list is not signed: it is
bounded, and a dictionary only ever serves a frame whose signed manifest names its hash.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from daemon.errors import DictionaryError, ShelfsyncError
from daemon.logs import log_event
from daemon.protocol.codec import Dictionary
from daemon.protocol.ids import SHA256
from daemon.protocol.manifest import MAX_DICTIONARY_BYTES
from daemon.service import ServiceAPI
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.dictionaries")
MAX_PREFETCH = 4  # dictionaries a hello may name: a catalog has one current dictionary


class Dictionaries:
    def __init__(self, store: Store, client: ServiceAPI) -> None:
        self._store = store
        self._client = client
        self._fetching: dict[str, asyncio.Lock] = {}
        self._wanted: list[tuple[str, int]] = []
        self._wake = asyncio.Event()

    async def ensure(self, sha256: str, size: int) -> None:
        """The dictionary is on the device when this returns (fetched now if it was not)."""
        if self._store.frames.dictionary(sha256) is not None:
            return
        lock = self._fetching.setdefault(sha256, asyncio.Lock())
        try:
            async with lock:
                if self._store.frames.dictionary(sha256) is None:
                    await self._fetch(sha256, size)
        finally:
            if not lock.locked():
                self._fetching.pop(sha256, None)

    async def _fetch(self, sha256: str, size: int) -> None:
        data = await self._client.dictionary(sha256)
        if len(data) != size:
            raise DictionaryError(f"dictionary {sha256[:16]} is {len(data)} bytes, not {size}")
        Dictionary.verified(data, sha256)
        self._store.frames.put_dictionary(sha256, data)
        log_event(_LOG, logging.INFO, "dictionary_stored", sha256=sha256[:16], bytes=len(data))

    def prefetch(self, refs: list[Any]) -> None:
        """The hello named these (`{"sha256", "size"}`): fetch those not held, soon. Malformed
        entries are skipped."""
        wanted = []
        for ref in refs[:MAX_PREFETCH]:
            if not isinstance(ref, dict):
                continue
            sha256, size = ref.get("sha256"), ref.get("size")
            if (
                isinstance(sha256, str)
                and SHA256.match(sha256)
                and isinstance(size, int)
                and not isinstance(size, bool)
                and 0 < size <= MAX_DICTIONARY_BYTES
            ):
                wanted.append((sha256, size))
        self._wanted = [(h, n) for h, n in wanted if self._store.frames.dictionary(h) is None]
        if self._wanted:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Dictionaries the last hello named that are not on the device yet (for status)."""
        return len(self._wanted)

    async def run(self) -> None:
        """Fetch what the last hello named; a failure waits for the next hello."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            for sha256, size in list(self._wanted):
                try:
                    await self.ensure(sha256, size)
                    if (sha256, size) in self._wanted:  # a new hello may have named others
                        self._wanted.remove((sha256, size))
                except (ShelfsyncError, OSError) as e:
                    log_event(
                        _LOG,
                        logging.INFO,
                        "dictionary_prefetch_failed",
                        sha256=sha256[:16],
                        error=type(e).__name__,
                        detail=str(e),
                    )
