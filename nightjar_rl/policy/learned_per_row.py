"""Learned per-row policies (issue 20): a network trained with stable-baselines3 picks one discrete
action per step from the observation vector, and a fixed rule turns that action into a per-row plan
with the allocator's code (`nightjar_rl.policy.per_row`).

- `learned_budget` (`LearnedBudget`): the agent chooses the step's budget, the allocator spends it.
  Action a scales the allocator's own budget B* (`AdaptiveBudget.allocate`: the E(B)/T(B) optimum of
  the hardware profile) by `levels[a]`:

      B = min(floor(levels[a] * B* + 1/2), usable slots)        lengths = greedy_allocation(survival, B)

  so scale 1 is `adaptive_budget` exactly and the agent learns where to spend more or less than the
  cost model says (e.g. what the model does not price: admissions, prefill, the queue).
- `learned_row_scorer` (`LearnedRowScorer`): rows' draft slots are scored by their survival
  (`RowBatch.survival`: the row's acceptance per draft depth, shrunk towards the batch-wide rates),
  and action a sets the cutoff: slot (r, j) drafts iff s[r, j] >= levels[a] (and s[r, j] > 0). No cost
  model: the agent learns the break-even survival of each state from the simulator's reward.

Why a per-step action over survival scores, not a network per row: SB3's policies take a fixed-size
observation and a fixed action space, while a step has 1..256 rows. A per-row action needs a credit
per row, and a draft slot's cost (step time) is paid by every row of the step: the row's own
tokens/s ignores that cost (what `per_row_bandit` is credited with), and the step's shared reward
spread over 256 row decisions is too noisy to learn from in minutes. Here the per-row part (which
slots) stays in the calibrated survival ranking, which the full-information acceptance makes sound,
and the learned part (how many slots, or the cutoff) is one decision per step, credited with the
step's reward: PPO on the simulator trains it in minutes on one CPU core.

Both are `mlp` networks (`MLPPolicy`: safetensors weights, numpy inference, no SB3 or torch at run
time) over the observation vector (layout 2) with `len(levels)` outputs; their artifacts add the
rule's fields (`profile` embedded, `levels`, `prior_acceptance`, `layout`, `drafting`). SB3 trains them through
the `per_row` field of an `sb3` spec (`nightjar_rl/experiments/sb3_config.py`), whose envs step with
`plan(obs, action)`: the same rule as `predict`. Without per-row features (a plain vector) they fall
back to a uniform k (documented per rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.contracts.observation import rows_of
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.policy.base import check_float
from nightjar_rl.policy.mlp import MLPPolicy
from nightjar_rl.policy.per_row import AdaptiveBudget, greedy_allocation, row_plan, step_acceptance


class PlanRule:
    """Action index -> plan, over the allocator's survival estimates (module docs). `levels` are the
    actions' parameters: scales of B* (`BudgetScale`) or survival cutoffs (`SurvivalThreshold`)."""

    default_levels: ClassVar[tuple[float, ...]] = ()
    level_bounds: ClassVar[tuple[float, float | None]] = (0.0, None)

    def __init__(self, max_k: int, profile: HardwareProfile | Mapping | str | Path,
                 levels: Sequence[float] | None = None, prior_acceptance: float = 0.5, layout: str = "packed",
                 drafting: str | None = None):
        self.allocator = AdaptiveBudget(profile, max_k, prior_acceptance, layout, drafting=drafting)
        levels = self.default_levels if levels is None else levels
        if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
            raise ValueError(f"levels must be a non-empty list of numbers, got {levels!r}")
        self.levels = [check_float("levels", v, *self.level_bounds) for v in levels]

    @property
    def max_k(self) -> int:
        return self.allocator.max_k

    @property
    def n_actions(self) -> int:
        return len(self.levels)

    def plan(self, obs: np.ndarray, action: int) -> SpecPlan | int:
        """The plan for `obs` under action `action` (an index into `levels`)."""
        if isinstance(action, bool) or not 0 <= int(action) < len(self.levels) or int(action) != action:
            raise ValueError(f"action must be an int in [0, {len(self.levels) - 1}], got {action!r}")
        rows = rows_of(obs)
        level = self.levels[int(action)]
        if rows is None:
            return self.uniform(obs, level)
        if not len(rows):
            return 0
        survival, context = self.allocator.row_inputs(rows)
        return row_plan(rows, self.lengths(survival, context, level))

    def lengths(self, survival: np.ndarray, context: float, level: float) -> np.ndarray:
        raise NotImplementedError

    def uniform(self, obs: np.ndarray, level: float) -> int:
        raise NotImplementedError

    def params(self) -> dict:
        a = self.allocator
        return {"profile": a.profile.to_dict(), "levels": list(self.levels), "prior_acceptance": a.prior_acceptance,
                "layout": a.layout, "drafting": a.drafting}


