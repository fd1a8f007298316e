"""The load axis of a results table: request rate (open loop, Poisson arrivals) or max concurrency
(closed loop, vLLM's `--max-concurrency`: requests in flight).

`load_axis(df)` names it: "concurrency" when that column varies; else "rate" when the rate varies;
else (one load point) "concurrency" when the column is there, "rate" otherwise. A table that varies
in both is two axes: analyse it one rate at a time.
"""

from __future__ import annotations

import pandas as pd

RATE, CONCURRENCY = "rate", "concurrency"


def _varies(df: pd.DataFrame, column: str) -> bool:
    return column in df.columns and df[column].dropna().nunique() > 1


def load_axis(df: pd.DataFrame) -> str:
    """"concurrency" or "rate" (see the module docstring); ValueError if both vary."""
    if _varies(df, CONCURRENCY):
        if _varies(df, RATE):
            raise ValueError("results vary in both rate and concurrency; analyse one rate at a time "
                             "(df[df['rate'] == R])")
        return CONCURRENCY
    if not _varies(df, RATE) and CONCURRENCY in df.columns and df[CONCURRENCY].notna().any():
        return CONCURRENCY
    return RATE


def axis_name(axis: str) -> str:
    """For titles and headings: "request rate" or "max concurrency"."""
    return "max concurrency" if axis == CONCURRENCY else "request rate"


def axis_label(axis: str) -> str:
    """For a plot's x axis, with the unit."""
    return "max concurrency (requests in flight)" if axis == CONCURRENCY else "request rate (requests/s)"


def format_load(axis: str, value: float) -> str:
    """One load point: "64/s" (rate) or "C=64" (concurrency)."""
    return f"C={value:g}" if axis == CONCURRENCY else f"{value:g}/s"
