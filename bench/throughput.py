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
from bench.harness import Book, Stub, book_of, device_process, median, stub_process
from bench.registry import Benchmark
from bench.section import Section, Table, command
from daemon.client import AccountClient
from daemon.protocol.crypto import x25519_public_text
from server_stub.catalog import PackagingSettings, import_library
from server_stub.store import Store as StubStore

MB = 10**6
SIZES_MB = (6, 300)
READ_BYTES = 1024 * 1024  # what the plain download reads and writes at a time
# Rounds of (plain GET, daemon) pairs a size: on a shared machine one pair's ratio swung from
# 0.18x to 0.66x with the load, so the figure is the median of paired ratios.
ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Transfer:
    book: Book
    package_bytes: int
    plain: list[float]  # seconds of each round's plain GET of the package, written to a file
    daemon: list[float]  # ...and of each round's bought-to-complete on a fresh daemon

    @property
    def plain_s(self) -> float:
        return median(self.plain)

    @property
    def daemon_s(self) -> float:
        return median(self.daemon)

    @property
    def plain_rate(self) -> float:
        return self.package_bytes / self.plain_s

    @property
    def daemon_rate(self) -> float:
        return self.package_bytes / self.daemon_s

    @property
    def ratio(self) -> float:
        """The daemon's rate against the plain GET's, the median of each round's pair."""
        return median(
            [plain / daemon for plain, daemon in zip(self.plain, self.daemon, strict=True)]
        )

    @property
    def ratios(self) -> str:
        each = sorted(p / d for p, d in zip(self.plain, self.daemon, strict=True))
        return f"{each[0]:.2f}x-{each[-1]:.2f}x" if len(each) > 1 else f"{each[0]:.2f}x"


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


async def measure(
    workdir: Path, stub: Stub, profile: str, books: list[Book], rounds: int
) -> list[Transfer]:
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
    for book in books:
        await account.buy(book.book_id)
    sizes: dict[str, int] = {}
    plain: dict[str, list[float]] = {book.book_id: [] for book in books}
    daemon: dict[str, list[float]] = {book.book_id: [] for book in books}
    # Each round takes every size by both ways, one right after the other, so a pair shares
    # the machine's load of the moment.
    for round_no in range(rounds):
        for book in books:
            dest = workdir / f"{book.book_id}.package"
            t0 = time.perf_counter()
            sizes[book.book_id] = await plain_download(
                stub, device.device_token, book.book_id, versions[book.book_id], dest
            )
            plain[book.book_id].append(time.perf_counter() - t0)
            dest.unlink()
            daemon[book.book_id].append(
                await daemon_download(workdir, stub, profile, book, round_no)
            )
            print(
                f"bench throughput: round {round_no + 1} of {rounds},"
                f" {sizes[book.book_id] / MB:.0f} MB: plain GET {plain[book.book_id][-1]:.2f} s,"
                f" daemon {daemon[book.book_id][-1]:.2f} s",
                flush=True,
            )
    return [
        Transfer(book, sizes[book.book_id], plain[book.book_id], daemon[book.book_id])
        for book in books
    ]


async def daemon_download(
    workdir: Path, stub: Stub, profile: str, book: Book, round_no: int
) -> float:
    """Seconds from buying `book` to a fresh daemon (a new account) holding it complete."""
    buyer = AccountClient(stub.url)
    await buyer.create_account(f"bench throughput {book.book_id} {round_no}")
    name = f"daemon-{book.book_id}-{round_no}"
    async with device_process(
        workdir / name, stub.url, stub, profile, buyer.account_token, workdir / f"{name}.log"
    ) as device:
        await device.wait_online()
        bought_at = await buyer.buy(book.book_id)
        state = await device.wait_complete(book.book_id, timeout_s=1800)
    shutil.rmtree(workdir / name, ignore_errors=True)
    # The service's purchase time to the daemon's own commit of the last frame (one machine, one
    # wall clock): not the harness's polling of the local API.
    return float(state["completed_at"]) - bought_at


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
            f"{r.ratio:.2f}x",
            r.ratios,
        ]
        for r in runs
    ]
    large = runs[-1]
    meaning = (
        f"The daemon took the {large.package_bytes / MB:,.0f} MB package at"
        f" {_rate(large.daemon_rate)}, {large.ratio:.2f}x a plain download of the same bytes"
        f" from the same service ({_rate(large.plain_rate)}; the median of {len(large.plain)}"
        f" rounds' pairs, {large.ratios}), verifying and committing every frame on the way."
    )
    return Table(
        heading=f"The daemon taking a package, against a plain download (profile {profile})",
        meaning=meaning,
        columns=[
            "book",
            "package",
            "bought to complete",
            "daemon",
            "plain GET",
            "ratio",
            "each round",
        ],
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
online, then the book bought; the time from the service's purchase to the daemon's commit of
the last frame (its `completed_at`: the manifest, and every frame verified against it and
committed). Rates are package bytes a second, of the
median time; {rounds} rounds each take every size both ways, the GET right before the daemon,
and the ratio is the median of the rounds' paired ratios (the range beside it), so a pair
shares the load of its moment."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="paperwhite-wifi", help="default %(default)s")
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help="pairs of downloads a size (default %(default)s)"
    )
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
        runs = await measure(workdir, stub, args.profile, books, args.rounds)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    cmd = command("throughput", "--profile", args.profile, "--rounds", str(args.rounds))
    return Section(
        name="throughput",
        title="Throughput on loopback: the daemon and the stub against a plain download",
        method=METHOD.format(
            sizes=" and ".join(map(str, SIZES_MB)),
            read=READ_BYTES // 1024,
            profile=args.profile,
            rounds=args.rounds,
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
