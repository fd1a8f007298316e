"""Simulator fidelity: the sim twin against the live engine on the same seeded workloads.

For every (request rate, policy, seed) cell, serve the same workload on the live scenario and on its
sim twin and compare: per-request accepted and drafted tokens and decode steps (must be identical
at a fixed k: acceptance is replayed exactly, and with a fixed k a request's steps do not depend on
batching; a policy's k may follow the batch, so its cells only report it), throughput, TPOT p50
and TTFT p50 (relative error; goals 5%, 5%, 10%). The policies are the fixed k of `--ks` and those
of `--policies`; per (rate, seed) the policies are ranked by throughput live and in the sim
(`ranking.csv`, goal: the same order). Writes a tidy table (one row per cell) to
runs/sim_fidelity__<time>/fidelity.csv and prints it.

    python experiments/sim_fidelity.py                       # smollm2-ngram vs smollm2-ngram-sim
    python experiments/sim_fidelity.py --rates 0.5,2,8 --ks 0,2,4 --seeds 0,1 --num-requests 16
    python experiments/sim_fidelity.py --quick --out-dir /tmp/sim_fidelity   # seconds: tiny vs tiny-sim

Live cells start after unmeasured warm-up cells, one per rate and k (`--warmup 0` skips them): an
engine's first forwards of a new shape are slow (vLLM's very first step took ~1.5 s here against ~40 ms
later), and a warm-up at the largest k alone left vLLM's first calibration seed's k = 2 steps 7-25%
slower than the same steps of the next seed (fits of the two seeds 7.4% apart; 0.8% with this warm-up).

`--policies table-mlc_llm,trained:nightjar`: besides the fixed k, a policy spec or artifact each
(as `nightjar-rl generate --policy`), evaluated frozen; `trained:SPEC` is a learner trained first in
the twin (the calibrated one when there is one) for `--train-episodes` episodes cycling `--rates`
(workload seeds 1000+, apart from the compared ones): the sim-trained policy whose live throughput is
compared with what its twin predicted.

With `--calibrate-seeds S,...` the twin is first calibrated (issue: a profile from live steps): the
live engine serves those seeds' workloads at every rate and k, the clock model is fitted to their
steps (`nightjar_rl.sim.calibrate`, the same fit as `nightjar-rl profile --from-steps`), and every
cell is then compared against both twins, the scenario's profile and the calibrated one (columns
`*_cal`); the calibration seeds must differ from `--seeds`, so the comparison is on held-out
workloads. The calibrated profile is written to the run folder, with a speed anchor timed before and after
the calibration cells (`nightjar_rl.experiments.drift.timed_around`; for vLLM, our loop on vLLM's own
CPU kernels), so that `nightjar-rl profile --rescale` and `--rescale` price it on another day.

    python experiments/sim_fidelity.py --calibrate-seeds 10,11 --rates 0.5,2,8,1000

**The vLLM twin** (issue 19 part 5): vLLM's engine stepped in-process (`smollm2-ngram-vllm`) against
`smollm2-ngram-vllm-sim` (vLLM's outputs and n-gram proposer in `traces/smollm2-ngram-vllm-ngram.npz`,
one pass per step priced by `verify_layout: mixed`, profile fitted to vLLM's wall times). One vLLM
engine serves every live cell (start-up ~30-60 s, eager). The shipped profile came from this command,
run alone (48 live cells of 48 requests x 48 tokens, so that the batch stays full at 4 and 1000 req/s:
9 warm-up, 9 for calibration, 30 compared; 20 minutes on the 2-core CPU at its usual speed, 41 on a day
it ran about 2x slower). The calibration stores a speed anchor on vLLM's kernels, so `--rescale` can price
later days:

    OMP_NUM_THREADS=2 python experiments/sim_fidelity.py --live smollm2-ngram-vllm --sim smollm2-ngram-vllm-sim \\
        --rates 1,4,1000 --ks 0,2,4 --seeds 0,1 --calibrate-seeds 10 --num-requests 48 \\
        --policies table-mlc_llm,trained:nightjar --train-episodes 30 --out-dir runs/vllm_twin

then ship the calibrated profile: `cp runs/vllm_twin/sim_fidelity__*/calibrated-profile.json
envs/profiles/smollm2-135m-vllm-cpu-float32.json`. Run it alone on the machine: live timings are the
ground truth here.

`--rescale` takes this machine's drift out of the comparison: the scenario twin's profile holds a speed
anchor (a few fixed forwards timed when it was made, `nightjar-rl profile --anchor`); timed again before
and after the live cells, its ratio now / then scales the twin's clock (`profile_scale`), and every cell
is priced by that twin too (columns `*_now`). The difference between the two twins is the drift; what
is left in `*_err_now` is the clock model's own error. A third twin scales only the profile's forwards
and keeps its host work (`HardwareProfile.scaled_forwards`, columns `*_now_host`): an anchor times bare
forwards, and on slow days the live engine's steps slowed less than they did. It scales a b-row forward
by the anchor's ratio at b rows (`profile_scale_by_rows`): one-row forwards slowed less than the others.

`--rescore RUN_DIR` prices an earlier run's live cells again without serving anything live: the live
columns are read back from RUN_DIR/fidelity.csv, the twins are served with today's code and profile,
RUN_DIR/calibration-steps.csv is fitted again and the sim-trained policies are the run's own saved
learners (seconds instead of a 20-minute live run: how a clock model change is checked against live
numbers already measured; the other options are then read from RUN_DIR/args.json):

    python experiments/sim_fidelity.py --live smollm2-ngram-vllm --sim smollm2-ngram-vllm-sim \\
        --rescore runs/vllm_twin/sim_fidelity__<time> --out-dir runs/vllm_twin_rescored
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import quickmode  # same folder
from tqdm.auto import tqdm

from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.recorder import write_table
from nightjar_rl.env.scenario import ScenarioError, load_scenario
from nightjar_rl.experiments.drift import SpeedDrift, ratio_by_rows, timed_around
from nightjar_rl.experiments.evaluate import evaluate_cell
from nightjar_rl.experiments.train import train_learner
from nightjar_rl.io import atomic_write_json
from nightjar_rl.policy import make_policy
from nightjar_rl.policy.artifact import load_policy, save_policy
from nightjar_rl.hardware import SPEED_ANCHOR, HardwareProfile
from nightjar_rl.sim.calibrate import CalibrationError, calibrate, predicted_ms, steps_frame

METRICS = {"throughput_tok_s": 0.05, "tpot_p50_s": 0.05, "ttft_p50_s": 0.10}
PER_REQUEST = ["drafted", "accepted", "decode_steps", "output_tokens"]
TRAINED, SIM_TRAINED = "trained:", "sim-trained-"  # a --policies spec, and its cells' label
TWINS = {"": "scenario twin", "_cal": "calibrated twin", "_now": "scenario twin at the live cells' speed",
         "_now_host": "scenario twin with its forwards at the live cells' speed by batch size, host work kept"}
WARMUP_SEED = 999  # the warm-up cells' workload (measured cells and calibration use other seeds)
QUICK = {"live": "tiny", "sim": "tiny-sim", "rates": "50", "ks": "0,2", "seeds": "0", "num_requests": 4,
         "calibrate_seeds": "1,2", "policies": "table-mlc_llm,trained:nightjar", "train_episodes": 2, "warmup": 0,
         "rescale": True, "anchor_rounds": 3}


def serve_cell(scenario, backend, rate: float, policy, seed: int, num_requests: int):
    """One cell served to completion (`evaluate_cell`), `policy` frozen."""
    return evaluate_cell(policy, scenario, backend, rate, seed, num_requests, scenario.max_new_tokens, {"tpot_s": 1.0})


def fixed(k: int, scenario):
    return make_policy(f"fixed-{k}", scenario.max_k)


def compare_cell(live_scn, sims: dict, live, rate: float, label: str, policy_of, seed: int, num_requests: int) -> dict:
    """Live against each twin in `sims` ({suffix: (scenario, backend)}; suffix "" is the scenario's),
    a fresh policy from `policy_of(scenario)` for each run."""
    a = serve_cell(live_scn, live, rate, policy_of(live_scn), seed, num_requests)
    ra = a.serve_result.requests.set_index("request_id").sort_index()[PER_REQUEST]
    k = int(label.removeprefix("fixed-")) if label.startswith("fixed-") else None
    row = {"rate": rate, "policy": label, "k": k, "seed": seed, "requests": len(ra), "mean_k_live": a.summary["mean_k"],
           **{f"{metric}_live": a.summary[metric] for metric in METRICS}}
    return row | twin_columns(sims, row, policy_of, num_requests, live_cell=(ra, a.serve_result.outputs))


def twin_columns(sims: dict, row: dict, policy_of, num_requests: int, live_cell=None) -> dict:
    """Each twin's run of the cell in `row` (rate, seed and the live metrics) and its errors; with
    `live_cell` (the live per-request table and outputs) also whether they are identical."""
    out = {}
    for suffix, (sim_scn, sim) in sims.items():
        b = serve_cell(sim_scn, sim, row["rate"], policy_of(sim_scn), int(row["seed"]), num_requests)
        if not suffix and live_cell is not None:
            rb = b.serve_result.requests.set_index("request_id").sort_index()[PER_REQUEST]
            out.update(per_request_identical=bool(live_cell[0].equals(rb)), outputs_identical=live_cell[1] == b.serve_result.outputs)
        out[f"mean_k_sim{suffix}"] = b.summary["mean_k"]
        for metric, goal in METRICS.items():
            lv, sv = row[f"{metric}_live"], b.summary[metric]
            out.update({f"{metric}_sim{suffix}": sv, f"{metric}_err{suffix}": (sv - lv) / lv,
                        f"{metric}_ok{suffix}": abs(sv - lv) / lv <= goal})
    return out


def calibrated_twin(live_scn, sim_scn, live, cells: list[tuple[float, int, int]], num_requests: int, run: Path,
                    anchor_rounds: int = 21):
    """Serve `cells` live, fit the clock model to their steps (`fitted_twin`) and return (twin
    scenario, backend)."""
    def serve_all() -> pd.DataFrame:
        frames = []
        for rate, k, seed in tqdm(cells, desc="calibration runs", unit="cell"):
            frame = steps_frame(serve_cell(live_scn, live, rate, fixed(k, live_scn), seed, num_requests).serve_result.steps)
            frames.append(frame.assign(seed=seed, rate=rate, k=k))
        steps = pd.concat(frames, ignore_index=True)
        write_table(steps, run / "calibration-steps.csv")  # kept if the anchor after them fails
        return steps

    steps, anchor = timed_around(live_scn, serve_all, anchor_rounds)
    atomic_write_json(run / "calibration-anchor.json", anchor)
    return fitted_twin(steps, live_scn, sim_scn, run, anchor)


def fitted_twin(steps: pd.DataFrame, live_scn, sim_scn, run: Path, anchor: dict | None = None):
    """The twin whose clock is fitted to `steps` (live calibration steps, with a `seed` column), with
    `anchor` (the speed anchor timed around them) as its profile's `speed_anchor`.

    Drift: each calibration seed's steps (served one seed after the other) are also fitted alone, and
    every fit prices the same pooled steps; the spread of those totals is how much the twin moves
    from one calibration run to the next (`calibration-drift.csv`)."""
    meta = dict(device=f"{platform.machine()} (calibrated)", model=live_scn.engine.model, dtype=live_scn.engine.dtype,
                source=f"{live_scn.name} ({live_scn.backend}), experiments/sim_fidelity.py --calibrate-seeds")
    result = calibrate(steps, **meta)
    print(result.summary())
    drift = [{"fit": "all seeds", "priced_s": predicted_ms(steps, HardwareProfile.from_dict(result.profile))["wall"].sum() / 1e3}]
    for seed, part in steps.groupby("seed"):
        try:
            profile = HardwareProfile.from_dict(calibrate(part, **meta).profile)
        except CalibrationError as exc:  # one seed's steps may be too few to fit alone (a short run); the
            # pooled fit above already succeeded, so this only thins the drift table
            print(f"calibration drift: seed {seed} not fitted alone: {exc}")
            drift.append({"fit": f"seed {seed}", "priced_s": float("nan")})
            continue
        drift.append({"fit": f"seed {seed}", "priced_s": predicted_ms(steps, profile)["wall"].sum() / 1e3})
    drift_df = pd.DataFrame(drift).assign(measured_s=steps["wall_time"].sum())
    drift_df["vs_all_seeds"] = drift_df["priced_s"] / drift_df["priced_s"].iloc[0] - 1
    write_table(drift_df, run / "calibration-drift.csv")
    print("calibration drift (the same steps priced by each run's fit):\n" + drift_df.to_string(index=False))
    path = run / "calibrated-profile.json"
    atomic_write_json(path, result.profile | ({SPEED_ANCHOR: anchor} if anchor else {}))
    scenario = dataclasses.replace(sim_scn, profile=str(path.resolve()), name=f"{sim_scn.name}-calibrated")
    return scenario, make_backend(scenario)


def policy_makers(specs: list[str], twin, rates: list[float], episodes: int, num_requests: int, run: Path,
                  stored: Path | None = None) -> dict:
    """{label: scenario -> fresh frozen policy} for `--policies`; `trained:SPEC` is trained once in
    `twin` ((scenario, backend)) first, saved to the run folder (`trained-SPEC.json`) and copied for
    each run; with `stored` (a run folder being rescored) its saved learner is loaded instead."""
    import copy

    makers = {}
    for spec in specs:
        if spec.startswith(TRAINED):
            name = spec.removeprefix(TRAINED)
            saved = stored / f"trained-{name}.json" if stored is not None else None
            if saved is not None and saved.is_file():
                learner = load_policy(saved)
            else:
                if saved is not None:
                    print(f"warning: {saved} not found: {spec} is trained again in the twin, so its cells compare "
                          f"another learner than the one served live")
                scenario, backend = twin
                learner = train_learner(name, scenario, episodes, rates, num_requests=num_requests, backend=backend)
            save_policy(learner, run / f"trained-{name}.json")
            makers[SIM_TRAINED + name] = lambda scn, p=learner: copy.deepcopy(p)
        else:
            makers[spec] = lambda scn, s=spec: make_policy(s, scn.max_k, engine_max_k=True)
    return makers


def rankings(df: pd.DataFrame, suffixes) -> pd.DataFrame:
    """Per (rate, seed) and twin: the policies ordered by throughput live and in the sim."""
    rows = []
    for (rate, seed), cell in df.groupby(["rate", "seed"], sort=True):
        live = list(cell.sort_values("throughput_tok_s_live", ascending=False)["policy"])
        row = {"rate": rate, "seed": seed, "live": " > ".join(live)}
        for suffix in suffixes:
            sim = list(cell.sort_values(f"throughput_tok_s_sim{suffix}", ascending=False)["policy"])
            row.update({f"sim{suffix}": " > ".join(sim), f"same{suffix}": sim == live})
        rows.append(row)
    return pd.DataFrame(rows)


def served(a, live_scn, sim_scn, sim, run: Path) -> tuple[pd.DataFrame, dict]:
    """Every cell served live and in the twin(s): (the fidelity table, the twins by column suffix)."""
    # checked before anything is served: a twin without a speed anchor, calibration seeds among the held-out ones
    drift = SpeedDrift(live_scn, sim_scn, a.anchor_rounds) if a.rescale else None
    rates, ks = [float(r) for r in a.rates.split(",")], [int(k) for k in a.ks.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    fit_seeds = [int(s) for s in a.calibrate_seeds.split(",")] if a.calibrate_seeds else []
    if set(fit_seeds) & set(seeds):
        raise SystemExit("error: --calibrate-seeds must differ from --seeds (the comparison is on held-out workloads)")
    live = make_backend(live_scn)
    atomic_write_json(run / "args.json", vars(a))  # what --rescore reads back
    sims = {"": (sim_scn, sim)}
    warmup = [(rate, k) for rate in rates for k in ks] if a.warmup else []
    for rate, k in tqdm(warmup, desc="warm-up (not measured)", unit="cell"):
        serve_cell(live_scn, live, rate, fixed(k, live_scn), WARMUP_SEED, a.num_requests)
    if drift is not None:
        drift.measure("before")
    if fit_seeds:
        sims["_cal"] = calibrated_twin(live_scn, sim_scn, live, [(r, k, s) for s in fit_seeds for r in rates for k in ks],
                                       a.num_requests, run, a.anchor_rounds)
    makers = {f"fixed-{k}": lambda scn, k=k: fixed(k, scn) for k in ks}
    specs = [s.strip() for s in a.policies.split(",") if s.strip()]
    makers.update(policy_makers(specs, sims.get("_cal", sims[""]), rates, a.train_episodes, a.num_requests,
                                run))
    cells = [(r, label, s) for s in seeds for r in rates for label in makers]
    rows = []
    for rate, label, seed in tqdm(cells, desc="fidelity", unit="cell"):
        rows.append(compare_cell(live_scn, sims, live, rate, label, makers[label], seed, a.num_requests))
    if drift is not None:
        drift.measure("after")
        atomic_write_json(run / "speed_drift.json", drift.to_dict())
        print(drift.describe())
        rows = with_twin_now(rows, drift.to_dict(), sim_scn, sims, makers, a.num_requests)
    return pd.DataFrame(rows), sims


def with_twin_now(rows: list[dict], drift: dict, sim_scn, sims: dict, makers: dict, num_requests: int) -> list[dict]:
    """`rows` with the columns of the scenario's twin at the machine's speed during the live cells
    (`--rescale`; `drift` a `SpeedDrift.to_dict()`), added to `sims`: suffix `_now`, the anchor's ratio x
    every time the profile prices (`profile_scale`); `_now_host`, a b-row forward x the anchor's ratio at
    b rows (`profile_scale_by_rows`), prefill and drafting x the ratio, and the host work kept
    (`profile_scale_keeps_host`: `HardwareProfile.scaled_forwards`)."""
    ratio = drift["ratio"]
    now = {"_now": sim_scn.replace(profile_scale=ratio),
           "_now_host": sim_scn.replace(profile_scale=ratio, profile_scale_keeps_host=True,
                                        profile_scale_by_rows=ratio_by_rows(drift))}
    twins = {suffix: (scenario, make_backend(scenario)) for suffix, scenario in now.items()}
    sims.update(twins)
    return [row | twin_columns(twins, row, makers[row["policy"]], num_requests)
            for row in tqdm(rows, desc="twins at today's speed", unit="cell")]


def rescored(stored: Path, live_scn, sim_scn, sim, run: Path, episodes: int) -> tuple[pd.DataFrame, dict]:
    """A stored run's cells against the twin(s) again, nothing served live: its live columns are
    kept (`per_request_identical` and `outputs_identical` too, copied, not checked again: acceptance
    replay does not depend on the clock), the scenario's twin is served with today's profile and
    code, the calibrated twin is fitted again to the stored `calibration-steps.csv` (copied into the
    new run, so it can be rescored in turn), and sim-trained policies are the stored run's learners
    (`trained-SPEC.json`). The run's settings come from its `args.json` (older runs: guessed from
    the table, with a warning)."""
    path = stored / "fidelity.csv"
    if not path.is_file():
        raise SystemExit(f"--rescore: no {path} (give the folder of an earlier sim_fidelity run)")
    table = pd.read_csv(path)
    args = json.loads((stored / "args.json").read_text()) if (stored / "args.json").is_file() else None
    if args is None:
        print(f"warning: no {stored / 'args.json'}: requests per cell and training rates are read off the table")
    sims = {"": (sim_scn, sim)}
    steps_path = stored / "calibration-steps.csv"
    if steps_path.is_file():
        steps = pd.read_csv(steps_path)
        write_table(steps, run / "calibration-steps.csv")
        anchor_path = stored / "calibration-anchor.json"
        anchor = json.loads(anchor_path.read_text()) if anchor_path.is_file() else None
        if anchor is not None:
            atomic_write_json(run / "calibration-anchor.json", anchor)
        sims["_cal"] = fitted_twin(steps, live_scn, sim_scn, run, anchor)
    elif any(c.endswith("_cal") for c in table):
        raise SystemExit(f"--rescore: {path} has a calibrated twin but {steps_path} is missing")
    num_requests = int(args["num_requests"]) if args else int(table["requests"].max())
    rates = [float(r) for r in args["rates"].split(",")] if args else sorted(table["rate"].unique())
    labels = list(dict.fromkeys(table["policy"]))
    makers = {label: lambda scn, k=int(label.removeprefix("fixed-")): fixed(k, scn)
              for label in labels if label.startswith("fixed-")}
    specs = [TRAINED + label.removeprefix(SIM_TRAINED) if label.startswith(SIM_TRAINED) else label
             for label in labels if label not in makers]
    makers.update(policy_makers(specs, sims.get("_cal", sims[""]), rates,
                                int(args["train_episodes"]) if args else episodes, num_requests, run, stored))
    if args is not None:
        atomic_write_json(run / "args.json", args | {"rescored_from": str(stored)})
    kept = ["rate", "policy", "k", "seed", "requests", "mean_k_live", *(f"{m}_live" for m in METRICS),
            "per_request_identical", "outputs_identical"]
    rows = []
    for cell in tqdm(table[[c for c in kept if c in table]].to_dict(orient="records"), desc="twins", unit="cell"):
        rows.append(cell | twin_columns(sims, cell, makers[cell["policy"]], num_requests))
    if (stored / "speed_drift.json").is_file():  # the stored run's measured speed, applied to today's profile
        drift = json.loads((stored / "speed_drift.json").read_text())
        atomic_write_json(run / "speed_drift.json", drift)
        rows = with_twin_now(rows, drift, sim_scn, sims, makers, num_requests)
    return pd.DataFrame(rows), sims


def report(df: pd.DataFrame, sims: dict, run: Path) -> None:
    """Write the fidelity and ranking tables and print them with the goal counts."""
    write_table(df, run / "fidelity.csv")
    ranking = rankings(df, sims)
    write_table(ranking, run / "ranking.csv")
    shown = ["rate", "policy", "seed", "per_request_identical", "outputs_identical"] + [
        f"{m}_{s}{suffix}" for m in METRICS for suffix in sims for s in (("live", "sim", "err") if not suffix else ("sim", "err"))]
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 120):
        print(df[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print("\npolicies by throughput, live and in each twin:\n" + ranking.to_string(index=False))
    print(f"\nload average at the end: {os.getloadavg()}")
    for suffix in sims:
        for metric, goal in METRICS.items():
            err = df[f"{metric}_err{suffix}"].abs()
            print(f"{metric} ({TWINS[suffix]}): |error| median {err.median():.1%}, "
                  f"max {err.max():.1%}; within {goal:.0%} in {int(df[f'{metric}_ok{suffix}'].sum())}/{len(df)} cells")
        print(f"ranking ({TWINS[suffix]}): the same in "
              f"{int(ranking[f'same{suffix}'].sum())}/{len(ranking)} (rate, seed) cells")
    at_k = df[df["k"].notna()]
    print(f"per-request accepted/drafted/steps identical in {int(at_k['per_request_identical'].sum())}/{len(at_k)} "
          f"fixed-k cells")
    print(f"wrote {run / 'fidelity.csv'} and {run / 'ranking.csv'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--live", default="smollm2-ngram")
    ap.add_argument("--sim", default="smollm2-ngram-sim")
    ap.add_argument("--rates", default="0.5,2,8")
    ap.add_argument("--ks", default="0,2,4")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--num-requests", type=int, default=16)
    ap.add_argument("--calibrate-seeds", default="", help="calibrate a twin on these seeds' live steps first")
    ap.add_argument("--policies", default="", help="policies besides the fixed k (comma-separated specs or "
                                                   "artifacts; trained:SPEC = a learner trained in the twin first)")
    ap.add_argument("--train-episodes", type=int, default=30, help="episodes a trained:SPEC policy learns for")
    ap.add_argument("--warmup", type=int, default=1, choices=[0, 1],
                    help="serve an unmeasured live cell per rate and k first (an engine's first forwards of a "
                         "shape are slow)")
    ap.add_argument("--rescale", action="store_true",
                    help="also price every cell with the scenario twin at this machine's speed during the live "
                         "cells (its profile's speed anchor timed before and after them; columns *_now, every time "
                         "scaled, and *_now_host, the forwards scaled and the host work kept)")
    ap.add_argument("--anchor-rounds", type=int, default=21,
                    help="forwards per shape in each speed anchor timed (--rescale, --calibrate-seeds)")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--rescore", default=None, metavar="RUN_DIR",
                    help="price a stored run's live cells (RUN_DIR/fidelity.csv; its calibration-steps.csv refitted) "
                         "against the twin(s) again, serving nothing live: seconds, to iterate on the clock model")
    a = quickmode.parse_args(ap, QUICK)
    try:
        live_scn, sim_scn = load_scenario(a.live), load_scenario(a.sim)
        sim = make_backend(sim_scn)
        run = Path(a.out_dir) / f"sim_fidelity__{int(time.time())}"
        print(f"load average at the start: {os.getloadavg()}")
        if a.rescore is not None:
            df, sims = rescored(Path(a.rescore), live_scn, sim_scn, sim, run, a.train_episodes)
        else:
            df, sims = served(a, live_scn, sim_scn, sim, run)
    except ScenarioError as exc:
        raise SystemExit(f"error: {exc}") from None
    report(df, sims, run)


if __name__ == "__main__":
    main()
