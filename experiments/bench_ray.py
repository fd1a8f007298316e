"""Local vs Ray executor on the study sweep: wall time of the same experiment on each, and a check
that the tables are identical. The lead runs it on a quiet machine (goal: Ray with 2 workers
<= 0.6x the local time on 2 cores).

    python3 experiments/bench_ray.py [CONFIG] [--workers 2] [--seeds N] [--rates R,R] [--num-requests N]

CONFIG defaults to experiments/nightjar_study.yaml. --seeds/--rates/--num-requests/--episodes/
--sb3-timesteps shrink the sweep (validation: experiments/study_tiny.yaml). Run folders go to a temporary directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from nightjar_rl.experiments import load_experiment  # noqa: E402
from nightjar_rl.experiments.executor import LocalExecutor, RayExecutor  # noqa: E402
from nightjar_rl.experiments.runner import run_experiment  # noqa: E402
from nightjar_rl.experiments.sb3_config import is_sb3_spec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=str(ROOT / "experiments" / "nightjar_study.yaml"))
    p.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    p.add_argument("--ray-address", default=None, help="use a running Ray cluster instead")
    p.add_argument("--seeds", type=int, default=None, help="keep the first N seeds")
    p.add_argument("--rates", default=None, help="comma-separated rates to keep")
    p.add_argument("--num-requests", type=int, default=None, help="requests per cell")
    p.add_argument("--episodes", type=int, default=None, help="training episodes per learner replicate")
    p.add_argument("--sb3-timesteps", type=int, default=None,
                   help="total_timesteps of the sb3 entries (0 drops them from the sweep)")
    a = p.parse_args(argv)
    cfg = load_experiment(a.config)
    if a.seeds:
        cfg.seeds = cfg.seeds[: a.seeds]
    if a.rates:
        cfg.rates = [float(r) for r in a.rates.split(",")]
    if a.num_requests:
        cfg.num_requests = cfg.train.num_requests = a.num_requests
    if a.episodes is not None:
        cfg.train.episodes = a.episodes
    if a.sb3_timesteps is not None:
        sb3 = [e for e in cfg.policies if is_sb3_spec(e.spec)]
        cfg.policies = [e for e in cfg.policies if e not in sb3 or a.sb3_timesteps > 0]
        for e in sb3:
            e.spec["total_timesteps"] = a.sb3_timesteps
    out = Path(tempfile.mkdtemp(prefix="bench_ray_"))

    start = time.perf_counter()
    local = run_experiment(cfg, out_dir=out / "local", progress=False, executor=LocalExecutor())
    t_local = time.perf_counter() - start

    start = time.perf_counter()
    executor = RayExecutor(a.ray_address, None if a.ray_address else a.workers)
    t_init = time.perf_counter() - start
    try:
        remote = run_experiment(cfg, out_dir=out / "ray", progress=False, executor=executor)
    finally:
        executor.close()
    t_ray = time.perf_counter() - start

    same = local.results.drop(columns="run").equals(remote.results.drop(columns="run"))
    cells = len(local.results)
    print(pd.DataFrame([
        {"executor": "local", "cells": cells, "wall_s": round(t_local, 2), "ratio": 1.0},
        {"executor": f"ray ({a.ray_address or f'{a.workers} workers'})", "cells": cells, "wall_s": round(t_ray, 2),
         "ratio": round(t_ray / t_local, 3)},
        {"executor": "ray, excluding Ray start-up", "cells": cells, "wall_s": round(t_ray - t_init, 2),
         "ratio": round((t_ray - t_init) / t_local, 3)},
    ]).to_string(index=False))
    print(f"tables identical: {same}; goal: ray <= 0.6x local -> {'met' if t_ray <= 0.6 * t_local else 'NOT met'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
