"""The SSSD baseline: a hardware-aware speculation budget, tokens per row = knee / batch size, from
a hardware profile.

A verify pass is memory-bound (its time barely grows with the tokens scored) until the total tokens
per pass reach the hardware's knee; past it, time grows with the tokens. So a batch of B rows can
score about knee / B tokens per row for free. The per-row budget is that ratio rounded down to a
small table and capped; a budget of 1 token (the last committed one) means speculation off. The
engine is then stepped with k = budget - 1 (the draft tree's node budget).

The knee is read off a profile (`nightjar-rl profile`, JSON {"verify_ms": {"<batch>": {"<tokens
per row>": ms}}}): for each measured batch, the most tokens per row whose time stays within
`tolerance` of the 1-token time (the smallest measured; times are first made non-decreasing in the
tokens by a running minimum from the right, which removes upward noise spikes); knee = median of
batch x that over the batches where the time did rise (if it never rose anywhere, the largest
lower bound is used).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.policy.base import Policy, batch_of

BUDGET_TABLE = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def _verify_grid(profile: HardwareProfile | Mapping | str | Path) -> dict[int, dict[int, float]]:
    if isinstance(profile, (str, Path)):
        profile = HardwareProfile.load(profile)
    if isinstance(profile, Mapping):
        profile = HardwareProfile.from_dict(profile if "verify_ms" in profile else {"verify_ms": profile})
    raw = profile.to_dict()["verify_ms"]
    return {int(b): {int(n): float(ms) for n, ms in cells.items()} for b, cells in raw.items()}


def knee_tokens(profile: HardwareProfile | Mapping | str | Path, tolerance: float = 0.25) -> float:
    """Total tokens per verify pass (batch x tokens per row) at which verification stops being memory-bound."""
    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    grid = _verify_grid(profile)
    rose, flat = [], []
    for batch, cells in grid.items():
        ns = sorted(cells)
        # timings are noisy: make them non-decreasing in tokens with a running minimum from the right
        smooth = [min(cells[m] for m in ns[i:]) for i in range(len(ns))]
        last = ns[0]  # the most tokens per row whose (smoothed) time stays within tolerance
        for n, t in zip(ns, smooth):
            if t <= (1 + tolerance) * smooth[0]:
                last = n
        (rose if last < ns[-1] else flat).append(batch * last)
    if rose:
        return float(statistics.median(rose))
    return float(max(flat))


def round_to_table(value: float, table: tuple[int, ...] = BUDGET_TABLE) -> int:
    """Largest table entry <= value (the smallest entry, 1, when value is below it)."""
    fits = [t for t in table if t <= value]
    return max(fits) if fits else min(table)


class SSSDBudget:
    """Per-row token budget as a function of batch size."""

    def __init__(self, knee: float, cap: int = 32, table: tuple[int, ...] = BUDGET_TABLE):
        if knee <= 0:
            raise ValueError(f"knee must be > 0 tokens, got {knee}")
        if cap < 1:
            raise ValueError(f"cap must be >= 1 token per row, got {cap}")
        if not table or min(table) != 1 or list(table) != sorted(set(table)):
            raise ValueError("table must be strictly increasing positive integers starting at 1")
        self.knee, self.cap, self.table = float(knee), cap, tuple(table)

    @classmethod
    def from_profile(
        cls, profile: HardwareProfile | Mapping | str | Path, cap: int = 32, tolerance: float = 0.25,
        table: tuple[int, ...] = BUDGET_TABLE,
    ) -> SSSDBudget:
        return cls(knee_tokens(profile, tolerance), cap, table)

    def budget(self, batch_size: int) -> int:
        """Tokens per row to verify (1 = no speculation)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return round_to_table(min(self.knee / batch_size, self.cap), self.table)

    def k(self, batch_size: int, max_speculation: int | None = None) -> int:
        """Draft tokens per row (the engine's k): budget - 1, clipped to `max_speculation`."""
        k = self.budget(max(1, batch_size)) - 1
        return k if max_speculation is None else min(k, max_speculation)

    def as_table(self, batch_sizes: list[int]) -> dict[int, int]:
        return {b: self.budget(b) for b in batch_sizes}


class SSSDBudgetPolicy(Policy):
    """k = budget(batch) - 1, where the budget is about knee / batch size rounded to a small table
    (1 token = speculation off). The knee comes from a hardware profile or is given directly."""

    type_name = "sssd"

    def __init__(self, max_k: int, profile: str | None = None, knee: float | None = None, cap: int = 32):
        super().__init__(max_k)
        if (profile is None) == (knee is None):
            raise ValueError("the sssd policy needs exactly one of 'profile' (a hardware profile path) or 'knee'")
        self.profile, self.cap = profile, cap
        self.budget = SSSDBudget.from_profile(profile, cap=cap) if profile is not None else SSSDBudget(knee, cap=cap)
        self.knee = self.budget.knee

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        return self.budget.k(max(1, batch_of(obs)), self.max_k)

    def params(self) -> dict:
        return {"profile": self.profile, "cap": self.cap} if self.profile else {"knee": self.knee, "cap": self.cap}
