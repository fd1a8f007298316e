"""A serving session: the engine driven step by step against arrivals, with a measured clock.

Time is the measured wall time of each step; when nothing is running or queued the clock jumps to
the next arrival; a request arriving during a step is submitted before the next one. `serve` runs
a session to the end; the env steps one itself.

Closed loop (`max_concurrency=C`, vLLM's `benchmark_serving --max-concurrency`: a client-side
semaphore): a request is sent only when its scheduled arrival has passed and fewer than C requests are
in flight (sent and not yet accounted for: completed, aborted, failed and rejected requests all free
their slot). Its `arrival` (and the `arrival_time` the engine sees) is then the send time,
max(scheduled arrival, time a slot freed), so TTFT is measured from the send as vLLM does. Requests
are sent in scheduled order (FIFO). `None` is open loop: every request is sent at its scheduled time.

Every request ends up with exactly one row in the per-request table, whatever happened to it:
completed (finish_reason "eos"/"length"), aborted ("abort"), failed ("error", message in `error`)
or rejected because the engine's waiting queue was full ("rejected").
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.decoding.scheduler import ABORT, QueueFullError
from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.stats import StepStats

if TYPE_CHECKING:
    import pandas as pd

REJECTED = "rejected"  # finish_reason of a request the engine refused (QueueFullError)
COMPLETED = ("eos", "length")  # finish reasons of requests served to the end


@dataclass
class ServeResult:
    requests: pd.DataFrame  # one row per request (see `finish_reason`)
    steps: list[StepStats] = field(default_factory=list)
    outputs: dict[str, list[int]] = field(default_factory=dict)  # request id -> generated token ids (partial if aborted/failed)
    duration: float = 0.0  # clock at the end (seconds since t=0)


class ServingSession:
    def __init__(self, engine, requests: list[Request], max_concurrency: int | None = None):
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
        ):
            raise ValueError(f"max_concurrency must be an integer >= 1 or None, got {max_concurrency!r}")
        self.engine = engine
        self.max_concurrency = max_concurrency
        self.pending = sorted(requests, key=lambda r: r.arrival_time)
        self.clock = 0.0
        self.steps: list[StepStats] = []
        self.outputs: dict[str, list[int]] = {}
        self._next = 0
        self._first_token: dict[str, float] = {}
        self._cancelled: set[str] = set()  # aborted before they were submitted
        self._rows: list[dict] = []
        self._accounted: set[str] = set()
        self._in_flight: set[str] = set()  # sent, not yet accounted for (closed loop only)
        # closed loop: when each free slot became free, oldest first (all free at the start)
        self._free_slots: deque[float] | None = None if max_concurrency is None else deque([-math.inf] * max_concurrency)

    @property
    def done(self) -> bool:
        return self._next >= len(self.pending) and not self.engine.has_work

    @property
    def num_finished(self) -> int:
        """Requests accounted for: completed, aborted, failed or rejected."""
        return len(self._accounted)

    @property
    def accounted(self) -> frozenset[str]:
        """Ids of the requests that have their row in the table."""
        return frozenset(self._accounted)

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet accounted for (closed loop; 0 in open loop)."""
        return len(self._in_flight)

    def advance(self) -> int:
        """Send every request that has arrived by now (closed loop: while a slot is free); when idle,
        jump the clock to the next arrival. Returns how many requests were sent (submitted, or rejected
        by a full queue)."""
        arrived = 0
        while True:
            while self._next < len(self.pending) and self.pending[self._next].arrival_time <= self.clock:
                req = self.pending[self._next]
                if req.request_id in self._cancelled:
                    self._next += 1
                    self._record_unserved(req, ABORT)
                    continue
                if self._free_slots is not None:
                    if not self._free_slots:
                        break  # every slot in flight: wait for one to free
                    req = self._take_slot(req)
                self._next += 1
                arrived += 1
                try:
                    self.engine.submit(req)
                except QueueFullError as exc:
                    self._record_unserved(req, REJECTED, str(exc))
            if self.engine.has_work or self._next >= len(self.pending):
                return arrived
            if self._free_slots is not None and not self._free_slots:
                raise RuntimeError(f"{self.in_flight} requests in flight but the engine has no work")
            self.clock = self.pending[self._next].arrival_time

    def _take_slot(self, req: Request) -> Request:
        """Closed loop: take the oldest free slot; the request is sent when both it and the slot are there."""
        freed = self._free_slots.popleft()
        self._in_flight.add(req.request_id)
        return dataclasses.replace(req, arrival_time=freed) if freed > req.arrival_time else req

    def abort(self, request_id: str) -> bool:
        """Abort a request of this session: one not submitted yet is dropped on arrival, a queued or
        running one leaves the engine at its next step. False if unknown or already accounted for."""
        if request_id in self._accounted or request_id in self._cancelled:
            return False
        if self.engine.abort(request_id):
            return True
        if any(r.request_id == request_id for r in self.pending[self._next :]):
            self._cancelled.add(request_id)
            return True
        return False

    def step(self, plan: SpecPlan | int) -> StepStats:
        """One engine step with a plan (or a uniform k; call `advance` first); advances the clock by
        its wall time."""
        if not self.engine.has_work:
            raise RuntimeError("nothing to serve: call advance() first")
        stats = self.engine.step(plan)
        self.steps.append(stats)
        self.clock += stats.wall_time
        for rid in stats.first_token_ids:
            self._first_token[rid] = self.clock
        for seq in self.engine.pop_finished():
            self._record(seq)
        return stats

    def _record(self, seq: Sequence) -> None:
        rid = seq.request_id
        if rid in self._accounted:
            raise RuntimeError(f"request {rid} finished twice")
        self.outputs[rid] = seq.output_ids
        self._add_row(
            seq.request, self._first_token.pop(rid, math.nan), seq.finish_reason, seq.error,
            output_tokens=len(seq.output_ids), drafted=seq.drafted, accepted=seq.accepted, decode_steps=seq.steps,
        )

    def _record_unserved(self, req: Request, reason: str, error: str | None = None) -> None:
        self._add_row(req, math.nan, reason, error)

    def _add_row(self, req: Request, first_token: float, reason: str | None, error: str | None, *,
                 output_tokens: int = 0, drafted: int = 0, accepted: int = 0, decode_steps: int = 0) -> None:
        self._accounted.add(req.request_id)
        if req.request_id in self._in_flight:  # closed loop: its slot frees now
            self._in_flight.discard(req.request_id)
            self._free_slots.append(self.clock)
        self._rows.append(
            dict(
                request_id=req.request_id,
                arrival=req.arrival_time,
                first_token=first_token,
                finish=self.clock,
                prompt_tokens=len(req.prompt_ids),
                output_tokens=output_tokens,
                drafted=drafted,
                accepted=accepted,
                decode_steps=decode_steps,
                finish_reason=reason,
                error=error,
            )
        )

    def result(self) -> ServeResult:
        """Per-request table (TTFT, TPOT, end-to-end latency) of the requests accounted for so far."""
        import pandas as pd  # here, not at import: the simulator's step loop never needs it (fewer objects for
        # the garbage collector to walk: see experiments/bench_sim_speed.py)

        df = pd.DataFrame(self._rows)
        if len(df):
            df["ttft"] = df["first_token"] - df["arrival"]
            df["e2e"] = df["finish"] - df["arrival"]
            df["tpot"] = (df["finish"] - df["first_token"]) / (df["output_tokens"] - 1).clip(lower=1)
        return ServeResult(requests=df, steps=self.steps, outputs=dict(self.outputs), duration=self.clock)
