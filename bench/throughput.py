"""`python -m bench throughput`: how fast a package comes onto the device on loopback, against a
plain download of the same bytes from the same service in the same run; and how fast the stub
serves a large package against a small one.

No link emulator: on loopback what is measured is the daemon's own cost a byte (verifying,
hashing, committing frames) and the service's (reading the package from its store).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.epubgen import write_illustrated_epub
from bench.harness import Book, Stub, book_of, device_process, stub_process
from bench.registry import Benchmark
from bench.section import Section, Table, command
from daemon.client import AccountClient
from daemon.protocol.crypto import x25519_public_text
from server_stub.catalog import PackagingSettings, import_library
from server_stub.store import Store as StubStore

MB = 10**6
SIZES_MB = (6, 300)
READ_BYTES = 1024 * 1024  # what the plain download reads and writes at a time


@dataclass(frozen=True, slots=True)
class Transfer:
    book: Book
    package_bytes: int
    plain_s: float  # a plain GET of the package, written to a file
    daemon_s: float  # bought to complete on a fresh daemon

    @property
    def plain_rate(self) -> float:
        return self.package_bytes / self.plain_s

    @property
    def daemon_rate(self) -> float:
        return self.package_bytes / self.daemon_s


async def plain_download(stub: Stub, token: str, book_id: str, version: int, dest: Path) -> int:
    """GET the whole package as any HTTP client would, into a file; returns its bytes."""
    url = f"{stub.url}/v1/books/{book_id}/versions/{version}/package"
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
    size = 0
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url, headers=headers) as r,
    ):
        r.raise_for_status()
        with dest.open("wb") as f:
            async for chunk in r.content.iter_chunked(READ_BYTES):
                f.write(chunk)
                size += len(chunk)
    return size


async def measure(workdir: Path, stub: Stub, profile: str, books: list[Book]) -> list[Transfer]:
    account = AccountClient(stub.url)
    await account.create_account("bench throughput")
    device = await account.register_device("plain", x25519_public_text(X25519PrivateKey.generate()))
    stub_store = StubStore.open(Path(stub.key_path).parent)
    try:
        versions = {}
        for book in books:
            held = stub_store.book(book.book_id)
            assert held is not None  # imported by the stub at start
            versions[book.book_id] = held.version
    finally:
        stub_store.close()
    plain = {}
    for book in books:
        await account.buy(book.book_id)
        dest = workdir / f"{book.book_id}.package"
        t0 = time.perf_counter()
        size = await plain_download(
            stub, device.device_token, book.book_id, versions[book.book_id], dest
        )
        plain[book.book_id] = (size, time.perf_counter() - t0)
        dest.unlink()
        print(
            f"bench throughput: plain GET of {size / MB:.0f} MB in {plain[book.book_id][1]:.2f} s"
        )
    transfers = []
    for book in books:
        buyer = AccountClient(stub.url)
        await buyer.create_account(f"bench throughput {book.book_id}")
        name = f"daemon-{book.book_id}"
        async with device_process(
            workdir / name, stub.url, stub, profile, buyer.account_token, workdir / f"{name}.log"
        ) as daemon:
            await daemon.wait_online()
            t0 = time.perf_counter()
            await buyer.buy(book.book_id)
            await daemon.wait_complete(book.book_id, timeout_s=1800)
            seconds = time.perf_counter() - t0
        shutil.rmtree(workdir / name, ignore_errors=True)
        size, plain_s = plain[book.book_id]
        transfers.append(Transfer(book, size, plain_s, seconds))
        print(f"bench throughput: {transfers[-1]}", flush=True)
    return transfers


def _rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / MB:,.0f} MB/s"


def _stub_table(runs: list[Transfer], cmd: str) -> Table:
    small = runs[0]
    rows = [
        [
            r.book.path.name,
            f"{r.package_bytes / MB:,.1f} MB",
            f"{r.plain_s:.2f} s",
            _rate(r.plain_rate),
            f"{r.plain_rate / small.plain_rate:.2f}x",
        ]
        for r in runs
    ]
    large = runs[-1]
    meaning = (
        f"The stub served the {large.package_bytes / MB:,.0f} MB package at"
        f" {_rate(large.plain_rate)}, {large.plain_rate / small.plain_rate:.2f}x the rate of the"
        f" {small.package_bytes / MB:,.0f} MB one ({_rate(small.plain_rate)}): reaching any"
        " byte of a package is one index seek."
    )
    return Table(
        heading="The stub serving a package, small and large (a plain GET, loopback)",
        meaning=meaning,
        columns=["book", "package", "plain GET", "rate", "vs the small one"],
        rows=rows,
        command=cmd,
    )


def _daemon_table(runs: list[Transfer], profile: str, cmd: str) -> Table:
    rows = [
        [
            r.book.path.name,
            f"{r.package_bytes / MB:,.1f} MB",
            f"{r.daemon_s:.2f} s",
            _rate(r.daemon_rate),
            _rate(r.plain_rate),
            f"{r.daemon_rate / r.plain_rate:.2f}x",
        ]
        for r in runs
    ]
    large = runs[-1]
    meaning = (
        f"The daemon took the {large.package_bytes / MB:,.0f} MB package at"
        f" {_rate(large.daemon_rate)}, {large.daemon_rate / large.plain_rate:.2f}x a plain"
        f" download of the same bytes from the same service ({_rate(large.plain_rate)}),"
        " verifying and committing every frame on the way."
    )
    return Table(
        heading=f"The daemon taking a package, against a plain download (profile {profile})",
        meaning=meaning,
        columns=["book", "package", "bought to complete", "daemon", "plain GET", "ratio"],
        rows=rows,
        command=cmd,
    )


METHOD = """\
Two generated illustrated books (valid EPUB 3, random-pixel PNG plates: incompressible) of
{sizes} MB, imported into the stub's catalog at zstd level 1 (the pictures stay raw frames at
any level). **Plain GET**: an aiohttp client in the benchmark's process
GETs each whole package from the stub's package route (as a device, `Accept-Encoding:
identity`) and writes it to a file, {read} KiB at a time: what any HTTP download of those bytes
costs on loopback. **Daemon**: a fresh daemon (`shelfsync run`, profile {profile}) per book,
online, then the book bought; the time until the local API says it is complete (the manifest,
and every frame verified against it and committed). Rates are package bytes a second; the
ratio is against the plain GET of the same package in the same run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="paperwhite-wifi", help="default %(default)s")
    parser.add_argument(
        "--workdir", type=Path, help="keep state and logs here (default: a temporary folder)"
    )


async def run(args: argparse.Namespace) -> Section:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfsync-bench-"))
    library = workdir / "library"
    library.mkdir(parents=True, exist_ok=True)
    books = []
    for size in SIZES_MB:
        path = library / f"generated_{size}mb.epub"
        print(f"bench throughput: generating a {size} MB book; logs in {workdir}", flush=True)
        if not path.exists():
            await asyncio.to_thread(write_illustrated_epub, path, size * MB, seed=size)
        books.append(book_of(path))
    # Imported here at zstd level 1 (the stub's own import packages at 19: a quarter of an hour
    # for 300 MB of pictures that stay raw anyway); the stub then finds every book imported.
    stub_store = StubStore.open(workdir / "stub")
    try:
        await asyncio.to_thread(
            import_library, stub_store, library, settings=PackagingSettings(level=1)
        )
    finally:
        stub_store.close()
    async with stub_process(workdir / "stub", library, workdir / "stub.log") as stub:
        runs = await measure(workdir, stub, args.profile, books)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    cmd = command("throughput", "--profile", args.profile)
    return Section(
        name="throughput",
        title="Throughput on loopback: the daemon and the stub against a plain download",
        method=METHOD.format(
            sizes=" and ".join(map(str, SIZES_MB)), read=READ_BYTES // 1024, profile=args.profile
        ),
        tables=[_stub_table(runs, cmd), _daemon_table(runs, args.profile, cmd)],
    )


BENCHMARK = Benchmark(
    name="throughput",
    summary="a 6 MB and a 300 MB package taken by the daemon and served by the stub, against a "
    "plain download of the same bytes",
    add_arguments=add_arguments,
    run=run,
)
