"""What a trace's acceptance looks like: tokens per decode step of each request served at a fixed k
(alone: a row's steps at fixed k do not depend on batching), by family.

A request with output length n emits its first token at prefill (position 0); then a step at
position p accepts a = min(accepted[p, k], n - p - 1) drafts and emits a + 1 tokens, moving to
p + a + 1, until p = n. Tokens per step = (n - 1) / steps (the engine's and the simulator's rule).
"""

from __future__ import annotations

import pandas as pd

from nightjar_rl.sim.trace import Trace, TraceRecord, trace_families


def decode_steps(record: TraceRecord, k: int) -> int:
    """Decode steps of a request served at fixed speculation length k (after its prefill token)."""
    n = len(record)
    p, steps = 1, 0
    accepted = record.accepted[:, k] if k > 0 else None
    while p < n:
        a = 0 if accepted is None else min(int(accepted[p]), n - p - 1)
        p += a + 1
        steps += 1
    return steps


def acceptance_table(trace: Trace, ks: list[int], name: str = "") -> pd.DataFrame:
    """One row per (request, k): workload name, request id, family, output tokens, decode steps and
    tokens per step (requests with fewer than 2 output tokens have no decode step and are left out)."""
    fams = trace_families(trace)
    rows = []
    for rec in trace.records:
        if len(rec) < 2:
            continue
        for k in ks:
            if k > trace.max_k:
                raise ValueError(f"k={k} exceeds the trace's max_k {trace.max_k}")
            steps = decode_steps(rec, k)
            rows.append({"workload": name, "request_id": rec.request_id, "family": fams.get(rec.request_id, ""),
                         "output_tokens": len(rec), "k": k, "steps": steps, "tokens_per_step": (len(rec) - 1) / steps})
    return pd.DataFrame(rows)


def acceptance_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Tokens per step by workload, family and k: requests, mean, p10/p50/p90, and the token-weighted
    mean (all decode tokens over all steps)."""
    g = table.groupby(["workload", "family", "k"], sort=False)
    out = g["tokens_per_step"].agg(requests="size", mean="mean", p10=lambda s: s.quantile(0.1),
                                   p50="median", p90=lambda s: s.quantile(0.9))
    tokens = g.apply(lambda d: float((d["output_tokens"] - 1).sum() / d["steps"].sum()), include_groups=False)
    return out.assign(pooled=tokens).reset_index()
