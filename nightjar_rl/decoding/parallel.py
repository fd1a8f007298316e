"""Batch-parallel speculative decoding (PSD, after MineDraft): draft one sub-batch while the target
verifies the other, so a round costs about max(V, t) instead of V + t.

The running rows live in two sub-batches ("halves") of one engine's KV caches: the lower half grows
up from slot 0, the upper half grows down from the last slot, so each half is a consecutive slot
range and compacting one half never moves a row of the other (a row whose drafts await
verification must not move: the draft model's cache already holds its draft tokens).

One `step(plan)` gives every running row one round, in two phases:

    phase 1: verify F (drafted last step)  ||  draft S (worker)
    phase 2: verify S                      ||  draft F for the next step (worker)

Like the standard engine, a step decodes the rows that were running before it; rows admitted in it
are only prefilled (and may be drafted for the next step). Admission, retirement and compaction are
the shared `Scheduler`'s, with two slot regions (the halves).

Balance rule: a new request joins the smaller half (ties: the half drafted first, S). When one half
has no row to decode the step is a standard round (draft, then verify) for the other; as soon as
it has rows to decode again its drafting overlaps the other's verification and the pipeline is back. k = 0 is
a plain decoding round (one target pass when the halves touch). Per-row plans: a row is drafted
with its plan length (rows admitted this step, drafted ahead for the next, with the step's largest);
drafts are truncated to the plan length of the step that verifies them (lossless); drafts shorter
than that are verified as drafted.

Overlap: on CPU the drafter runs in one worker thread (its own torch intra-op thread count: torch's
OpenMP setting is per thread, and threads started later inherit the last value set); on CUDA on its
own stream (or its own GPU, `draft_device`), ordered against the target's stream with wait_stream.
Drafters must tolerate `on_commit` of one half running while `propose` runs for the other (state
kept per row in `Sequence.state` is fine); `on_finish`/`on_move` never run concurrently with it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from nightjar_rl.contracts.plan import SpecPlan
from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.engine import SpeculativeEngine
from nightjar_rl.decoding.scheduler import Retired
from nightjar_rl.decoding.sequence import Sequence
from nightjar_rl.decoding.stats import StepStats

LOWER, UPPER = 0, 1
WORKER_PREFIX = "psd-draft"
PARALLEL_OPTIONS = (
    "draft_threads",
    "verify_threads",
    "draft_device",
    "overlap",
)  # extra constructor arguments


@dataclass
class _Pending:
    """Drafts made for the rows of one half, awaiting verification."""

    half: int
    rows: list[Sequence]
    proposal: DraftProposal
    k: int


@dataclass
class PhaseRecord:
    """Timing of one phase: `verify_s` on the main thread, `draft_s` in the worker, `phase_s` both."""

    verify_half: int | None
    verify_rows: int
    draft_half: int | None
    draft_rows: int
    verify_s: float = 0.0
    draft_s: float = 0.0
    phase_s: float = 0.0

    @property
    def overlap_s(self) -> float:
        """Time hidden by running both at once (0 when run back to back)."""
        return max(0.0, self.verify_s + self.draft_s - self.phase_s)


@dataclass
class _StepPlan:
    mode: str
    phases: list[PhaseRecord] = field(default_factory=list)
    bootstrap_s: float = 0.0


def _shares_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ids = {p.data_ptr() for p in a.parameters()}
    return any(p.data_ptr() in ids for p in b.parameters())


def resolve_draft_device(
    target: torch.nn.Module, drafter: Drafter | None, draft_device
) -> torch.device | None:
    """`"auto"`: a second GPU for a separate draft model when the target is on CUDA and one is present;
    None: leave the drafter where it is; else the device asked for (checked)."""
    model = getattr(drafter, "model", None)
    target_dev = next(target.parameters()).device
    if draft_device is None:
        return None
    if draft_device == "auto":
        if model is None or target_dev.type != "cuda" or torch.cuda.device_count() < 2:
            return None
        if _shares_weights(target, model):
            return None
        return torch.device("cuda", ((target_dev.index or 0) + 1) % torch.cuda.device_count())
    dev = torch.device(draft_device)
    if model is None:
        raise ValueError(
            "draft_device needs a drafter with its own model (the n-gram drafters run on the host)"
        )
    if dev != next(model.parameters()).device and _shares_weights(target, model):
        raise ValueError("an early-exit draft shares the target's weights and cannot move to another device")
    return dev


class ParallelBatchDecoder(SpeculativeEngine):
    """Drop-in replacement for `SpeculativeEngine` (same constructor, `submit`, `step(plan)`,
    `StepStats`) that overlaps drafting of one sub-batch with verification of the other.

    Extra arguments: `draft_threads` / `verify_threads` (CPU intra-op threads of the drafting worker /
    of the main thread while a phase overlaps; None splits torch's threads in two), `draft_device` (None,
    "auto" or a device for a separate draft model), `overlap` (False runs each phase's drafting and
    verification back to back: the same work without overlap, for measurements).
    `stats.extra["psd"]` holds the mode, the half sizes and one record per phase.
    Call `close()` (or use it as a context manager) to stop the worker thread.
    """

    REGIONS = 2  # the lower and upper half

    def __init__(
        self,
        target: torch.nn.Module,
        drafter: Drafter | None = None,
        *,
        draft_threads: int | None = None,
        verify_threads: int | None = None,
        draft_device: str | torch.device | None = "auto",
        overlap: bool = True,
        **engine_kwargs,
    ):
        for name, value in (("draft_threads", draft_threads), ("verify_threads", verify_threads)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        dev = resolve_draft_device(target, drafter, draft_device)
        if dev is not None:
            drafter.model.to(dev)
        super().__init__(target, drafter, **engine_kwargs)
        if self.device.type == "cpu":  # default: split the cores (measured best here: 1 + 1 of 2)
            total = torch.get_num_threads()
            draft_threads = draft_threads or max(1, total // 2)
            verify_threads = verify_threads or max(1, total - draft_threads)
        self.draft_threads, self.verify_threads, self.overlap = draft_threads, verify_threads, overlap
        self._pending: _Pending | None = None
        self._decoding: dict[str, int] = {}  # the rows this step decodes: id -> plan length
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        draft_dev = self._drafter_device()
        self._draft_generator = torch.Generator(device=draft_dev).manual_seed(
            engine_kwargs.get("seed", 0) + 1
        )
        self._draft_stream = torch.cuda.Stream(device=draft_dev) if draft_dev.type == "cuda" else None

    # ---- public extras ------------------------------------------------------------------------
    @property
    def halves(self) -> tuple[int, int]:
        """Rows in the lower and upper sub-batch."""
        lower, upper = self._halves
        return len(lower), len(upper)

    def close(self) -> None:
        """Stop the drafting worker (a later step starts a new one)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # ---- layout -------------------------------------------------------------------------------
    @property
    def _halves(self) -> list[list[Sequence]]:
        """Rows of the lower and upper half, each sorted by slot."""
        return [region.rows for region in self.scheduler.regions]

    def _drafter_device(self) -> torch.device:
        runner = getattr(self.drafter, "runner", None)
        return runner.device if runner is not None else self.device

    def _route(self) -> int:
        lower, upper = self.halves
        if lower != upper:
            return LOWER if lower < upper else UPPER
        if self._pending is not None:
            return 1 - self._pending.half  # the half drafted first this step
        return LOWER

    def _to_decode(self, half: int) -> list[Sequence]:
        """Rows of one half decoded this step (running before it: a consecutive slot range)."""
        return [s for s in self._halves[half] if s.request_id in self._decoding]

    def _before_abort(self, rows: list[Sequence]) -> None:
        """Drafts awaiting verification are dropped when one of their rows is aborted (its half is
        compacted now, and a row with pending drafts must not move)."""
        if self._pending is not None and {s.request_id for s in rows} & {s.request_id for s in self._pending.rows}:
            self._drop_pending()

    def _drop_pending(self) -> None:
        """Forget the pending drafts (kept 0: lossless, the drafter is told)."""
        pend, self._pending = self._pending, None
        if pend is not None and pend.k > 0:
            self.drafter.on_commit(pend.rows, self._truncated(pend, [0] * len(pend.rows)), [0] * len(pend.rows))

    def _apply_moves(self, retired: Retired) -> None:
        """A row whose drafts await verification must never move (the draft cache holds its drafts)."""
        pending = {s.request_id for s in self._pending.rows} if self._pending is not None else set()
        for move in retired.moves:
            if move.seq.request_id in pending:
                raise RuntimeError(f"internal: row {move.seq.request_id} moved while its drafts await verification")
        super()._apply_moves(retired)

    # ---- the round ------------------------------------------------------------------------------
    @property
    def states_confidences(self) -> bool:
        return False  # drafts of the other half are verified a step later: nothing to choose after drafting

    def _decode(self, rows: list[Sequence], lengths: list[int], stats: StepStats,
                selecting: SpecPlan | None = None) -> None:
        self._decoding = {s.request_id: n for s, n in zip(rows, lengths)}
        sizes = self.halves
        k = stats.k  # the largest length (the plan's own when no row decodes: drafting ahead uses it)
        plan = self._plain_round(stats) if k == 0 else self._pipelined_round(k, stats)
        self._decoding = {}
        self._record(stats, plan, sizes)

    def _plain_round(self, stats: StepStats) -> _StepPlan:
        """k = 0: one target pass per contiguous slot range; pending drafts are dropped (kept 0)."""
        lower, upper = self._to_decode(LOWER), self._to_decode(UPPER)
        touching = lower and upper and lower[-1].slot + 1 == upper[0].slot
        groups = [lower + upper] if touching else [rows for rows in (lower, upper) if rows]
        for rows in groups:
            self._verify_and_commit(rows, [0] * len(rows), DraftProposal.empty(len(rows)), stats, rows[0].slot)
        self._drop_pending()
        for half in (LOWER, UPPER):
            self._retire(stats, half)
        return _StepPlan("plain")

    def _pipelined_round(self, k: int, stats: StepStats) -> _StepPlan:
        plan = _StepPlan("parallel")
        if self._pending is None:
            lower, upper = len(self._to_decode(LOWER)), len(self._to_decode(UPPER))
            if lower + upper == 0:
                return _StepPlan("idle")
            first = LOWER if lower >= upper else UPPER
            rows = self._to_decode(first)
            proposal, elapsed, error = self._draft(rows, k)
            plan.bootstrap_s = elapsed
            self._pending = self._settle(first, rows, k, proposal, error, stats)
        front = self._pending.half
        back = 1 - front
        # phase 1: verify the front half || draft the back half
        back_rows = self._to_decode(back)
        back_pending = self._phase(back_rows, k, stats, plan)
        self._retire(stats, front)
        if back_pending is None:  # the back half has nothing to decode: a standard round for the front
            plan.mode = "fallback"
            return plan
        # phase 2: verify the back half || draft the front half (all its rows) for the next step
        self._pending = back_pending
        front_rows = list(self._halves[front])
        self._pending = self._phase(front_rows, k, stats, plan)
        self._retire(stats, back)
        if plan.bootstrap_s:
            plan.mode = "bootstrap"
        return plan

    def _phase(self, draft_rows: list[Sequence], k: int, stats: StepStats, plan: _StepPlan) -> _Pending | None:
        """Verify the pending half on this thread while the worker drafts `draft_rows` (of the other half)."""
        pend, self._pending = self._pending, None
        record = PhaseRecord(pend.half, len(pend.rows), None, len(draft_rows))
        if draft_rows:
            record.draft_half = 1 - pend.half
        t0 = time.perf_counter()
        future: Future | None = None
        if draft_rows and self.overlap:
            future = self._submit_draft(draft_rows, k)
        with self._verify_thread_count(future is not None):
            tv = time.perf_counter()
            lengths = [self._decoding[s.request_id] for s in pend.rows]
            self._verify_and_commit(pend.rows, lengths, self._truncated(pend, lengths), stats, pend.rows[0].slot,
                                    drafted=pend.k > 0)
            record.verify_s = time.perf_counter() - tv
        drafted = None
        if draft_rows:
            if future is not None:
                proposal, record.draft_s, error = future.result()
                if proposal is not None:
                    self._after_draft(proposal)
            else:
                proposal, record.draft_s, error = self._draft(draft_rows, k)
            drafted = self._settle(1 - pend.half, draft_rows, k, proposal, error, stats)
        record.phase_s = time.perf_counter() - t0
        plan.phases.append(record)
        return drafted

    def _settle(
        self, half: int, rows: list[Sequence], k: int, proposal: DraftProposal | None, error: Exception | None,
        stats: StepStats,
    ) -> _Pending:
        """Drafts made for one half, awaiting verification; a failed drafter leaves them undrafted (k = 0)."""
        if proposal is None:
            self._draft_failed(len(rows), error, stats)
            return _Pending(half, rows, DraftProposal.empty(len(rows)), 0)
        stats.draft_time += proposal.draft_time
        stats.catchup_time += proposal.catchup_time
        return _Pending(half, rows, proposal, k)

    def _truncated(self, pend: _Pending, lengths: list[int]) -> DraftProposal:
        """The pending drafts cut to at most lengths[i] tokens for row i (timings already accounted)."""
        prop = pend.proposal
        extra = dict(prop.extra)
        if "tree" in extra:
            extra["tree"] = [t.prune_depth(n) for t, n in zip(extra["tree"], lengths)]
        return DraftProposal(tokens=[d[:n] for d, n in zip(prop.tokens, lengths)], probs=list(prop.probs), extra=extra)

    def _draft_lengths(self, rows: list[Sequence], k: int) -> list[int]:
        """Lengths to draft `rows` with: their plan entry this step; rows admitted this step (verified
        next step, truncated then to that step's plan) get the step's largest length k."""
        return [self._decoding.get(s.request_id, k) for s in rows]

    # ---- drafting off the main thread -------------------------------------------------------------
    def _draft(self, rows: list[Sequence], k: int) -> tuple[DraftProposal | None, float, Exception | None]:
        """Propose for `rows` (any thread). Returns (proposal or None if the drafter raised, seconds, error)."""
        t0 = time.perf_counter()
        try:
            if self._draft_stream is not None:
                with torch.cuda.stream(self._draft_stream):
                    proposal = self.drafter.propose(rows, self._draft_lengths(rows, k), rows[0].slot, self.sampling,
                                                    self._draft_generator)
            else:
                proposal = self.drafter.propose(rows, self._draft_lengths(rows, k), rows[0].slot, self.sampling,
                                                self._draft_generator)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread, rows go undrafted
            return None, time.perf_counter() - t0, exc
        return proposal, time.perf_counter() - t0, None

    def _submit_draft(self, rows: list[Sequence], k: int) -> Future:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=WORKER_PREFIX, initializer=self._init_worker
                )
            executor = self._executor
        if self._draft_stream is not None:
            # the draft stream must see everything queued so far (KV moves, prefill, commits)
            for dev in {self.device, self._draft_stream.device}:
                self._draft_stream.wait_stream(torch.cuda.current_stream(dev))
        return executor.submit(self._draft, rows, k)

    def _after_draft(self, proposal: DraftProposal) -> None:
        """Order the target's stream after the drafts (their probs are read there)."""
        if self._draft_stream is None:
            return
        for dev in {self.device, self._draft_stream.device}:
            stream = torch.cuda.current_stream(dev)
            stream.wait_stream(self._draft_stream)
        main = torch.cuda.current_stream(self.device)
        for p in proposal.probs:
            if p is not None and p.device.type == "cuda" and p.device == main.device:
                p.record_stream(main)

    def _init_worker(self) -> None:
        if self.draft_threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.draft_threads)

    @contextmanager
    def _verify_thread_count(self, overlapping: bool):
        """While a phase overlaps on CPU, run the target with `verify_threads` intra-op threads."""
        saved = torch.get_num_threads()
        if overlapping and self.verify_threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.verify_threads)
        try:
            yield
        finally:
            if torch.get_num_threads() != saved:
                torch.set_num_threads(saved)

    # ---- statistics ----------------------------------------------------------------------------------
    def _record(self, stats: StepStats, plan: _StepPlan, sizes: tuple[int, int]) -> None:
        phases = plan.phases
        seq = sum(p.verify_s + p.draft_s for p in phases)
        ideal = sum(max(p.verify_s, p.draft_s) for p in phases)
        par = sum(p.phase_s for p in phases)
        stats.extra["psd"] = {
            "mode": plan.mode,
            "halves": sizes,
            "bootstrap_s": plan.bootstrap_s,
            "phases": [dict(vars(p), overlap_s=p.overlap_s) for p in phases],
        }
        stats.extra.update(
            psd_mode=plan.mode,
            psd_phase_s=par,
            psd_sequential_s=seq,
            psd_ideal_s=ideal,
            psd_overlap_s=sum(p.overlap_s for p in phases),
        )
