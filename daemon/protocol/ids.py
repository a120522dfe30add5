"""The shapes of what both sides name things by, defined once: full matches (\\A...\\Z, so no
trailing newline slips through, FAULTS.md #22), checked at every border where an id comes in."""

from __future__ import annotations

import re

BOOK_ID = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
ITEM_ID = re.compile(r"\A[A-Za-z0-9_-]{8,64}\Z")  # an annotation's id
SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")  # a hex digest: dictionaries, resources, frames
MAX_DEVICE_NAME = 64  # characters of the name a reader gives a device (PUT /v1/device)
