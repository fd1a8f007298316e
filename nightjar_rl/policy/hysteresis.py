"""Hysteresis wrapper: change k only after the inner policy has asked for it for a while.

Stops speculation from thrashing on and off when the batch size hovers around a threshold. The
wrapper holds its current k. Each step it asks the inner policy; a choice within `margin` of the
held k counts as agreement (and clears any pending change). A choice further away in the same
direction (up or down) as the previous step's extends a streak; after `dwell` consecutive such
steps the wrapper moves to the inner policy's latest choice. A choice in the other direction
restarts the streak. dwell = 1 passes changes through immediately (margin still applies).

`observe`, `update` and `learning` are forwarded to the inner policy, so a wrapped learner keeps
learning from the k that actually ran.
"""

from __future__ import annotations

import numpy as np

from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.policy.base import Policy, check_int


class Hysteresis(Policy):
    type_name = "hysteresis"

    def __init__(self, policy: Policy, dwell: int = 3, margin: int = 0, start_k: int | None = None):
        if not isinstance(policy, Policy):
            raise ValueError(f"hysteresis wraps a Policy, got {type(policy).__name__}")
        super().__init__(policy.max_k)
        self.inner = policy
        self.dwell = check_int("dwell", dwell, 1)
        self.margin = check_int("margin", margin, 0)
        self.start_k = None if start_k is None else check_int("start_k", start_k, 0, self.max_k)
        self._reset_tracking()

    def _reset_tracking(self) -> None:
        self.k: int | None = self.start_k  # None: adopt the inner policy's first choice
        self._direction = 0
        self._streak = 0

    def reset(self) -> None:
        self.inner.reset()
        self._reset_tracking()

    @property
    def learning(self) -> bool:  # type: ignore[override]
        return self.inner.learning

    @learning.setter
    def learning(self, value: bool) -> None:
        self.inner.learning = value

    @property
    def name(self) -> str:
        return f"hysteresis({self.inner.name},dwell={self.dwell},margin={self.margin})"

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        want = self.clamp(self.inner.predict(obs, deterministic))
        if self.k is None:
            self.k = want
            return self.k
        if abs(want - self.k) <= self.margin:
            self._direction, self._streak = 0, 0
            return self.k
        direction = 1 if want > self.k else -1
        self._streak = self._streak + 1 if direction == self._direction else 1
        self._direction = direction
        if self._streak >= self.dwell:
            self.k, self._direction, self._streak = want, 0, 0
        return self.k

    def observe(self, stats: StepStats) -> None:
        self.inner.observe(stats)

    def update(self, obs: np.ndarray, k: int, reward: float) -> None:
        self.inner.update(obs, k, reward)

    def params(self) -> dict:
        inner = {"type": self.inner.type_name, **self.inner.params()}  # a make_policy spec
        return {"policy": inner, "dwell": self.dwell, "margin": self.margin, "start_k": self.start_k}

    def state(self) -> dict:
        return {
            "k": self.k,
            "direction": self._direction,
            "streak": self._streak,
            "inner": self.inner.state(),
        }

    def load_state(self, state: dict) -> None:
        self.inner.load_state(dict(state.get("inner", {})))
        k = state.get("k")
        self.k = None if k is None else check_int("state.k", k, 0, self.max_k)
        self._direction = check_int("state.direction", state.get("direction", 0), -1, 1)
        self._streak = check_int("state.streak", state.get("streak", 0), 0)
