"""`python -m bench stall`: how long the daemon's event loop is held by one step, while it
delivers the largest corpus book and while a reader reads every resource of the corpus.

The daemon runs as a subprocess under asyncio's debug mode (`bench.stallwatch`), which times
every step of the loop and reports each that takes longer than the budget: a step that long is a
local API answer, a push or a download that waits for it, however small it is itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    BenchError,
    Book,
    Device,
    corpus_books,
    corpus_dir,
    device_process,
    stub_process,
)
from bench.registry import Benchmark
from bench.section import Section, Table, command
from daemon.client import AccountClient
from daemon.profile import list_profiles

BUDGET_MS = 50.0
WORST_SHOWN = 3  # the slowest steps of each phase named in the notes


@dataclass(frozen=True, slots=True)
class Step:
    ms: float
    what: str  # asyncio's description of the step: the task or callback and where it ran


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    seconds: float
    steps: list[Step]  # the steps over the budget, slowest first

    @property
    def worst_ms(self) -> float:
        return self.steps[0].ms if self.steps else 0.0


class StallLog:
    """The lines bench.stallwatch appends, read as they come."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0

    def new_steps(self) -> list[Step]:
        try:
            with self._path.open(encoding="utf-8") as f:
                f.seek(self._offset)
                lines = f.readlines()
                self._offset = f.tell()
        except FileNotFoundError:
            return []
        found = [json.loads(line) for line in lines if line.endswith("\n")]
        return sorted((Step(s["ms"], s["what"]) for s in found), key=lambda s: -s.ms)


async def _read_all(device: Device, rows: list[tuple[str, str, int]]) -> None:
    for book_id, path, size in rows:
        status, _, body = await device.api.resource(book_id, path)
        if status != 200 or len(body) != size:
            raise BenchError(f"{book_id}:{path} did not read back ({status})")


async def measure(workdir: Path, profile: str, books: list[Book], idle_s: float) -> list[Phase]:
    library = workdir / "library"
    library.mkdir(parents=True, exist_ok=True)
    for book in books:
        (library / book.path.name).unlink(missing_ok=True)
        (library / book.path.name).symlink_to(book.path)
    stall_path = workdir / "stalls.jsonl"
    stall_path.unlink(missing_ok=True)
    os.environ["STALL_LOG"] = str(stall_path)
    os.environ["STALL_BUDGET_MS"] = f"{BUDGET_MS:g}"
    log = StallLog(stall_path)
    phases = []
    async with (
        stub_process(workdir / "stub", library, workdir / "stub.log") as stub,
        AsyncExitStack() as stack,
    ):
        account = AccountClient(stub.url)
        await account.create_account("bench stall")
        device = await stack.enter_async_context(
            device_process(
                workdir / "daemon",
                stub.url,
                stub,
                profile,
                account.account_token,
                workdir / "daemon.log",
                wrap=lambda args: [sys.executable, "-m", "bench.stallwatch", *args[1:]],
            )
        )
        await device.wait_online()

        async def timed(name: str, started: float) -> None:
            phases.append(Phase(name, time.monotonic() - started, log.new_steps()))
            print(
                f"bench stall: {phases[-1].name}: {len(phases[-1].steps)} steps over"
                f" {BUDGET_MS:g} ms, worst {phases[-1].worst_ms:.0f} ms",
                flush=True,
            )

        log.new_steps()  # starting up is not what is measured
        t0 = time.monotonic()
        await asyncio.sleep(idle_s)
        await timed(f"online and idle, {idle_s:g} s (the baseline)", t0)

        largest = books[-1]
        t0 = time.monotonic()
        await account.buy(largest.book_id)
        await device.wait_complete(largest.book_id, timeout_s=900)
        await timed(f"delivering the largest book ({largest.path.name})", t0)

        rest = books[:-1]
        t0 = time.monotonic()
        for book in rest:
            await account.buy(book.book_id)
        for book in rest:
            await device.wait_complete(book.book_id, timeout_s=900)
        await timed(f"delivering the other {len(rest)} books", t0)

        rows = []
        for book in books:
            described = await device.api.book(book.book_id)
            rows += [(book.book_id, r["path"], r["size"]) for r in described["resources"]]
        t0 = time.monotonic()
        await _read_all(device, rows)
        await timed(f"reading all {len(rows):,} resources in reading order", t0)
        t0 = time.monotonic()
        await _read_all(device, random.Random(7).sample(rows, len(rows)))
        await timed("reading them again in random order", t0)
    return phases


