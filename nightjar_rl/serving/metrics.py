"""Summaries of a served workload: throughput, latency percentiles, acceptance."""

from __future__ import annotations

import numpy as np

from nightjar_rl.decoding.scheduler import ABORT, ERROR
from nightjar_rl.serving.session import COMPLETED, REJECTED, ServeResult


def summarize(result: ServeResult) -> dict:
    """Throughput (output tokens/s over the whole run), TTFT/TPOT/e2e p50/p95 (s) of the completed
    requests, acceptance, and how many requests completed, were aborted, failed or were rejected."""
    df, steps = result.requests, result.steps
    reasons = df["finish_reason"].value_counts().to_dict() if len(df) else {}
    done = df[df["finish_reason"].isin(COMPLETED)] if len(df) else df
    out_tokens = int(df["output_tokens"].sum()) if len(df) else 0
    drafted = sum(sum(s.drafted) for s in steps)
    accepted = sum(sum(s.accepted) for s in steps)
    spec_row_steps = sum(sum(1 for d in s.drafted if d > 0) for s in steps)
    row_steps = sum(s.batch_size for s in steps)
    busy = sum(s.wall_time for s in steps)
    overhead = sum(s.overhead_time for s in steps)
    summary = dict(
        requests=len(df),
        completed=len(done),
        aborted=int(reasons.get(ABORT, 0)),
        failed=int(reasons.get(ERROR, 0)),
        rejected=int(reasons.get(REJECTED, 0)),
        output_tokens=out_tokens,
        duration_s=result.duration,
        throughput_tok_s=out_tokens / result.duration if result.duration > 0 else float("nan"),
        steps=len(steps),
        mean_batch=row_steps / len(steps) if steps else 0.0,
        acceptance_rate=accepted / drafted if drafted else float("nan"),
        mean_accepted_length=accepted / spec_row_steps if spec_row_steps else float("nan"),
        tokens_per_row_step=sum(sum(s.emitted) for s in steps) / row_steps if row_steps else float("nan"),
        draft_s=sum(s.draft_time for s in steps),
        catchup_s=sum(s.catchup_time for s in steps),
        verify_s=sum(s.verify_time for s in steps),
        prefill_s=sum(s.prefill_time for s in steps),
        overhead_frac=overhead / busy if busy else float("nan"),
    )
    for col in ("ttft", "tpot", "e2e"):
        values = done[col].to_numpy() if len(done) else np.array([np.nan])
        summary[f"{col}_p50_s"] = float(np.percentile(values, 50))
        summary[f"{col}_p95_s"] = float(np.percentile(values, 95))
    return summary
