"""Your own policy, outside the package, evaluated against the built-ins: the extension point by
example. `AcceptanceGated` is a per-row policy: it keeps each request's own acceptance rate (an EMA
over the steps that drafted for it) and speculates `k` tokens only for the rows whose drafts have
been paying, 0 for the others; rows it has not seen yet get `k`.

It is named in the experiment by entry point, "custom_policy:AcceptanceGated" (Gymnasium's
"module:Class" convention), exactly as `--policy custom_policy:AcceptanceGated` on bench, generate
and serve, so it also runs on the Ray executor and under --resume (this folder is on PYTHONPATH).

    python experiments/custom_policy.py                      # smollm2-ngram-sim (this CPU's twin), ~1 min
    python experiments/custom_policy.py --scenario gpu-whatif-ngram --rates 2,60,240
    python experiments/custom_policy.py --quick --out-dir /tmp/custom_policy   # seconds: tiny-sim
    PYTHONPATH=experiments nightjar-rl bench --model tiny-random --policy custom_policy:AcceptanceGated
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import quickmode  # same folder

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.experiments.config import experiment_from_dict
from nightjar_rl.experiments.runner import run_experiment
from nightjar_rl.policy import Policy

HERE = Path(__file__).resolve().parent
QUICK = {"scenario": "tiny-sim", "rates": "5,50", "seeds": "0,1", "num_requests": 6, "max_new_tokens": 10}


class AcceptanceGated(Policy):
    """Per-row plans: k for rows whose acceptance EMA is at least `threshold` (and for new rows), 0 for
    the rest."""

    type_name = "custom_policy:AcceptanceGated"  # how artifacts of it name it

    def __init__(self, max_k: int, k: int = 4, threshold: float = 0.3, alpha: float = 0.5):
        super().__init__(max_k)
        self.k, self.threshold, self.alpha = min(k, max_k), threshold, alpha
        self.reset()

    def reset(self) -> None:
        self.acceptance: dict[str, float] = {}  # request id -> EMA of accepted / drafted
        self.running: list[str] = []  # rows still running after the last step

    def observe(self, stats: StepStats) -> None:
        finished = set(stats.finished_ids)
        for rid, drafted, accepted in zip(stats.request_ids, stats.drafted, stats.accepted):
            if drafted:
                old = self.acceptance.get(rid, accepted / drafted)
                self.acceptance[rid] = (1 - self.alpha) * old + self.alpha * accepted / drafted
        self.running = [rid for rid in stats.request_ids if rid not in finished]
        for rid in finished:
            self.acceptance.pop(rid, None)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> SpecPlan:
        gated = {rid: self.k if self.acceptance.get(rid, 1.0) >= self.threshold else 0 for rid in self.running}
        return SpecPlan.per_row(gated, default=self.k)

    def params(self) -> dict:
        return {"k": self.k, "threshold": self.threshold, "alpha": self.alpha}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="smollm2-ngram-sim")
    ap.add_argument("--rates", default="0.5,2,8", help="request rates (req/s)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out-dir", default="runs")
    a = quickmode.parse_args(ap, QUICK, argv)
    # the experiment imports this file as module `custom_policy` (Ray workers too: PYTHONPATH)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH"))))
    config = {
        "name": "custom_policy", "scenario": a.scenario,
        "rates": [float(r) for r in a.rates.split(",")], "seeds": [int(s) for s in a.seeds.split(",")],
        "num_requests": a.num_requests, "max_new_tokens": a.max_new_tokens,
        "policies": ["fixed-0", "fixed-2", "fixed-4", "table-mlc_llm",
                     {"name": "acceptance-gated", "spec": {"type": "custom_policy:AcceptanceGated", "k": 4}}],
    }
    result = run_experiment(experiment_from_dict(config, "custom_policy"), out_dir=a.out_dir, progress=not a.quick)
    table = result.results.pivot_table(index="policy", columns="rate", values="throughput_tok_s", aggfunc="mean")
    print(f"throughput (output tok/s, mean over seeds) on {a.scenario}:\n{table.round(1).to_string()}")
    print(f"results: {result.run_dir / 'results.csv'}")


if __name__ == "__main__":
    main()
