"""Named, swappable step rewards. Each maps one engine step's stats (a `StepRecord`) to a float.

Scale across load (`per_row: true`, every reward): the raw rewards grow with the batch (tokens/s
of the whole step), so a learner trained over several request rates sees rewards differing by
orders of magnitude between light and heavy load. `per_row` divides by the rows that received
tokens this step, `rows = batch_size + prefill_emitted` (decoded rows plus newly prefilled ones),
giving tokens/s per running request (latency: seconds per token per request, the step's TPOT).
The batch is fixed before k is chosen, so per step the same k maximises both forms; only the
magnitude changes. What is left (hardware speed) is a single global scale that SB3's VecNormalize
reward normalisation absorbs (see nightjar_rl/experiments/sb3_config.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from nightjar_rl.contracts.step import StepRecord

_EPS = 1e-9


def _check_per_row(reward) -> None:
    if not isinstance(reward.per_row, bool):
        raise TypeError(f"reward_kwargs.per_row must be true or false, got {reward.per_row!r}")


def _rows(stats: StepRecord) -> int:
    """Rows that received tokens in the step: decoded rows plus newly prefilled ones (>= 1)."""
    return max(stats.batch_size + stats.prefill_emitted, 1)


@dataclass(frozen=True)
class ThroughputReward:
    """Output tokens per second of the step (prefill first tokens included)."""

    per_row: bool = False
    name = "throughput"

    def __post_init__(self) -> None:
        _check_per_row(self)

    def __call__(self, stats: StepRecord) -> float:
        value = stats.tokens_out / max(stats.wall_time, _EPS)
        return value / _rows(stats) if self.per_row else value


@dataclass(frozen=True)
class DecodeThroughputReward:
    """Tokens per second of the step's decoding round only (prefill time and first tokens excluded:
    k does not affect them, so this is the less noisy learning signal)."""

    per_row: bool = False
    name = "decode_throughput"

    def __post_init__(self) -> None:
        _check_per_row(self)

    def __call__(self, stats: StepRecord) -> float:
        elapsed = stats.wall_time - stats.prefill_time
        value = float(sum(stats.emitted)) / elapsed if elapsed > _EPS else 0.0
        return value / max(stats.batch_size, 1) if self.per_row else value


@dataclass(frozen=True)
class GoodputReward:
    """Tokens per second of the step counting only rows that met a per-token latency SLO: a row's
    tokens count when step wall time / tokens it emitted <= `tpot_slo_s`. Prefill first tokens count."""

    tpot_slo_s: float = 0.1
    per_row: bool = False
    name = "goodput"

    def __post_init__(self) -> None:
        _check_per_row(self)
        if not self.tpot_slo_s > 0:
            raise ValueError(f"reward_kwargs.tpot_slo_s must be > 0, got {self.tpot_slo_s}")

    def good_tokens(self, stats: StepRecord) -> int:
        wall = max(stats.wall_time, _EPS)
        return stats.prefill_emitted + sum(e for e in stats.emitted if e > 0 and wall / e <= self.tpot_slo_s)

    def __call__(self, stats: StepRecord) -> float:
        value = self.good_tokens(stats) / max(stats.wall_time, _EPS)
        return value / _rows(stats) if self.per_row else value


@dataclass(frozen=True)
class LatencyReward:
    """Negative seconds per output token of the step (higher is better); with `per_row`, negative
    seconds per token per request (the step's TPOT)."""

    per_row: bool = False
    name = "latency"

    def __post_init__(self) -> None:
        _check_per_row(self)

    def __call__(self, stats: StepRecord) -> float:
        value = -stats.wall_time / max(stats.tokens_out, 1)
        return value * _rows(stats) if self.per_row else value


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
