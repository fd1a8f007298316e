"""`nightjar-rl experiment CONFIG [--resume RUN_DIR] [--out-dir runs] [--executor local|ray]
[--ray-address ADDR] [--workers N]`: the experiment command, and
`nightjar-rl train CONFIG [--resume RUN_DIR] [--out-dir runs]`: its training half only.

The lead's cli.py wires them with `add_experiment_parser(subparsers)` / `add_train_parser(subparsers)`;
each parser sets `func` on the parsed namespace.
"""

from __future__ import annotations

import argparse

from nightjar_rl.experiments.config import EXECUTORS, executor_from_value, load_experiment


def run_experiment_cli(config_path: str, resume: str | None, out_dir: str = "runs", executor: str | None = None,
                       ray_address: str | None = None, workers: int | None = None) -> int:
    """Run (or resume) an experiment, print its summary table and where it wrote. Returns 0.
    `executor`/`ray_address`/`workers` override the config's executor. Bad configs raise
    ValueError with one line naming the field."""
    from nightjar_rl.experiments.runner import run_experiment  # heavy imports only when running

    cfg = load_experiment(config_path)
    if executor is not None or ray_address is not None or workers is not None:
        kind = executor or ("ray" if ray_address is not None or workers is not None else cfg.executor.kind)
        value = {"kind": kind}
        if kind == "ray":
            value.update(address=ray_address if ray_address is not None else cfg.executor.address,
                         workers=workers if workers is not None else cfg.executor.workers)
        cfg.executor = executor_from_value(value, "--executor/--ray-address/--workers")
    result = run_experiment(cfg, out_dir=out_dir, resume=resume)
    print(result.summary)
    print(f"\nwrote {result.run_dir}/ (results.csv, k_by_batch.csv, summary.txt, *.png)")
    return 0


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    """CONFIG, --resume RUN_DIR, --out-dir DIR: shared by `experiment` and `train`."""
    parser.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue an interrupted run: reuse trained policies, resume sb3 checkpoints, "
                             "skip finished (policy, rate, seed) cells")
    parser.add_argument("--out-dir", default="runs", help="parent folder of new run folders (default: runs)")


def add_experiment_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `experiment` sub-command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "experiment",
        help="train learners and evaluate every policy across a request-rate sweep",
        description="Train the learners on the scenario's env (live or sim), evaluate every policy on the same seeded workloads "
                    "across the rate sweep, and write tables and plots under runs/<run name>/.",
    )
    _add_run_args(parser)
    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="where cells run: local (default) or ray (needs the 'ray' extra); overrides the config")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="a running Ray cluster's address (default: start a local Ray instance); implies --executor ray")
    parser.add_argument("--workers", type=int, default=None,
                        help="CPUs of the local Ray instance (default: all); implies --executor ray")
    parser.set_defaults(func=lambda args: run_experiment_cli(args.config, args.resume, args.out_dir, args.executor,
                                                             args.ray_address, args.workers))
    return parser


def run_train_cli(config_path: str, resume: str | None, out_dir: str = "runs") -> int:
    """Train the experiment's learners and sb3 policies only; print the run folder and the artifacts.
    `nightjar-rl experiment CONFIG --resume RUN_DIR` later evaluates them without retraining."""
    from nightjar_rl.experiments.runner import train_experiment

    cfg = load_experiment(config_path)
    trained = train_experiment(cfg, out_dir=out_dir, resume=resume)
    print(f"run folder: {trained.run_dir}")
    for name, path in trained.artifacts().items():
        print(f"policy {name}: {path}")
    if not trained.learned:
        print("(no learners or sb3 policies in this config: nothing was trained)")
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `train` sub-command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "train",
        help="train an experiment's learners and sb3 policies, export them (no evaluation)",
        description="Train the learners and stable-baselines3 policies of an experiment config, export them "
                    "under runs/<run name>/policies/, and print the paths. Resume an interrupted run with "
                    "--resume (sb3 training continues from its last checkpoint).",
    )
    _add_run_args(parser)
    parser.set_defaults(func=lambda args: run_train_cli(args.config, args.resume, args.out_dir))
    return parser
