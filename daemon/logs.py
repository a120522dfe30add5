"""Structured logs: one line per event, `event key=value ...`, never secrets or book text."""

from __future__ import annotations

import logging
import sys
from typing import Any


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _value(v: Any) -> str:
    text = str(v)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    *,
    exc: BaseException | None = None,
    **fields: Any,
) -> None:
    """Log `event` with fields as key=value pairs on one line; `exc`, an unexpected error, adds
    its traceback below it."""
    if logger.isEnabledFor(level):
        pairs = " ".join(f"{k}={_value(v)}" for k, v in fields.items())
        logger.log(level, "%s %s", event, pairs, exc_info=exc)
