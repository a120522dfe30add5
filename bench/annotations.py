"""`python -m bench annotations`: 10,000 annotations made offline reach the service once the
link returns; the time, the requests and the bytes it takes, on loopback and on slow links.

Per link: the stub (a subprocess, with --faults for its request log) and the daemon (a
subprocess) talk through a link emulator (devkit.linkemu) with that profile's link. The
device gets a book; then the emulator is closed (no route: connections are refused) and the
reader makes N highlights, a third of them with a note, through the local API, quoting the
book's own text. The emulator is started again on the same port and the device is told the
network is back (POST /v1/annotations/sync, as the system's network-up event would); the clock
runs until the device's outbox is empty, i.e. the service acknowledged every op.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    STUB_LISTENING,
    BenchError,
    Device,
    Stub,
    corpus_dir,
    device_process,
)
from bench.registry import Benchmark
from bench.section import Section, Table, command
from daemon.client import AccountClient
from daemon.profile import list_profiles, load_profile
from devkit.children import child, script
from devkit.linkemu import LinkEmulator, describe_link

BOOK_FILE = "calibre_quick_start_eng.epub"
DEFAULT_LINKS = ("emulator-loopback", "kindle-keyboard-3g")
WRITERS = 8  # concurrent local API clients making the annotations
_TAG = re.compile(r"<[^>]+>")
METHOD = __doc__.split("\n\n", 1)[1].replace("\n", " ").strip()


@dataclass(frozen=True, slots=True)
class Run:
    link: str
    annotations: int
    json_bytes: int  # the outbox's ops as JSON, before compression
    seconds: float  # from the link's return to the last op acknowledged
    pushes: int
    pulls: int
    requests: int  # every request the service saw meanwhile
    bytes_up: int
    bytes_down: int


async def _stub(data_dir: Path, library: Path, log: Path, stack: AsyncExitStack) -> Stub:
    args = [script("shelfsync-stub"), "--data", str(data_dir), "--library", str(library)]
    proc = await stack.enter_async_context(
        child([*args, "--port", "0", "--faults", "--zstd-level", "3"], log, pipe_stdout=True)
    )
    assert proc.stdout is not None
    while line := await asyncio.wait_for(proc.stdout.readline(), 300):
        text = line.decode().strip()
        if text.startswith(STUB_LISTENING):
            url = text.removeprefix(STUB_LISTENING)
            host, port = url.removeprefix("http://").rsplit(":", 1)
            return Stub(url, (host, int(port)), data_dir / "service.pub")
    raise BenchError(f"the stub stopped before listening; see {log}")


async def _admin(stub: Stub, method: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, stub.url + path) as r:
        r.raise_for_status()
        return await r.json(content_type=None)


async def _book_text(device: Device, book_id: str) -> tuple[str, str]:
    """The longest XHTML resource of the book and its text, to quote from."""
    details = await device.api.book(book_id)
    best = ("", "")
    for resource in details["resources"]:
        if resource["media_type"] != "application/xhtml+xml":
            continue
        _, _, body = await device.api.resource(book_id, resource["path"])
        text = " ".join(_TAG.sub(" ", body.decode("utf-8", "replace")).split())
        if len(text) > len(best[1]):
            best = (resource["path"], text)
    if len(best[1]) < 400:
        raise BenchError(f"{BOOK_FILE} has too little text to quote")
    return best


def _annotation(i: int, path: str, text: str, rng: random.Random) -> dict[str, Any]:
    length = rng.randint(40, 240)
    start = rng.randint(32, len(text) - length - 32)
    doc: dict[str, Any] = {
        "kind": "highlight",
        "color": rng.choice(["yellow", "yellow", "blue", "pink"]),
        "anchor": {
            "resource": path,
            "start": start,
            "end": start + length,
            "quote": {
                "exact": text[start : start + length],
                "prefix": text[start - 32 : start],
                "suffix": text[start + length : start + length + 32],
            },
        },
    }
    if i % 3 == 0:
        words = text.split()
        first = rng.randint(0, len(words) - 40)
        doc["note"] = " ".join(words[first : first + rng.randint(3, 40)])
    return doc


async def _write(device: Device, book_id: str, docs: list[dict[str, Any]]) -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for doc in docs:
        queue.put_nowait(doc)

    async def writer() -> None:
        while not queue.empty():
            doc = queue.get_nowait()
            status, answer = await device.api.send("POST", f"/v1/books/{book_id}/annotations", doc)
            if status != 201:
                raise BenchError(f"the local API refused an annotation: {status} {answer}")

    await asyncio.gather(*(writer() for _ in range(WRITERS)))


async def _notes(device: Device) -> dict[str, Any]:
    notes: dict[str, Any] = (await device.api.status())["annotations"]
    return notes


async def measure(profile_name: str, count: int, workdir: Path, seed: int) -> Run:
    profile = load_profile(profile_name)
    library = workdir / "library"
    library.mkdir(parents=True)
    (library / BOOK_FILE).write_bytes((corpus_dir() / BOOK_FILE).read_bytes())
    async with AsyncExitStack() as stack:
        stub = await _stub(workdir / "stub", library, workdir / "stub.log", stack)
        account = AccountClient(stub.url)
        await account.create_account("bench reader")
        link = LinkEmulator(profile.link, stub.address, seed=seed)
        await link.start()
        stack.push_async_callback(link.close)
        device = await stack.enter_async_context(
            device_process(
                workdir / "device",
                link.url,
                stub,
                profile_name,
                account.account_token,
                workdir / "device.log",
            )
        )
        catalog = await _catalog(stub, account)
        book_id = catalog[0]
        await account.buy(book_id)
        await device.wait_complete(book_id, 600)
        path, text = await _book_text(device, book_id)

        # Offline: no route to the service. The reader highlights away.
        await link.close()
        rng = random.Random(seed)
        await _write(device, book_id, [_annotation(i, path, text, rng) for i in range(count)])
        waiting = await _notes(device)
        if waiting["outbox_depth"] != count:
            raise BenchError(f"expected {count} ops waiting, the device has {waiting}")

        # The link returns; the device is told so, and the clock runs until all is acknowledged.
        await _admin(stub, "DELETE", "/v1/admin/requests")
        link = LinkEmulator(profile.link, stub.address, port=link.port, seed=seed)
        await link.start()
        stack.push_async_callback(link.close)
        started, started_wall = time.monotonic(), time.time()
        status, _ = await device.api.send("POST", "/v1/annotations/sync")
        if status != 202:
            raise BenchError(f"POST /v1/annotations/sync answered {status}")
        deadline = started + 3600
        while (await _notes(device))["outbox_depth"]:
            if time.monotonic() > deadline:
                raise BenchError(f"not synced within an hour; see {workdir / 'device.log'}")
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
        # The round ends with the pull that follows the pushes: count its requests too.
        while ((await _notes(device))["last_sync_at"] or 0) < started_wall:
            if time.monotonic() > deadline:
                raise BenchError(f"the sync round never ended; see {workdir / 'device.log'}")
            await asyncio.sleep(0.05)
        log = (await _admin(stub, "GET", "/v1/admin/requests"))["requests"]
        return Run(
            profile_name,
            count,
            int(waiting["outbox_bytes"]),
            seconds,
            sum(r["path"] == "/v1/annotations/ops" for r in log),
            sum(r["path"] == "/v1/annotations/changes" for r in log),
            len(log),
            link.stats.bytes_up,
            link.stats.bytes_down,
        )


async def _catalog(stub: Stub, account: AccountClient) -> list[str]:
    headers = {"Authorization": f"Bearer {account.account_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(stub.url + "/v1/catalog", headers=headers) as r,
    ):
        r.raise_for_status()
        return [b["book_id"] for b in (await r.json())["books"]]


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB"


async def run(args: argparse.Namespace) -> Section:
    runs = []
    for profile in args.links:
        with tempfile.TemporaryDirectory(prefix="bench-annotations-") as tmp:
            result = await measure(profile, args.annotations, Path(tmp), args.seed)
        print(
            f"{profile}: {result.annotations} annotations in {result.seconds:.2f} s,"
            f" {result.pushes} pushes, {result.requests} requests,"
            f" {_kib(result.bytes_up)} up, {_kib(result.bytes_down)} down"
        )
        runs.append(result)
    rows = [
        [
            f"{r.link} ({describe_link(load_profile(r.link).link)})",
            f"{r.annotations:,}",
            f"{r.seconds:.2f} s",
            str(r.pushes),
            str(r.pulls),
            str(r.requests),
            _kib(r.json_bytes),
            _kib(r.bytes_up),
            _kib(r.bytes_down),
        ]
        for r in runs
    ]
    worst = max(runs, key=lambda r: r.requests)
    meaning = (
        f"{worst.annotations:,} annotations made offline take {worst.pushes} push requests"
        f" ({worst.requests} requests in all, push channel and feeds included), not thousands:"
        f" the outbox goes in batches of up to 2,000 ops, gzip-compressed"
        f" ({_kib(worst.json_bytes)} of JSON became {_kib(worst.bytes_up)} on the wire)."
    )
    words = ["annotations", "--annotations", str(args.annotations), "--links", *args.links]
    return Section(
        name="annotations",
        title="Annotations made offline, synced when the link returns",
        method=METHOD,
        tables=[
            Table(
                heading="From the link's return to every op acknowledged",
                meaning=meaning,
                columns=[
                    "link",
                    "annotations",
                    "time",
                    "pushes",
                    "pulls",
                    "requests",
                    "JSON",
                    "bytes up",
                    "bytes down",
                ],
                rows=rows,
                command=command(*words),
            )
        ],
        notes=[
            "The time starts when the device is told the link is back; left to notice by itself,"
            " a device probes with jittered backoff (at most the profile's poll interval).",
            "Requests and bytes are counted to the end of the sync round (the pull after the"
            " pushes); bytes are TCP payload through the emulator, both ways, headers included."
            " The pull is one short request: the service leaves out what the device itself sent.",
        ],
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotations", type=int, default=10_000, help="default: %(default)s")
    parser.add_argument(
        "--links",
        nargs="+",
        default=list(DEFAULT_LINKS),
        choices=list_profiles(),
        help="device profiles whose links to go through (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="for the emulator and the texts")


BENCHMARK = Benchmark(
    name="annotations",
    summary="10,000 annotations made offline reach the service: time, requests, bytes",
    add_arguments=_arguments,
    run=run,
)
