"""Which test proves which row of FAULTS.md, and what it measured (docs/RELIABILITY.md).

A test names its rows with `@pytest.mark.faults(5)` and may record figures through the
`fault_figures` fixture: how many runs (cuts, kills, attacks) it made, notes lost, wrong
resources served, peak RSS growth. With SHELFSYNC_FAULTS_RESULTS set to a path, the session
writes every marked test's outcome and figures there as JSON; `python -m bench faults` runs the
marked tests that way and turns the file into the page. Without it nothing is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

RESULTS_ENV = "SHELFSYNC_FAULTS_RESULTS"
ROWS = range(1, 35)


@dataclass
class Figures:
    runs: int = 1
    lost_notes: int | None = None
    wrong_resources: int | None = None
    peak_rss_growth_kib: int | None = None

    def record(self, **figures: int) -> None:
        for name, value in figures.items():
            if not hasattr(self, name):
                raise TypeError(f"no figure {name!r}")
            setattr(self, name, value)


@dataclass
class _Result:
    rows: list[int]
    outcome: str = "not run"
    figures: Figures = field(default_factory=Figures)


_RESULTS: dict[str, _Result] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults(*rows): the FAULTS.md rows this test proves (docs/RELIABILITY.md)"
    )


def _rows(item: pytest.Item) -> list[int]:
    rows: list[int] = []
    for mark in item.iter_markers("faults"):
        for row in mark.args:
            if row not in ROWS:
                raise pytest.UsageError(f"{item.nodeid}: FAULTS.md has no row {row!r}")
            rows.append(row)
    return sorted(set(rows))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        rows = _rows(item)
        if rows:
            _RESULTS[item.nodeid] = _Result(rows)


@pytest.fixture
def fault_figures(request: pytest.FixtureRequest) -> Figures:
    result = _RESULTS.get(request.node.nodeid)
    if result is None:
        raise pytest.UsageError(f"{request.node.nodeid} records figures without a faults mark")
    return result.figures


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    result = _RESULTS.get(item.nodeid)
    if result is not None and (
        report.when == "call" or (report.when == "setup" and not report.passed)
    ):
        result.outcome = report.outcome
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    doc = {
        nodeid: {"rows": r.rows, "outcome": r.outcome, **asdict(r.figures)}
        for nodeid, r in sorted(_RESULTS.items())
    }
    Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
