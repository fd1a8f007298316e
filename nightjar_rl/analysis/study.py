"""The study's headline: learned policies vs fixed k, per load point, with 95% intervals over seeds.

The load axis is the table's (`nightjar_rl.analysis.load`): the request rate (open loop) or the max
concurrency (closed loop); "rate" below means either. Definitions (throughput = output tokens/s,
means over seeds):
- best single fixed k: the one fixed-k policy a deployer would pick without knowing the load, the
  one with the best mean throughput relative to the per-rate best over the whole sweep;
- hindsight best: at each rate, the best fixed k at that rate (an oracle over fixed k);
- best learned: the learned policy with the best mean relative throughput over the sweep.
Besides the unpaired intervals, `paired_vs_single` is the per-seed ratio (same workload) with its
own t interval: the sharper test of a small difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from nightjar_rl.analysis.load import CONCURRENCY, RATE, format_load, load_axis
from nightjar_rl.analysis.stats import ci_table, intervals_overlap, t_interval


def paired_ratio(df: pd.DataFrame, a: str, b: str, rate: float, metric: str = "throughput_tok_s",
                 confidence: float = 0.95, axis: str | None = None) -> tuple[float, float]:
    """Mean and t half-width over seeds of a/b computed per seed at load `rate` (a value of `axis`,
    default the table's load axis; both policies served the same workload per seed, so the pairing
    removes the workload's variance)."""
    axis = axis or load_axis(df)
    at = df[df[axis] == rate].groupby(["policy", "seed"])[metric].mean()
    ratio = (at.loc[a] / at.loc[b]).dropna()
    mean, half, _ = t_interval(ratio, confidence)
    return mean, half


def relative_score(df: pd.DataFrame, policies: Sequence[str], metric: str = "throughput_tok_s") -> pd.Series:
    """Mean over load points of each policy's mean `metric` divided by the best of `policies` there."""
    table = df[df["policy"].isin(policies)].pivot_table(index="policy", columns=load_axis(df), values=metric,
                                                        aggfunc="mean")
    return (table / table.max(axis=0)).mean(axis=1).sort_values(ascending=False)


def headline(df: pd.DataFrame, learned: Sequence[str], fixed: Sequence[str], metric: str = "throughput_tok_s",
             confidence: float = 0.95) -> pd.DataFrame:
    """Per load point: the best learned policy vs the best single fixed k and the hindsight best, with
    intervals and whether the intervals are apart (a win or loss may be claimed only then). The first
    column is the load axis: `rate` or `concurrency`."""
    learned = [p for p in learned if p in set(df["policy"])]
    fixed = [p for p in fixed if p in set(df["policy"])]
    if not learned or not fixed:
        raise ValueError(f"need at least one learned policy {list(learned)} and one fixed-k policy {list(fixed)}")
    axis = load_axis(df)
    best_learned = relative_score(df, learned, metric).index[0]
    best_single = relative_score(df, fixed, metric).index[0]
    ci = ci_table(df, metric, confidence=confidence).set_index(["policy", axis])
    rows = []
    for rate in sorted(df[axis].unique()):
        hind = max(fixed, key=lambda p: ci.loc[(p, rate), "mean"])
        me, single, best = ci.loc[(best_learned, rate)], ci.loc[(best_single, rate)], ci.loc[(hind, rate)]
        paired, paired_half = paired_ratio(df, best_learned, best_single, rate, metric, confidence, axis)
        rows.append({
            axis: rate, "policy": best_learned, "mean": me["mean"], "half": me["half"],
            "single_fixed": best_single, "single_mean": single["mean"], "single_half": single["half"],
            "vs_single": me["mean"] / single["mean"], "apart_from_single": not intervals_overlap(me, single),
            "paired_vs_single": paired, "paired_half": paired_half,
            "hindsight": hind, "hindsight_mean": best["mean"], "vs_hindsight": me["mean"] / best["mean"],
            "apart_from_hindsight": not intervals_overlap(me, best),
        })
    return pd.DataFrame(rows)


GOALS = {"win": 1.15, "low_loss": 0.97, "hindsight": 0.97}  # the Nightjar study's own targets (opt-in)


def findings(table: pd.DataFrame) -> list[str]:
    """A `headline` table as three plain statements, with no targets: the best learner vs the best
    single fixed k at the highest and the lowest load (intervals apart or not, paired per seed), and
    its worst ratio to the per-load hindsight best. Loads read "64/s" (rate) or "C=64" (concurrency)."""
    axis = CONCURRENCY if CONCURRENCY in table.columns else RATE
    hi, lo = table.iloc[-1], table.iloc[0]
    name, single = hi["policy"], hi["single_fixed"]
    worst = table.loc[table["vs_hindsight"].idxmin()]
    return [
        f"high load ({format_load(axis, hi[axis])}): {name} {hi['mean']:.1f} ± {hi['half']:.1f} vs best single fixed k "
        f"{single} {hi['single_mean']:.1f} ± {hi['single_half']:.1f} tok/s = {hi['vs_single']:.3f}x "
        f"(intervals {'apart' if hi['apart_from_single'] else 'overlap'}; paired per seed "
        f"{hi['paired_vs_single']:.3f} ± {hi['paired_half']:.3f}x)",
        f"low load ({format_load(axis, lo[axis])}): {name} {lo['vs_single']:.3f}x the best single fixed k "
        f"(intervals {'apart' if lo['apart_from_single'] else 'overlap'}; paired per seed "
        f"{lo['paired_vs_single']:.3f} ± {lo['paired_half']:.3f}x)",
        f"vs hindsight best fixed k per {'concurrency' if axis == CONCURRENCY else 'rate'}: "
        f"worst {worst['vs_hindsight']:.3f}x at {format_load(axis, worst[axis])} ({worst['hindsight']})",
    ]


def verdict(table: pd.DataFrame, win: float = GOALS["win"], low_loss: float = GOALS["low_loss"],
            hindsight: float = GOALS["hindsight"]) -> list[str]:
    """`findings` checked against targets (defaults: the Nightjar study's goals, +15% over the best
    single fixed k at the highest load with intervals apart, at most 3% loss at the lowest load,
    within 3% of the hindsight best everywhere). An experiment prints these only when its config
    declares `goals:`; one line per goal, stating the numbers whatever they are."""
    hi, lo = table.iloc[-1], table.iloc[0]
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    high_ok = hi["vs_single"] >= win and hi["apart_from_single"]
    checks = [f"goal >= {win:.2f}x: {met(high_ok)}", f"goal >= {low_loss:.2f}x: {met(lo['vs_single'] >= low_loss)}",
              f"goal >= {hindsight:.2f}x everywhere: {met(table['vs_hindsight'].min() >= hindsight)}"]
    return [f"{line}; {check}" for line, check in zip(findings(table), checks)]


def training_spread(df: pd.DataFrame, metric: str = "throughput_tok_s") -> pd.DataFrame:
    """Learner replicates: per policy and load point (rate or concurrency), the mean over seeds of
    each replicate, and the spread (min, max, max/min) across replicates."""
    axis = load_axis(df)
    learned = df[df["learned"].astype(bool)] if "learned" in df.columns else df.iloc[:0]
    if "replicate" not in learned.columns or learned.empty:
        return pd.DataFrame(columns=["policy", axis, "replicates", "min", "max", "spread"])
    per = learned.groupby(["policy", axis, "replicate"], sort=False)[metric].mean().reset_index()
    out = per.groupby(["policy", axis], sort=False)[metric].agg(replicates="size", min="min", max="max").reset_index()
    out["spread"] = out["max"] / out["min"] - 1.0
    return out
