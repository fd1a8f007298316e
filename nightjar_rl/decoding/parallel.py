"""Batch-parallel speculative decoding (PSD, after MineDraft): draft one sub-batch while the target
verifies the other, so a round costs about max(V, t) instead of V + t.

The running rows live in two sub-batches ("halves") of one engine's KV caches: the lower half grows
up from slot 0, the upper half grows down from the last slot, so each half is a consecutive slot
range and compacting one half never moves a row of the other (a row whose drafts await
verification must not move: the draft model's cache already holds its draft tokens).

One `step(k)` gives every running row one round, in two phases:

    phase 1: verify F (drafted last step)  ||  draft S (worker)
    phase 2: verify S                      ||  draft F for the next step (worker)

Balance rule: a new request joins the smaller half (ties: the half drafted first, S). When one half
is empty the step is a standard round (draft, then verify) for the other; as soon as the empty half
gets rows again its drafting overlaps the other's verification and the pipeline is back. k = 0 is
a plain decoding round (one target pass when the halves touch). Drafts made last step with a
larger k are truncated to this step's k (lossless); with a smaller k they are verified as drafted.

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

from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.engine import SpeculativeEngine, prefill_groups
from nightjar_rl.decoding.sequence import Sequence
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.decoding.timing import now
from nightjar_rl.decoding.verify import sample_tokens

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
    """Drop-in replacement for `SpeculativeEngine` (same constructor, `submit`, `step(k)`,
    `StepStats`) that overlaps drafting of one sub-batch with verification of the other.

    Extra arguments: `draft_threads` / `verify_threads` (CPU intra-op threads of the drafting worker /
    of the main thread while a phase overlaps; None splits torch's threads in two), `draft_device` (None,
    "auto" or a device for a separate draft model), `overlap` (False runs each phase's drafting and
    verification back to back: the same work without overlap, for measurements).
    `stats.extra["psd"]` holds the mode, the half sizes and one record per phase.
    Call `close()` (or use it as a context manager) to stop the worker thread.
    """

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
        self._halves: list[list[Sequence]] = [[], []]  # each sorted by slot
        self._pending: _Pending | None = None
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
        return len(self._halves[LOWER]), len(self._halves[UPPER])

    def close(self) -> None:
        """Stop the drafting worker (a later step starts a new one)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # ---- layout -------------------------------------------------------------------------------
    def _drafter_device(self) -> torch.device:
        runner = getattr(self.drafter, "runner", None)
        return runner.device if runner is not None else self.device

    def _sync_running(self) -> None:
        self.running = self._halves[LOWER] + self._halves[UPPER]

    def _route(self) -> int:
        lower, upper = self.halves
        if lower != upper:
            return LOWER if lower < upper else UPPER
        if self._pending is not None:
            return 1 - self._pending.half  # the half drafted first this step
        return LOWER

    def _admit_and_prefill(self, stats: StepStats) -> None:
        admitted: list[list[Sequence]] = [[], []]
        while self.waiting and len(self.running) < self.max_batch_size:
            req = self.waiting[0]
            need = self._reservation(req)
            if self.max_kv_tokens is not None and self._reserved + need > self.max_kv_tokens:
                break  # FIFO, like the standard engine
            self.waiting.popleft()
            self._reserved += need
            half = self._route()
            rows = self._halves[half]
            slot = len(rows) if half == LOWER else self.max_batch_size - len(rows) - 1
            seq = Sequence(request=req, tokens=list(req.prompt_ids), slot=slot)
            if half == LOWER:
                rows.append(seq)
            else:
                rows.insert(0, seq)
            admitted[half].append(seq)
            self._sync_running()
        if not any(admitted):
            return
        t0 = now(self.device)
        for rows in admitted:
            rows = sorted(rows, key=lambda s: s.slot)  # consecutive slots
            for group in prefill_groups([len(s.tokens) for s in rows]):
                part = [rows[i] for i in group]
                logits = self.runner.forward(
                    part[0].slot, [s.tokens for s in part], [0] * len(part), last_only=True
                )
                for seq, token in zip(part, sample_tokens(logits, self.sampling, self.generator)):
                    self._append(seq, [token])
                    stats.first_token_ids.append(seq.request_id)
        stats.prefill_time += now(self.device) - t0
        stats.num_prefilled += sum(len(a) for a in admitted)
        stats.prefill_tokens += sum(s.num_prompt for a in admitted for s in a)
        stats.prefill_emitted += sum(len(a) for a in admitted)

    def _retire_half(self, half: int, stats: StepStats) -> None:
        """Remove finished rows of one half and compact its survivors towards its end of the cache."""
        rows = self._halves[half]
        if not any(s.finished for s in rows):
            return
        survivors = [s for s in rows if not s.finished]
        for seq in rows:
            if seq.finished:
                self._reserved -= self._reservation(seq.request)
                if self.drafter is not None:
                    self.drafter.on_finish(seq)
                self.finished.append(seq)
                stats.finished_ids.append(seq.request_id)
        n = len(survivors)
        span = range(n) if half == LOWER else range(self.max_batch_size - n, self.max_batch_size)
        free = sorted(set(span) - {s.slot for s in survivors})
        pending = {s.request_id for s in self._pending.rows} if self._pending is not None else set()
        for seq in survivors:
            if seq.slot not in span:
                if seq.request_id in pending:
                    raise RuntimeError(
                        f"internal: row {seq.request_id} moved while its drafts await verification"
                    )
                dst = free.pop(0)
                self.runner.cache.move_slot(seq.slot, dst, seq.cached_len)
                if self.drafter is not None:
                    self.drafter.on_move(seq, seq.slot, dst)
                seq.slot = dst
        self._halves[half] = sorted(survivors, key=lambda s: s.slot)
        self._sync_running()

    # ---- the step -------------------------------------------------------------------------------
    def step(self, k: int) -> StepStats:
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= self.max_speculation:
            raise ValueError(f"k must be an int in [0, {self.max_speculation}], got {k!r}")
        if k > 0 and self.drafter is None:
            k = 0
        t_start = now(self.device)
        stats = StepStats(step=self.step_count, k=k, batch_size=0, num_waiting=0, num_prefilled=0)
        self._admit_and_prefill(stats)
        for half in (LOWER, UPPER):  # rows finished by their first token
            self._retire_half(half, stats)
        sizes = self.halves
        if k == 0:
            plan = self._plain_round(stats)
        else:
            plan = self._pipelined_round(k, stats)
        stats.batch_size = len(stats.request_ids)
        stats.num_waiting = len(self.waiting)
        stats.wall_time = now(self.device) - t_start
        self._record(stats, plan, sizes)
        self.step_count += 1
        return stats

    def _plain_round(self, stats: StepStats) -> _StepPlan:
        """k = 0: one target pass per contiguous slot range; pending drafts are dropped (kept 0)."""
        lower, upper = self._halves
        touching = lower and upper and lower[-1].slot + 1 == upper[0].slot
        groups = [lower + upper] if touching else [rows for rows in (lower, upper) if rows]
        for rows in groups:
            empty = DraftProposal(tokens=[[] for _ in rows], probs=[None] * len(rows))
            self._verify_and_commit(rows, 0, empty, stats, rows[0].slot)
        if self._pending is not None:
            pend, self._pending = self._pending, None
            self.drafter.on_commit(pend.rows, self._truncated(pend, 0), [0] * len(pend.rows))
        for half in (LOWER, UPPER):
            self._retire_half(half, stats)
        return _StepPlan("plain")

    def _pipelined_round(self, k: int, stats: StepStats) -> _StepPlan:
        plan = _StepPlan("parallel")
        if self._pending is None:
            lower, upper = self.halves
            if lower + upper == 0:
                return _StepPlan("idle")
            first = LOWER if lower >= upper else UPPER
            rows = list(self._halves[first])
            proposal, elapsed = self._draft(rows, k)
            stats.draft_time += proposal.draft_time
            stats.catchup_time += proposal.catchup_time
            plan.bootstrap_s = elapsed
            self._pending = _Pending(first, rows, proposal, k)
        front = self._pending.half
        back = 1 - front
        # phase 1: verify the front half || draft the back half
        back_rows = list(self._halves[back])
        back_prop = self._phase(back_rows, k, stats, plan)
        self._retire_half(front, stats)
        if back_prop is None:  # the back half is empty: a standard round for the front half
            plan.mode = "fallback"
            return plan
        # phase 2: verify the back half || draft the front half for the next step
        self._pending = _Pending(back, back_rows, back_prop, k)
        front_rows = list(self._halves[front])
        front_prop = self._phase(front_rows, k, stats, plan)
        self._retire_half(back, stats)
        self._pending = _Pending(front, front_rows, front_prop, k) if front_prop is not None else None
        if plan.bootstrap_s:
            plan.mode = "bootstrap"
        return plan

    def _phase(
        self, draft_rows: list[Sequence], k: int, stats: StepStats, plan: _StepPlan
    ) -> DraftProposal | None:
        """Verify the pending half on this thread while the worker drafts `draft_rows`."""
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
            self._verify_and_commit(pend.rows, pend.k, self._truncated(pend, k), stats, pend.rows[0].slot)
            record.verify_s = time.perf_counter() - tv
        proposal = None
        if draft_rows:
            if future is not None:
                proposal, record.draft_s = future.result()
                self._after_draft(proposal)
            else:
                proposal, record.draft_s = self._draft(draft_rows, k)
            stats.draft_time += proposal.draft_time
            stats.catchup_time += proposal.catchup_time
        record.phase_s = time.perf_counter() - t0
        plan.phases.append(record)
        return proposal

    def _truncated(self, pend: _Pending, k: int) -> DraftProposal:
        """The pending drafts cut to at most k tokens per row (timings already accounted)."""
        prop = pend.proposal
        extra = dict(prop.extra)
        if "tree" in extra:
            extra["tree"] = [t.prune_depth(k) for t in extra["tree"]]
        return DraftProposal(tokens=[d[:k] for d in prop.tokens], probs=list(prop.probs), extra=extra)

    # ---- drafting off the main thread -------------------------------------------------------------
    def _draft(self, rows: list[Sequence], k: int) -> tuple[DraftProposal, float]:
        t0 = time.perf_counter()
        if self._draft_stream is not None:
            with torch.cuda.stream(self._draft_stream):
                proposal = self.drafter.propose(rows, k, rows[0].slot, self.sampling, self._draft_generator)
        else:
            proposal = self.drafter.propose(rows, k, rows[0].slot, self.sampling, self._draft_generator)
        return proposal, time.perf_counter() - t0

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
