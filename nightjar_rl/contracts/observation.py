"""The observation vector: what a speculation policy sees before choosing k.

Layout (float32, fixed per `max_k`):

| index       | field              | meaning                                                        |
| ----------- | ------------------ | -------------------------------------------------------------- |
| 0           | batch_size         | rows that the next step will decode (running requests)         |
| 1           | queue_len          | requests waiting for admission                                  |
| 2           | arrival_rate       | EMA estimate of the request arrival rate (requests/s)           |
| 3           | ema_acceptance     | EMA of the per-token acceptance rate (accepted / drafted)       |
| 4           | ema_accepted_len   | EMA of accepted draft tokens per row per speculative step       |
| 5           | last_k             | k used in the previous step                                     |
| 6           | last_time_per_token| wall time of the previous step / tokens it produced (s)         |
| 7 .. 7+max_k| hist_0..hist_max_k | share of recent row-steps that accepted 0..max_k draft tokens   |

`ObservationBuilder` computes it, the same way wherever a policy runs (the env, evaluation, the
CLI and the server all go through the runtime's `PolicyDriver`, which owns one).

Policies read fields by name through `OBS_INDEX`, never by magic numbers. `OBS_LAYOUT_VERSION`
numbers this layout (fields, order, meaning); exported neural policies record it with
`obs_layout(max_k)` and refuse to load against another one. Bump it whenever the table changes.
"""

from __future__ import annotations

import numpy as np

from nightjar_rl.contracts.step import StepRecord

SCALAR_FIELDS = (
    "batch_size",
    "queue_len",
    "arrival_rate",
    "ema_acceptance",
    "ema_accepted_len",
    "last_k",
    "last_time_per_token",
)
OBS_INDEX = {name: i for i, name in enumerate(SCALAR_FIELDS)}
HIST_START = len(SCALAR_FIELDS)


OBS_LAYOUT_VERSION = 1


def obs_size(max_k: int) -> int:
    return HIST_START + max_k + 1


def obs_layout(max_k: int) -> list[str]:
    """Field names of the observation vector in order: the scalars, then hist_0..hist_{max_k}."""
    return [*SCALAR_FIELDS, *(f"hist_{i}" for i in range(max_k + 1))]


def obs_field(obs: np.ndarray, name: str) -> float:
    """Read one scalar field of an observation by name."""
    return float(np.asarray(obs)[OBS_INDEX[name]])


def obs_histogram(obs: np.ndarray) -> np.ndarray:
    return np.asarray(obs)[HIST_START:]


class ObservationTracker:
    """Folds engine steps into the running statistics behind the observation (EMAs, histogram)."""

    def __init__(self, max_k: int, ema: float = 0.2, hist_decay: float = 0.9):
        self.max_k, self.ema, self.hist_decay = max_k, ema, hist_decay
        self.reset()

    def reset(self) -> None:
        self.acceptance = 0.0
        self.accepted_len = 0.0
        self.arrival_rate = 0.0
        self.last_k = 0
        self.last_tpt = 0.0
        self.hist = np.zeros(self.max_k + 1)
        self._seen_acceptance = False

    def observe_step(self, stats: StepRecord) -> None:
        self.last_k = stats.k
        tokens = stats.tokens_out
        self.last_tpt = stats.wall_time / tokens if tokens else stats.wall_time
        drafted = sum(stats.drafted)
        if drafted:
            accepted = sum(stats.accepted)
            hist = [0] * (self.max_k + 1)  # rows by accepted length, rows that drafted nothing excluded
            for d, a in zip(stats.drafted, stats.accepted):
                if d > 0:
                    hist[min(a, self.max_k)] += 1
            spec_rows = sum(hist)
            rate, length = accepted / drafted, accepted / spec_rows
            if self._seen_acceptance:
                self.acceptance += self.ema * (rate - self.acceptance)
                self.accepted_len += self.ema * (length - self.accepted_len)
            else:
                self.acceptance, self.accepted_len, self._seen_acceptance = rate, length, True
            self.hist *= self.hist_decay
            self.hist += (1 - self.hist_decay) / spec_rows * np.asarray(hist, dtype=float)

    def observe_arrivals(self, count: int, elapsed: float) -> None:
        """`count` requests arrived over `elapsed` seconds of clock."""
        if elapsed > 0:
            self.arrival_rate += self.ema * (count / elapsed - self.arrival_rate)

    def vector(self, batch_size: int, queue_len: int) -> np.ndarray:
        obs = np.zeros(obs_size(self.max_k), dtype=np.float32)
        obs[: HIST_START] = (
            batch_size,
            queue_len,
            self.arrival_rate,
            self.acceptance,
            self.accepted_len,
            self.last_k,
            self.last_tpt,
        )
        total = self.hist.sum()
        obs[HIST_START:] = self.hist / total if total > 0 else 0.0
        return obs


class ObservationBuilder:
    """Wraps `ObservationTracker`: folds in the last step and the arrivals seen since the previous
    decision (over the clock elapsed since then), then returns the observation vector."""

    def __init__(self, max_k: int):
        self.tracker = ObservationTracker(max_k)
        self._last_clock = 0.0

    def reset(self) -> None:
        self.tracker.reset()
        self._last_clock = 0.0

    def update(self, stats: StepRecord | None, new_arrivals: int, clock: float) -> None:
        if stats is not None:
            self.tracker.observe_step(stats)
        self.tracker.observe_arrivals(new_arrivals, clock - self._last_clock)
        self._last_clock = clock

    def vector(self, batch_size: int, queue_len: int) -> np.ndarray:
        return self.tracker.vector(batch_size, queue_len)
