"""The per-row study's headline: at every load point the best per-row policy against the best per-step
policy (both picked in hindsight at that load: the strongest baseline), with 95% intervals over seeds,
the paired per-seed ratio, p95 time per output token and switches per hour.

Goals (issue 20; `per_row_verdict`): at high load (load >= `high_from`) the best per-row policy's
throughput >= `win` x the best per-step policy's with the intervals apart; at low load (load <=
`low_upto`) >= `low_loss` x; and its p95 TPOT no worse than the best per-step policy's (within the
intervals) at any load. With learned per-row policies, `learned_verdict`: the best of them >= the
hand-written allocator within the intervals at every load.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nightjar_rl.analysis.load import axis_label, format_load, load_axis
from nightjar_rl.analysis.stats import ci_table, intervals_overlap
from nightjar_rl.analysis.study import paired_ratio

PER_ROW_GOALS = {"win": 1.25, "low_loss": 0.97, "high_from": 128, "low_upto": 4}


def per_row_table(df: pd.DataFrame, per_step: Sequence[str], per_row: Sequence[str],
                  metric: str = "throughput_tok_s", confidence: float = 0.95) -> pd.DataFrame:
    """One row per load point: the best per-step and best per-row policies there (by mean `metric`),
    their means and half-widths, the paired ratio per seed (row / step) with its half-width, whether the
    intervals are apart, both p95 TPOTs (mean over seeds, with half-widths) and the per-row policy's
    switches per hour."""
    present = set(df["policy"])
    per_step, per_row = [p for p in per_step if p in present], [p for p in per_row if p in present]
    if not per_step or not per_row:
        raise ValueError(f"need per-step policies {list(per_step)} and per-row policies {list(per_row)} in the table")
    axis = load_axis(df)
    ci = ci_table(df, metric, confidence=confidence).set_index(["policy", axis])
    tpot = ci_table(df, "tpot_p95_s", confidence=confidence).set_index(["policy", axis])
    switches = df.groupby(["policy", axis])["row_switches_per_h"].mean() if "row_switches_per_h" in df else None
    rows = []
    for load in sorted(df[axis].unique()):
        step = max(per_step, key=lambda p: ci.loc[(p, load), "mean"])
        row = max(per_row, key=lambda p: ci.loc[(p, load), "mean"])
        ratio, half = paired_ratio(df, row, step, load, metric, confidence, axis)
        a, b = ci.loc[(row, load)], ci.loc[(step, load)]
        rows.append({
            axis: load, "best_per_step": step, "step_mean": b["mean"], "step_half": b["half"],
            "best_per_row": row, "row_mean": a["mean"], "row_half": a["half"],
            "paired_ratio": ratio, "paired_half": half, "apart": not intervals_overlap(a, b),
            "step_tpot_p95_ms": 1000 * tpot.loc[(step, load), "mean"], "row_tpot_p95_ms": 1000 * tpot.loc[(row, load), "mean"],
            "tpot_worse": bool(tpot.loc[(row, load), "mean"] - tpot.loc[(row, load), "half"]
                               > tpot.loc[(step, load), "mean"] + tpot.loc[(step, load), "half"]),
            "row_switches_per_h": float(switches.loc[(row, load)]) if switches is not None else np.nan,
        })
    return pd.DataFrame(rows)


def per_row_verdict(table: pd.DataFrame, win: float = PER_ROW_GOALS["win"], low_loss: float = PER_ROW_GOALS["low_loss"],
                    high_from: float = PER_ROW_GOALS["high_from"], low_upto: float = PER_ROW_GOALS["low_upto"]) -> list[str]:
    """One line per goal: met or not, with the numbers behind it."""
    axis = table.columns[0]
    lines = []
    high, low = table[table[axis] >= high_from], table[table[axis] <= low_upto]

    def at(r) -> str:
        return (f"{format_load(axis, r[axis])}: {r['best_per_row']} {r['paired_ratio']:.3f} ± {r['paired_half']:.3f}x "
                f"{r['best_per_step']}")

    if len(high):
        ok = ((high["paired_ratio"] - high["paired_half"] >= win) & high["apart"]).all()
        lines.append(f"high load (>= {high_from:g}): per-row >= {win:g}x the best per-step, intervals apart: "
                     f"{'MET' if ok else 'NOT MET'} ({'; '.join(at(r) for _, r in high.iterrows())})")
    if len(low):
        ok = (low["paired_ratio"] + low["paired_half"] >= low_loss).all()
        lines.append(f"low load (<= {low_upto:g}): per-row within {1 - low_loss:.0%} of the best per-step: "
                     f"{'MET' if ok else 'NOT MET'} ({'; '.join(at(r) for _, r in low.iterrows())})")
    worse = table[table["tpot_worse"]]
    lines.append("p95 TPOT no worse than the best per-step policy's at any load: "
                 + ("MET" if worse.empty else "NOT MET at " + ", ".join(
                     f"{format_load(axis, r[axis])} ({r['row_tpot_p95_ms']:.2f} vs {r['step_tpot_p95_ms']:.2f} ms)"
                     for _, r in worse.iterrows())))
    return lines


def learned_verdict(table: pd.DataFrame, against: str) -> str:
    """The learned goal on a `per_row_table(df, [against], learned)`: the best learned per-row policy >=
    `against` (the hand-written allocator) within the intervals (paired ratio + half-width >= 1) at every load."""
    axis = table.columns[0]
    ok = (table["paired_ratio"] + table["paired_half"] >= 1.0).all()
    return (f"learned per-row >= {against} within the intervals at every load: {'MET' if ok else 'NOT MET'} ("
            + "; ".join(f"{format_load(axis, r[axis])}: {r['best_per_row']} {r['paired_ratio']:.3f} ± "
                        f"{r['paired_half']:.3f}x" for _, r in table.iterrows()) + ")")


def plot_speedup_vs_load(df: pd.DataFrame, per_step: Sequence[str], per_row: Sequence[str],
                         metric: str = "throughput_tok_s", title: str = "per-row policies vs the best per-step policy") -> Figure:
    """Each per-row policy's paired ratio (mean ± 95% interval over seeds) over the best per-step policy
    at each load point (log x for concurrency)."""
    axis = load_axis(df)
    ci = ci_table(df, metric).set_index(["policy", axis])
    present = set(df["policy"])
    steps = [p for p in per_step if p in present]
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    loads = sorted(df[axis].unique())
    for name in [p for p in per_row if p in present]:
        pts = [paired_ratio(df, name, max(steps, key=lambda p: ci.loc[(p, load), "mean"]), load, metric, axis=axis)
               for load in loads]
        ax.errorbar(loads, [m for m, _ in pts], yerr=[h for _, h in pts], marker="o", capsize=3, label=name)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    if axis == "concurrency":
        ax.set_xscale("log", base=2)
    ax.set_xlabel(axis_label(axis))
    ax.set_ylabel("throughput / best per-step policy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- why a goal is (not) reachable: the step-cost curve and the acceptance distribution ----------------
def step_cost_table(profile, rows: Sequence[int], tokens_per_row: Sequence[float], context: float | None = None) -> pd.DataFrame:
    """Verify-step milliseconds (`HardwareProfile.verify_step_ms`) by rows x scored tokens per row, plus
    the marginal cost of one more scored token relative to a row's share of the k = 0 step: a draft slot
    pays only if its survival exceeds that ratio (lookups and overhead aside)."""
    out = []
    for n in rows:
        base = profile.verify_step_ms(n, n, context)
        for tpr in tokens_per_row:
            ms = profile.verify_step_ms(n, n * tpr, context)
            out.append({"rows": n, "tokens_per_row": tpr, "verify_ms": ms})
        top = max(tokens_per_row)
        slope = (profile.verify_step_ms(n, n * top, context) - base) / (n * (top - 1)) if top > 1 else float("nan")
        out[-1]["break_even_survival"] = slope / (base / n)
    return pd.DataFrame(out)


def acceptance_distribution(trace, max_k: int) -> pd.DataFrame:
    """Over every output position of `trace`: the share of positions whose max_k proposal had j tokens
    accepted (j = 0..max_k), and the conditional acceptance at depth j (P(j accepted | j - 1 were, the
    proposal reached j)): flat for a geometric drafter, rising for an n-gram that copies spans."""
    acc = np.concatenate([r.accepted[1:, max_k] for r in trace.records])
    dr = np.concatenate([r.drafted[1:, max_k] for r in trace.records])
    rows = []
    for j in range(max_k + 1):
        reach = (dr >= j) & (acc >= j - 1) if j else np.ones_like(dr, bool)
        rows.append({"accepted": j, "share": float((acc == j).mean()),
                     "conditional": float((acc[reach] >= j).mean()) if j and reach.any() else np.nan})
    return pd.DataFrame(rows)


def clairvoyant_bound(trace, profile, max_k: int, rows: Sequence[int], context: float | None = None,
                      drafting: str | None = None) -> pd.DataFrame:
    """Throughput of a per-row policy that knows every row's accepted length in advance (drafts exactly
    the tokens that will be accepted, nothing else), relative to k = 0, per batch size: steps of n rows
    emit n (1 + m) tokens for m = mean accepted at max_k and score as many. No real policy beats it.
    Drafting is priced as `drafting` (the trace's drafter's, e.g. `drafting_of(trace.drafter)`; None:
    the profile's default)."""
    acc = np.concatenate([r.accepted[1:, max_k] for r in trace.records]).astype(float)
    m, drafting_rows = acc.mean(), (acc > 0).mean()
    out = []
    for n in rows:
        t0 = profile.verify_step_ms(n, n, context) + profile.overhead_time_ms(n)
        t1 = (profile.verify_step_ms(n, n * (1 + m), context) + profile.overhead_time_ms(n)
              + profile.plan_draft_time_ms(n, max_k, n * drafting_rows, drafting))
        out.append({"rows": n, "k0_ms": t0, "clairvoyant_ms": t1, "tokens_ratio": 1 + m, "bound_vs_k0": (1 + m) * t0 / t1})
    return pd.DataFrame(out)


def plot_step_cost(table: pd.DataFrame, title: str = "verify step cost") -> Figure:
    """Verify ms against scored tokens per row, one line per batch size (a `step_cost_table`)."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for n, group in table.groupby("rows"):
        ax.plot(group["tokens_per_row"], group["verify_ms"], marker="o", label=f"{n} rows")
    ax.set_xlabel("scored tokens per row (1 = no drafts)")
    ax.set_ylabel("verify ms per step")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_acceptance(dist: pd.DataFrame, title: str = "accepted length at max_k") -> Figure:
    """Share of positions by accepted length and the conditional acceptance by depth (`acceptance_distribution`)."""
    fig = Figure(figsize=(8, 3.5))
    a, b = fig.subplots(1, 2)
    a.bar(dist["accepted"], dist["share"])
    a.set_xlabel("draft tokens accepted (proposal at max_k)")
    a.set_ylabel("share of positions")
    b.plot(dist["accepted"][1:], dist["conditional"][1:], marker="o")
    b.set_ylim(0, 1)
    b.set_xlabel("depth j")
    b.set_ylabel("P(j accepted | j - 1 were)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
