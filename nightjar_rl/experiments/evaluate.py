"""Evaluate one policy on one seeded workload with the real serving loop (`serve`), and summarise.

The policy sees the same observations as in the env: `PolicyController` rebuilds the decision state
(batch, queue, arrivals, clock) from the engine each time `serve` asks for the next k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from gymnasium.utils import seeding

from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.env.observe import ObservationBuilder
from nightjar_rl.env.rewards import make_reward
from nightjar_rl.env.scenario import Scenario
from nightjar_rl.env.workload import PromptPool, sample_requests
from nightjar_rl.models import LoadedModel
from nightjar_rl.serving import ServeResult, serve, summarize
from nightjar_rl.serving.arrivals import PoissonArrivals
from nightjar_rl.stack import build_stack


class PolicyController:
    """The `k` callable for `serve`: observation -> policy.predict, with optional learning.

    `serve` calls it right before each engine step (after submitting arrivals), so the engine's
    `waiting` deque holds every request submitted since the previous call; the clock is the previous
    clock plus the last step's wall time, or the newest arrival's time when the loop idled until it."""

    def __init__(self, engine, policy, max_k: int, learn: bool = False, reward=None):
        if learn and reward is None:
            raise ValueError("learning during evaluation needs a reward")
        self.engine, self.policy, self.learn, self.reward = engine, policy, learn, reward
        self.builder = ObservationBuilder(max_k)
        self._seen: set[str] = set()
        self.clock = 0.0
        self._prev: tuple[np.ndarray, int] | None = None

    def __call__(self, last: StepStats | None) -> int:
        new = [r for r in self.engine.waiting if r.request_id not in self._seen]
        self._seen.update(r.request_id for r in new)
        clock = self.clock + (last.wall_time if last is not None else 0.0)
        if new:
            clock = max(clock, max(r.arrival_time for r in new))
        self.clock = clock
        self.builder.update(last, len(new), clock)
        if last is not None:
            self.policy.observe(last)
            if self.learn and self._prev is not None and last.batch_size > 0:
                self.policy.update(self._prev[0], self._prev[1], float(self.reward(last)))
        obs = self.builder.vector(len(self.engine.running), len(self.engine.waiting))
        k = int(self.policy.predict(obs, deterministic=not self.learn))
        self._prev = (obs, k)
        return k


@dataclass
class CellResult:
    summary: dict  # one tidy row of metrics
    k_by_batch: pd.DataFrame  # decode steps per batch size: steps, mean_k
    serve_result: ServeResult


def eval_workload(scenario: Scenario, pool: PromptPool, rate: float, seed: int, num_requests: int,
                  max_new_tokens: int):
    """The workload of one (rate, seed) cell: identical for every policy."""
    rng, _ = seeding.np_random(int(seed))
    return sample_requests(pool, PoissonArrivals(rate), num_requests, max_new_tokens, rng)


def goodput(requests: pd.DataFrame, duration: float, tpot_s: float, ttft_s: float | None = None) -> float:
    """Output tokens/s of the requests that met the latency SLO (TPOT, and TTFT when given)."""
    if not len(requests) or duration <= 0:
        return float("nan")
    ok = requests["tpot"] <= tpot_s
    if ttft_s is not None:
        ok &= requests["ttft"] <= ttft_s
    return float(requests.loc[ok, "output_tokens"].sum()) / duration


def k_by_batch(steps: list[StepStats]) -> pd.DataFrame:
    """Mean k chosen per batch size over decode steps."""
    df = pd.DataFrame({"batch_size": [s.batch_size for s in steps], "k": [s.k for s in steps]})
    df = df[df["batch_size"] > 0]
    out = df.groupby("batch_size")["k"].agg(steps="size", mean_k="mean").reset_index()
    return out


def evaluate_cell(policy, scenario: Scenario, target: LoadedModel, pool: PromptPool, rate: float, seed: int,
                  num_requests: int, max_new_tokens: int, slo: dict, learn: bool = False) -> CellResult:
    """Serve the (rate, seed) workload to completion with `policy` choosing k before every step."""
    requests = eval_workload(scenario, pool, rate, seed, num_requests, max_new_tokens)
    engine = build_stack(scenario.engine_config(seed), target=target).engine
    policy.reset()
    reward = make_reward(scenario.reward, **scenario.reward_kwargs) if learn else None
    controller = PolicyController(engine, policy, scenario.max_k, learn=learn, reward=reward)
    result = serve(engine, requests, k=controller, progress=False)
    summary = summarize(result)
    decode = [s for s in result.steps if s.batch_size > 0]
    summary.update(
        goodput_tok_s=goodput(result.requests, result.duration, slo["tpot_s"], slo.get("ttft_s")),
        mean_k=float(np.mean([s.k for s in decode])) if decode else float("nan"),
        frac_k0=float(np.mean([s.k == 0 for s in decode])) if decode else float("nan"),
    )
    return CellResult(summary, k_by_batch(result.steps), result)
