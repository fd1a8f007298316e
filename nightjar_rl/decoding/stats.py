"""`StepStats`: what one engine step did and what it cost. Everything downstream consumes these."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np


@dataclass
class StepStats:
    """One engine step: prefill of newly admitted requests, then one decoding round for the batch.

    Times are seconds of wall clock measured around the work (device synchronised on CUDA).
    Per-row lists are aligned with `request_ids` (the rows decoded this step, in batch order).
    """

    step: int
    k: int  # largest speculation length the plan gave a decoded row (0 = off for every row)
    batch_size: int  # rows decoded in this step's round (running before the step; len(request_ids))
    num_waiting: int  # requests still queued after admission
    num_prefilled: int  # requests admitted (prefilled) this step
    request_ids: list[str] = field(default_factory=list)
    plan: list[int] = field(default_factory=list)  # speculation length each row was given (its plan entry)
    drafted: list[int] = field(default_factory=list)  # draft tokens proposed per row
    accepted: list[int] = field(default_factory=list)  # draft tokens accepted and kept per row (bonus excluded)
    emitted: list[int] = field(default_factory=list)  # tokens appended per row (after EOS/max truncation)
    # full information (empty when the executor cannot tell): per row, the draft tokens the drafter had
    # for this position at max_speculation (capped by the row's budget) whatever its plan entry, and how
    # many of them the target's output confirmed; known at no verify cost, also for rows planned k = 0
    shadow_drafted: list[int] = field(default_factory=list)
    shadow_accepted: list[int] = field(default_factory=list)
    prefill_tokens: int = 0  # prompt tokens prefilled this step
    prefill_emitted: int = 0  # first tokens produced by prefill
    first_token_ids: list[str] = field(default_factory=list)  # requests that got their first token
    finished_ids: list[str] = field(default_factory=list)  # requests that left this step (any finish_reason)
    aborted_ids: list[str] = field(default_factory=list)  # of those, aborted (finish_reason "abort")
    failed_ids: list[str] = field(default_factory=list)  # of those, failed (finish_reason "error")
    draft_failures: int = 0  # rows whose drafting raised this step (they run undrafted, k = 0)
    unverified: int = 0  # draft tokens drafted but left unverified (a plan choosing by confidence; not in drafted)
    prefill_time: float = 0.0
    draft_time: float = 0.0  # drafting proper (excludes catch-up)
    catchup_time: float = 0.0  # draft model re-syncing its KV cache after a lag (switching cost)
    verify_time: float = 0.0  # target forward over k+1 positions per row
    wall_time: float = 0.0  # whole step, including bookkeeping
    model_time: float = 0.0  # time inside model forwards (target + draft model), summed over threads
    verify_tokens: int = 0  # positions scored per row in the verify pass (1 + max drafted)
    scored_tokens: int = 0  # positions the verify pass computed over all rows (padded: rows x verify_tokens)
    context: int = 0  # longest cached context among the decoded rows before the step (tokens)
    prefill_padded_tokens: int = 0  # tokens the prefill forwards computed (padded: rows x longest prompt each)
    verify_layout: str = ""  # how the executor laid this step's forwards out (padded, packed, mixed; "" unknown)
    extra: dict = field(default_factory=dict)  # decoder-specific detail (e.g. sub-batches)

    @property
    def tokens_out(self) -> int:
        """Output tokens produced by this step (decode round plus prefill first tokens)."""
        return int(sum(self.emitted)) + self.prefill_emitted

    @property
    def drafting_rows(self) -> int:
        """Rows the plan gave a length > 0 (what model-free drafting pays a lookup for)."""
        return sum(k > 0 for k in self.plan)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted draft tokens this step (nan when nothing was drafted)."""
        d = sum(self.drafted)
        return float(sum(self.accepted)) / d if d else float("nan")

    @property
    def overhead_time(self) -> float:
        """Time outside model forwards: scheduling, input/mask building, n-gram lookup, accept/reject.
        Clamped at 0; when drafting overlaps verification (batch-parallel decoder) `model_time` sums
        both threads, so this is a lower bound."""
        return max(0.0, self.wall_time - self.model_time)

    def accept_histogram(self, max_len: int | None = None) -> np.ndarray:
        """Counts of rows by accepted length 0..max_len (rows that drafted nothing are not counted)."""
        size = (self.k if max_len is None else max_len) + 1
        hist = np.zeros(size, dtype=np.int64)
        for d, a in zip(self.drafted, self.accepted):
            if d > 0:
                hist[min(a, size - 1)] += 1
        return hist

    def as_row(self) -> dict:
        """Flat record for tables (per-row lists summarised)."""
        row = {name: getattr(self, name) for name in _SCALAR_FIELDS}
        drafted = sum(self.drafted)
        row.update(
            drafted=int(drafted),
            accepted=int(sum(self.accepted)),
            tokens_out=self.tokens_out,
            acceptance_rate=float(sum(self.accepted)) / drafted if drafted else float("nan"),
            overhead_time=self.overhead_time,
            num_finished=len(self.finished_ids),
            num_aborted=len(self.aborted_ids),
            num_failed=len(self.failed_ids),
            drafting_rows=self.drafting_rows,
        )
        return row


_LIST_FIELDS = ("request_ids", "plan", "drafted", "accepted", "emitted", "shadow_drafted", "shadow_accepted",
                "first_token_ids", "finished_ids", "aborted_ids", "failed_ids", "extra")
_SCALAR_FIELDS = tuple(f.name for f in fields(StepStats) if f.name not in _LIST_FIELDS)
