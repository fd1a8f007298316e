"""The SSSD baseline: a hardware-aware per-row token budget, knee intensity / batch size."""

from __future__ import annotations

import numpy as np

from nightjar_rl.policy.base import Policy, batch_of


class SSSDBudgetPolicy(Policy):
    """k = budget(batch) - 1, where the budget is about knee / batch size rounded to a small table
    (1 token = speculation off). The knee comes from a hardware profile or is given directly."""

    type_name = "sssd"

    def __init__(self, max_k: int, profile: str | None = None, knee: float | None = None, cap: int = 32):
        super().__init__(max_k)
        if (profile is None) == (knee is None):
            raise ValueError("the sssd policy needs exactly one of 'profile' (a hardware profile path) or 'knee'")
        # imported here: the budget module itself reads hardware profiles through nightjar_rl.policy
        from nightjar_rl.decoding.drafters.sssd_budget import SSSDBudget

        self.profile, self.cap = profile, cap
        self.budget = SSSDBudget.from_profile(profile, cap=cap) if profile is not None else SSSDBudget(knee, cap=cap)
        self.knee = self.budget.knee

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        return self.budget.k(max(1, batch_of(obs)), self.max_k)

    def params(self) -> dict:
        return {"profile": self.profile, "cap": self.cap} if self.profile else {"knee": self.knee, "cap": self.cap}
