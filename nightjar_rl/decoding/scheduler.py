"""Continuous-batching scheduler, model-free: who waits, who runs in which KV slot, who leaves.

It owns the waiting queue, the running rows (in slot regions), KV-token reservations, admission
(FIFO, a free slot and the worst-case KV budget, never dropping), aborts, prefill grouping,
retirement and the compaction moves that keep each region in consecutive slots. It never touches
a model or a cache: the engine applies the returned `SlotMove`s to its KV caches (and drafter), so
a simulator can reuse it for identical admission rules.

Slot layout: one region growing up from slot 0 (the standard engine), or two regions, the lower
growing up from 0 and the upper growing down from the last slot (the batch-parallel decoder), so
compacting one region never moves a row of the other.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from nightjar_rl.contracts.plan import PlanError, SpecPlan
from nightjar_rl.decoding.layouts import MIXED_LAYOUT
from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.stats import StepStats

ABORT, ERROR = "abort", "error"  # finish reasons besides "eos" and "length"


class QueueFullError(ValueError):
    """A request was rejected because the waiting queue is at `max_waiting` (retry later)."""

    @classmethod
    def rejecting(cls, request_id: str, backlog: int, max_waiting: int) -> QueueFullError:
        return cls(f"request {request_id!r} rejected: {backlog} requests already waiting beyond the free batch "
                   f"slots (max_waiting={max_waiting})")


def backlog_of(waiting: int, pending: int, max_batch_size: int, running: int) -> int:
    """Requests waiting (plus `pending` about to be submitted) beyond the batch slots free now: what
    `max_waiting` bounds (any engine's)."""
    return max(0, waiting + pending - (max_batch_size - running))


def prefill_groups(lengths: list[int], waste: float = 1.25) -> list[list[int]]:
    """Split admitted rows (in slot order) into consecutive groups whose padded size stays within
    `waste` x their real tokens, so one long prompt does not pad a batch of short ones. One pass: a
    row joins the last group when that group's longest row x its size, with the row, stays within
    `waste` x its tokens."""
    groups: list[list[int]] = []
    longest = total = 0
    for i, n in enumerate(lengths):
        if groups and max(longest, n) * (len(groups[-1]) + 1) <= waste * (total + n):
            groups[-1].append(i)
            longest, total = max(longest, n), total + n
            continue
        groups.append([i])
        longest, total = n, n
    return groups


class SlotMove(NamedTuple):
    """Compaction: `seq` moved from slot `src` to `dst` (its KV entries must follow)."""

    seq: Sequence
    src: int
    dst: int


@dataclass
class Retired:
    """Rows that left the batch (any finish reason) and the moves that compacted the survivors."""

    leaving: list[Sequence] = field(default_factory=list)
    moves: list[SlotMove] = field(default_factory=list)


def _slot_of(seq: Sequence) -> int:
    return seq.slot


class SlotRegion:
    """Rows in consecutive slots anchored at one end of the cache (`up`: from slot 0 upwards, else
    from slot `num_slots - 1` downwards). `rows` is sorted by slot."""

    def __init__(self, num_slots: int, up: bool):
        self.num_slots, self.up = num_slots, up
        self.rows: list[Sequence] = []

    def next_slot(self) -> int:
        return len(self.rows) if self.up else self.num_slots - len(self.rows) - 1

    def add(self, seq: Sequence) -> None:
        seq.slot = self.next_slot()
        if self.up:
            self.rows.append(seq)
        else:
            self.rows.insert(0, seq)

    def compact(self) -> Retired:
        """Drop finished rows; move survivors outside the region's span into its free slots."""
        survivors = [s for s in self.rows if s.finish_reason is None]  # not `finished`: once per row per step
        if len(survivors) == len(self.rows):
            return Retired()
        out = Retired(leaving=[s for s in self.rows if s.finish_reason is not None])
        lo = 0 if self.up else self.num_slots - len(survivors)  # the span: slots lo .. lo + survivors - 1
        hi = lo + len(survivors)
        movers = [s for s in survivors if not lo <= s.slot < hi]  # in slot order, as `rows` is
        if movers:
            used = {s.slot for s in survivors}
            free = [slot for slot in range(lo, hi) if slot not in used]  # ascending, one per mover
            for seq, dst in zip(movers, free):
                out.moves.append(SlotMove(seq, seq.slot, dst))
                seq.slot = dst
            survivors.sort(key=_slot_of)
        self.rows = survivors
        return out


def check_request_fits(request: Request, max_seq_len: int) -> None:
    """ValueError for a request no engine of context `max_seq_len` can serve (empty prompt, no new
    tokens, prompt + new tokens beyond the context)."""
    rid = request.request_id
    if not request.prompt_ids:
        raise ValueError(f"request {rid!r} has an empty prompt")
    if request.max_new_tokens < 1:
        raise ValueError(f"request {rid!r}: max_new_tokens must be >= 1")
    if len(request.prompt_ids) + request.max_new_tokens > max_seq_len:
        raise ValueError(
            f"request {rid!r}: prompt of {len(request.prompt_ids)} tokens + {request.max_new_tokens} "
            f"new tokens exceeds the context of {max_seq_len} tokens"
        )


class Scheduler:
    """Admission, aborts and retirement for `max_batch_size` KV slots in `regions` (1 or 2) regions.

    A request is admitted only when a slot is free and its worst case (prompt + max_new_tokens +
    max_speculation) fits `max_kv_tokens`; the queue is FIFO (no skipping ahead). `max_waiting`
    bounds the backlog, the queued requests the free batch slots cannot take at the next admission:
    `submit` then raises `QueueFullError` instead of growing it. (A burst into an idle batch is not
    rejected while slots are free; the KV budget may still hold admitted-by-slot requests back.)
    """

    def __init__(
        self,
        max_batch_size: int,
        max_seq_len: int,
        max_speculation: int,
        max_kv_tokens: int | None = None,
        max_waiting: int | None = None,
        regions: int = 1,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_speculation < 0:
            raise ValueError(f"max_speculation must be >= 0, got {max_speculation}")
        if max_waiting is not None and (isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 1):
            raise ValueError(f"max_waiting must be a positive int or None, got {max_waiting!r}")
        if regions not in (1, 2):
            raise ValueError(f"regions must be 1 or 2, got {regions!r}")
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        self.max_speculation, self.max_kv_tokens, self.max_waiting = max_speculation, max_kv_tokens, max_waiting
        self.regions = [SlotRegion(max_batch_size, up=i == 0) for i in range(regions)]
        self.waiting: deque[Request] = deque()
        self.finished: list[Sequence] = []  # left the batch, not yet popped
        self.reserved = 0  # KV tokens reserved by running rows
        self._live: set[str] = set()  # ids waiting or running
        self._unpopped: set[str] = set()  # ids finished, not yet popped
        self._aborts: set[str] = set()  # ids to abort at the next step boundary
        self._abort_lock = threading.Lock()  # abort() may come from another thread (a server)

    # ---- state ------------------------------------------------------------------------------
    @property
    def running(self) -> list[Sequence]:
        """Running rows, region by region (lower then upper), each in slot order."""
        if len(self.regions) == 1:
            return self.regions[0].rows
        return [s for r in self.regions for s in r.rows]

    @property
    def num_running(self) -> int:
        regions = self.regions
        return len(regions[0].rows) if len(regions) == 1 else sum(len(r.rows) for r in regions)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting) or self.num_running > 0

    def backlog(self, pending: int = 0) -> int:
        """Queued requests (plus `pending` about to be queued) beyond the batch slots free now: what
        `max_waiting` bounds."""
        return backlog_of(len(self.waiting), pending, self.max_batch_size, self.num_running)

    def reservation(self, req: Request) -> int:
        """KV tokens a request may need at worst."""
        return len(req.prompt_ids) + req.max_new_tokens + self.max_speculation

    # ---- requests ---------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        """ValueError for a request that could never be served (or whose id is in use)."""
        rid = request.request_id
        if rid in self._live or rid in self._unpopped:
            raise ValueError(f"duplicate request id {rid!r}")
        check_request_fits(request, self.max_seq_len)
        need = self.reservation(request)
        if self.max_kv_tokens is not None and need > self.max_kv_tokens:
            raise ValueError(f"request {rid!r} needs {need} KV tokens, more than max_kv_tokens={self.max_kv_tokens}")

    def submit(self, request: Request) -> None:
        """Queue a request: ValueError if it could never be served, QueueFullError if the queue is full."""
        self.check(request)
        if self.max_waiting is not None and self.backlog() >= self.max_waiting:
            raise QueueFullError.rejecting(request.request_id, self.backlog(), self.max_waiting)
        self._live.add(request.request_id)
        self.waiting.append(request)

    def abort(self, request_id: str) -> bool:
        """Ask to abort a queued or running request; it leaves with finish_reason "abort" at the next
        step boundary. False when the id is unknown or the request already finished."""
        if request_id not in self._live:
            return False
        with self._abort_lock:
            self._aborts.add(request_id)
        return True

    def apply_aborts(self) -> list[Sequence]:
        """Step boundary: aborted queued requests leave at once (into `finished`); aborted running rows
        are marked finished ("abort") for the next `retire`. Returns the running rows marked."""
        if not self._aborts:  # read without the lock (once per step): an abort landing now waits one step
            return []
        with self._abort_lock:
            aborts, self._aborts = self._aborts, set()
        aborts &= self._live
        if not aborts:
            return []
        kept: deque[Request] = deque()
        for req in self.waiting:
            if req.request_id in aborts:
                seq = Sequence(request=req, tokens=list(req.prompt_ids), finish_reason=ABORT)
                self._release(seq, reserved=False)
            else:
                kept.append(req)
        self.waiting = kept
        marked = [s for s in self.running if s.request_id in aborts and not s.finished]
        for seq in marked:
            seq.finish_reason = ABORT
        return marked

    # ---- admission and retirement -----------------------------------------------------------
    def admit(self, route: Callable[[], int] | None = None) -> list[Sequence]:
        """Admit queued requests in FIFO order while a slot is free and the KV budget allows.
        `route()` picks the region of each new row (default: the first)."""
        admitted: list[Sequence] = []
        while self.waiting and self.num_running < self.max_batch_size:
            need = self.reservation(self.waiting[0])
            if self.max_kv_tokens is not None and self.reserved + need > self.max_kv_tokens:
                break  # FIFO: wait for capacity rather than skipping ahead
            req = self.waiting.popleft()
            self.reserved += need
            seq = Sequence(request=req, tokens=list(req.prompt_ids))
            self.regions[route() if route is not None else 0].add(seq)
            admitted.append(seq)
        return admitted

    def prefill_batches(self, admitted: list[Sequence], waste: float = 1.25) -> list[list[Sequence]]:
        """Admitted rows as prefill forwards: per region, consecutive slots, padding bounded by `waste`."""
        batches: list[list[Sequence]] = []
        for region in self.regions:
            if len(self.regions) == 1:
                rows = sorted(admitted, key=_slot_of)
            else:
                ids = {id(s) for s in region.rows}
                rows = sorted((s for s in admitted if id(s) in ids), key=_slot_of)
            batches += [[rows[i] for i in g] for g in prefill_groups([len(s.tokens) for s in rows], waste)]
        return batches

    def retire(self, region: int | None = None) -> Retired:
        """Remove finished rows (of one region, or all) into `finished` and compact the survivors."""
        parts = [reg.compact() for i, reg in enumerate(self.regions) if region is None or i == region]
        out = parts[0] if len(parts) == 1 else Retired([s for part in parts for s in part.leaving],
                                                       [m for part in parts for m in part.moves])
        for seq in out.leaving:
            self._release(seq, reserved=True)
        return out

    def _release(self, seq: Sequence, reserved: bool) -> None:
        if reserved:
            self.reserved -= self.reservation(seq.request)
        self._live.discard(seq.request_id)
        with self._abort_lock:
            self._aborts.discard(seq.request_id)
        self._unpopped.add(seq.request_id)
        self.finished.append(seq)

    def pop_finished(self) -> list[Sequence]:
        """Sequences that left since the last call (each returned exactly once)."""
        done, self.finished = self.finished, []
        self._unpopped.clear()
        return done


class ScheduledEngine:
    """The one step loop, shared by the live decoders and the simulator (its executors).

    `step(plan)` is schedule -> run -> postprocess, written once here:

        check the plan against the running rows
        schedule:    apply aborts (retire the aborted rows), admit what fits
        run:         prefill the admitted rows; retire rows finished by their first token (when any did);
                     one decoding round for the rows that were running before the step (`_run`; a live
                     engine with `verify_layout: mixed` runs both in one forward)
        postprocess: retire finished rows, count, time

    An executor (the live model runner in `SpeculativeEngine`, trace replay in `SimEngine`) supplies
    `_prefill`, `_decode` (the round, given each row's speculation length), `_apply_moves` (KV
    compaction) and the step's clock (`_start_clock` / `_stop_clock`). The request side (submit,
    abort, pop_finished) is delegated to `self.scheduler`, so queueing behaves identically too.
    """

    scheduler: Scheduler
    max_speculation: int
    step_count: int
    verify_layout: str  # how the executor's steps lay rows out: "padded", "packed" or "mixed" (`layouts.STEP_LAYOUTS`)

    # ---- the step ---------------------------------------------------------------------------------
    def step(self, plan: SpecPlan | int) -> StepStats:
        """Admit and prefill what fits, then one decoding round in which each row that was running
        drafts up to its plan length (an int k is the uniform plan: every row up to k; 0 = off)."""
        plan = SpecPlan.coerce(plan)
        plan.check(self.max_speculation, (s.request_id for s in self.running))
        if plan.verify_costs is not None and not self.states_confidences:
            raise PlanError("this plan chooses the drafts to verify by the drafter's confidences (verify_costs), "
                            "but this engine's drafter states none")
        clock = self._start_clock()
        stats = StepStats(step=self.step_count, k=0, batch_size=0, num_waiting=0, num_prefilled=0,
                          verify_layout=self.verify_layout)
        decode_rows, admitted = self._schedule(stats)
        stats.context = max([len(s.tokens) for s in decode_rows], default=1) - 1
        if not self.can_draft:
            lengths = [0] * len(decode_rows)
        elif plan.is_uniform:
            lengths = [plan.default] * len(decode_rows)
        else:
            lengths = plan.resolve([s.request.request_id for s in decode_rows])
        stats.k = max(lengths, default=plan.max_length if self.can_draft else 0)
        self._run(decode_rows, lengths, admitted, stats, plan if plan.verify_costs is not None else None)
        self._retire(stats)
        stats.batch_size = len(stats.request_ids)
        stats.num_waiting = len(self.waiting)
        self._stop_clock(clock, stats)
        self.step_count += 1
        return stats

    def _schedule(self, stats: StepStats) -> tuple[list[Sequence], list[Sequence]]:
        """Apply aborts, then admit. Returns (rows decoded this step: those running before admission,
        rows admitted now)."""
        queued = len(self.finished)
        marked = self.scheduler.apply_aborts()
        self._record_leaving(self.finished[queued:], stats)  # aborted while queued
        if marked:
            self._before_abort(marked)
            self._retire(stats)
        decode_rows = list(self.running)
        return decode_rows, self.scheduler.admit(self._route)

    def _retire(self, stats: StepStats, region: int | None = None) -> None:
        """Postprocess: finished rows (of one slot region, or all) leave; survivors are compacted."""
        retired = self.scheduler.retire(region)
        self._apply_moves(retired)
        self._record_leaving(retired.leaving, stats)

    @staticmethod
    def _record_leaving(rows: list[Sequence], stats: StepStats) -> None:
        for seq in rows:
            stats.finished_ids.append(seq.request_id)
            if seq.finish_reason == ABORT:
                stats.aborted_ids.append(seq.request_id)
            elif seq.finish_reason == ERROR:
                stats.failed_ids.append(seq.request_id)

    @property
    def unified_step(self) -> bool:
        """Whether a step runs its prompts in the decoding pass (`verify_layout: mixed`, vLLM's)."""
        return self.verify_layout == MIXED_LAYOUT

    # ---- executor hooks ----------------------------------------------------------------------------
    @property
    def can_draft(self) -> bool:
        """False when there is nothing to draft with (every row then runs at length 0)."""
        return True

    @property
    def states_confidences(self) -> bool:
        """True when the drafter states a confidence per proposed token, so that a plan may choose the
        drafts to verify by them (`SpecPlan.verify_costs`)."""
        return False

    def _route(self) -> int:
        """The slot region of the next admitted row."""
        return 0

    def _before_abort(self, rows: list[Sequence]) -> None:
        """`rows` (running) are about to leave by abort."""

    def _apply_moves(self, retired: Retired) -> None:
        """Rows left and survivors were compacted: move their state (KV entries) accordingly."""

    def _start_clock(self):
        """Called when a step starts; its value is handed to `_stop_clock`."""

    def _stop_clock(self, clock, stats: StepStats) -> None:
        """Set the step's `wall_time` and `model_time` (and anything else timed per step)."""

    def _run(self, decode_rows: list[Sequence], lengths: list[int], admitted: list[Sequence], stats: StepStats,
             selecting: SpecPlan | None) -> None:
        """The step's model work: prefill the admitted rows, retire those their first token finished, then
        one decoding round for `decode_rows` (admitted rows sit in the slots after them, so that
        retirement never moves a decoding row)."""
        self._prefill(admitted, stats)
        # finished by their first token (or failed in prefill); a unified step retires them at its end
        if not self.unified_step and any(s.finish_reason is not None for s in admitted):
            self._retire(stats)
        self._decode(decode_rows, lengths, stats, selecting)

    def _prefill(self, admitted: list[Sequence], stats: StepStats) -> None:
        raise NotImplementedError

    def _prefill_groups(self, admitted: list[Sequence], stats: StepStats) -> list[tuple[list[Sequence], int]]:
        """The admitted rows as prefill forwards (`Scheduler.prefill_batches`), each with the tokens it
        computes (`prefill_size`), their sum recorded in `stats.prefill_padded_tokens`."""
        groups = [(rows, self.prefill_size(rows)) for rows in self.scheduler.prefill_batches(admitted)]
        stats.prefill_padded_tokens += sum(size for _, size in groups)
        return groups

    def scored_size(self, rows: int, longest_draft: int, total_drafted: int) -> int:
        """Positions one verify pass over `rows` rows computes: every row at the longest row's width
        (1 + `longest_draft`) in the `padded` layout, each at its own in the others (rows + drafts)."""
        if self.verify_layout == "padded":
            return rows * (1 + longest_draft)
        return rows + total_drafted

    def prefill_size(self, rows: list[Sequence]) -> int:
        """Tokens one prefill forward over `rows` computes in its linear layers: rows x the longest prompt
        in the `padded` layout, the prompts themselves in the others (`self.verify_layout`; a packed
        forward's attention still pads each row to the longest)."""
        if self.verify_layout == "padded":
            return len(rows) * max(s.num_prompt for s in rows)
        return sum(s.num_prompt for s in rows)

    def _decode(self, rows: list[Sequence], lengths: list[int], stats: StepStats,
                selecting: SpecPlan | None = None) -> None:
        """One decoding round for `rows` (may be none); row i drafts up to `lengths[i]` tokens
        (`stats.k` is already the largest length, or the plan's when no row decodes). `selecting`: the
        plan, when it chooses the drafts to verify by confidence (`SpecPlan.verified_lengths`; the
        drafts left out are counted in `stats.unverified`)."""
        raise NotImplementedError

    # ---- the request side ------------------------------------------------------------------------
    @property
    def waiting(self) -> deque[Request]:
        """Requests queued for admission (FIFO)."""
        return self.scheduler.waiting

    @property
    def running(self) -> list[Sequence]:
        """Rows the next step decodes."""
        return self.scheduler.running

    @property
    def finished(self) -> list[Sequence]:
        """Rows that left and were not popped yet."""
        return self.scheduler.finished

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def backlog(self, pending: int = 0) -> int:
        """Queued requests (plus `pending` about to be queued) beyond the free batch slots."""
        return self.scheduler.backlog(pending)

    def submit(self, request: Request) -> None:
        """Queue a request. ValueError for one that could never be served (or whose id is in use),
        `QueueFullError` (a ValueError) when the backlog is at `max_waiting`."""
        self.scheduler.submit(request)

    def abort(self, request_id: str) -> bool:
        """Abort a queued or running request: at the next step boundary its slot and KV are freed and
        it comes out of `pop_finished` with finish_reason "abort". False if unknown or already finished."""
        return self.scheduler.abort(request_id)

    def pop_finished(self) -> list[Sequence]:
        """Sequences finished since the last call (each returned exactly once)."""
        return self.scheduler.pop_finished()

    def close(self) -> None:
        """Release background resources (none by default; decoders with worker threads stop them)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
