"""The env talks to a backend. `LiveBackend` is the real engine driven step by step with the same
clock rules as `nightjar_rl.serving.serve` (measured step wall time; the clock jumps to the next
arrival when idle). A simulator backend can implement the same protocol later."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.models import LoadedModel
from nightjar_rl.serving.session import ServeResult, ServingSession
from nightjar_rl.stack import EngineConfig, build_stack


@dataclass(frozen=True)
class Decision:
    """The state before a step: what a policy may look at."""

    batch_size: int  # running rows the next step decodes
    queue_len: int  # requests waiting for admission
    new_arrivals: int  # requests that arrived since the previous decision
    clock: float  # serving clock (s)


class Backend(Protocol):
    def reset(self, requests: list[Request], seed: int) -> None: ...
    def advance(self) -> Decision: ...
    def step(self, k: int) -> StepStats: ...
    @property
    def done(self) -> bool: ...
    @property
    def clock(self) -> float: ...


class LiveBackend:
    """Engine + serving session. The target model is loaded once (or passed in) and shared; the
    engine (KV cache, drafter state) is rebuilt on every reset."""

    def __init__(self, config: EngineConfig, target: LoadedModel):
        self.config = config
        self.target = target
        self.engine = None
        self.session: ServingSession | None = None

    def reset(self, requests: list[Request], seed: int) -> None:
        self.config.seed = int(seed)
        self.engine = build_stack(self.config, target=self.target).engine
        self.session = ServingSession(self.engine, requests)

    @property
    def requests(self) -> list[Request]:
        """This episode's workload, in arrival order."""
        return self.session.pending

    @property
    def clock(self) -> float:
        return self.session.clock

    @property
    def done(self) -> bool:
        return self.session.done

    def advance(self) -> Decision:
        """Submit everything that has arrived by now; when idle, jump the clock to the next arrival."""
        new = self.session.advance()
        return Decision(len(self.engine.running), len(self.engine.waiting), new, self.session.clock)

    def step(self, k: int) -> StepStats:
        return self.session.step(k)

    def result(self) -> ServeResult:
        """Per-request timings of the requests finished so far."""
        return self.session.result()
