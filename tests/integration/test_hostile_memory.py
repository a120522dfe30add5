"""What a hostile service costs a real daemon in memory (issue 24, "done when"; FAULTS.md #11,
#12, #22, #23): `shelfsync run` as a subprocess reaches the stub through a hostile proxy on
loopback (FAULTS.md's PROXY), which answers chosen manifest and changes-feed requests with
attacks and forwards the rest. After an honest delivery sets the baseline, every attack is
served; each must be refused (the book says why in its library entry), the daemon must stay up,
and its peak resident set (VmHWM) must not grow by more than 16 MiB."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from daemon.api.client import LocalApiClient
from daemon.client import AccountClient
from daemon.profile import PROFILES_DIR, load_profile
from daemon.protocol.codec import compress_document
from daemon.protocol.crypto import ENVELOPE_MAGIC, open_envelope, sign_envelope
from daemon.protocol.manifest import MAX_MANIFEST_BYTES, ManifestLimits
from server_stub.app import RunningStub
from tests.conftest import StubImport
from tests.integration.harness import spawn_daemon
from tests.reliability import Figures

MIB = 1024 * 1024
PROFILE = "emulator-loopback"
HONEST = "cwa_christmas_carol.epub"
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class HostileProxy:
    """Forwards the daemon's requests to the stub, but for the attacks it was given: a
    manifest's per book, the changes feed's once each, in order. The push channel is refused,
    so the daemon polls the feed."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.manifests: dict[str, Answer] = {}
        self.feed: list[Answer] = []
        self._session: aiohttp.ClientSession | None = None

    async def forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as r:
            body = await r.read()
            kept = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=r.status, body=body, headers=kept)

    async def upstream_bytes(self, request: web.Request) -> bytes:
        return bytes((await self.forward(request)).body or b"")  # type: ignore[arg-type]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/v1/push":
            return web.Response(status=503)
        if path == "/v1/library/changes" and self.feed:
            return await self.feed.pop(0)(request)
        if path.endswith("/manifest"):
            attack = self.manifests.get(path.split("/")[3])
            if attack is not None:
                return await attack(request)
        return await self.forward(request)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            try:
                yield f"http://127.0.0.1:{runner.addresses[0][1]}"
            finally:
                await runner.cleanup()


def json_answer(doc: Any) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=json.dumps(doc), content_type="application/json")

    return answer


def bytes_answer(body: bytes) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/octet-stream")

    return answer


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)  # chunked: no length and no end
    with suppress(ConnectionError):
        while True:
            await response.write(bytes(64 * 1024))
    return response


async def drip(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    with suppress(ConnectionError):
        for _ in range(600):
            await response.write(b" ")
            await asyncio.sleep(0.5)
    return response


def quick_profile(tmp_path: Path) -> Path:
    """The loopback profile, polling the feed every second and giving a stall up after 2 s."""
    text = (PROFILES_DIR / f"{PROFILE}.toml").read_text(encoding="utf-8")
    text = text.replace("stall_timeout_s = 10 ", "stall_timeout_s = 2 ")
    text = text.replace("poll_interval_s = 30 ", "poll_interval_s = 1 ")
    path = tmp_path / "quick.toml"
    path.write_text(text, encoding="utf-8")
    return path


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not await check():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


@pytest.mark.faults(11, 12, 22, 23)
async def test_no_attack_of_a_hostile_service_raises_peak_rss_by_more_than_16_mib(
    faulty_stub: RunningStub, stub_corpus_import: StubImport, tmp_path: Path, fault_figures: Figures
) -> None:
    ids = stub_corpus_import.book_ids
    victims = [name for name in sorted(ids) if name != HONEST]
    signing = faulty_stub.service_key.private_key
    limits = ManifestLimits.for_ram_budget(load_profile(PROFILE).memory.ram_budget_bytes)
    proxy = HostileProxy(faulty_stub.url)

    async def largest_allowed_with_a_huge_label(request: web.Request) -> web.StreamResponse:
        """Signed and just under the device's size: parsed whole before its label is refused."""
        pinned = signing.public_key()
        doc = json.loads(open_envelope(await proxy.upstream_bytes(request), pinned))
        room = limits.max_bytes - len(json.dumps(doc).encode()) - 1024
        doc["toc"][0]["label"] = "x" * room
        return await bytes_answer(sign_envelope(signing, json.dumps(doc).encode()))(request)

    bomb = compress_document(b" " * MAX_MANIFEST_BYTES)  # 16 MiB in a few hundred bytes
    manifest_attacks: dict[str, Answer] = {
        "unsigned bomb": bytes_answer(ENVELOPE_MAGIC + bytes(72) + bomb),
        "signed 16 MiB manifest": bytes_answer(sign_envelope(signing, b" " * MAX_MANIFEST_BYTES)),
        "signed, the device's size, a huge label": largest_allowed_with_a_huge_label,
        "endless manifest body": endless,
        "manifest drip": drip,
    }
    honest_page = {"changes": [], "cursor": 0, "has_more": False}
    feed_attacks = [
        json_answer({**honest_page, "has_more": True}),  # more, forever, never advancing
        json_answer({**honest_page, "cursor": -1}),
        json_answer({"changes": [{"seq": 2**64}], "cursor": 2**64, "has_more": False}),
        endless,
        drip,
    ]
    assert len(victims) >= len(manifest_attacks)

    account = AccountClient(faulty_stub.url)
    await account.create_account("hostile memory reader")
    state = tmp_path / "device"
    async with proxy.running() as proxy_url:
        daemon = await spawn_daemon(
            faulty_stub,
            state,
            account.account_token,
            None,
            service_url=proxy_url,
            profile=str(quick_profile(tmp_path)),
        )
        assert daemon.stderr is not None
        drain = asyncio.create_task(daemon.stderr.read(), name="daemon stderr")
        try:
            await wait_until(lambda: _exists(state / "api.sock"), "the daemon listens", 30)
            async with LocalApiClient(state / "api.sock") as api:

                async def state_of(book_id: str) -> dict[str, Any]:
                    return await api.library_entry(book_id) or {}

                await account.buy(ids[HONEST])
                await wait_until(
                    lambda: _is(state_of(ids[HONEST]), "state", "complete"), "honest book", 60
                )
                baseline = peak_rss_kib(daemon.pid)

                proxy.feed.extend(feed_attacks)
                await wait_until(lambda: _true(not proxy.feed), "every feed attack served", 60)
                attacked = dict(zip(manifest_attacks, victims, strict=False))
                for attack, victim in attacked.items():
                    proxy.manifests[ids[victim]] = manifest_attacks[attack]
                    await account.buy(ids[victim])
                for attack, victim in attacked.items():
                    await wait_until(
                        lambda v=ids[victim]: _is(state_of(v), "state", "retrying"),  # type: ignore[misc]
                        f"{attack} refused",
                        60,
                    )
                assert daemon.returncode is None, "the daemon survived every attack"
                growth = peak_rss_kib(daemon.pid) - baseline
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
            await daemon.wait()
            drain.cancel()
            with suppress(asyncio.CancelledError):
                await drain
    fault_figures.record(
        runs=len(manifest_attacks) + len(feed_attacks),
        wrong_resources=0,
        peak_rss_growth_kib=growth,
    )
    assert growth <= 16 * 1024, f"peak RSS grew by {growth} KiB"


async def _exists(path: Path) -> bool:
    return path.exists()


async def _true(value: bool) -> bool:
    return value


async def _is(entry: Awaitable[dict[str, Any]], key: str, value: Any) -> bool:
    return (await entry).get(key) == value
