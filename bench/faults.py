"""`python -m bench faults [--soak]`: every test marked with a FAULTS.md row, run, and
docs/RELIABILITY.md written from that run.

The tests carry `@pytest.mark.faults(row, ...)` and record their figures (tests/reliability.py);
this runs them in a pytest child with SHELFSYNC_FAULTS_RESULTS set, reads what they recorded, and
writes one row per FAULTS.md row: the tests that cover it, their outcome, how many runs they
made, and the figures that must be 0. A row no test names says "not covered"; a row covered only
in part says what is missing. `--soak` makes 10,000 power cuts instead of CI's seeded 1,000, and
SIGKILLs a running daemon at 200 random times during note saves and downloads. Row 34 comes from
the last `python -m bench lowmem` run (bench/results/lowmem.json).
What the run recorded is kept in bench/results/faults.json; `--rewrite` rebuilds the page from
it without running the tests again (after editing what the page says about a row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.registry import Benchmark
from bench.section import Section, Table, command, machine

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "RELIABILITY.md"
LAST_RUN = REPO / "bench" / "results" / "faults.json"  # what the last run recorded, as it was
# FAULTS.md #34 is a benchmark's (python -m bench lowmem: 500 MB through a 512 MB cgroup, too
# long for every run): its last run, as it wrote it, makes the row.
LOWMEM_RUN = REPO / "bench" / "results" / "lowmem.json"
LOWMEM_ROW = 34
SOAK_KILLS = 200  # SIGKILLs of a running daemon with --soak (tests/integration/test_kill_soak.py)

# FAULTS.md's rows, by number, as it names them (../shared/FAULTS.md has the behaviour required).
ROWS = {
    1: "SIGKILL during chunk write",
    2: "SIGKILL inside a frame commit or the version switch",
    3: "SIGKILL between note save and UI ack, or server ack and outbox delete",
    4: "SIGKILL while persisting trust state / key rotation",
    5: "Power cut (unsynced writes lost/reordered/torn)",
    6: "I/O error on Nth SQLite op (once / persistent)",
    7: "Server 500/503/429",
    8: "Connect blackhole / headers then silence",
    9: "Reset mid-body",
    10: "Clean close before Content-Length",
    11: "Slow drip (1 B/s)",
    12: "Endless data / body longer than manifest length",
    13: "Range ignored (200), wrong Content-Range, size changed",
    14: "Bit flip in transit",
    15: "Stale keep-alive socket",
    16: "Replayed older manifest (valid signature)",
    17: "Freeze: expired manifest replayed",
    18: "Fast-forward (version 2^62)",
    19: "Mix-and-match: entry/chunk from another manifest or book; rows swapped",
    20: "Wrong key, bad signature, under threshold, duplicate keyids",
    21: "Content tampered at rest / wrong device key",
    22: "Oversized/malformed metadata; ids like ../x, %2e%2e, NUL",
    23: "zstd bomb; HTTP Content-Encoding",
    24: "Disk full during download / note save",
    25: "Corrupt DB page, deleted -wal",
    26: "Clock at 1970, -1 d, +10 y, backward jump mid-download",
    27: "Same note edited on two devices; edit vs delete",
    28: "Duplicate/reordered delivery of note ops",
    29: "Reading position from skewed devices",
    30: "Local API without/with wrong token; DNS-rebinding Host/Origin",
    31: "Local API path traversal",
    32: "Oversized body, slowloris, 500 sockets",
    33: "Shared highlight with HTML/JS or 10 MB text",
    34: "512 MB device",
}

# What the tests naming a row leave out of it: said on the page, so that a test naming a row
# never reads as more than it proves. Issue 15 and issue 24 track them.
GAPS = {
    2: "every write of the store calls; kill points in the running daemon between frames only",
    4: "a rotation's kill points in a child process of the store, not of the running daemon",
    5: "cuts under the store calls delivery and note sync make, not the running daemon's tasks",
    7: "Retry-After through a running daemon on the changes feed only (the others: unit tests)",
    8: "headers then silence at the client against a stand-in; no connect blackhole",
    9: "an RST at the client against a stand-in, not through the running daemon",
    11: "no drip on the push channel's frames",
    12: "an endless package body at the client against a stand-in, not through the daemon",
    13: "a body changed between ranges is left to the frame hashes, with no test of its own",
    14: "bit flips at rest and in one frame; not anywhere in transit",
    17: "freeze judged at verification with the store's floor; not replayed through the stub",
    15: "POSTs (note ops, receipts) are sent again by their workers' backoff, not at once",
    20: "thresholds and duplicate key ids in trust roots; a manifest carries one signature",
    22: "no fuzzing of the feed and manifest parsers (hypothesis, atheris)",
    23: "gzip forced on the package route only",
    25: "a -wal deleted together with its -shm is not told from a clean close elsewhere",
    26: "no faketime around TLS; a clock jump checked at the store, not in a running download",
    32: "the connection cap with a cap of 4 on TCP, not 500 sockets; Unix-socket flood untested",
}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--soak",
        action="store_true",
        help=f"10,000 power cuts instead of CI's 1,000, and {SOAK_KILLS} random SIGKILLs",
    )
    parser.add_argument("--seed", type=int, default=20261203, help="default: %(default)s")
    parser.add_argument("--page", type=Path, default=PAGE, help="default: docs/RELIABILITY.md")
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help=f"rewrite the page from the last run's {LAST_RUN.name} without running the tests",
    )


def run_marked_tests(soak: bool, seed: int) -> tuple[dict[str, Any], int]:
    """Run every `faults`-marked test; their recorded results and pytest's exit code."""
    with tempfile.TemporaryDirectory() as scratch:
        results = Path(scratch) / "faults.json"
        env = {
            **os.environ,
            "SHELFSYNC_FAULTS_RESULTS": str(results),
            "SHELFSYNC_POWER_CUTS": "10000" if soak else "1000",
            "SHELFSYNC_KILL_SOAK": str(SOAK_KILLS) if soak else "0",
            "SHELFSYNC_FAULTS_SEED": str(seed),
        }
        pytest = [sys.executable, "-m", "pytest", "-q", "-m", "faults", "-p", "no:cacheprovider"]
        done = subprocess.run([*pytest, "tests"], cwd=REPO, env=env, check=False)
        if not results.exists():
            raise ValueError(f"the fault tests recorded nothing (pytest exit {done.returncode})")
        recorded: dict[str, Any] = json.loads(results.read_text(encoding="utf-8"))
        return recorded, done.returncode


