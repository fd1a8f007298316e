"""Execute the notebooks in place with their real (sim) configuration, so they are committed with outputs.

    python3 experiments/run_notebooks.py [--study-run runs/gpu-whatif-ngram__nightjar_study__...] [NAME ...]

`--study-run` makes nightjar_study.ipynb plot that finished run folder (else it runs a short study).
The test suite executes the same notebooks in quick mode (NIGHTJAR_NOTEBOOK_QUICK=1, tiny-sim), and
this script that way too, writing the executed copies elsewhere instead of in place:

    python3 experiments/run_notebooks.py --quick --out-dir /tmp/notebooks quickstart
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nightjar_rl.analysis.notebook import execute_notebook, png_outputs  # noqa: E402
from nightjar_rl.io import atomic_writer  # noqa: E402

NOTEBOOKS = ("quickstart", "nightjar_study", "anatomy", "per_row_study")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS), help=f"notebooks (default: {' '.join(NOTEBOOKS)})")
    parser.add_argument("--study-run", default=None, help="finished run folder for nightjar_study.ipynb")
    parser.add_argument("--quick", action="store_true", help="the tiny configuration (as the tests run it)")
    parser.add_argument("--out-dir", default=None,
                        help="write the executed notebooks, figures and runs here (default: in place)")
    args = parser.parse_args(argv)
    env = {"NIGHTJAR_NOTEBOOK_QUICK": "1" if args.quick else "0"}
    if args.study_run:
        env["NIGHTJAR_STUDY_RUN"] = str(Path(args.study_run).resolve())
    out = Path(args.out_dir).resolve() if args.out_dir else None
    if out:
        env.update(NIGHTJAR_FIGURES_DIR=str(out / "figures"), NIGHTJAR_RUNS_DIR=str(out / "runs"))
    for name in args.names:
        start = time.perf_counter()
        nb = execute_notebook(ROOT / "notebooks" / f"{name}.ipynb", env, save=out is None)
        if out:
            with atomic_writer(out / f"{name}.ipynb") as fh:
                nbformat.write(nb, fh)
        print(f"{name}.ipynb: {png_outputs(nb)} figures, {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
