"""Train a learner on the env (live or sim): episodes in which the learner, attached to the env's
`PolicyDriver`, decides each step and learns from the env's reward."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.scenario import Scenario
from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
from nightjar_rl.policy import make_policy


def run_episode(env: SpecDecodeEnv, policy, seed: int, options: dict | None = None, learn: bool = True) -> dict:
    """One episode; the learner updates after every step when `learn`. Returns an episode summary."""
    env.reset(seed=seed, options=options)
    driver = env.driver
    driver.attach(policy, learn=learn)
    total_reward, tokens, ks, steps = 0.0, 0, [], 0
    busy = 0.0
    while True:
        action = driver.decide()  # the driver's act (inside env.step) observes the step and learns from it
        _, reward, terminated, truncated, info = env.step(action)
        stats = info["stats"]
        total_reward += reward
        tokens += stats.tokens_out
        busy += stats.wall_time
        steps += 1
        if stats.batch_size > 0:
            ks.append(SpecPlan.coerce(action).max_length)  # the k chosen (a plan's largest length)
        if terminated or truncated:
            break
    return {
        "seed": seed, "steps": steps, "mean_reward": total_reward / steps, "tokens": tokens, "clock_s": info["clock"],
        "busy_s": busy, "throughput_tok_s": tokens / info["clock"] if info["clock"] > 0 else float("nan"),
        "mean_k": float(np.mean(ks)) if ks else float("nan"), "terminated": terminated, "truncated": truncated,
    }


def train_policy(policy, env: SpecDecodeEnv, episodes: int, rates: list[float] | None, seed: int,
                 num_requests: int | None = None, progress: bool = True, desc: str = "train",
                 concurrency: list[int] | None = None) -> pd.DataFrame:
    """Train `policy` (a learner) for `episodes` episodes, cycling the Poisson `rates` (None: the
    scenario's own arrivals) and the closed-loop `concurrency` (max requests in flight; None: the
    scenario's). Episode i uses workload seed `seed + i`. One row per episode (with a `concurrency`
    column when `concurrency` is given)."""
    if not getattr(policy, "learning", False):
        raise ValueError(f"policy {policy!r} is not a learner (its 'learning' attribute is not True)")
    rows = []
    for i in tqdm(range(episodes), desc=desc, unit="ep", disable=not progress, leave=False):
        options: dict = {}
        if rates:
            options["rate"] = rates[i % len(rates)]
        if concurrency:
            options["max_concurrency"] = concurrency[i % len(concurrency)]
        if num_requests is not None:
            options["num_requests"] = num_requests
        row = run_episode(env, policy, seed + i, options)
        row.update(episode=i, rate=options.get("rate", float("nan")))
        if concurrency:
            row["concurrency"] = options["max_concurrency"]
        rows.append(row)
    return pd.DataFrame(rows)


def train_learner(spec, scenario: Scenario, episodes: int, rates: list[float], seed: int = 1000,
                  num_requests: int | None = None, backend=None, concurrency: list[int] | None = None):
    """A learner built from `spec` and trained for `episodes` episodes cycling Poisson `rates` (and the
    closed-loop `concurrency`, if given: the experiment pipeline's training loop), ready for
    `episode_steps` and `plot_bandit_values`."""
    policy = make_policy(spec, scenario.max_k)
    env = SpecDecodeEnv(scenario, backend=backend or make_backend(scenario))
    train_policy(policy, env, episodes, rates, seed, num_requests, progress=False, concurrency=concurrency)
    policy.learning = False
    return policy
