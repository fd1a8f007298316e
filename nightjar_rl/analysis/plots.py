"""Plots of tidy result tables. Each function takes a DataFrame and returns a Figure (Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from nightjar_rl.analysis.load import CONCURRENCY, axis_label, axis_name, load_axis
from nightjar_rl.analysis.stats import ci_table


def plot_metric_vs_rate(df: pd.DataFrame, metric: str, ylabel: str | None = None, title: str | None = None,
                        logy: bool = False, band: str = "ci", policies: Sequence[str] | None = None) -> Figure:
    """One line per policy: mean of `metric` over seeds vs the load (request rate, or max concurrency
    for a closed-loop sweep: see nightjar_rl.analysis.load), with a band: `ci` (95% Student-t
    interval over seeds, see nightjar_rl.analysis.stats), `minmax` (range over seeds) or `none`.
    `policies` picks and orders the lines (default: all, first-seen order)."""
    axis = load_axis(df)
    for col in ("policy", axis, metric):
        if col not in df.columns:
            raise ValueError(f"results table has no column {col!r}")
    if band not in ("ci", "minmax", "none"):
        raise ValueError(f"band must be ci, minmax or none, got {band!r}")
    if policies is not None:
        df = df[df["policy"].isin(policies)]
    unit = "seed" if "seed" in df.columns else axis
    stats = ci_table(df, metric, by=("policy", axis), unit=unit)
    if band == "minmax":
        per = df.groupby(["policy", axis, unit], sort=False)[metric].mean().groupby(["policy", axis], sort=False)
        stats = stats.merge(per.agg(lo="min", hi="max").reset_index(), on=["policy", axis])
        stats["low"], stats["high"] = stats["lo"], stats["hi"]
    order = list(policies) if policies is not None else list(dict.fromkeys(df["policy"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, policy in enumerate(p for p in order if p in set(stats["policy"])):
        group = stats[stats["policy"] == policy].sort_values(axis)
        style = "-" if i < 10 else "--"
        line, = ax.plot(group[axis], group["mean"], style, marker="o", markersize=3.5, label=str(policy))
        if band != "none" and (group["n"] > 1).any():
            ax.fill_between(group[axis], group["low"], group["high"], color=line.get_color(), alpha=0.15)
    if axis == CONCURRENCY:  # powers of two, each configured value marked
        ax.set_xscale("log", base=2)
        values = sorted(stats[axis].unique())
        ax.set_xticks(values, [f"{v:g}" for v in values])
    else:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(axis_label(axis))
    ax.set_ylabel(ylabel or metric)
    shade = {"ci": ", bands: 95% CI over seeds", "minmax": ", bands: min..max over seeds", "none": ""}[band]
    ax.set_title(title or f"{ylabel or metric} vs {axis_name(axis)}{shade}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(order) > 8 else 1)
    fig.tight_layout()
    return fig


def plot_k_by_batch(kdf: pd.DataFrame, title: str = "k chosen by batch size") -> Figure:
    """Mean k per batch size (weighted by decode steps over all rates and seeds), one line per policy."""
    for col in ("policy", "batch_size", "steps", "mean_k"):
        if col not in kdf.columns:
            raise ValueError(f"k-by-batch table has no column {col!r}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, group in kdf.groupby("policy", sort=False):
        weighted = (group["mean_k"] * group["steps"]).groupby(group["batch_size"]).sum()
        steps = group.groupby("batch_size")["steps"].sum()
        ax.plot(steps.index, weighted / steps, marker="o", label=str(policy))
    ax.set_xlabel("batch size (rows decoded)")
    ax.set_ylabel("mean k (0 = off)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
