"""The supervisor: a worker that fails is logged, reported and restarted after a backoff; a stop
ends it cleanly; time is a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from daemon.backoff import Backoff
from daemon.supervisor import HEALTHY_S, Supervisor
from tests.fake_clock import FakeClock, settle


async def test_a_failing_worker_is_restarted_after_its_backoff_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock, Backoff(base_s=1.0, cap_s=60.0))
    starts: list[float] = []

    async def worker() -> None:
        starts.append(clock.monotonic())
        if len(starts) <= 3:
            raise ValueError("a bug")
        await asyncio.Event().wait()

    task = asyncio.create_task(supervisor.keep_running("library sync", worker))
    await clock.advance(30)
    assert len(starts) == 4
    assert 0.1 <= starts[1] - starts[0] <= 1.0
    assert 0.2 <= starts[2] - starts[1] <= 2.0
    failure = supervisor.report()["library sync"]
    assert failure["error"] == "ValueError: a bug"
    assert failure["restarts"] == 3
    assert 'event=worker_failed worker="library sync" error=ValueError' in caplog.text
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_a_worker_that_ran_a_while_starts_its_backoff_over() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock, Backoff(base_s=1.0, cap_s=600.0))
    starts: list[float] = []

    async def worker() -> None:
        starts.append(clock.monotonic())
        await clock.sleep(0 if len(starts) < 6 else HEALTHY_S)
        raise RuntimeError("again")

    task = asyncio.create_task(supervisor.keep_running("delivery", worker))
    await clock.advance(200)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # After the healthy run, the wait is a first failure's again: at most the base.
    healthy = next(i for i in range(1, len(starts)) if starts[i] - starts[i - 1] >= HEALTHY_S)
    assert starts[healthy + 1] - starts[healthy] <= HEALTHY_S + 1.0


async def test_a_stop_is_not_a_failure() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock)
    task = asyncio.create_task(supervisor.keep_running("connectivity", asyncio.Event().wait))
    await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert supervisor.report() == {}
