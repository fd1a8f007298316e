"""Anatomy of one episode: what a policy chose step by step, what it cost, and what a learner learned.

The episode's steps come from `nightjar_rl.experiments.evaluate.episode_steps` (a learner from
`nightjar_rl.experiments.train.train_learner`); this module reads them:

- `switching_cost`: how often speculation was re-enabled after k = 0 and what the catch-up cost.
- `plot_episode`: k, batch size and acceptance over time; `plot_bandit_values`: a bandit's learned
  value per batch-size bucket x arm (its k-by-batch heatmap), the greedy choice marked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nightjar_rl.analysis.plots import plt


def switching_cost(frame: pd.DataFrame) -> dict:
    """Switches from k = 0 to k > 0 among decode steps, their total catch-up time and its share of
    the episode's busy time (Nightjar's switching cost)."""
    decode = frame[frame["batch_size"] > 0]
    k = decode["k"].to_numpy()
    switched = np.zeros(len(k), dtype=bool)
    switched[1:] = (k[:-1] == 0) & (k[1:] > 0)
    catchup = decode["catchup_time"].to_numpy()
    busy = float(frame["wall_time"].sum())
    return {
        "decode_steps": int(len(k)), "steps_k0": int((k == 0).sum()), "switches_on": int(switched.sum()),
        "catchup_s": float(catchup.sum()), "catchup_per_switch_ms": 1e3 * float(catchup[switched].mean())
        if switched.any() else 0.0, "catchup_share": float(catchup.sum()) / busy if busy > 0 else float("nan"),
    }


def plot_episode(frame: pd.DataFrame, title: str = "one episode") -> Figure:
    """Three panels over the serving clock: k chosen, batch size, per-step acceptance rate."""
    decode = frame[frame["batch_size"] > 0]
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    axes[0].step(decode["clock"], decode["k"], where="post", lw=0.8)
    axes[0].set_ylabel("k (0 = off)")
    axes[1].plot(decode["clock"], decode["batch_size"], lw=0.8, color="tab:orange")
    axes[1].set_ylabel("batch size")
    acc = decode["acceptance_rate"]
    axes[2].plot(decode["clock"], acc, ".", ms=2, color="tab:green", alpha=0.5)
    axes[2].plot(decode["clock"], acc.rolling(25, min_periods=1).mean(), lw=1, color="tab:green")
    axes[2].set_ylabel("acceptance")
    axes[2].set_ylim(-0.05, 1.05)
    axes[2].set_xlabel("serving clock (s)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_bandit_values(policy, title: str | None = None) -> Figure:
    """Heatmap of a bucketed bandit: rows = batch-size buckets, columns = k, colour = mean reward
    normalised per bucket (blank: never tried), x = the greedy choice, numbers = pulls."""
    if not hasattr(policy, "raw_means") or not hasattr(policy, "buckets"):
        raise ValueError(f"{type(policy).__name__} is not a bucketed bandit (no per-bucket arm values)")
    n_b, n_k = policy.counts.shape
    values = np.full((n_b, n_k), np.nan)
    for b in range(n_b):
        raw = policy.raw_means(b)
        if np.isfinite(raw).any():
            values[b] = raw / np.nanmax(np.abs(raw))
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * n_k, 0.9 + 0.42 * n_b))
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=np.nanmin(values) if np.isfinite(values).any() else 0,
                   vmax=1.0)
    for b in range(n_b):
        if policy.counts[b].sum():
            ax.plot(int(np.nanargmax(values[b])), b, "x", color="red", ms=9, mew=2)
        for k in range(n_k):
            if policy.counts[b, k]:
                ax.text(k, b, str(int(policy.counts[b, k])), ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(n_k))
    ax.set_yticks(range(n_b), [policy.buckets.label(b) for b in range(n_b)])
    ax.set_xlabel("k (0 = off)")
    ax.set_ylabel("batch size")
    ax.set_title(title or f"{policy.name}: reward / best per batch size (x = greedy)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig
