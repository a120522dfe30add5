"""Child processes for the demo and the benchmarks: the installation's console scripts, run
with their output in a log, and always terminated and awaited however the caller ends."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from daemon.errors import ShelfsyncError

STOP_TIMEOUT_S = 15.0  # after SIGTERM, before SIGKILL


class MissingScriptError(ShelfsyncError):
    """A console script of shelfsync is not installed; `make` installs them."""


def script(name: str) -> str:
    """A console script of this installation (the venv's bin), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise MissingScriptError(f"{name} is not installed; run `make demo` or `make test` first")
    return found


@asynccontextmanager
async def child(
    args: list[str], log: Path, *, pipe_stdout: bool = False
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A subprocess logging to `log` (stdout too, unless piped to the caller)."""
    with log.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE if pipe_stdout else log_file,
            stderr=log_file,
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
