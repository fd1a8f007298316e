"""Batch-size buckets: the context a bandit keeps separate arm statistics for."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from nightjar_rl.policy.table import format_range

DEFAULT_UPPER_BOUNDS = (1, 2, 4, 8, 16, 32, 64)  # buckets 1, 2, 3-4, 5-8, 9-16, 17-32, 33-64, 65+


class BatchBuckets:
    """Buckets given by increasing inclusive upper bounds, plus one open bucket above the last.

    Batch size 0 (nothing running) falls in the first bucket.
    """

    def __init__(self, upper_bounds: Sequence[int] | None = None):
        bounds = list(DEFAULT_UPPER_BOUNDS if upper_bounds is None else upper_bounds)
        if not bounds:
            raise ValueError("buckets: give at least one upper bound")
        for b in bounds:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
                raise ValueError(f"buckets: upper bounds must be positive integers, got {b!r}")
        if any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"buckets: upper bounds must be strictly increasing, got {bounds}")
        self.upper_bounds = [int(b) for b in bounds]

    def __len__(self) -> int:
        return len(self.upper_bounds) + 1

    def index(self, batch: int) -> int:
        return int(np.searchsorted(self.upper_bounds, max(int(batch), 1), side="left"))

    def label(self, i: int) -> str:
        lo = 1 if i == 0 else self.upper_bounds[i - 1] + 1
        hi = self.upper_bounds[i] if i < len(self.upper_bounds) else None
        return format_range(lo, hi)

    def labels(self) -> list[str]:
        return [self.label(i) for i in range(len(self))]
