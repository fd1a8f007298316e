"""Does a speed anchor track an engine's speed? The check behind rescaling a twin's profile by it.

A profile's speed anchor (a few fixed forwards, `nightjar_rl.decoding.profiler.measure_speed_anchor`)
is timed when the profile is made and again later; the ratio now / then rescales every time the
profile prices (`nightjar-rl profile --rescale`, `sim_fidelity.py --rescale`). That is only as good as
the anchor's ratio follows the engine's own. This script alternates, for `--rounds` rounds: the anchor
of each forward in `--forwards` (each in a fresh process, as `SpeedDrift` times it) and one fixed
workload served on `--scenario`'s backend at a fixed k (the same requests every round; for
`smollm2-ngram-vllm`, vLLM's engine stepped in-process, started once). Per round and against round 0:
the engine's ratio (its summed step wall time) and each anchor's (`speed_ratio`); the error of
rescaling by an anchor is its ratio minus the engine's. This CPU drifts by 5-30% within an hour, so
a run of a few rounds sees real drift.

    python experiments/anchor_tracking.py --scenario smollm2-ngram-vllm --forwards native native-vllm
    python experiments/anchor_tracking.py --quick --out-dir /tmp/anchor_tracking      # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import time

import pandas as pd
import quickmode  # same folder
from tqdm.auto import tqdm

from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.experiments.drift import anchor_in_fresh_process
from nightjar_rl.experiments.evaluate import evaluate_cell
from nightjar_rl.hardware import speed_ratio
from nightjar_rl.model_names import MODEL_FORWARDS, linears_for
from nightjar_rl.policy import make_policy

QUICK = {"scenario": "tiny", "forwards": ["native-eager"], "rounds": 2, "anchor_rounds": 1,
         "num_requests": 3, "k": 2}


def serve_workload(scenario, backend, k: int, num_requests: int) -> float:
    """Seconds of engine steps (summed wall time) to serve the seed-0 workload, all requests at t = 0."""
    cell = evaluate_cell(make_policy(f"fixed-{k}", scenario.max_k), scenario, backend, math.inf, 0, num_requests,
                         scenario.max_new_tokens, {"tpot_s": 1.0})
    return sum(step.wall_time for step in cell.serve_result.steps)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="smollm2-ngram-vllm", help="the engine tracked (live or vllm backend)")
    parser.add_argument("--forwards", nargs="+", default=["native", "native-vllm"], choices=list(MODEL_FORWARDS),
                        help="anchors to compare, by decoder forward (each on the linears it runs fastest with)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--anchor-rounds", type=int, default=11, help="forwards per shape in one anchor")
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--k", type=int, default=2, help="fixed speculation length of the workload")
    parser.add_argument("--out-dir", default="runs/anchor_tracking")
    args = quickmode.parse_args(parser, QUICK, argv)
    if args.rounds < 2 or args.anchor_rounds < 1:
        raise SystemExit("--rounds must be >= 2 and --anchor-rounds >= 1")
    scenario = load_scenario(args.scenario)
    backend = make_backend(scenario)
    base = scenario.engine_config()
    configs = {f: dataclasses.replace(base, model_forward=f, linears=linears_for(f))
               for f in args.forwards}
    load = os.getloadavg()
    serve_workload(scenario, backend, args.k, args.num_requests)  # warm-up (vLLM's first steps are slow)
    rows = []
    for rnd in tqdm(range(args.rounds), desc="rounds"):
        row = {"round": rnd, "time": time.strftime("%H:%M:%S"), "load_1m": os.getloadavg()[0]}
        for forward, cfg in configs.items():
            row[f"anchor_{forward}"] = anchor_in_fresh_process(cfg, args.anchor_rounds)
        row["engine_s"] = serve_workload(scenario, backend, args.k, args.num_requests)
        rows.append(row)
    table = []
    for row in rows:
        out = {k: v for k, v in row.items() if not k.startswith("anchor_")}
        out["engine_ratio"] = row["engine_s"] / rows[0]["engine_s"]
        for forward in configs:
            out[f"{forward}_ratio"] = speed_ratio(rows[0][f"anchor_{forward}"], row[f"anchor_{forward}"])[0]
            out[f"{forward}_error"] = out[f"{forward}_ratio"] - out["engine_ratio"]
            out[f"{forward}_ms"] = row[f"anchor_{forward}"]["ms"]
        table.append(out)
    df = pd.DataFrame(table)
    later = df.iloc[1:]
    summary = {"scenario": args.scenario, "k": args.k, "num_requests": args.num_requests, "rounds": args.rounds,
               "anchor_rounds": args.anchor_rounds, "load_at_start": load,
               "engine_ratio_range": [float(later["engine_ratio"].min()), float(later["engine_ratio"].max())],
               "abs_error_median": {f: float(statistics.median(later[f"{f}_error"].abs())) for f in configs},
               "abs_error_max": {f: float(later[f"{f}_error"].abs().max()) for f in configs}}
    cols = ["round", "time", "load_1m", "engine_s", "engine_ratio",
            *(c for f in configs for c in (f"{f}_ratio", f"{f}_error"))]
    text = (f"# Anchor tracking: {args.scenario} (k = {args.k}, {args.num_requests} requests at once) against the "
            f"anchors of {', '.join(configs)}; load average at the start {load[0]:.2f}\n\n```\n"
            f"{df[cols].to_string(index=False, float_format=lambda x: f'{x:.3f}')}\n```\n\n"
            f"|anchor ratio - engine ratio| over rounds 1..: median "
            + ", ".join(f"{f} {v:.3f}" for f, v in summary["abs_error_median"].items()) + "; max "
            + ", ".join(f"{f} {v:.3f}" for f, v in summary["abs_error_max"].items()) + "\n")
    quickmode.write_report(args.out_dir, {"rounds.csv": df}, summary, text)
    return df


if __name__ == "__main__":
    main()
