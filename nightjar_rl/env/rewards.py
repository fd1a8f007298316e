"""The named step rewards, kept at their old path for existing imports: they are a contract of the
whole package and live in `nightjar_rl.contracts.rewards`."""

from nightjar_rl.contracts.rewards import (
    REWARDS,
    DecodeThroughputReward,
    GoodputReward,
    LatencyReward,
    ThroughputReward,
    make_reward,
)

__all__ = ["REWARDS", "DecodeThroughputReward", "GoodputReward", "LatencyReward", "ThroughputReward", "make_reward"]
