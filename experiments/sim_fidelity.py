"""Simulator fidelity: the sim twin against the live engine on the same seeded workloads.

For every (request rate, fixed k, seed) cell, serve the same workload on the live scenario and on its
sim twin and compare: per-request accepted and drafted tokens and decode steps (must be identical:
acceptance is replayed exactly, and with a fixed k a request's steps do not depend on batching),
throughput, TPOT p50 and TTFT p50 (relative error; goals 5%, 5%, 10%). Writes a tidy table
(one row per cell) to runs/sim_fidelity__<time>/fidelity.csv and prints it.

    python experiments/sim_fidelity.py                       # smollm2-ngram vs smollm2-ngram-sim
    python experiments/sim_fidelity.py --rates 0.5,2,8 --ks 0,2,4 --seeds 0,1 --num-requests 16
    python experiments/sim_fidelity.py --quick --out-dir /tmp/sim_fidelity   # seconds: tiny vs tiny-sim

With `--calibrate-seeds S,...` the twin is first calibrated (issue: a profile from live steps): the
live engine serves those seeds' workloads at every rate and k, the clock model is fitted to their
steps (`nightjar_rl.sim.calibrate`, the same fit as `nightjar-rl profile --from-steps`), and every
cell is then compared against both twins, the scenario's profile and the calibrated one (columns
`*_cal`); the calibration seeds must differ from `--seeds`, so the comparison is on held-out
workloads. The calibrated profile is written to the run folder.

    python experiments/sim_fidelity.py --calibrate-seeds 10,11 --rates 0.5,2,8,1000

Run it alone on the machine: live timings are the ground truth here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import pandas as pd
import quickmode  # same folder
from tqdm.auto import tqdm

from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.recorder import write_table
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.experiments.evaluate import evaluate_cell
from nightjar_rl.io import atomic_write_json
from nightjar_rl.policy import make_policy
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.sim.calibrate import calibrate, predicted_ms, steps_frame

METRICS = {"throughput_tok_s": 0.05, "tpot_p50_s": 0.05, "ttft_p50_s": 0.10}
PER_REQUEST = ["drafted", "accepted", "decode_steps", "output_tokens"]
QUICK = {"live": "tiny", "sim": "tiny-sim", "rates": "50", "ks": "0,2", "seeds": "0", "num_requests": 4,
         "calibrate_seeds": "1,2"}


def serve_cell(scenario, backend, rate: float, k: int, seed: int, num_requests: int):
    """One fixed-k cell served to completion (`evaluate_cell`)."""
    policy = make_policy(f"fixed-{k}", scenario.max_k)
    return evaluate_cell(policy, scenario, backend, rate, seed, num_requests, scenario.max_new_tokens, {"tpot_s": 1.0})


def compare_cell(live_scn, sims: dict, live, rate: float, k: int, seed: int, num_requests: int) -> dict:
    """Live against each twin in `sims` ({suffix: (scenario, backend)}; suffix "" is the scenario's)."""
    a = serve_cell(live_scn, live, rate, k, seed, num_requests)
    ra = a.serve_result.requests.set_index("request_id").sort_index()[PER_REQUEST]
    row = {"rate": rate, "k": k, "seed": seed, "requests": len(ra)}
    for suffix, (sim_scn, sim) in sims.items():
        b = serve_cell(sim_scn, sim, rate, k, seed, num_requests)
        rb = b.serve_result.requests.set_index("request_id").sort_index()[PER_REQUEST]
        if not suffix:
            row.update(per_request_identical=bool(ra.equals(rb)), outputs_identical=a.serve_result.outputs == b.serve_result.outputs)
        for metric, goal in METRICS.items():
            lv, sv = a.summary[metric], b.summary[metric]
            row.update({f"{metric}_live": lv, f"{metric}_sim{suffix}": sv, f"{metric}_err{suffix}": (sv - lv) / lv,
                        f"{metric}_ok{suffix}": abs(sv - lv) / lv <= goal})
    return row


def calibrated_twin(live_scn, sim_scn, live, cells: list[tuple[float, int, int]], num_requests: int, run: Path):
    """Serve `cells` live, fit the clock model to their steps, and return (twin scenario, backend).

    Drift: each calibration seed's steps (served one seed after the other) are also fitted alone, and
    every fit prices the same pooled steps; the spread of those totals is how much the twin moves
    from one calibration run to the next (`calibration-drift.csv`)."""
    frames = []
    for rate, k, seed in tqdm(cells, desc="calibration runs", unit="cell"):
        frame = steps_frame(serve_cell(live_scn, live, rate, k, seed, num_requests).serve_result.steps)
        frames.append(frame.assign(seed=seed, rate=rate, k=k))
    steps = pd.concat(frames, ignore_index=True)
    write_table(steps, run / "calibration-steps.csv")
    meta = dict(device=f"{platform.machine()} (calibrated)", model=live_scn.engine.model, dtype=live_scn.engine.dtype)
    result = calibrate(steps, **meta)
    print(result.summary())
    drift = [{"fit": "all seeds", "priced_s": predicted_ms(steps, HardwareProfile.from_dict(result.profile))["wall"].sum() / 1e3}]
    for seed, part in steps.groupby("seed"):
        profile = HardwareProfile.from_dict(calibrate(part, **meta).profile)
        drift.append({"fit": f"seed {seed}", "priced_s": predicted_ms(steps, profile)["wall"].sum() / 1e3})
    drift_df = pd.DataFrame(drift).assign(measured_s=steps["wall_time"].sum())
    drift_df["vs_all_seeds"] = drift_df["priced_s"] / drift_df["priced_s"].iloc[0] - 1
    write_table(drift_df, run / "calibration-drift.csv")
    print("calibration drift (the same steps priced by each run's fit):\n" + drift_df.to_string(index=False))
    path = run / "calibrated-profile.json"
    atomic_write_json(path, result.profile)
    scenario = dataclasses.replace(sim_scn, profile=str(path.resolve()), name=f"{sim_scn.name}-calibrated")
    return scenario, make_backend(scenario)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--live", default="smollm2-ngram")
    ap.add_argument("--sim", default="smollm2-ngram-sim")
    ap.add_argument("--rates", default="0.5,2,8")
    ap.add_argument("--ks", default="0,2,4")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--num-requests", type=int, default=16)
    ap.add_argument("--calibrate-seeds", default="", help="calibrate a twin on these seeds' live steps first")
    ap.add_argument("--out-dir", default="runs")
    a = quickmode.parse_args(ap, QUICK)
    live_scn, sim_scn = load_scenario(a.live), load_scenario(a.sim)
    live, sim = make_backend(live_scn), make_backend(sim_scn)
    rates, ks = [float(r) for r in a.rates.split(",")], [int(k) for k in a.ks.split(",")]
    cells = [(r, k, int(s)) for s in a.seeds.split(",") for r in rates for k in ks]
    run = Path(a.out_dir) / f"sim_fidelity__{int(time.time())}"
    print(f"load average at the start: {os.getloadavg()}")
    sims = {"": (sim_scn, sim)}
    if a.calibrate_seeds:
        fit_seeds = [int(s) for s in a.calibrate_seeds.split(",")]
        if set(fit_seeds) & {c[2] for c in cells}:
            raise SystemExit("--calibrate-seeds must differ from --seeds (the comparison is on held-out workloads)")
        sims["_cal"] = calibrated_twin(live_scn, sim_scn, live, [(r, k, s) for s in fit_seeds for r in rates for k in ks],
                                       a.num_requests, run)
    rows = []
    for rate, k, seed in tqdm(cells, desc="fidelity", unit="cell"):
        rows.append(compare_cell(live_scn, sims, live, rate, k, seed, a.num_requests))
    df = pd.DataFrame(rows)
    write_table(df, run / "fidelity.csv")
    shown = ["rate", "k", "seed", "per_request_identical", "outputs_identical"] + [
        f"{m}_{s}{suffix}" for m in METRICS for suffix in sims for s in (("live", "sim", "err") if not suffix else ("sim", "err"))]
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(df[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nload average at the end: {os.getloadavg()}")
    for suffix in sims:
        for metric, goal in METRICS.items():
            err = df[f"{metric}_err{suffix}"].abs()
            print(f"{metric} ({'calibrated twin' if suffix else 'scenario twin'}): |error| median {err.median():.1%}, "
                  f"max {err.max():.1%}; within {goal:.0%} in {int(df[f'{metric}_ok{suffix}'].sum())}/{len(df)} cells")
    print(f"per-request accepted/drafted/steps identical in {int(df['per_request_identical'].sum())}/{len(df)} cells")
    print(f"wrote {run / 'fidelity.csv'}")


if __name__ == "__main__":
    main()
