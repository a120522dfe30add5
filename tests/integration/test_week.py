"""The week benchmark's short version: two devices of one reader, two days offline with windows,
notes made on both, the same note edited on both, a delete against an edit, one clock a day
behind (bench/week.py; `python -m bench week` is the long one)."""

from __future__ import annotations

from pathlib import Path

from bench.week import Plan, Week
from tests.conftest import SHIPPED_CORPUS


async def test_two_devices_offline_lose_no_note_and_show_every_conflict(tmp_path: Path) -> None:
    plan = Plan.short()
    rows, verdict, reader = await Week(plan, tmp_path, seed=1, corpus=SHIPPED_CORPUS).run()

    assert len(reader.made) == plan.notes
    assert verdict.lost == []
    assert verdict.duplicated == 0
    assert verdict.conflicts_expected > 0
    assert verdict.conflicts_shown == verdict.conflicts_expected
    assert verdict.positions_wrong == []
    assert verdict.agreed_after_s is not None
    # Every note made reached the service by the end of the week.
    last = [r for r in rows if r.day == plan.days + 1]
    assert sum(r.notes_on_service for r in last) == plan.notes
    # The purchase made offline reached both devices in the next window, and every shared
    # highlight of every book is on both (issue 18 #2, issue 23 #2).
    assert reader.missing_events == []
    assert verdict.shared_missing == []
