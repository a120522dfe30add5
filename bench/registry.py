"""The benchmarks `python -m bench` knows, in the order docs/BENCHMARKS.md shows them.

To add one: write bench/<name>.py defining `BENCHMARK = Benchmark(...)`, whose `run` returns a
`Section`, and add `<name>` to MODULES. The command line, results/<name>.md and the report
follow from that.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bench.section import Section

MODULES = (
    "delivery",
    "device",
    "lowmem",
    "scale",
    "stall",
    "throughput",
    "compression",
    "annotations",
    "week",
    "fleet",
    "faults",
)


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str  # the subcommand, and the results file results/<name>.md
    summary: str  # one line for --help
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, Section]]


def benchmarks() -> list[Benchmark]:
    found = []
    for module_name in MODULES:
        benchmark = getattr(importlib.import_module(f"bench.{module_name}"), "BENCHMARK", None)
        if not isinstance(benchmark, Benchmark) or benchmark.name != module_name:
            raise TypeError(
                f"bench/{module_name}.py must define BENCHMARK = Benchmark({module_name!r}, ...)"
            )
        found.append(benchmark)
    return found
