"""`--quick` for the experiment scripts: a seconds-long end-to-end run on a tiny model or tiny-sim.

Each script names its preset (flag defaults); the test suite runs every script this way
(tests/test_experiment_scripts.py), so none can rot. Numbers from a quick run mean nothing.
"""

from __future__ import annotations

import argparse


def parse_args(parser: argparse.ArgumentParser, quick: dict, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv` with a `--quick` flag added; `--quick` makes `quick` the defaults (flags given
    explicitly still win)."""
    parser.add_argument("--quick", action="store_true",
                        help="seconds-long smoke run (tests): " + ", ".join(f"{k}={v}" for k, v in quick.items()))
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args
