"""The engine surface: what a `ServingSession` (and so the env, evaluation, the CLI and the server)
needs from an engine. The live `SpeculativeEngine`, the batch-parallel decoder and the simulator's
`SimEngine` all implement it, so everything above them runs on any of the three unchanged."""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from typing import Protocol, runtime_checkable

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.stats import StepStats


@runtime_checkable
class EngineSurface(Protocol):
    max_speculation: int  # largest speculation length a plan may give a row
    running: SequenceABC[Sequence]  # rows the next step decodes
    waiting: SequenceABC[Request]  # requests queued for admission (FIFO)

    @property
    def has_work(self) -> bool: ...

    def submit(self, request: Request) -> None:
        """Queue a request; ValueError for one that could never be served, `QueueFullError` (a
        ValueError, from nightjar_rl.decoding.scheduler) when the waiting queue is at its bound."""

    def abort(self, request_id: str) -> bool:
        """Abort a queued or running request: it leaves at the next step boundary (slot and KV freed)
        and comes out of `pop_finished` with finish_reason "abort". False if unknown or already finished."""

    def step(self, plan: SpecPlan | int) -> StepStats:
        """Admit and prefill what fits, then one decoding round in which each running row drafts up to
        its plan length (an int k: every row up to k; 0 = off). A bad plan raises `PlanError`."""

    def pop_finished(self) -> list[Sequence]:
        """Sequences that left since the last call, each returned exactly once: finish_reason "eos" or
        "length" (completed), "abort", or "error" (a failed forward; the message in `Sequence.error`)."""

    def close(self) -> None: ...
