"""Structured logs to stderr: one line per event (daemon/protocol/logline.py has the format).

Under journald (stderr is the stream $JOURNAL_STREAM names) each line starts with its sd-daemon
`<N>` priority (and text lines leave the time to journald), so `journalctl -p warning` works;
`--log-format json` gives tools one JSON object per line. Never secrets or book text: callers
log ids, counts and paths.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from daemon.protocol.logline import Event, LineFormatter

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS |= {"error": logging.ERROR}
FORMATS = ("text", "json")


def under_journald(environ: Mapping[str, str] = os.environ) -> bool:
    """True when stderr is the journal stream systemd gave this process (sd-daemon(3)): the
    variable alone is inherited by children whose stderr goes elsewhere."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def setup_logging(level: str = "info", log_format: str = "text") -> None:
    """`level` in LEVELS and `log_format` in FORMATS, already checked (daemon/config.py)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(log_format, journal=under_journald()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """Change the level of every logger at once (SIGHUP reloads it)."""
    logging.getLogger().setLevel(LEVELS[level.lower()])


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    *,
    exc: BaseException | None = None,
    **fields: Any,
) -> None:
    """Log `event` with fields as key=value pairs on one line; `exc`, an unexpected error, adds
    its traceback to the same line."""
    if logger.isEnabledFor(level):
        logger.log(level, Event(event, fields), exc_info=exc)