def _half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


class BudgetScale(PlanRule):
    """B = levels[a] x the allocator's B*, spent by survival (module docs). Without per-row features:
    the allocator's uniform k scaled the same way, at most max_k."""

    default_levels = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)

    def budget(self, survival: np.ndarray, context: float, level: float) -> int:
        """B for `level` (a scale of B*), capped at the slots that can draft."""
        _, best, _ = self.allocator.allocate(survival, context)
        return min(_half_up(level * best), int((survival > 0).sum()))

    def lengths(self, survival: np.ndarray, context: float, level: float) -> np.ndarray:
        return greedy_allocation(survival, self.budget(survival, context, level))

    def uniform(self, obs: np.ndarray, level: float) -> int:
        return min(_half_up(level * self.allocator.predict(obs)), self.max_k)


class SurvivalThreshold(PlanRule):
    """Every slot with survival >= levels[a] drafts (module docs). Without per-row features: k = the
    depths j with alpha^j >= levels[a], alpha the step-level acceptance."""

    default_levels = (1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
    level_bounds = (0.0, 1.0)

    def lengths(self, survival: np.ndarray, context: float, level: float) -> np.ndarray:
        # survival falls with depth (a product of rates <= 1), so the slots above a cutoff are a prefix
        return ((survival >= level) & (survival > 0)).sum(axis=1)

    def uniform(self, obs: np.ndarray, level: float) -> int:
        alpha = step_acceptance(obs, self.allocator.prior_acceptance)
        return int((alpha ** np.arange(1, self.max_k + 1) >= level).sum()) if alpha > 0 else 0


class LearnedPerRow(MLPPolicy):
    """An exported network (`MLPPolicy`) whose action is turned into a plan by `rule_type` (module docs).
    Fields: the rule's (`profile`, `levels`, `prior_acceptance`, `layout`, `drafting`), then the `mlp` fields."""

    rule_type: ClassVar[type[PlanRule]] = PlanRule
    action_meaning = "one action per entry of levels"
    n_actions_text = "len(levels)"

    def __init__(self, max_k: int, profile: HardwareProfile | Mapping | str | Path, levels: Sequence[float] | None = None,
                 prior_acceptance: float = 0.5, layout: str = "packed", drafting: str | None = None, **network):
        """`network`: the `MLPPolicy` fields (weights, layers, normalization, ...)."""
        self.rule = self.rule_type(max_k, profile, levels, prior_acceptance, layout, drafting)  # n_actions needs it
        super().__init__(max_k, **network)

    @property
    def n_actions(self) -> int:
        return self.rule.n_actions

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> SpecPlan | int:
        return self.rule.plan(obs, self.action(obs, deterministic))

    def params(self) -> dict:
        return {**self.rule.params(), **super().params()}

    @property
    def name(self) -> str:
        algo = self.provenance.get("algorithm")
        return f"{self.type_name}({algo})" if algo else self.type_name


class LearnedBudget(LearnedPerRow):
    """The agent's action scales the allocator's step budget (module docs)."""

    type_name = "learned_budget"
    rule_type = BudgetScale


class LearnedRowScorer(LearnedPerRow):
    """The agent's action is the survival cutoff of the rows' draft slots (module docs)."""

    type_name = "learned_row_scorer"
    rule_type = SurvivalThreshold


LEARNED_PER_ROW: dict[str, type[LearnedPerRow]] = {cls.type_name: cls for cls in (LearnedBudget, LearnedRowScorer)}
RULE_FIELDS = ("profile", "levels", "prior_acceptance", "layout", "drafting")


def rule_spec(spec: Mapping) -> tuple[str, dict]:
    """(type, rule fields) of a learned per-row spec without a network (`{"type": "learned_budget",
    "profile": ..., "levels": [...]}`), its type and field names checked (ValueError naming them)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"per_row must be a mapping {{type, profile, ...}}, got {spec!r}")
    kind = str(spec.get("type", "")).strip().lower().replace("-", "_")
    if kind not in LEARNED_PER_ROW:
        raise ValueError(f"per_row type must be one of {', '.join(LEARNED_PER_ROW)}, got {spec.get('type')!r}")
    fields = {k: v for k, v in spec.items() if k != "type"}
    unknown = set(fields) - set(RULE_FIELDS)
    if unknown:
        raise ValueError(f"per_row has no field {min(unknown)!r}; its fields are: {', '.join(RULE_FIELDS)}")
    if "profile" not in fields:
        raise ValueError("per_row needs field 'profile' (a hardware profile path, or 'scenario')")
    return kind, fields


def plan_rule(spec: Mapping, max_k: int) -> PlanRule:
    """The rule of a learned per-row spec (no network yet): what the training envs step with."""
    kind, fields = rule_spec(spec)
    return LEARNED_PER_ROW[kind].rule_type(max_k, **fields)
