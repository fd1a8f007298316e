"""Summary tables of tidy results (one row per policy x load x seed; load: rate or concurrency)."""

from __future__ import annotations

import pandas as pd

from nightjar_rl.analysis.load import axis_name, format_load, load_axis


def summary_table(df: pd.DataFrame, metric: str = "throughput_tok_s") -> pd.DataFrame:
    """Policy x load (rate or concurrency) table of `metric` averaged over seeds (policies in
    first-seen order)."""
    order = list(dict.fromkeys(df["policy"]))
    table = df.pivot_table(index="policy", columns=load_axis(df), values=metric, aggfunc="mean")
    return table.reindex(order)


def best_fixed_comparison(df: pd.DataFrame, policy: str, fixed: list[str]) -> pd.DataFrame:
    """Per load point (rate or concurrency): `policy`'s mean throughput vs the best fixed-k policy there
    (the `*_at_rate` columns) and vs the single fixed k that is best over the whole sweep (ratios > 1
    mean `policy` is faster)."""
    table = summary_table(df)
    if policy not in table.index or not set(fixed) & set(table.index):
        raise ValueError(f"need policy {policy!r} and at least one of {fixed} in the results")
    fixed_table = table.loc[[f for f in fixed if f in table.index]]
    best_single = fixed_table.mean(axis=1).idxmax()
    return pd.DataFrame({
        policy: table.loc[policy],
        "best_fixed_at_rate": fixed_table.max(axis=0),
        "best_fixed_name": fixed_table.idxmax(axis=0),
        "vs_best_at_rate": table.loc[policy] / fixed_table.max(axis=0),
        f"vs_{best_single}": table.loc[policy] / fixed_table.loc[best_single],
    })


def format_summary(df: pd.DataFrame) -> str:
    """Text for the terminal: throughput and e2e p50 latency by policy x load (mean over seeds)."""
    axis = load_axis(df)
    parts = []
    for metric, label, fmt in (
        ("throughput_tok_s", "throughput (output tokens/s)", "{:.1f}"),
        ("goodput_tok_s", "goodput (tokens/s within SLO)", "{:.1f}"),
        ("e2e_p50_s", "end-to-end latency p50 (s)", "{:.2f}"),
        ("mean_k", "mean k", "{:.2f}"),
    ):
        if metric not in df.columns:
            continue
        table = summary_table(df, metric)
        table.columns = [format_load(axis, v) for v in table.columns]
        parts.append(f"{label}, by {axis_name(axis)}:\n" + table.to_string(float_format=fmt.format))
    return "\n\n".join(parts)


def with_speedup(df: pd.DataFrame, baseline: str, metric: str = "throughput_tok_s") -> pd.DataFrame:
    """`df` plus a `speedup` column: each row's `metric` over the `baseline` policy's at the same load
    and seed (paired: the same workload), so its interval over seeds is the sharp comparison."""
    if baseline not in set(df["policy"]):
        raise ValueError(f"baseline policy {baseline!r} is not in the results")
    keys = [c for c in ("rate", "concurrency", "seed") if c in df.columns]
    base = df[df["policy"] == baseline].groupby(keys, dropna=False)[metric].mean().rename("_base").reset_index()
    out = df.merge(base, on=keys, how="left")
    return out.assign(speedup=out[metric] / out["_base"]).drop(columns="_base")
