"""The log line the daemon and the service both write: one line per event, with its level.

A format both sides share, so one tool (or one person) reads the two processes' logs the same
way; pure: a log record in, one line of text out. Two styles of the same event:

  text     2026-12-03T12:04:05.123Z INFO shelfsync.app event=daemon_started device=dv_1
  json     {"ts": "2026-12-03T12:04:05.123Z", "level": "info", "logger": "shelfsync.app",
            "event": "daemon_started", "device": "dv_1"}                  (on one line)

and for journald either one starts with the sd-daemon priority, which journald takes off and
files as the line's level; text then leaves out the time, which journald stamps itself:

  <6>shelfsync.app event=daemon_started device=dv_1

A record that is not an `Event` (aiohttp's, asyncio's) becomes `event=log message="..."`. A
traceback stays on its event's line: `traceback="Traceback ...\\n..."`, escaped. Callers pass ids,
counts and paths; never book text, tokens or keys.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

STYLES = ("text", "json")
# sd-daemon(3) priorities, as journald reads them from a `<N>` prefix.
_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class Event:
    """A log message with a name and fields; `str()` gives `event=name key=value ...`."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(
            f"{k}={value_text(v)}" for k, v in {"event": self.name, **self.fields}.items()
        )


def value_text(value: Any) -> str:
    """A value as one token: quoted (JSON escapes, so never a line break) when it needs to be."""
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' ="\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


def _priority(level: int) -> int:
    return next((p for lv, p in sorted(_JOURNAL_PRIORITY.items()) if level <= lv), 2)


class LineFormatter(logging.Formatter):
    """Formats every record as one line in one of `STYLES`, for journald if `journal`."""

    def __init__(self, style: str = "text", *, journal: bool = False) -> None:
        if style not in STYLES:
            raise ValueError(f"log style {style!r} is not one of {', '.join(STYLES)}")
        super().__init__()
        self.style_name = style
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, Event) and not record.args:
            name, fields = record.msg.name, dict(record.msg.fields)
        else:
            name, fields = "log", {"message": record.getMessage()}
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        if self.style_name == "json":
            doc: dict[str, Any] = {
                "ts": _timestamp(record.created),
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": name,
            }
            for key, value in fields.items():  # a field never hides the line's own keys
                plain = isinstance(value, int | float | bool) or value is None
                doc.setdefault(key, value if plain else str(value))
            line = json.dumps(doc, ensure_ascii=False)
        else:
            line = f"{record.name} {Event(name, fields)}"
            if not self.journal:
                line = f"{_timestamp(record.created)} {record.levelname} {line}"
        return f"<{_priority(record.levelno)}>{line}" if self.journal else line


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
