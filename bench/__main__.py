"""`python -m bench NAME [options]` runs one benchmark and writes bench/results/NAME.md;
`python -m bench report` assembles docs/BENCHMARKS.md; `python -m bench all` does both for all."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench.registry import Benchmark, benchmarks
from bench.report import DOCS, write_report
from bench.section import RESULTS_DIR, render
from daemon.errors import ShelfsyncError


def _parser(
    known: list[Benchmark],
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="shelfsync's benchmarks (not tests). Each writes its section to "
        "RESULTS/NAME.md; `report` assembles them into docs/BENCHMARKS.md.",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        help="folder of the sections (default: bench/results, the committed ones)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    subparsers = {}
    for benchmark in known:
        sub = commands.add_parser(
            benchmark.name, help=benchmark.summary, description=benchmark.summary
        )
        benchmark.add_arguments(sub)
        subparsers[benchmark.name] = sub
    report = commands.add_parser("report", help="assemble docs/BENCHMARKS.md from the sections")
    report.add_argument("--output", type=Path, default=DOCS, help="default: %(default)s")
    commands.add_parser("all", help="run every benchmark with its defaults, then the report")
    return parser, subparsers


def _run(benchmark: Benchmark, args: argparse.Namespace, results: Path) -> None:
    section = asyncio.run(benchmark.run(args))
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{benchmark.name}.md"
    path.write_text(render(section), encoding="utf-8")
    print(f"bench: wrote {path}")


def main(argv: list[str] | None = None) -> int:
    known = benchmarks()
    parser, subparsers = _parser(known)
    args = parser.parse_args(argv)
    names = [b.name for b in known]
    try:
        if args.command == "report":
            print(f"bench: wrote {write_report(args.results, names, args.output)}")
        elif args.command == "all":
            for benchmark in known:
                _run(benchmark, subparsers[benchmark.name].parse_args([]), args.results)
            print(f"bench: wrote {write_report(args.results, names)}")
        else:
            _run(next(b for b in known if b.name == args.command), args, args.results)
    except (ShelfsyncError, OSError, ValueError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
