"""The local API's notices: what the service told the reader, such as an apology for a book
that arrived late ("Your book 'Emma' took 94 s to arrive; we are sorry").

  GET /v1/notices    {"notices": [{seq, kind, book_id, title, message, at, received_at}]},
                     newest first (at most the last 100 the device keeps)

Read from the store only, like every other route: the receipt worker (daemon/content/receipts.py)
pulls the service's notices feed whenever the link allows.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from aiohttp import web

from daemon.store import Store
from daemon.store.receipts import KEEP_NOTICES

Reader = Callable[[], AbstractAsyncContextManager[Store]]


def add_routes(app: web.Application, reader: Reader) -> None:
    """Register the notice routes; `reader` lends a read-only store for one request."""

    async def notices(request: web.Request) -> web.Response:
        async with reader() as store:
            return web.json_response({"notices": store.receipts.recent_notices(KEEP_NOTICES)})

    app.router.add_get("/v1/notices", notices)
