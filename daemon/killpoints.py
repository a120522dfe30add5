"""Named crash points for kill tests (FAULTS.md #1-#4).

With SHELFSYNC_KILL_AT=<name>[:<n>] in the environment, the process SIGKILLs itself the n-th time
(default first) it passes the kill point <name>. Without the variable this is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_target = os.environ.get("SHELFSYNC_KILL_AT", "")
_name, _, _count = _target.partition(":")
_remaining = int(_count) if _count else 1


def killpoint(name: str) -> None:
    global _remaining
    if name != _name or not _name:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
