"""`python -m bench report`: docs/BENCHMARKS.md, assembled from the sections in bench/results/."""

from __future__ import annotations

from pathlib import Path

from bench.section import command, read_meta

DOCS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"

HEADER = """# Benchmarks

What shelfsync's promises (DESIGN.md: 60 s to complete, 5 s to the first chapter, flat memory,
fast offline reads) measure at, on emulated device links, side by side with what a reader would
otherwise use. The benchmarks are not tests: `make bench` runs them all (the 3G delivery run takes
a good while), and each one alone is `python -m bench NAME` (see `python -m bench --help`).

This page is generated: each benchmark writes its section to `bench/results/NAME.md`, and
`python -m bench report` assembles them here. Never edit a number by hand; rerun the benchmark.
"""


def assemble(results_dir: Path, names: list[str]) -> str:
    """The page: header, the machines measured on, then each section in `names` order."""
    sections: list[tuple[str, str, dict[str, str]]] = []
    missing = []
    for name in names:
        path = results_dir / f"{name}.md"
        if not path.exists():
            missing.append(name)
            continue
        text = path.read_text(encoding="utf-8")
        meta = read_meta(text)
        if meta is None:
            raise ValueError(f"{path} has no bench-section header; rerun `{command(name)}`")
        sections.append((name, text, meta))

    lines = [HEADER]
    machines = sorted({meta["machine"] for _, _, meta in sections})
    if len(machines) == 1:
        lines.append(f"Every section was measured on the same machine: {machines[0]}.\n")
    for name, _, meta in sections:
        lines.append(f"- {meta['title']}: `{command(name)}` (measured {meta['date']})")
    for name in missing:
        lines.append(f"- {name}: not measured yet; run `{command(name)}`")
    lines.append("")
    lines += [text.rstrip() + "\n" for _, text, _ in sections]
    return "\n".join(lines)


def write_report(results_dir: Path, names: list[str], output: Path = DOCS) -> Path:
    output.write_text(assemble(results_dir, names), encoding="utf-8")
    return output
