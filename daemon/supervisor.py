"""Worker supervision: no worker's failure ends the daemon.

Each worker runs under `Supervisor.keep_running`: an error that escapes it (a bug, or a failure
its own retries do not cover) is logged with its traceback, reported in the status report and the
worker started again after a jittered backoff; one that ran HEALTHY_S before failing starts its
backoff over. Only a stop (cancellation) ends a supervised worker, so a full disk or a malformed
answer costs one worker a restart, never the reader their daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from daemon.backoff import Backoff
from daemon.clock import Clock
from daemon.logs import log_event

_LOG = logging.getLogger("shelfsync.supervisor")
RESTART_BACKOFF = Backoff(base_s=1.0, cap_s=300.0)
HEALTHY_S = 60.0


@dataclass(frozen=True, slots=True)
class WorkerFailure:
    error: str  # "TypeName: message"
    at: float  # wall time
    restarts: int  # since the daemon started


class Supervisor:
    def __init__(self, clock: Clock, backoff: Backoff = RESTART_BACKOFF) -> None:
        self._clock = clock
        self._backoff = backoff
        self.failures: dict[str, WorkerFailure] = {}  # the last failure of each worker

    async def keep_running(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work()` until cancelled, starting it again whenever it fails or ends."""
        in_a_row = 0
        while True:
            started = self._clock.monotonic()
            try:
                await work()
                error: BaseException = RuntimeError("the worker ended by itself")
            except Exception as e:  # noqa: BLE001 - whatever it was, the daemon goes on
                error = e
            if self._clock.monotonic() - started >= HEALTHY_S:
                in_a_row = 0
            in_a_row += 1
            delay = self._backoff.delay(in_a_row)
            previous = self.failures.get(name)
            self.failures[name] = WorkerFailure(
                f"{type(error).__name__}: {error}"[:500],
                self._clock.wall(),
                (previous.restarts if previous else 0) + 1,
            )
            log_event(
                _LOG,
                logging.ERROR,
                "worker_failed",
                exc=error,
                worker=name,
                error=type(error).__name__,
                restart_in_s=round(delay, 1),
            )
            await self._clock.sleep(delay)

    def report(self) -> dict[str, dict[str, Any]]:
        """For the status report: each worker that failed, its last error and restarts."""
        return {
            name: {"error": f.error, "at": f.at, "restarts": f.restarts}
            for name, f in self.failures.items()
        }
