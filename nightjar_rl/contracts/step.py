"""`StepRecord`: what the observation and the rewards read from one engine step.

The engine's `nightjar_rl.decoding.stats.StepStats` is the record every engine returns (the
fields mean what it documents); this protocol names the part of it the contracts read, so they
need nothing from the engine.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class StepRecord(Protocol):
    k: int
    batch_size: int
    drafted: list[int]
    accepted: list[int]
    emitted: list[int]
    prefill_emitted: int
    prefill_time: float
    wall_time: float

    @property
    def tokens_out(self) -> int: ...
