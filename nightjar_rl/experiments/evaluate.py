"""Evaluate one policy on one seeded workload with the runtime's `PolicyDriver`, and summarise.

The policy sees exactly the observations the env produces (the same driver builds them), on the
scenario's backend: the live engine or the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from gymnasium.utils import seeding

from nightjar_rl.contracts.rewards import make_reward
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.env.backend import Backend, make_backend
from nightjar_rl.env.scenario import Scenario
from nightjar_rl.env.workload import PromptPool, sample_requests
from nightjar_rl.runtime.driver import PolicyDriver
from nightjar_rl.serving import ServeResult, summarize
from nightjar_rl.serving.arrivals import at_rate
from nightjar_rl.serving.session import ServingSession


@dataclass
class CellResult:
    summary: dict  # one tidy row of metrics
    k_by_batch: pd.DataFrame  # decode steps per batch size: steps, mean_k
    serve_result: ServeResult


def eval_workload(scenario: Scenario, pool: PromptPool, rate: float, seed: int, num_requests: int,
                  max_new_tokens: int):
    """The workload of one (rate, seed) cell: identical for every policy. Arrivals are Poisson at `rate`,
    or the scenario's own process driven at `rate` when it has a shape (gamma burstiness, a
    rate-scaled trace)."""
    rng, _ = seeding.np_random(int(seed))
    return sample_requests(pool, at_rate(scenario.arrival_process(), rate), num_requests, max_new_tokens, rng)


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


def plan_switches(steps: list[StepStats]) -> tuple[int, int]:
    """(step switches, row switches): decode steps whose k (the plan's largest length) differs from the
    previous decode step's, and per request, decode steps whose plan entry differs from that request's
    previous one (summed over requests). A uniform plan switches every row when k changes."""
    step_switches, prev_k, last = 0, None, {}
    row_switches = 0
    for s in steps:
        if s.batch_size <= 0:
            continue
        step_switches += prev_k is not None and s.k != prev_k
        prev_k = s.k
        for rid, k in zip(s.request_ids, s.plan):
            before = last.get(rid)
            row_switches += before is not None and before != k
            last[rid] = k
    return int(step_switches), int(row_switches)


def evaluate_cell(policy, scenario: Scenario, backend: Backend, rate: float, seed: int, num_requests: int,
                  max_new_tokens: int, slo: dict, learn: bool = False, concurrency: int | None = None) -> CellResult:
    """Serve the (rate, seed) workload to completion with `policy` choosing k before every step.
    `concurrency`: closed loop with at most this many requests in flight (None: the scenario's
    `max_concurrency`, open loop when that is null)."""
    requests = eval_workload(scenario, backend.prompt_pool, rate, seed, num_requests, max_new_tokens)
    engine = backend.make_engine(seed)
    reward = make_reward(scenario.reward, **scenario.reward_kwargs) if learn else None
    session = ServingSession(engine, requests, concurrency if concurrency is not None else scenario.max_concurrency)
    driver = PolicyDriver(session, scenario.max_k, policy, reward=reward, learn=learn)
    result = driver.run()
    summary = summarize(result)
    decode = [s for s in result.steps if s.batch_size > 0]
    summary.update(
        goodput_tok_s=goodput(result.requests, result.duration, slo["tpot_s"], slo.get("ttft_s")),
        mean_k=float(np.mean([s.k for s in decode])) if decode else float("nan"),
        frac_k0=float(np.mean([s.k == 0 for s in decode])) if decode else float("nan"),
    )
    hours = result.duration / 3600.0
    step_sw, row_sw = plan_switches(result.steps)
    summary.update(k_switches_per_h=step_sw / hours if hours > 0 else float("nan"),
                   row_switches_per_h=row_sw / hours if hours > 0 else float("nan"))
    return CellResult(summary, k_by_batch(result.steps), result)


def episode_steps(policy, scenario: Scenario, rate: float, seed: int, num_requests: int | None = None,
                  backend=None, concurrency: int | None = None) -> pd.DataFrame:
    """One episode at Poisson `rate` (workload `seed`; closed loop with at most `concurrency` requests
    in flight, default the scenario's), one row per engine step (StepStats.as_row() plus `clock`, the
    serving clock at the end of the step)."""
    backend = backend or make_backend(scenario)
    cell = evaluate_cell(policy, scenario, backend, rate, seed, num_requests or scenario.num_requests,
                         scenario.max_new_tokens, {"tpot_s": 1e9}, concurrency=concurrency)
    frame = pd.DataFrame([s.as_row() for s in cell.serve_result.steps])
    frame["clock"] = frame["wall_time"].cumsum()
    return frame
