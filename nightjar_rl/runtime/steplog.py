"""Per-step decision log (`--log-steps FILE`): one tidy row per engine step, written atomically
as .csv or .parquet.

Columns: step, clock (serving clock at the decision, s), batch (rows decoded), queue (requests
waiting), new_arrivals, k, drafted, accepted, emitted (tokens, summed over rows), prefilled
(requests admitted), prefill_tokens, finished, wall_time, draft_time, catchup_time, verify_time,
prefill_time, model_time, overhead_time (s), reward (nan unless learning), and what the step computed,
for fitting a clock model to it (`nightjar-rl profile --from-steps`): scored_tokens (positions the
verify pass scored), context (longest cached row), prefill_padded_tokens, drafting_rows (rows with a
plan length > 0), verify_layout (how the executor laid the forwards out: what scored_tokens and
prefill_padded_tokens count), unverified (drafts a plan choosing by confidence left out; not in drafted).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.io import atomic_writer
from nightjar_rl.runtime.driver import Decision

LOG_SUFFIXES = (".csv", ".parquet")


def check_log_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix not in LOG_SUFFIXES:
        raise ValueError(f"--log-steps must end in .csv or .parquet, got {str(path)!r}")
    return path


def step_row(decision: Decision, stats: StepStats, reward: float = float("nan")) -> dict:
    return dict(
        step=stats.step, clock=decision.clock, batch=decision.batch_size, queue=decision.queue_len,
        new_arrivals=decision.new_arrivals, k=stats.k, drafted=int(sum(stats.drafted)),
        accepted=int(sum(stats.accepted)), emitted=int(sum(stats.emitted)), prefilled=stats.num_prefilled,
        prefill_tokens=stats.prefill_tokens, finished=len(stats.finished_ids), wall_time=stats.wall_time,
        draft_time=stats.draft_time, catchup_time=stats.catchup_time, verify_time=stats.verify_time,
        prefill_time=stats.prefill_time, model_time=stats.model_time, overhead_time=stats.overhead_time,
        reward=reward, scored_tokens=stats.scored_tokens, context=stats.context,
        prefill_padded_tokens=stats.prefill_padded_tokens, drafting_rows=stats.drafting_rows,
        verify_layout=stats.verify_layout, unverified=stats.unverified,
    )


class StepLog:
    """Collects step rows in memory; `write()` saves them atomically (format from the suffix)."""

    def __init__(self, path: str | Path):
        self.path = check_log_path(path)
        self.rows: list[dict] = []

    def record(self, decision: Decision, stats: StepStats, reward: float = float("nan")) -> None:
        self.rows.append(step_row(decision, stats, reward))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(step_row(Decision(0, 0, 0, 0.0), StepStats(0, 0, 0, 0, 0))))

    def write(self) -> Path:
        df = self.frame()
        if self.path.suffix == ".parquet":
            with atomic_writer(self.path, binary=True) as fh:
                df.to_parquet(fh, index=False)
        else:
            with atomic_writer(self.path) as fh:
                df.to_csv(fh, index=False)
        return self.path
