"""A serving session: the engine driven step by step against arrivals, with a measured clock.

Time is the measured wall time of each step; when nothing is running or queued the clock jumps to
the next arrival; a request arriving during a step is submitted before the next one. `serve` runs
a session to the end; the env steps one itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.decoding.stats import StepStats


@dataclass
class ServeResult:
    requests: pd.DataFrame  # one row per request
    steps: list[StepStats] = field(default_factory=list)
    outputs: dict[str, list[int]] = field(default_factory=dict)  # request id -> generated token ids
    duration: float = 0.0  # clock at the end (seconds since t=0)


class ServingSession:
    def __init__(self, engine, requests: list[Request]):
        self.engine = engine
        self.pending = sorted(requests, key=lambda r: r.arrival_time)
        self.clock = 0.0
        self.steps: list[StepStats] = []
        self.outputs: dict[str, list[int]] = {}
        self._next = 0
        self._first_token: dict[str, float] = {}
        self._rows: list[dict] = []

    @property
    def done(self) -> bool:
        return self._next >= len(self.pending) and not self.engine.has_work

    @property
    def num_finished(self) -> int:
        return len(self.outputs)

    def advance(self) -> int:
        """Submit every request that has arrived by now; when idle, jump the clock to the next
        arrival. Returns how many requests were submitted."""
        submitted = 0
        while True:
            while self._next < len(self.pending) and self.pending[self._next].arrival_time <= self.clock:
                self.engine.submit(self.pending[self._next])
                self._next += 1
                submitted += 1
            if self.engine.has_work or self._next >= len(self.pending):
                return submitted
            self.clock = self.pending[self._next].arrival_time

    def step(self, k: int) -> StepStats:
        """One engine step (call `advance` first); advances the clock by its wall time."""
        if not self.engine.has_work:
            raise RuntimeError("nothing to serve: call advance() first")
        stats = self.engine.step(int(k))
        self.steps.append(stats)
        self.clock += stats.wall_time
        for rid in stats.first_token_ids:
            self._first_token[rid] = self.clock
        for seq in self.engine.pop_finished():
            rid = seq.request_id
            if rid in self.outputs:
                raise RuntimeError(f"request {rid} finished twice")
            self.outputs[rid] = seq.output_ids
            self._rows.append(
                dict(
                    request_id=rid,
                    arrival=seq.request.arrival_time,
                    first_token=self._first_token[rid],
                    finish=self.clock,
                    prompt_tokens=seq.num_prompt,
                    output_tokens=len(seq.output_ids),
                    drafted=seq.drafted,
                    accepted=seq.accepted,
                    decode_steps=seq.steps,
                    finish_reason=seq.finish_reason,
                )
            )
        return stats

    def result(self) -> ServeResult:
        """Per-request table (TTFT, TPOT, end-to-end latency) of the requests finished so far."""
        df = pd.DataFrame(self._rows)
        if len(df):
            df["ttft"] = df["first_token"] - df["arrival"]
            df["e2e"] = df["finish"] - df["arrival"]
            df["tpot"] = (df["finish"] - df["first_token"]) / (df["output_tokens"] - 1).clip(lower=1)
        return ServeResult(requests=df, steps=self.steps, outputs=dict(self.outputs), duration=self.clock)
