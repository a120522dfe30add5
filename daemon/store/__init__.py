"""The device's database: the only code of daemon/ but the notes' store that speaks SQL (apsw).

One connection, `Store` (database: opening, migrations of daemon/sql/, checkpoints, the
integrity check, a damaged file set aside at start), and over it one gateway a domain, each
owning its tables' SQL: library (what the device holds or should, and each delivery's
bookkeeping), frames (manifests, frames, dictionaries, trust), views (the library as the local
API and the status report show it) and receipts (delivery receipts, the service's notices).
gateway holds their base: private SQL helpers, rows by name, every apsw error translated into
daemon.errors (translate); disk the full-disk watch. May import protocol and the process
level's models, errors, logs and killpoints; never a room.
"""

from __future__ import annotations

from daemon.store.database import Store

__all__ = ["Store"]
