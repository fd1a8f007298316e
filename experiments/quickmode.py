"""`--quick` for the experiment scripts: a seconds-long end-to-end run on a tiny model or tiny-sim.

Each script names its preset (flag defaults); the test suite runs every script this way
(tests/test_experiment_scripts.py), so none can rot. Numbers from a quick run mean nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from nightjar_rl.io import atomic_write_json, atomic_write_text


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


def parse_dataclass_args(args_type, doc: str, quick: dict, argv: list[str] | None = None):
    """`args_type` (a dataclass of flag defaults) filled from the command line: one flag per field
    (`--field-name`; `out` is `--out-dir`; list fields take several values of their default's element
    type, ints for an empty default), plus `--quick`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in vars(args_type()).items():
        flag = f"--{name.replace('_', '-')}" if name != "out" else "--out-dir"
        if isinstance(default, list):
            parser.add_argument(flag, dest=name, type=type(default[0]) if default else int, nargs="+", default=default)
        else:
            parser.add_argument(flag, dest=name, type=type(default), default=default)
    args = vars(parse_args(parser, quick, argv))
    args.pop("quick")
    return args_type(**args)


def float32_cpu_model(name: str, threads: int | None, linears: str = "packed"):
    """The model the engine-speed scripts time: `name` in float32 on the CPU, with `threads` torch
    threads when given (else torch's default), its linear layers `linears` (packed or eager)."""
    import torch

    from nightjar_rl.models import load_model

    if threads:
        torch.set_num_threads(threads)
    return load_model(name, "float32", "cpu", linears)


def write_report(out_dir: str | Path, tables: dict[str, pd.DataFrame], summary: dict, text: str) -> None:
    """A benchmark's results, each file atomically: `tables` as CSVs (by file name), summary.json,
    and `text` as summary.md, which is also printed."""
    out = Path(out_dir)
    for name, df in tables.items():
        atomic_write_text(out / name, df.to_csv(index=False))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", text)
    print(text)
