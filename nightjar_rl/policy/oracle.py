"""Goodput oracle (SmartSpec / TurboSpec style): pick the k with the best predicted goodput.

For acceptance rate a, a row yields E(k) = (1 - a^(k+1)) / (1 - a) tokens per step (k + 1 when
a = 1), so a step over B rows is predicted to produce B x E(k) tokens in
profile.step_time_ms(B, k) (drafting k tokens plus verifying k + 1 positions; see
`nightjar_rl.hardware`). The oracle returns argmax_k of B x E(k) / step time, ties to the
smaller k.

a is the observation's `fi_acceptance` (layout version 2): the geometric model's acceptance
estimate from full information, which keeps moving while k = 0 (each row's proposal is checked
against the tokens the target emits), so a stretch of k = 0 no longer freezes the decision to
re-enable on a stale estimate. Until anything is known (`fi_known` = 0) the oracle uses
`prior_acceptance`. On an observation without full information (a version-1 style vector: both
fields 0, but a histogram), it falls back to `ema_acceptance`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nightjar_rl.contracts.observation import obs_field, obs_histogram
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.policy.base import Policy, batch_of, check_float


def expected_tokens_per_row(acceptance: float, k: int) -> float:
    """Mean tokens a row gains in one step with k drafts at per-token acceptance `acceptance`."""
    a = min(max(float(acceptance), 0.0), 1.0)
    if a >= 1.0:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def expected_goodput(profile: HardwareProfile, batch: int, k: int, acceptance: float,
                     drafting: str | None = None) -> float:
    """Predicted tokens/s of one decode step over `batch` rows with speculation length k (drafting priced
    as `drafting`, see `HardwareProfile.drafting_kind`)."""
    batch = max(int(batch), 1)
    ms = profile.step_time_ms(batch, k, drafting=drafting)
    if ms <= 0:
        raise ValueError(
            f"hardware profile predicts a non-positive step time ({ms} ms) at batch {batch}, k {k}"
        )
    return batch * expected_tokens_per_row(acceptance, k) / (ms / 1000.0)


def as_profile(profile: HardwareProfile | Mapping | str | Path) -> HardwareProfile:
    if isinstance(profile, HardwareProfile):
        return profile
    if isinstance(profile, Mapping):
        return HardwareProfile.from_dict(profile)
    if isinstance(profile, (str, Path)):
        return HardwareProfile.load(profile)
    raise ValueError(
        f"profile must be a HardwareProfile, a profile dict or a path, got {type(profile).__name__}"
    )


class GoodputOracle(Policy):
    """k maximising predicted goodput from a hardware profile and the EMA acceptance rate."""

    type_name = "oracle"

    def __init__(
        self, profile: HardwareProfile | Mapping | str | Path, max_k: int, prior_acceptance: float = 0.5,
        drafting: str | None = None,
    ):
        """`drafting`: how the drafter's work is priced (`draft_model` or `lookup`: the engine's drafter;
        None: the profile's default, `HardwareProfile.drafting_kind`)."""
        super().__init__(max_k)
        self.profile = as_profile(profile)
        self.prior_acceptance = check_float("prior_acceptance", prior_acceptance, 0.0, 1.0)
        self.profile.drafting_kind(drafting)  # checked now
        self.drafting = drafting

    def acceptance(self, obs: np.ndarray) -> float:
        if obs_field(obs, "fi_known") > 0:
            return min(max(obs_field(obs, "fi_acceptance"), 0.0), 1.0)
        if obs_histogram(obs).sum() <= 0:
            return self.prior_acceptance
        return min(max(obs_field(obs, "ema_acceptance"), 0.0), 1.0)

    def goodputs(self, batch: int, acceptance: float) -> np.ndarray:
        """Predicted goodput for every k in 0..max_k."""
        return np.array([expected_goodput(self.profile, batch, k, acceptance, self.drafting)
                         for k in range(self.max_k + 1)])

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        return int(np.argmax(self.goodputs(batch_of(obs), self.acceptance(obs))))

    def params(self) -> dict:
        return {"profile": self.profile.to_dict(), "prior_acceptance": self.prior_acceptance, "drafting": self.drafting}

    @property
    def name(self) -> str:
        priced = "" if self.drafting is None else f",drafting={self.drafting}"
        return f"oracle({self.profile.model}@{self.profile.device}{priced})"
