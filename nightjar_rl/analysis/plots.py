"""Plots of tidy result tables. Each function takes a DataFrame and returns a Figure (Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure


def plot_metric_vs_rate(df: pd.DataFrame, metric: str, ylabel: str | None = None, title: str | None = None,
                        logy: bool = False) -> Figure:
    """One line per policy: mean of `metric` over seeds vs request rate, shaded min..max over seeds."""
    for col in ("policy", "rate", metric):
        if col not in df.columns:
            raise ValueError(f"results table has no column {col!r}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, group in df.groupby("policy", sort=False):
        stats = group.groupby("rate")[metric].agg(["mean", "min", "max"]).sort_index()
        line, = ax.plot(stats.index, stats["mean"], marker="o", label=str(policy))
        if group["seed"].nunique() > 1 if "seed" in group else False:
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("request rate (requests/s)")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or f"{ylabel or metric} vs request rate")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
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
