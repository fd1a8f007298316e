"""Hugging Face assisted generation's "heuristic" draft-length schedule.

transformers starts at `num_assistant_tokens` and after every step adds 2 when the whole draft was
accepted, else subtracts 1 (never below 1). It never turns speculation off.

Outcome of the last step: when the caller feeds `observe(stats)`, a step counts as fully accepted
when every row that drafted accepted all it drafted (HF runs batch size 1, where this is its rule
exactly). Without `observe`, the policy reads the observation instead: after a speculative step
(obs `last_k` > 0) it counts as fully accepted when `ema_accepted_len >= full_share x last_k`.
That EMA lags, so the observation-only mode is an approximation; once `observe` has been called
the policy uses only the exact StepStats outcomes.
"""

from __future__ import annotations

import numpy as np

from nightjar_rl.contracts.observation import obs_field
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.policy.base import Policy, check_float, check_int


def fully_accepted(stats: StepStats) -> bool | None:
    """True/False for a speculative step; None when no row drafted anything."""
    pairs = [(d, a) for d, a in zip(stats.drafted, stats.accepted) if d > 0]
    if not pairs:
        return None
    return all(a >= d for d, a in pairs)


class HFHeuristic(Policy):
    """+2 after a fully accepted draft, -1 otherwise, within [1, max_k] (0 only if max_k is 0)."""

    type_name = "hf_heuristic"

    def __init__(self, max_k: int, start_k: int = 5, full_share: float = 0.95):
        super().__init__(max_k)
        self.start_k = check_int("start_k", start_k, 1)
        self.full_share = check_float("full_share", full_share, 0.0, 1.0)
        self._floor = min(1, self.max_k)
        self.reset()

    def reset(self) -> None:
        self.k = min(self.start_k, self.max_k)
        self._pending: bool | None = None  # outcome from observe() not yet applied
        self._uses_stats = False

    def observe(self, stats: StepStats) -> None:
        self._uses_stats = True
        outcome = fully_accepted(stats)
        if outcome is not None:
            self._pending = outcome

    def _outcome_from_obs(self, obs: np.ndarray) -> bool | None:
        last_k = obs_field(obs, "last_k")
        if last_k <= 0:
            return None
        return obs_field(obs, "ema_accepted_len") >= self.full_share * last_k

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        outcome = self._pending if self._uses_stats else self._outcome_from_obs(obs)
        self._pending = None
        if outcome is not None:
            self.k = self.k + 2 if outcome else self.k - 1
            self.k = min(max(self.k, self._floor), self.max_k)
        return self.k

    def params(self) -> dict:
        return {"start_k": self.start_k, "full_share": self.full_share}

    def state(self) -> dict:
        return {"k": self.k}

    def load_state(self, state: dict) -> None:
        self.k = min(max(check_int("state.k", state.get("k", self.start_k), 0), self._floor), self.max_k)
