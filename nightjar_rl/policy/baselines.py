"""Fixed rules that serving engines ship: a fixed k, and vLLM's on/off switch by batch size."""

from __future__ import annotations

import numpy as np

from nightjar_rl.policy.base import Policy, batch_of, check_int


class FixedK(Policy):
    """Always speculate k tokens (k = 0 is plain decoding). k above max_k is an error."""

    type_name = "fixed"

    def __init__(self, k: int, max_k: int):
        super().__init__(max_k)
        self.k = check_int("k", k, 0, self.max_k)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        return self.k

    def params(self) -> dict:
        return {"k": self.k}


class DisableByBatchSize(Policy):
    """vLLM's `disable_by_batch_size`: speculate k while batch_size < threshold, else 0."""

    type_name = "disable_by_batch_size"

    def __init__(self, k: int, threshold: int, max_k: int):
        super().__init__(max_k)
        self.k = check_int("k", k, 0, self.max_k)
        self.threshold = check_int("threshold", threshold, 1)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        return self.k if batch_of(obs) < self.threshold else 0

    def params(self) -> dict:
        return {"k": self.k, "threshold": self.threshold}
