"""`nightjar-rl experiment CONFIG [--resume RUN_DIR] [--out-dir runs]`: the experiment command.

The lead's cli.py wires it with `add_experiment_parser(subparsers)`; the parser sets
`func=lambda args: run_experiment_cli(...)` on the parsed namespace.
"""

from __future__ import annotations

import argparse

from nightjar_rl.experiments.config import load_experiment


def run_experiment_cli(config_path: str, resume: str | None, out_dir: str = "runs") -> int:
    """Run (or resume) an experiment, print its summary table and where it wrote. Returns 0.
    Bad configs raise ValueError with one line naming the field."""
    from nightjar_rl.experiments.runner import run_experiment  # heavy imports only when running

    cfg = load_experiment(config_path)
    result = run_experiment(cfg, out_dir=out_dir, resume=resume)
    print(result.summary)
    print(f"\nwrote {result.run_dir}/ (results.csv, k_by_batch.csv, summary.txt, *.png)")
    return 0


def add_experiment_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `experiment` sub-command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "experiment",
        help="train learners and evaluate every policy across a request-rate sweep",
        description="Train the learners on the scenario's env (live or sim), evaluate every policy on the same seeded workloads "
                    "across the rate sweep, and write tables and plots under runs/<run name>/.",
    )
    parser.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue an interrupted run: skip finished (policy, rate, seed) cells")
    parser.add_argument("--out-dir", default="runs", help="parent folder of new run folders (default: runs)")
    parser.set_defaults(func=lambda args: run_experiment_cli(args.config, args.resume, args.out_dir))
    return parser
