"""`python -m bench.stallwatch ARGS...`: `shelfsync ARGS...` with asyncio's debug mode on and its
slow-callback bound at STALL_BUDGET_MS (default 50), each step of the event loop that took
longer written as one JSON line to the file STALL_LOG names: what `python -m bench stall` reads.

A wrapper, not a daemon option: debug mode slows every step, so no device runs it, and the
daemon needs no code for being measured.
"""

from __future__ import annotations

import asyncio.base_events
import json
import logging
import os
import re
import sys
import time
from typing import Any

from daemon.cli import main

_TOOK = re.compile(r"\A(?P<what>.*) took (?P<seconds>[0-9.]+) seconds\Z", re.S)


class _SlowSteps(logging.Handler):
    """asyncio's debug-mode warnings of slow steps, as lines of JSON."""

    def __init__(self, path: str) -> None:
        super().__init__(logging.WARNING)
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (lives as long as the process)

    def emit(self, record: logging.LogRecord) -> None:
        found = _TOOK.match(record.getMessage())
        if found:
            line = {"at": time.time(), "ms": float(found["seconds"]) * 1000, "what": found["what"]}
            self._file.write(json.dumps(line) + "\n")


def _bounded_init(budget_s: float) -> Any:
    plain = asyncio.base_events.BaseEventLoop.__init__

    def init(self: asyncio.base_events.BaseEventLoop) -> None:
        plain(self)
        self.slow_callback_duration = budget_s

    return init


if __name__ == "__main__":
    os.environ["PYTHONASYNCIODEBUG"] = "1"  # read when each loop is made
    budget = float(os.environ.get("STALL_BUDGET_MS", "50")) / 1000
    asyncio.base_events.BaseEventLoop.__init__ = _bounded_init(budget)  # type: ignore[method-assign]
    logging.getLogger("asyncio").addHandler(_SlowSteps(os.environ["STALL_LOG"]))
    raise SystemExit(main(sys.argv[1:]))
