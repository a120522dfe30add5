"""The daemon as systemd runs it: a real `shelfsync run` process with a configuration file, and
the service manager's side of sd_notify (a datagram socket) to hear what it says."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_BOOK = "se_h-g-wells_the-time-machine.epub"
BOOK_SENTENCE = "was expounding a recondite matter to us"  # in chapter 1 of SAMPLE_BOOK


class ServiceManager:
    """systemd's end of $NOTIFY_SOCKET: every datagram the daemon sent, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._read = 0  # messages before this one were matched or passed over by `expect`
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setblocking(False)

    def close(self) -> None:
        self._socket.close()

    async def expect(self, line: str, timeout_s: float = 60) -> str:
        """Wait for a datagram with a line matching the regular expression `line` (READY=1,
        say), not counting those already returned; returns that datagram."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while True:
            for i, message in enumerate(self.messages[self._read :], self._read):
                if any(re.fullmatch(line, part) for part in message.split("\n")):
                    self._read = i + 1
                    return message
            left = deadline - time.monotonic()
            assert left > 0, f"no {line} from the daemon; got {self.messages}"
            try:
                data = await asyncio.wait_for(loop.sock_recv(self._socket, 4096), left)
            except TimeoutError:
                continue
            self.messages.append(data.decode())


def write_config(path: Path, **keys: str | int) -> Path:
    lines = [f"{k} = {v!r}" if isinstance(v, int) else f'{k} = "{v}"' for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def daemon_process(
    config: Path, log: Path, manager: ServiceManager | None, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`shelfsync run --config CONFIG` with its stderr in `log`, under `manager` if given
    (watchdog of 0.4 s: a ping every 0.2 s). SIGKILLed if the test leaves it running."""
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("SHELFSYNC_", "NOTIFY_", "XDG_"))
    }
    if manager is not None:
        environ |= {"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "400000"}
    with log.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "run",
            "--config",
            str(config),
            env=environ | (env or {}),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def terminate(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, as `systemctl stop` sends it; the exit code."""
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 30)


def log_lines(log: Path, event: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if f" event={event}" in line]