def _figure(values: list[int | None]) -> str:
    measured = [v for v in values if v is not None]
    return str(sum(measured)) if measured else "-"


def _by_function(recorded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The recorded tests with their parameters folded in: one entry per test function,
    its runs summed, its outcome "passed" only if every case passed."""
    tests: dict[str, dict[str, Any]] = {}
    for nodeid, result in recorded.items():
        if result["outcome"] == "skipped":
            continue  # the soak, outside --soak: it proves nothing in this run
        name = nodeid.split("[", 1)[0].removeprefix("tests/")
        entry = tests.setdefault(name, {"outcomes": set(), "runs": 0, "cases": 0})
        entry["outcomes"].add(result["outcome"])
        entry["runs"] += result["runs"]
        entry["cases"] += 1
        for figure in ("lost_notes", "wrong_resources", "peak_rss_growth_kib"):
            if result[figure] is not None:
                combine = max if figure == "peak_rss_growth_kib" else sum
                entry[figure] = combine((entry.get(figure, 0), result[figure]))
    return tests


def lowmem_result() -> dict[str, Any]:
    """The last `python -m bench lowmem` run as a recorded test of row 34 (none: no entry)."""
    if not LOWMEM_RUN.exists():
        return {}
    run = json.loads(LOWMEM_RUN.read_text(encoding="utf-8"))
    survived = run["survived"] and not run["oom_kills"] and run["cap_bytes"]
    return {
        f"bench: {run['command']}": {
            "rows": [LOWMEM_ROW],
            "outcome": "passed" if survived else "failed",
            "runs": 1,
            "lost_notes": None,
            "wrong_resources": 0,  # every resource read back whole, or the bench fails
            "peak_rss_growth_kib": run["growth_kib"],
        }
    }


def reliability_rows(recorded: dict[str, Any]) -> list[list[str]]:
    """One row per FAULTS.md row: tests, outcome, runs, the figures, what is not covered."""
    table = []
    recorded = {**recorded, **lowmem_result()}
    for number, title in ROWS.items():
        tests = _by_function({k: v for k, v in recorded.items() if number in v["rows"]})
        if not tests:
            table.append([str(number), title, "not covered", "-", "0", "-", "-", "-", "all"])
            continue
        outcomes = set().union(*(v["outcomes"] for v in tests.values()))
        rss = [v["peak_rss_growth_kib"] for v in tests.values() if "peak_rss_growth_kib" in v]
        table.append(
            [
                str(number),
                title,
                "<br>".join(
                    f"`{k}`" + (f" ({v['cases']} cases)" if v["cases"] > 1 else "")
                    for k, v in sorted(tests.items())
                ),
                "passed" if outcomes == {"passed"} else ", ".join(sorted(outcomes)),
                str(sum(v["runs"] for v in tests.values())),
                _figure([v.get("lost_notes") for v in tests.values()]),
                _figure([v.get("wrong_resources") for v in tests.values()]),
                str(max(rss)) if rss else "-",
                GAPS.get(number, ""),
            ]
        )
    return table


COLUMNS = [
    "#",
    "Fault",
    "Tests",
    "Outcome",
    "Runs",
    "Notes lost",
    "Wrong resources",
    "Peak RSS +KiB (most)",
    "Not covered yet",
]


def _table(rows: list[list[str]]) -> str:
    """Text columns left, figures right."""
    align = ["--:", "---", "---", "---", "--:", "--:", "--:", "--:", "---"]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(COLUMNS), line(align), *map(line, rows)])


def page(recorded: dict[str, Any], soak: bool, seed: int, exit_code: int) -> str:
    rows = reliability_rows(recorded)
    covered = sum(r[2] != "not covered" for r in rows)

    return "\n".join(
        [
            "# Reliability",
            "",
            "Each row of FAULTS.md (../shared/FAULTS.md: the faults, attacks and bad inputs",
            "shelfsync must survive), the tests that prove it and what they measured in the last",
            f"run. Generated by `{command('faults', *(['--soak'] if soak else []))}`"
            f" (seed {seed}, pytest exit {exit_code}) on {machine()}; never edit it by hand.",
            "",
            "A test names its rows with `@pytest.mark.faults(N)` (tests/reliability.py). Runs",
            "counts cuts, kills, N tried or cases, as each test records them (1 for a plain test);",
            "'-' is a figure the test does not measure. The last column says what of the row no",
            "test proves yet: a row is only as covered as that column is empty.",
            "",
            f"{covered} of {len(ROWS)} rows have a test.",
            "",
            _table(rows),
            "",
        ]
    )


async def run(args: argparse.Namespace) -> Section:
    if args.rewrite:
        last = json.loads(LAST_RUN.read_text(encoding="utf-8"))
        recorded, exit_code = last["tests"], last["pytest_exit"]
        args.soak, args.seed = last["soak"], last["seed"]
    else:
        recorded, exit_code = run_marked_tests(args.soak, args.seed)
        doc = {"soak": args.soak, "seed": args.seed, "pytest_exit": exit_code, "tests": recorded}
        LAST_RUN.parent.mkdir(parents=True, exist_ok=True)
        LAST_RUN.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    args.page.write_text(page(recorded, args.soak, args.seed, exit_code), encoding="utf-8")
    print(f"bench: wrote {args.page}")
    covered = sum(r[2] != "not covered" for r in reliability_rows(recorded))
    tests = _by_function(recorded)
    return Section(
        name="faults",
        title="Faults survived",
        method="Every test marked with a FAULTS.md row, run once (docs/RELIABILITY.md has the"
        " row-by-row table); power cuts are seeded, 1,000 in CI and 10,000 with --soak, which"
        f" also SIGKILLs a running daemon {SOAK_KILLS} times at random.",
        tables=[
            Table(
                heading="Rows with a test, and the figures that must be 0",
                meaning="Runs (cuts, kills, attacks, cases), notes lost and wrong resources"
                " served, summed over every test once, whatever rows it names.",
                columns=["Rows covered", "Tests", "Runs", "Notes lost", "Wrong resources"],
                rows=[
                    [
                        f"{covered} of {len(ROWS)}",
                        str(len(tests)),
                        str(sum(v["runs"] for v in tests.values())),
                        str(sum(v.get("lost_notes", 0) for v in tests.values())),
                        str(sum(v.get("wrong_resources", 0) for v in tests.values())),
                    ]
                ],
                command=command("faults", *(["--soak"] if args.soak else [])),
            )
        ],
    )


BENCHMARK = Benchmark(
    name="faults",
    summary="run every FAULTS.md test and write docs/RELIABILITY.md (--soak: 10,000 cuts)",
    add_arguments=_arguments,
    run=run,
)
