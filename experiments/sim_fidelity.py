"""Simulator fidelity: the sim twin against the live engine on the same seeded workloads.

For every (request rate, fixed k, seed) cell, serve the same workload on the live scenario and on its
sim twin and compare: per-request accepted and drafted tokens and decode steps (must be identical:
acceptance is replayed exactly, and with a fixed k a request's steps do not depend on batching),
throughput, TPOT p50 and TTFT p50 (relative error; goals 5%, 5%, 10%). Writes a tidy table
(one row per cell) to runs/sim_fidelity__<time>/fidelity.csv and prints it.

    python experiments/sim_fidelity.py                       # smollm2-ngram vs smollm2-ngram-sim
    python experiments/sim_fidelity.py --rates 0.5,2,8 --ks 0,2,4 --seeds 0,1 --num-requests 16
    python experiments/sim_fidelity.py --quick --out-dir /tmp/sim_fidelity   # seconds: tiny vs tiny-sim

Run it alone on the machine: live timings are the ground truth here.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import quickmode  # same folder
from tqdm.auto import tqdm

from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.recorder import write_table
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.experiments.evaluate import evaluate_cell
from nightjar_rl.policy import make_policy

METRICS = {"throughput_tok_s": 0.05, "tpot_p50_s": 0.05, "ttft_p50_s": 0.10}
PER_REQUEST = ["drafted", "accepted", "decode_steps", "output_tokens"]
QUICK = {"live": "tiny", "sim": "tiny-sim", "rates": "50", "ks": "0,2", "seeds": "0", "num_requests": 4}


def compare_cell(live_scn, sim_scn, live, sim, rate: float, k: int, seed: int, num_requests: int) -> dict:
    policy = make_policy(f"fixed-{k}", live_scn.max_k)
    args = (rate, seed, num_requests, live_scn.max_new_tokens, {"tpot_s": 1.0})
    a = evaluate_cell(policy, live_scn, live, *args)
    b = evaluate_cell(policy, sim_scn, sim, *args)
    ra = a.serve_result.requests.set_index("request_id").sort_index()[PER_REQUEST]
    rb = b.serve_result.requests.set_index("request_id").sort_index()[PER_REQUEST]
    row = {"rate": rate, "k": k, "seed": seed, "requests": len(ra),
           "per_request_identical": bool(ra.equals(rb)),
           "outputs_identical": a.serve_result.outputs == b.serve_result.outputs}
    for metric, goal in METRICS.items():
        lv, sv = a.summary[metric], b.summary[metric]
        row.update({f"{metric}_live": lv, f"{metric}_sim": sv, f"{metric}_err": (sv - lv) / lv,
                    f"{metric}_ok": abs(sv - lv) / lv <= goal})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--live", default="smollm2-ngram")
    ap.add_argument("--sim", default="smollm2-ngram-sim")
    ap.add_argument("--rates", default="0.5,2,8")
    ap.add_argument("--ks", default="0,2,4")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--num-requests", type=int, default=16)
    ap.add_argument("--out-dir", default="runs")
    a = quickmode.parse_args(ap, QUICK)
    live_scn, sim_scn = load_scenario(a.live), load_scenario(a.sim)
    live, sim = make_backend(live_scn), make_backend(sim_scn)
    cells = [(float(r), int(k), int(s)) for s in a.seeds.split(",") for r in a.rates.split(",") for k in a.ks.split(",")]
    rows = []
    for rate, k, seed in tqdm(cells, desc="fidelity", unit="cell"):
        rows.append(compare_cell(live_scn, sim_scn, live, sim, rate, k, seed, a.num_requests))
    df = pd.DataFrame(rows)
    run = Path(a.out_dir) / f"sim_fidelity__{int(time.time())}"
    write_table(df, run / "fidelity.csv")
    shown = ["rate", "k", "seed", "per_request_identical", "outputs_identical"] + [
        f"{m}_{s}" for m in METRICS for s in ("live", "sim", "err")]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nload average at the end: {os.getloadavg()}")
    for metric, goal in METRICS.items():
        err = df[f"{metric}_err"].abs()
        print(f"{metric}: |error| median {err.median():.1%}, max {err.max():.1%}; within {goal:.0%} in "
              f"{int(df[f'{metric}_ok'].sum())}/{len(df)} cells")
    print(f"per-request accepted/drafted/steps identical in {int(df['per_request_identical'].sum())}/{len(df)} cells")
    print(f"wrote {run / 'fidelity.csv'}")


if __name__ == "__main__":
    main()
