"""Structured logging: one `event=name key=value ...` line per event, in the same format as the
daemon's (daemon/protocol/logline.py).

Callers pass ids, counts and paths; never book text, tokens or token hashes.
"""

from __future__ import annotations

import logging
import sys

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from daemon.protocol.logline import Event, LineFormatter


def kv(event: str, **fields: object) -> Event:
    """One event for a logger call: `log.info(kv("book_imported", book_id=...))`."""
    return Event(event, fields)


def configure(level: int = logging.INFO) -> None:
    """Log to stderr, one line per event, for the console script."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter("text"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log as events: `event=request method=GET path=/v1/... status=200`.
    The path only, not the query string, which may carry a credential."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            kv(
                "request",
                remote=request.remote,
                method=request.method,
                path=request.path,
                status=response.status,
                bytes=response.body_length,
                seconds=f"{time:.6f}",
            )
        )
