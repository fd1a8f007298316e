"""Builds observations from decisions and steps, the same way in the env and in evaluation."""

from __future__ import annotations

import numpy as np

from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.env.observation import ObservationTracker


class ObservationBuilder:
    """Wraps `ObservationTracker`: folds in the last step and the arrivals seen since the previous
    decision (over the clock elapsed since then), then returns the observation vector."""

    def __init__(self, max_k: int):
        self.tracker = ObservationTracker(max_k)
        self._last_clock = 0.0

    def reset(self) -> None:
        self.tracker.reset()
        self._last_clock = 0.0

    def update(self, stats: StepStats | None, new_arrivals: int, clock: float) -> None:
        if stats is not None:
            self.tracker.observe_step(stats)
        self.tracker.observe_arrivals(new_arrivals, clock - self._last_clock)
        self._last_clock = clock

    def vector(self, batch_size: int, queue_len: int) -> np.ndarray:
        return self.tracker.vector(batch_size, queue_len)
