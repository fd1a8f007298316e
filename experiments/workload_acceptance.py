"""Acceptance by workload: tokens per decode step of every traced request at fixed k (2, 4, 8), by
family, from the shipped traces (no model, no timing: the numbers follow from the traces alone).
Writes acceptance.csv (one row per request x k), summary.csv (by workload, family, k) and
tokens_per_step.png (histograms at k = 4), and prints the summary.

    python experiments/workload_acceptance.py --out-dir runs/workload_acceptance  # the README table and figure
    (experiments/figures/ holds the committed copies: summary.csv and tokens_per_step.png renamed)
    python experiments/workload_acceptance.py --quick --out-dir /tmp/acc    # seconds: the tiny trace
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import quickmode  # noqa: E402  same folder

from nightjar_rl.analysis.acceptance import acceptance_summary, acceptance_table  # noqa: E402
from nightjar_rl.env.recorder import write_table  # noqa: E402
from nightjar_rl.sim.trace import Trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRACES = ("bundled=envs/traces/smollm2-ngram.npz,sharegpt=envs/traces/smollm2-sharegpt-ngram.npz,"
          "humaneval=envs/traces/smollm2-humaneval-ngram.npz")
QUICK = {"traces": "tiny=envs/traces/tiny-ngram.npz", "ks": "2,4"}


def histogram(table: pd.DataFrame, k: int, out: Path) -> None:
    """Tokens-per-step histograms at k, one panel per workload, one colour per family."""
    names = list(dict.fromkeys(table["workload"]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 2.8), squeeze=False, sharey=False)
    bins = np.linspace(1, k + 1, 2 * k + 1)
    for ax, name in zip(axes[0], names):
        part = table[(table["workload"] == name) & (table["k"] == k)]
        fams = list(dict.fromkeys(part["family"]))
        ax.hist([part.loc[part["family"] == f, "tokens_per_step"] for f in fams], bins=bins, stacked=True,
                label=[f or "?" for f in fams])
        ax.set_title(f"{name} (n={len(part)})", fontsize=9)
        ax.set_xlabel(f"tokens per step at k={k}", fontsize=8)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("requests", fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    tmp.replace(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default=TRACES, help="NAME=TRACE.npz,... (paths relative to the repository)")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--out-dir", default="runs/workload_acceptance")
    a = quickmode.parse_args(ap, QUICK, argv)
    ks = [int(k) for k in a.ks.split(",")]
    tables = []
    for item in a.traces.split(","):
        name, _, path = item.partition("=")
        path = Path(path) if Path(path).is_absolute() else ROOT / path
        if not path.is_file():
            print(f"skip {name}: no trace {path}")
            continue
        tables.append(acceptance_table(Trace.load(path), ks, name))
    table = pd.concat(tables, ignore_index=True)
    summary = acceptance_summary(table)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out / "acceptance.csv")
    write_table(summary, out / "summary.csv")
    histogram(table, 4 if 4 in ks else ks[-1], out / "tokens_per_step.png")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"wrote {out}/acceptance.csv, summary.csv, tokens_per_step.png")


if __name__ == "__main__":
    main()
