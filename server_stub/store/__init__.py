"""The stub's store: the only code in server_stub that speaks SQL (apsw).

One class per domain over one connection, each owning its tables' SQL: accounts (accounts and
devices), catalog (books, versions, packages, keys, dictionaries, series, covers), feed (the library
changes feed), library (what each account holds), annotations (note sync, popular passages),
receipts (delivery receipts, promises, notices); database holds the connection, transactions and
the migrations in server_stub/sql/. `Store` is all of them together, as the routes use it. May
import daemon.protocol, daemon.errors and server_stub.epub (series keys); no aiohttp.
"""

from __future__ import annotations

from server_stub.store.accounts import Accounts, Device
from server_stub.store.annotations import AnnotationOp, Annotations
from server_stub.store.catalog import Cover, NewVersion, PackageInfo
from server_stub.store.feed import Change
from server_stub.store.library import Library
from server_stub.store.receipts import JudgedReceipt, Receipts

__all__ = [
    "AnnotationOp",
    "Change",
    "Cover",
    "Device",
    "JudgedReceipt",
    "NewVersion",
    "PackageInfo",
    "Store",
]


class Store(Accounts, Library, Annotations, Receipts):
    """The whole store: every domain's methods on the one connection `Database.open` made."""
