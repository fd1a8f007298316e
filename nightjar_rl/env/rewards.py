"""Named, swappable step rewards. Each maps one engine step's StepStats to a float."""

from __future__ import annotations

from dataclasses import dataclass

from nightjar_rl.decoding.stats import StepStats

_EPS = 1e-9


@dataclass(frozen=True)
class ThroughputReward:
    """Output tokens per second of the step (prefill first tokens included)."""

    name = "throughput"

    def __call__(self, stats: StepStats) -> float:
        return stats.tokens_out / max(stats.wall_time, _EPS)


@dataclass(frozen=True)
class DecodeThroughputReward:
    """Tokens per second of the step's decoding round only (prefill time and first tokens excluded:
    k does not affect them, so this is the less noisy learning signal)."""

    name = "decode_throughput"

    def __call__(self, stats: StepStats) -> float:
        elapsed = stats.wall_time - stats.prefill_time
        return float(sum(stats.emitted)) / elapsed if elapsed > _EPS else 0.0


@dataclass(frozen=True)
class GoodputReward:
    """Tokens per second of the step counting only rows that met a per-token latency SLO: a row's
    tokens count when step wall time / tokens it emitted <= `tpot_slo_s`. Prefill first tokens count."""

    tpot_slo_s: float = 0.1
    name = "goodput"

    def __post_init__(self) -> None:
        if not self.tpot_slo_s > 0:
            raise ValueError(f"reward_kwargs.tpot_slo_s must be > 0, got {self.tpot_slo_s}")

    def good_tokens(self, stats: StepStats) -> int:
        wall = max(stats.wall_time, _EPS)
        return stats.prefill_emitted + sum(e for e in stats.emitted if e > 0 and wall / e <= self.tpot_slo_s)

    def __call__(self, stats: StepStats) -> float:
        return self.good_tokens(stats) / max(stats.wall_time, _EPS)


@dataclass(frozen=True)
class LatencyReward:
    """Negative seconds per output token of the step (higher is better)."""

    name = "latency"

    def __call__(self, stats: StepStats) -> float:
        return -stats.wall_time / max(stats.tokens_out, 1)


REWARDS = {
    "throughput": ThroughputReward,
    "decode_throughput": DecodeThroughputReward,
    "goodput": GoodputReward,
    "latency": LatencyReward,
}


def make_reward(name: str, **kwargs):
    """The reward called `name` (see REWARDS), built with its keyword arguments."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}")
    return REWARDS[name](**kwargs)
