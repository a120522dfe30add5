"""A benchmark's section of docs/BENCHMARKS.md: tables, each with what it means for a reader and
the command that reproduces it, rendered to Markdown with the machine it was measured on."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_META = re.compile(r"^<!-- bench-section (\{.*\}) -->$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Table:
    heading: str
    meaning: str  # what the numbers mean for a reader, in a sentence or two, from the numbers
    columns: list[str]
    rows: list[list[str]]
    command: str  # the command that reproduces this table


@dataclass(frozen=True, slots=True)
class Section:
    name: str  # the benchmark's name: results/<name>.md
    title: str
    method: str  # how it was measured, in a paragraph
    tables: list[Table]
    notes: list[str] = field(default_factory=list)


def command(*words: str) -> str:
    """`python -m bench WORDS...`, quoted for a shell."""
    return shlex.join(["python", "-m", "bench", *words])


def machine() -> str:
    """CPU model, cores, memory, Python and kernel of this machine, in one line."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = models[0] if models else cpu
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass  # not Linux: the model from platform is the best there is
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}"
    )


def _load() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["--:"] * (len(columns) - 1)  # names left, numbers right
    return "\n".join([line(columns), "| " + " | ".join(align) + " |", *map(line, rows)])


def render(section: Section) -> str:
    """The section as Markdown, headed by a comment the report reads its metadata from."""
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    meta = {"name": section.name, "title": section.title, "machine": machine(), "date": when}
    lines = [
        f"<!-- bench-section {json.dumps(meta)} -->",
        f"## {section.title}",
        "",
        f"Measured {when} on {meta['machine']}; load average when it ended {_load()}.",
        "",
        section.method,
        "",
    ]
    for table in section.tables:
        lines += [
            f"### {table.heading}",
            "",
            table.meaning,
            "",
            markdown_table(table.columns, table.rows),
            "",
            f"Reproduce: `{table.command}`",
            "",
        ]
    if section.notes:
        lines += ["Notes:", "", *(f"- {note}" for note in section.notes), ""]
    return "\n".join(lines)


def read_meta(text: str) -> dict[str, Any] | None:
    """The metadata `render` put at the top of a section, or None if it has none."""
    match = _META.search(text)
    if match is None:
        return None
    meta: dict[str, Any] = json.loads(match[1])
    return meta
