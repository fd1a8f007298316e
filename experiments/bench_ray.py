"""Local vs Ray executor on the study sweep: wall time of the same experiment on each, and a check
that the tables are identical. Each phase (train, then evaluate) is timed on its own; with
--repeats N the two executors run in turn N times and the medians are printed. The lead runs it on a
quiet machine (goal: Ray with 2 workers <= 0.6x the local time on 2 cores).

    python3 experiments/bench_ray.py [CONFIG] [--workers 2] [--seeds N] [--rates R,R] [--num-requests N]

CONFIG defaults to experiments/nightjar_study.yaml. --seeds/--rates/--num-requests/--episodes/
--sb3-timesteps shrink the sweep (validation: experiments/study_tiny.yaml). Run folders go to a
temporary directory, or to --out-dir with the table (bench_ray.csv). A seconds-long check (tests):

    python3 experiments/bench_ray.py --quick --out-dir /tmp/bench_ray
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import quickmode  # noqa: E402  (same folder)

from nightjar_rl.env.recorder import write_table  # noqa: E402
from nightjar_rl.experiments import load_experiment  # noqa: E402
from nightjar_rl.experiments.executor import LocalExecutor, RayExecutor  # noqa: E402
from nightjar_rl.experiments.runner import run_experiment, train_experiment  # noqa: E402
from nightjar_rl.experiments.sb3_config import is_sb3_spec  # noqa: E402

QUICK = {"config": str(ROOT / "experiments" / "study_tiny.yaml"), "seeds": 1, "rates": "50",
         "num_requests": 4, "episodes": 1, "sb3_timesteps": 0}


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
    p.add_argument("--repeats", type=int, default=1, help="runs of each executor (medians are reported)")
    p.add_argument("--out-dir", default=None, help="run folders and bench_ray.csv (default: a temp dir)")
    a = quickmode.parse_args(p, QUICK, argv)
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
    out = Path(a.out_dir) if a.out_dir else Path(tempfile.mkdtemp(prefix="bench_ray_"))

    def timed_run(executor, folder: str) -> tuple[pd.DataFrame, dict]:
        """The experiment in two phases (train, then evaluate by resuming the trained run), timed."""
        start = time.perf_counter()
        trained = train_experiment(cfg, out_dir=out / folder, progress=False, executor=executor)
        t_train = time.perf_counter() - start
        result = run_experiment(cfg, out_dir=out / folder, resume=trained.run_dir, progress=False, executor=executor)
        return result.results, {"train_s": t_train, "evaluate_s": time.perf_counter() - start - t_train}

    times: dict[str, list[dict]] = {"local": [], "ray": []}
    for rep in range(a.repeats):  # side by side: local then Ray, each repeat
        local, t = timed_run(LocalExecutor(), f"local{rep}")
        times["local"].append(t)
        start = time.perf_counter()
        executor = RayExecutor(a.ray_address, None if a.ray_address else a.workers)
        t_init = time.perf_counter() - start
        try:
            remote, t = timed_run(executor, f"ray{rep}")
        finally:
            executor.close()
        times["ray"].append({**t, "start_s": t_init})
    t_local, t_ray = ({k: statistics.median(t[k] for t in runs) for k in runs[0]} for runs in times.values())

    same = local.drop(columns="run").equals(remote.drop(columns="run"))
    total_local = sum(t_local.values())
    rows = []
    for name, t in (("local", t_local), (f"ray ({a.ray_address or f'{a.workers} workers'})", t_ray)):
        total = sum(t.values())
        rows.append({"executor": name, "cells": len(local), **{k: round(v, 2) for k, v in t.items()},
                     "total_s": round(total, 2), "ratio": round(total / total_local, 3)})
    for phase in ("train_s", "evaluate_s"):
        rows.append({"executor": f"ray/local, {phase[:-2]} only", "ratio": round(t_ray[phase] / t_local[phase], 3)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, na_rep=""))
    if a.out_dir:
        write_table(table, out / "bench_ray.csv")
    ratio = sum(t_ray.values()) / total_local
    print(f"{a.repeats} run(s) each, medians; tables identical: {same}; "
          f"goal: ray <= 0.6x local -> {'met' if ratio <= 0.6 else 'NOT met'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
