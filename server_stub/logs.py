"""Structured logging: one `event=name key=value ...` line per event.

Callers pass ids, counts and paths; never book text, tokens or token hashes.
"""

from __future__ import annotations

import logging
import sys


def kv(event: str, **fields: object) -> str:
    """Format one event line; values with spaces, quotes or `=` are quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        if not text or any(c in text for c in ' "=\n\t'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def configure(level: int = logging.INFO) -> None:
    """Log to stderr, one line per event, for the console script."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
