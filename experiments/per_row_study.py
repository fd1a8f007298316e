"""The per-row study (issue 20): per-row speculation policies (adaptive budget, per-request k, per-row
bandit) against the per-step policies of the Nightjar study, on the simulator with packed verify,
closed loop C = 1..512 and open loop, paired per seed with 95% intervals.

    python experiments/per_row_study.py                                   # experiments/per_row_study.yaml
    python experiments/per_row_study.py --config my_study.yaml --out-dir runs
    python experiments/per_row_study.py --quick --out-dir /tmp/per_row    # seconds: tiny-sim

Writes OUT/<name>/summary.txt (per load point: best per-step vs best per-row, paired ratio, p95 TPOT,
switches per hour; the goals checked), per_row_table.csv and speedup_vs_load_<scenario>_<loop>.png; the
experiment runs sit under OUT/<name>/<scenario>/<loop>/ (rerunning resumes them). Study fields:
nightjar_rl/experiments/per_row_study.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import quickmode  # same folder

from nightjar_rl.experiments.per_row_study import run_per_row_study

HERE = Path(__file__).resolve().parent
QUICK = {"config": str(HERE / "per_row_study_tiny.yaml")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "per_row_study.yaml"), help="study file")
    parser.add_argument("--out-dir", default="runs", help="where the study folder goes")
    args = quickmode.parse_args(parser, QUICK, argv)
    study = run_per_row_study(args.config, args.out_dir, progress=True)
    print(study.summary)
    print(f"written under {study.out_dir}")


if __name__ == "__main__":
    main()
