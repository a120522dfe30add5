"""Jittered exponential backoff (pure): how long to wait before attempt n+1.

A uniform draw in [c/10, c] with c = min(cap, base * 2**(n-1)), so a thousand devices that lost the
service at the same moment come back spread over the whole window instead of in one stampede.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 1.0
    cap_s: float = 300.0

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after `failures` consecutive failures (0 means retry at once)."""
        if failures <= 0:
            return 0.0
        ceiling = min(self.cap_s, self.base_s * 2 ** min(failures - 1, 32))
        return (rng or random).uniform(ceiling / 10, ceiling)
