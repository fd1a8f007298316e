"""Simulator speed: env steps per second on one core, and the quickstart-sized experiment's wall time.

    python experiments/bench_sim_speed.py [--steps 20000] [--repeats 5]

Env steps: `nightjar_rl/SpecDecodeSim-v0` (smollm2-ngram-sim, batch <= 16) with random actions,
resetting when an episode ends; reports the median of `--repeats` runs. Experiment: the wall time of
`nightjar-rl experiment experiments/quickstart-sim.yaml` in-process (training included, plots
included), median of 3. Pin to one core with `taskset -c 0` to measure "one core". Run it alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import nightjar_rl  # noqa: F401  (registers the env ids)


def env_steps_per_second(steps: int, seed: int = 0) -> tuple[float, float]:
    env = gym.make("nightjar_rl/SpecDecodeSim-v0").unwrapped
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    batches, done_steps, episode = [], 0, 0
    t0 = time.perf_counter()
    while done_steps < steps:
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(0, env.max_k + 1)))
        batches.append(obs[0])
        done_steps += 1
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    return done_steps / (time.perf_counter() - t0), float(np.max(batches))


def experiment_seconds() -> float:
    from nightjar_rl.experiments import load_experiment
    from nightjar_rl.experiments.runner import run_experiment

    cfg = load_experiment(Path(__file__).parent / "quickstart-sim.yaml")
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run_experiment(cfg, out_dir=out, progress=False)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(f"cpu affinity: {sorted(os.sched_getaffinity(0))}, load average: {os.getloadavg()}")
    runs = [env_steps_per_second(a.steps, seed=i) for i in range(a.repeats)]
    rates = [r for r, _ in runs]
    print(f"env steps/s: median {statistics.median(rates):,.0f} (min {min(rates):,.0f}, max {max(rates):,.0f}), "
          f"max batch seen {max(b for _, b in runs):.0f}")
    secs = [experiment_seconds() for _ in range(3)]
    print(f"quickstart-sim experiment: median {statistics.median(secs):.1f} s (min {min(secs):.1f}, max {max(secs):.1f})")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
