"""Speculation policies: the predict(obs) -> k protocol, baselines, the goodput oracle, bandits,
hysteresis, artifacts and the config registry."""

from nightjar_rl.hardware import HardwareProfile, ProfileError
from nightjar_rl.policy.artifact import load_policy, policy_from_dict, policy_to_dict, save_policy
from nightjar_rl.policy.bandits import NightjarBandit, ThompsonBandit, UCB1Bandit
from nightjar_rl.policy.base import Policy
from nightjar_rl.policy.baselines import DisableByBatchSize, FixedK
from nightjar_rl.policy.buckets import BatchBuckets
from nightjar_rl.policy.hf_heuristic import HFHeuristic
from nightjar_rl.policy.hysteresis import Hysteresis
from nightjar_rl.policy.learned_per_row import LearnedBudget, LearnedRowScorer
from nightjar_rl.policy.mlp import MLPPolicy
from nightjar_rl.policy.oracle import GoodputOracle, expected_goodput, expected_tokens_per_row
from nightjar_rl.policy.per_row import AdaptiveBudget, PerRequestK, PerRowBandit
from nightjar_rl.policy.registry import POLICY_TYPES
from nightjar_rl.policy.resolve import make_policy
from nightjar_rl.policy.sssd import SSSDBudgetPolicy
from nightjar_rl.policy.table import PRESETS, BatchSizeTable

__all__ = [
    "AdaptiveBudget",
    "POLICY_TYPES",
    "PRESETS",
    "BatchBuckets",
    "BatchSizeTable",
    "DisableByBatchSize",
    "FixedK",
    "GoodputOracle",
    "HFHeuristic",
    "HardwareProfile",
    "Hysteresis",
    "LearnedBudget",
    "LearnedRowScorer",
    "MLPPolicy",
    "NightjarBandit",
    "PerRequestK",
    "PerRowBandit",
    "Policy",
    "ProfileError",
    "SSSDBudgetPolicy",
    "ThompsonBandit",
    "UCB1Bandit",
    "expected_goodput",
    "expected_tokens_per_row",
    "load_policy",
    "make_policy",
    "policy_from_dict",
    "policy_to_dict",
    "save_policy",
]
