"""Simulator speed: env steps per second on one core, and the quickstart-sized experiment's wall time.

    python experiments/bench_sim_speed.py [--steps 20000] [--repeats 5]
    python experiments/bench_sim_speed.py --quick --out-dir /tmp/bench_sim_speed   # seconds: tiny-sim (tests)
    python experiments/bench_sim_speed.py --scenario gpu-whatif-sharegpt --gc-off  # without collections

Env steps: `nightjar_rl/SpecDecodeSim-v1` (smollm2-ngram-sim, batch <= 16) with random actions (drawn before timing),
resetting when an episode ends; reports the median of `--repeats` runs. Experiment: the wall time of
`nightjar-rl experiment experiments/quickstart-sim.yaml` in-process (training included, plots
included), median of 3. Pin to one core with `taskset -c 0` to measure "one core". Run it alone.
With --out-dir the numbers are also written to <out-dir>/result.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import quickmode  # same folder

import nightjar_rl  # noqa: F401  (registers the env ids)
from nightjar_rl.io import atomic_write_json

HERE = Path(__file__).parent
QUICK = {"steps": 200, "repeats": 1, "scenario": "tiny-sim", "experiment": str(HERE / "study_tiny.yaml"),
         "experiment_repeats": 1}


def env_steps_per_second(steps: int, seed: int = 0, scenario: str | None = None) -> tuple[float, float]:
    """Random-action steps per second of the sim env (its default scenario, or `scenario`) and the
    largest batch seen."""
    env = gym.make("nightjar_rl/SpecDecodeSim-v1", **({"scenario": scenario} if scenario else {})).unwrapped
    actions = np.random.default_rng(seed).integers(0, env.max_k + 1, size=steps).tolist()  # drawn before timing
    obs, _ = env.reset(seed=seed)
    batches, done_steps, episode = [], 0, 0
    t0 = time.perf_counter()
    while done_steps < steps:
        obs, _, terminated, truncated, _ = env.step(actions[done_steps])
        batches.append(obs[0])
        done_steps += 1
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    return done_steps / (time.perf_counter() - t0), float(np.max(batches))


def experiment_seconds(config: str) -> float:
    from nightjar_rl.experiments import load_experiment
    from nightjar_rl.experiments.runner import run_experiment

    cfg = load_experiment(config)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run_experiment(cfg, out_dir=out, progress=False)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scenario", default=None, help="sim scenario of the env (default: smollm2-ngram-sim)")
    ap.add_argument("--experiment", default=str(HERE / "quickstart-sim.yaml"), help="experiment to time")
    ap.add_argument("--experiment-repeats", type=int, default=3, help="0: time the env only")
    ap.add_argument("--out-dir", default=None, help="also write the numbers to OUT_DIR/result.json")
    ap.add_argument("--gc-off", action="store_true",
                    help="time the env steps with the garbage collector disabled (what collections cost)")
    a = quickmode.parse_args(ap, QUICK)
    print(f"cpu affinity: {sorted(os.sched_getaffinity(0))}, load average: {os.getloadavg()}")
    if a.gc_off:
        gc.disable()
    runs = [env_steps_per_second(a.steps, seed=i, scenario=a.scenario) for i in range(a.repeats)]
    gc.enable()
    rates = [r for r, _ in runs]
    print(f"env steps/s: median {statistics.median(rates):,.0f} (min {min(rates):,.0f}, max {max(rates):,.0f}), "
          f"max batch seen {max(b for _, b in runs):.0f}")
    secs = [experiment_seconds(a.experiment) for _ in range(a.experiment_repeats)]
    name = Path(a.experiment).stem
    if secs:  # --experiment-repeats 0 times the env alone
        print(f"{name} experiment: median {statistics.median(secs):.1f} s "
              f"(min {min(secs):.1f}, max {max(secs):.1f})")
    print(f"load average at the end: {os.getloadavg()}")
    if a.out_dir:
        atomic_write_json(Path(a.out_dir) / "result.json", {
            "scenario": a.scenario or "smollm2-ngram-sim", "env_steps_per_s": rates, "gc_off": a.gc_off,
            "max_batch": max(b for _, b in runs), "experiment": name, "experiment_s": secs})


if __name__ == "__main__":
    main()
