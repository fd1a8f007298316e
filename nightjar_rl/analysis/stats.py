"""Means and Student-t confidence intervals over seeds.

The unit of replication is the evaluation seed (one seeded workload): rows of the same
(policy, load, seed) (learner replicates) are first averaged, so the interval covers both the
workload and, for learners, the training randomness. With n seeds the 95% interval is
mean +- t(0.975, n - 1) * sd / sqrt(n) (sd with n - 1 degrees of freedom); one seed has no interval.
The load is the table's load axis (`nightjar_rl.analysis.load`): request rate or max concurrency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

from nightjar_rl.analysis.load import CONCURRENCY, RATE, format_load, load_axis


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, half width, n) of the Student-t interval of `values` (nan values dropped; half width
    nan when fewer than 2 values)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), 1
    half = float(_st.t.ppf(0.5 + confidence / 2.0, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, half, n


def ci_table(df: pd.DataFrame, metric: str, by: Sequence[str] | None = None, unit: str = "seed",
             confidence: float = 0.95) -> pd.DataFrame:
    """One row per `by` group (default: policy and the load axis, rate or concurrency): mean,
    half-width, low, high, n, sd of `metric` over `unit` (rows of the same group and unit are averaged
    first). Groups keep their first-seen order."""
    by = ["policy", load_axis(df)] if by is None else list(by)
    for col in (*by, unit, metric):
        if col not in df.columns:
            raise ValueError(f"results table has no column {col!r}")
    per_unit = df.groupby([*by, unit], sort=False)[metric].mean().reset_index()
    rows = []
    for key, group in per_unit.groupby(by, sort=False):
        mean, half, n = t_interval(group[metric], confidence)
        sd = float(group[metric].std(ddof=1)) if n > 1 else float("nan")
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "mean": mean, "half": half,
                     "low": mean - half, "high": mean + half, "n": n, "sd": sd})
    return pd.DataFrame(rows)


def format_ci(ci: pd.DataFrame, fmt: str = "{:.1f}", index: str = "policy", columns: str | None = None) -> pd.DataFrame:
    """A `ci_table` as text cells 'mean ± half' (index x columns; default columns: its load axis,
    rate or concurrency), for reports and notebooks."""
    if columns is None:
        columns = CONCURRENCY if CONCURRENCY in ci.columns and RATE not in ci.columns else RATE
    text = ci.assign(cell=[fmt.format(m) + ("" if np.isnan(h) else " ± " + fmt.format(h))
                           for m, h in zip(ci["mean"], ci["half"])])
    table = text.pivot(index=index, columns=columns, values="cell")
    table = table.reindex(list(dict.fromkeys(ci[index])))
    if columns in (RATE, CONCURRENCY):
        table.columns = [format_load(columns, v) for v in table.columns]
    return table


def intervals_overlap(a: pd.Series | dict, b: pd.Series | dict) -> bool:
    """Whether two `ci_table` rows' intervals overlap (nan half widths count as overlapping)."""
    if np.isnan(a["half"]) or np.isnan(b["half"]):
        return True
    return not (a["low"] > b["high"] or b["low"] > a["high"])
