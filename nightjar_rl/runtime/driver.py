"""`PolicyDriver`: the one loop that decides k for every consumer (env, training, evaluation, CLI,
server).

It reads the serving session's decision state (rows to decode, queue, arrivals since the last
decision, clock), turns it into the documented observation (an `Observation`: the vector plus the
running rows' features, with the proposals the executor reports through an optional
`engine.proposal_lengths()`, or for a live n-gram drafter those of `runtime.full_info.NgramShadow`,
which also fills the step's full-information fields, the drafter's per-token confidences through
an optional `engine.proposal_confidences()`, and a draft model's lag on each row through an optional
`engine.draft_lags()`), asks a policy for k or a plan, runs the step,
and optionally lets the policy learn from the step's reward:

```
obs = driver.start()                 # submit what has arrived; first observation
while not driver.done:
    stats = driver.step()            # plan = policy.predict(obs) (a k or a SpecPlan); session.step(plan); observe/learn
```

`drive` is that loop; `run` drives a `ServingSession` to the end and returns its result, and
`serve` does so for an engine and a list of requests. The env drives a driver with its agent's
actions through `act(k)` (no policy inside, or one attached for training). Nothing here rebuilds
the clock or the arrivals: the session owns both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.contracts.observation import Observation, ObservationBuilder
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.policy.baselines import FixedK
from nightjar_rl.runtime.full_info import shadow_for
from nightjar_rl.serving.session import ServeResult, ServingSession

OnStep = Callable[["Decision", StepStats, float], None]  # (decision state, the step's stats, its reward)


@dataclass(frozen=True)
class Decision:
    """The state before a step: what a policy may look at (besides the running statistics)."""

    batch_size: int  # running rows the next step decodes
    queue_len: int  # requests waiting for admission
    new_arrivals: int  # requests submitted since the previous decision
    clock: float  # serving clock (s)


class PolicyDriver:
    """Session + observation builder (+ policy): decide -> step -> observe -> learn.

    `reward` (a named reward from `nightjar_rl.contracts.rewards`) is needed only to learn; `learn=True`
    also makes `predict` non-deterministic (exploration). A prefill-only step (no row decoded) is
    never credited to k: it did not depend on it.
    """

    def __init__(self, session: ServingSession, max_k: int, policy=None, *, reward=None, learn: bool = False):
        self.session, self.max_k = session, int(max_k)
        self.reward_fn = reward
        self._set_policy(policy, learn)
        self.builder = ObservationBuilder(self.max_k)
        self.shadow = shadow_for(session.engine, self.max_k)  # live n-gram: full information (runtime/full_info.py)
        self.obs: Observation | None = None
        self.decision: Decision | None = None
        self.last_reward = float("nan")

    @property
    def engine(self):
        return self.session.engine

    @property
    def done(self) -> bool:
        return self.session.done

    def _set_policy(self, policy, learn: bool) -> None:
        if learn and (policy is None or self.reward_fn is None):
            raise ValueError("learning needs a policy and a reward")
        self.policy, self.learn = policy, learn

    def attach(self, policy, *, learn: bool = False) -> None:
        """Let `policy` decide (and learn, with `learn`) from now on, from a fresh state: how an agent
        trains through the env, whose driver is started without a policy."""
        self._set_policy(policy, learn)
        policy.reset()

    def start(self) -> np.ndarray:
        """Submit everything that has arrived by t=0 (or the first arrival) and return the first observation."""
        self.builder.reset()
        if self.shadow is not None:
            self.shadow.reset()
        if self.policy is not None:
            self.policy.reset()
        return self._observe(None)

    def _observe(self, stats: StepStats | None) -> np.ndarray:
        new = self.session.advance()
        engine = self.session.engine
        self.decision = Decision(len(engine.running), len(engine.waiting), new, self.session.clock)
        self.builder.update(stats, new, self.session.clock)
        reported = getattr(engine, "proposal_lengths", None)
        proposals = reported() if reported is not None else (
            self.shadow.before(engine.running) if self.shadow is not None else None)
        confident = getattr(engine, "proposal_confidences", None)  # a drafter's per-token confidences
        lagging = getattr(engine, "draft_lags", None)  # how far a draft model's cache is behind each row
        self.obs = self.builder.observation(engine.running, self.decision.queue_len, proposals,
                                            confident() if confident is not None else None,
                                            lagging() if lagging is not None else None)
        return self.obs

    def act(self, action: SpecPlan | int) -> StepStats:
        """Run one step with a plan (or a uniform speculation length k), then fold it into the next
        observation."""
        if self.obs is None:
            raise RuntimeError("call start() before act()")
        obs = self.obs
        stats = self.session.step(action)
        if self.shadow is not None:
            self.shadow.after(stats, {s.request_id: s for s in self.session.engine.running})
        self.last_reward = float(self.reward_fn(stats)) if self.reward_fn is not None else float("nan")
        if self.policy is not None:
            self.policy.observe(stats)
            if self.learn and stats.batch_size > 0:
                self.policy.update(obs, action, self.last_reward)
        self._observe(stats)
        return stats

    def decide(self) -> SpecPlan | int:
        """The policy's decision for the current observation: a k (scalar-k policies) or a plan."""
        if self.policy is None:
            raise RuntimeError("this driver has no policy: pass k to act()")
        action = self.policy.predict(self.obs, deterministic=not self.learn)
        return action if isinstance(action, SpecPlan) else int(action)

    def step(self) -> StepStats:
        return self.act(self.decide())

    def drive(self, on_step: OnStep | None = None) -> None:
        """Start, then decide -> step (-> learn) until the session is done; `on_step` gets each
        step's decision state, its stats and its reward (e.g. a `runtime.steplog.StepLog`)."""
        self.start()
        while not self.done:
            decision = self.decision
            stats = self.step()
            if on_step is not None:
                on_step(decision, stats, self.last_reward)

    def run(self, progress: bool = False, desc: str = "serving", on_step: OnStep | None = None) -> ServeResult:
        """Serve the session's whole workload (`drive`); every request is accounted for exactly once
        (completed, aborted, failed or rejected: see the result's `finish_reason` column)."""
        with tqdm(total=len(self.session.pending), desc=desc, unit="req", disable=not progress, leave=False) as bar:

            def after_step(decision: Decision, stats: StepStats, reward: float) -> None:
                if on_step is not None:
                    on_step(decision, stats, reward)
                bar.update(self.session.num_finished - bar.n)

            self.drive(after_step)
        missing = {r.request_id for r in self.session.pending} - self.session.accounted
        if missing:
            raise RuntimeError(f"{len(missing)} requests were never served")
        return self.session.result()


def serve(engine, requests: list[Request], k=0, progress: bool = True, desc: str = "serving") -> ServeResult:
    """Serve `requests` to completion on `engine` (any `EngineSurface`). `k` is a fixed speculation
    length or a policy (`predict(obs) -> k`, see `nightjar_rl.policy`)."""
    policy = FixedK(int(k), engine.max_speculation) if isinstance(k, int) else k
    return PolicyDriver(ServingSession(engine, requests), engine.max_speculation, policy).run(progress, desc)