def _what(step: Step) -> str:
    """asyncio's description of a step, short enough for a table cell."""
    text = " ".join(step.what.split())
    return text if len(text) <= 160 else text[:157] + "..."


def _table(phases: list[Phase], profile: str, cmd: str) -> Table:
    rows = [
        [
            p.name,
            f"{p.seconds:.1f} s",
            f"{len(p.steps)}",
            f"{p.worst_ms:.0f} ms" if p.steps else "-",
            _what(p.steps[0]) if p.steps else "-",
        ]
        for p in phases
    ]
    over = [p for p in phases if p.steps]
    worst = max(phases, key=lambda p: p.worst_ms)
    meaning = (
        f"No step of the event loop took longer than {BUDGET_MS:g} ms in any phase."
        if not over
        else f"{sum(len(p.steps) for p in phases)} steps took longer than {BUDGET_MS:g} ms, the"
        f" worst {worst.worst_ms:.0f} ms ({worst.name}): while it ran, no local API answer,"
        " push or download moved."
    )
    return Table(
        heading=f"Event-loop steps over {BUDGET_MS:g} ms, profile {profile} (asyncio debug mode)",
        meaning=meaning,
        columns=["phase", "took", f"steps over {BUDGET_MS:g} ms", "worst step", "what it was"],
        rows=rows,
        command=cmd,
    )


METHOD = """\
The daemon (`shelfsync run`, profile {profile}) runs against the stub on loopback under
`python -m bench.stallwatch`: asyncio's debug mode, with `slow_callback_duration` at
{budget:g} ms, so asyncio reports every step of the event loop (one callback, or one run of a
task up to its next `await`) that takes longer, with what it was. Debug mode makes every step
slower than in production, so the figures are an upper bound. The phases, one daemon through
all of them: online and idle (the baseline), the largest corpus book bought and delivered, the
other corpus books bought at once and delivered, then every resource of every book read through
the local API as the device benchmark reads them, in reading order and then in a random order
(seed 7)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        default="kindle-keyboard-3g",
        help=f"device profile (default %(default)s; known: {', '.join(list_profiles())})",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="baseline window (default %(default)s)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep state and logs here (default: a temporary folder)"
    )


async def run(args: argparse.Namespace) -> Section:
    books = corpus_books(corpus_dir())
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfsync-bench-"))
    print(f"bench stall: logs in {workdir}", flush=True)
    phases = await measure(workdir, args.profile, books, args.idle_seconds)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    words = ["stall", "--profile", args.profile]
    if args.idle_seconds != 10.0:
        words += ["--idle-seconds", f"{args.idle_seconds:g}"]
    cmd = command(*words)
    notes = [
        f"Slowest steps, {p.name}: "
        + "; ".join(f"{s.ms:.0f} ms: {_what(s)}" for s in p.steps[:WORST_SHOWN])
        for p in phases
        if p.steps
    ]
    return Section(
        name="stall",
        title="The event loop's stall budget",
        method=METHOD.format(profile=args.profile, budget=BUDGET_MS),
        tables=[_table(phases, args.profile, cmd)],
        notes=notes,
    )


BENCHMARK = Benchmark(
    name="stall",
    summary="the longest steps of the daemon's event loop (asyncio debug mode) while it "
    "delivers the largest corpus book and serves every resource of the corpus",
    add_arguments=add_arguments,
    run=run,
)
