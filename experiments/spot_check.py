"""Live spot check of the simulator's ranking: the best two policies of a finished sim study and
k = 0, evaluated on the live engine and on its sim twin with the same seeded workloads.

    python3 experiments/spot_check.py --study-run runs/smollm2-ngram-sim__nightjar_study_cpu__...
        [--live smollm2-ngram] [--sim smollm2-ngram-sim] [--rates 0.5,4] [--seeds 0,1] [--num-requests 16]

The best two are the study's policies with the best mean throughput relative to the per-rate best;
learners are deployed as trained in the study (its policies/NAME.json, replicate 0), without
learning. Writes <out>/spot_check.csv and prints, per rate, both rankings and whether they agree.
Live runs are slow (minutes per cell on the CPU); validate with --live tiny --sim tiny-sim, or
    python3 experiments/spot_check.py --quick --out-dir /tmp/spot_check
which first runs experiments/study_tiny.yaml (tiny-sim, seconds) when no --study-run is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import quickmode  # noqa: E402  (same folder)

from nightjar_rl.analysis.study import relative_score  # noqa: E402
from nightjar_rl.env.recorder import write_table  # noqa: E402
from nightjar_rl.experiments import load_experiment  # noqa: E402
from nightjar_rl.experiments.config import experiment_from_dict, resolve_scenario, resolve_spec  # noqa: E402
from nightjar_rl.experiments.runner import load_run, run_experiment  # noqa: E402

QUICK = {"live": "tiny", "sim": "tiny-sim", "rates": "5,50", "seeds": "0", "num_requests": 4}
TINY_STUDY = ROOT / "experiments" / "study_tiny.yaml"


def spot_policies(run_dir: Path, top: int = 2, names: list[str] | None = None) -> list[dict]:
    """k = 0 plus the study's `top` best policies by relative throughput (or the policies `names`),
    as experiment entries. A `profile: scenario` spec keeps the study's (sim) profile, so the live
    scenario, which has none, runs the same policy."""
    study = load_run(run_dir)
    specs = {e.name: e.spec for e in study.config.policies}
    unknown = sorted(set(names or ()) - set(specs))
    if unknown:
        raise SystemExit(f"spot_check: policies not in the study: {', '.join(unknown)}")
    best = names or [p for p in relative_score(study.results, list(specs)).index if p != "k0"][:top]
    entries = [{"name": "k0", "spec": "fixed-0"}]
    for name in best:
        artifact, spec = run_dir / "policies" / f"{name}.json", specs[name]
        if artifact.is_file():  # an artifact by path: an `mlp` manifest finds its weights file beside it
            spec = str(artifact.resolve())
        elif isinstance(spec, dict) and spec.get("profile") == "scenario":
            spec = resolve_spec(spec, resolve_scenario(study.config))
        entries.append({"name": name, "spec": spec})
    return entries


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study-run", default=None,
                   help="finished run folder of the sim study (nightjar_study_cpu); with --quick, default: "
                        "a fresh run of experiments/study_tiny.yaml under --out-dir")
    p.add_argument("--live", default="smollm2-ngram", help="live scenario (default smollm2-ngram)")
    p.add_argument("--sim", default="smollm2-ngram-sim", help="its sim twin (default smollm2-ngram-sim)")
    p.add_argument("--rates", default="0.5,4", help="comma-separated rates (default: idle and saturated)")
    p.add_argument("--seeds", default="0,1", help="comma-separated workload seeds")
    p.add_argument("--policies", default=None, help="comma-separated study policies to check (default: the best two)")
    p.add_argument("--num-requests", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--out-dir", default="runs/spot_check", help="output folder (default: runs/spot_check under the working directory)")
    a = quickmode.parse_args(p, QUICK, argv)
    if a.study_run is None and not a.quick:
        p.error("--study-run is required (without --quick)")
    study_run = Path(a.study_run) if a.study_run else run_experiment(
        load_experiment(TINY_STUDY), out_dir=a.out_dir, progress=False).run_dir
    policies = spot_policies(study_run, names=a.policies.split(",") if a.policies else None)
    frames = []
    for backend, scenario in (("sim", a.sim), ("live", a.live)):
        cfg = experiment_from_dict({
            "name": f"spot_{backend}", "scenario": scenario, "rates": [float(r) for r in a.rates.split(",")],
            "seeds": [int(s) for s in a.seeds.split(",")], "num_requests": a.num_requests,
            "max_new_tokens": a.max_new_tokens, "policies": policies, "train": {"episodes": 0},
        }, f"spot_{backend}")
        start = time.perf_counter()
        result = run_experiment(cfg, out_dir=a.out_dir, progress=True)
        print(f"{backend} ({scenario}): {time.perf_counter() - start:.0f} s, {result.run_dir}")
        frames.append(result.results.assign(backend=backend))
    df = pd.concat(frames, ignore_index=True)
    table = df.pivot_table(index=["rate", "policy"], columns="backend", values="throughput_tok_s", aggfunc="mean")
    table["live/sim"] = table["live"] / table["sim"]
    agree = []
    for rate, group in table.groupby(level="rate"):
        sim_rank = list(group["sim"].sort_values(ascending=False).index.get_level_values("policy"))
        live_rank = list(group["live"].sort_values(ascending=False).index.get_level_values("policy"))
        agree.append(sim_rank == live_rank)
        print(f"{rate:g}/s  sim: {' > '.join(sim_rank)}   live: {' > '.join(live_rank)}   "
              f"{'same ranking' if sim_rank == live_rank else 'DIFFERENT ranking'}")
    print(table.round(3).to_string())
    out = write_table(table.reset_index(), Path(a.out_dir) / "spot_check.csv")
    print(f"rankings agree at {sum(agree)}/{len(agree)} rates; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
