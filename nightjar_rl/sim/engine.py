"""`SimEngine`: the engine surface over a trace (tokens) and a hardware profile (time).

It follows the live engine's step exactly: admit queued requests FIFO while a slot is free and the
worst-case KV reservation fits, prefill them (first token), then one decoding round for the rows
that were already running, then retire finished rows. A row at output position p drafts
min(drafted[p, k], remaining - 1) tokens and accepts min(accepted[p, k], drafted) of them, so
per-request accepted lengths equal the live engine's (`tests/test_sim_exactness.py`). For a draft
model it also tracks how far the draft's KV cache lags, so the catch-up after k = 0 is charged as
in the live engine. Only time is modelled:

    wall = prefill + draft + catch-up + verify + overhead
    prefill  = sum over prefill groups of prefill_ms(group rows x longest prompt)
    draft    = k x draft_ms(B) (draft model) or B x ngram_lookup_ms_per_row (n-gram, SSSD)
    catch-up = draft_prefill_ms(B x (largest lag - 1)) when the largest lag exceeds 2
    verify   = verify_ms(B, 1 + max drafted, context = longest row)
    overhead = overhead_ms(B)
    model_time = prefill + verify (+ draft + catch-up for a draft model), as the live engine counts it

Optional synthetic acceptance replaces the trace's tables with draws from per-position acceptance
rates (as vLLM's synthetic rejection sampler takes them), so cost can be studied at a chosen
acceptance: a draft model that always drafts k tokens, whose i-th token is accepted with
probability rates[i] x m given the previous ones were, with a per-request multiplier
m = exp(heterogeneity x N(0, 1)). Draws depend only on the engine seed and the request id.
"""

from __future__ import annotations

import bisect
import zlib
from collections import deque
from dataclasses import dataclass

import numpy as np

from nightjar_rl.decoding.engine import prefill_groups
from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.sim.profile import HardwareProfile
from nightjar_rl.sim.trace import Trace, TraceError

ROW = "sim"  # per-row replay state in Sequence.state


@dataclass(frozen=True)
class SyntheticAcceptance:
    """Per-position acceptance rates (non-increasing, in [0, 1]) and per-request heterogeneity."""

    rates: tuple[float, ...]
    heterogeneity: float = 0.0

    def __post_init__(self) -> None:
        r = self.rates
        if not r or any(not 0.0 <= x <= 1.0 for x in r) or any(b > a for a, b in zip(r, r[1:])):
            raise ValueError(f"synthetic acceptance rates must be a non-empty, non-increasing list in [0, 1], got {list(r)}")
        if not self.heterogeneity >= 0:
            raise ValueError(f"synthetic acceptance heterogeneity must be >= 0, got {self.heterogeneity}")

    @classmethod
    def from_dict(cls, data: dict) -> SyntheticAcceptance:
        unknown = set(data) - {"rates", "heterogeneity"}
        if unknown or "rates" not in data:
            raise ValueError(f"synthetic_acceptance takes {{rates: [...], heterogeneity: x}}, got {data!r}")
        return cls(tuple(float(x) for x in data["rates"]), float(data.get("heterogeneity", 0.0)))

    def tables(self, n: int, max_k: int, seed: int, request_id: str) -> tuple[list, list]:
        rng = np.random.default_rng([seed, zlib.crc32(request_id.encode())])
        rates = np.resize(np.asarray(self.rates), max_k)  # positions past the list repeat its pattern
        if len(self.rates) < max_k:
            rates[len(self.rates):] = self.rates[-1]
        rates = np.minimum(1.0, rates * np.exp(self.heterogeneity * rng.standard_normal()))
        hits = rng.random((n, max_k)) < rates[None, :]
        run = np.where(hits.all(axis=1), max_k, np.argmin(hits, axis=1))  # leading successes
        ks = np.arange(max_k + 1)
        drafted = np.broadcast_to(ks, (n, max_k + 1)).copy()
        accepted = np.minimum(ks[None, :], run[:, None])
        drafted[0] = accepted[0] = 0
        return drafted.tolist(), accepted.tolist()


class _Row:
    """Replay state of one running request."""

    __slots__ = ("output", "limit", "eos", "drafted", "accepted", "pos", "synced")

    def __init__(self, output: list[int], limit: int, eos: bool, drafted: list, accepted: list):
        self.output, self.limit, self.eos = output, limit, eos
        self.drafted, self.accepted = drafted, accepted
        self.pos = 0  # output tokens produced so far
        self.synced = 0  # draft model: tokens of this row in the draft's KV cache


class SimEngine:
    """Drop-in for `SpeculativeEngine` on the engine surface (submit, step, pop_finished, ...)."""

    def __init__(
        self,
        trace: Trace,
        profile: HardwareProfile,
        *,
        max_batch_size: int = 16,
        max_seq_len: int = 1024,
        max_kv_tokens: int | None = None,
        max_speculation: int = 8,
        seed: int = 0,
        synthetic: SyntheticAcceptance | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not 0 <= max_speculation <= trace.max_k:
            raise ValueError(f"max_speculation must be in [0, {trace.max_k}] (the trace's max_k), got {max_speculation}")
        self.trace, self.profile, self.synthetic = trace, profile, synthetic
        self.max_batch_size, self.max_seq_len, self.max_kv_tokens = max_batch_size, max_seq_len, max_kv_tokens
        self.max_speculation = max_speculation
        self.seed = seed
        self.draft_model = synthetic is not None or trace.drafter == "draft"
        self.waiting: deque[Request] = deque()
        self.running: list[Sequence] = []
        self.finished: list[Sequence] = []
        self._known_ids: set[str] = set()
        self._reserved = 0
        self.step_count = 0
        self._memo: dict = {}  # profile lookups by (table, arguments): steps repeat them

    # ---- requests -------------------------------------------------------------------------
    def _reservation(self, req: Request) -> int:
        return len(req.prompt_ids) + req.max_new_tokens + self.max_speculation

    def submit(self, request: Request) -> None:
        """Queue a request whose prompt is in the trace (ValueError otherwise, as the live engine's checks)."""
        rid = request.request_id
        if rid in self._known_ids:
            raise ValueError(f"duplicate request id {rid!r}")
        if not request.prompt_ids:
            raise ValueError(f"request {rid!r} has an empty prompt")
        if request.max_new_tokens < 1:
            raise ValueError(f"request {rid!r}: max_new_tokens must be >= 1")
        if len(request.prompt_ids) + request.max_new_tokens > self.max_seq_len:
            raise ValueError(f"request {rid!r}: prompt of {len(request.prompt_ids)} tokens + {request.max_new_tokens} "
                             f"new tokens exceeds the context of {self.max_seq_len} tokens")
        if self.max_kv_tokens is not None and self._reservation(request) > self.max_kv_tokens:
            raise ValueError(f"request {rid!r} needs {self._reservation(request)} KV tokens, "
                             f"more than max_kv_tokens={self.max_kv_tokens}")
        rec = self.trace.lookup(request.prompt_ids)
        if rec is None:
            raise TraceError(f"request {rid!r}: its prompt is not in the trace (record one for this prompt set)")
        if not rec.eos and request.max_new_tokens > len(rec):
            raise TraceError(f"request {rid!r} may generate {request.max_new_tokens} tokens but the trace recorded "
                             f"only {len(rec)} (max_new_tokens {self.trace.max_new_tokens}); record a longer trace")
        self._known_ids.add(rid)
        self.waiting.append(request)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def pop_finished(self) -> list[Sequence]:
        done, self.finished = self.finished, []
        return done

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _row_state(self, req: Request) -> _Row:
        rec = self.trace.lookup(req.prompt_ids)
        limit = min(len(rec), req.max_new_tokens)
        if self.synthetic is not None:
            drafted, accepted = self.synthetic.tables(limit, self.trace.max_k, self.seed, req.request_id)
        else:
            drafted, accepted = rec.drafted[:limit].tolist(), rec.accepted[:limit].tolist()
        return _Row(rec.output_ids[:limit].tolist(), limit, rec.eos and limit == len(rec), drafted, accepted)

    # ---- the step ---------------------------------------------------------------------------
    def step(self, k: int) -> StepStats:
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= self.max_speculation:
            raise ValueError(f"k must be an int in [0, {self.max_speculation}], got {k!r}")
        decode_rows = list(self.running)
        stats = StepStats(step=self.step_count, k=k, batch_size=len(decode_rows), num_waiting=0, num_prefilled=0)
        self._admit_and_prefill(stats)
        if decode_rows:
            self._decode_round(decode_rows, k, stats)
        stats.finished_ids = self._retire()
        stats.num_waiting = len(self.waiting)
        overhead = self._seconds("overhead", max(1, len(decode_rows)))
        drafting = stats.draft_time + stats.catchup_time
        stats.model_time = stats.prefill_time + stats.verify_time + (drafting if self.draft_model else 0.0)
        stats.wall_time = stats.prefill_time + drafting + stats.verify_time + overhead
        self.step_count += 1
        return stats

    def _admit_and_prefill(self, stats: StepStats) -> None:
        admitted: list[Sequence] = []
        while self.waiting and len(self.running) < self.max_batch_size:
            req = self.waiting[0]
            need = self._reservation(req)
            if self.max_kv_tokens is not None and self._reserved + need > self.max_kv_tokens:
                break  # FIFO: wait for capacity rather than skipping ahead
            self.waiting.popleft()
            self._reserved += need
            seq = Sequence(request=req, tokens=list(req.prompt_ids), slot=len(self.running))
            row = seq.state[ROW] = self._row_state(req)
            self._append(seq, row, 1)
            stats.first_token_ids.append(req.request_id)
            self.running.append(seq)
            admitted.append(seq)
        if not admitted:
            return
        lengths = [s.num_prompt for s in admitted]
        stats.prefill_time = sum(self._seconds("prefill", len(g) * max(lengths[i] for i in g))
                                 for g in prefill_groups(lengths))
        stats.num_prefilled = len(admitted)
        stats.prefill_tokens = sum(lengths)
        stats.prefill_emitted = len(admitted)

    def _decode_round(self, rows: list[Sequence], k: int, stats: StepStats) -> None:
        batch = len(rows)
        max_drafted, context, lag = 0, 0, 0
        for seq in rows:
            row: _Row = seq.state[ROW]
            p = row.pos
            cap = max(0, seq.request.max_new_tokens - p - 1)
            d = min(row.drafted[p][k], cap)
            a = min(row.accepted[p][k], d)
            if k > 0 and self.draft_model:
                lag = max(lag, len(seq.tokens) - row.synced)
                row.synced = len(seq.tokens) + min(a, k - 1)  # what the draft's cache holds after commit
            context = max(context, len(seq.tokens) - 1)
            emitted = self._append(seq, row, a + 1)
            kept = min(a, emitted)
            max_drafted = max(max_drafted, d)
            seq.drafted += d
            seq.accepted += kept
            seq.steps += 1
            stats.request_ids.append(seq.request_id)
            stats.drafted.append(d)
            stats.accepted.append(kept)
            stats.emitted.append(emitted)
        if k > 0:
            stats.draft_time = self._seconds("draft", batch, k)
            if self.draft_model and lag > 2:
                stats.catchup_time = self._seconds("catchup", batch * (lag - 1))
        stats.verify_tokens = 1 + max_drafted
        stats.verify_time = self._verify_seconds(batch, stats.verify_tokens, context)

    def _verify_seconds(self, batch: int, tokens: int, context: int) -> float:
        """Verify time, linear over context between the profile's contexts (clamped), as the profile does."""
        key = ("verify", batch, tokens)
        curve = self._memo.get(key)
        if curve is None:
            ctxs, ms = self.profile.verify_context_curve(batch, tokens)
            curve = self._memo[key] = (ctxs, [m / 1000.0 for m in ms])
        ctxs, secs = curve
        if context <= ctxs[0]:
            return secs[0]
        if context >= ctxs[-1]:
            return secs[-1]
        hi = bisect.bisect_right(ctxs, context)
        c0, c1 = ctxs[hi - 1], ctxs[hi]
        return secs[hi - 1] + (secs[hi] - secs[hi - 1]) * (context - c0) / (c1 - c0)

    def _seconds(self, table: str, *args) -> float:
        """A profile lookup in seconds, memoised."""
        key = (table, *args)
        value = self._memo.get(key)
        if value is None:
            p = self.profile
            fn = {"overhead": p.overhead_time_ms, "prefill": p.prefill_time_ms, "draft": p.draft_time_ms,
                  "catchup": p.draft_prefill_time_ms}[table]
            value = self._memo[key] = fn(*args) / 1000.0
        return value

    @staticmethod
    def _append(seq: Sequence, row: _Row, count: int) -> int:
        """Append the next `count` true tokens (fewer at the end of the output). Returns how many."""
        end = min(row.pos + count, row.limit)
        seq.tokens.extend(row.output[row.pos:end])
        emitted = end - row.pos
        row.pos = end
        if end >= row.limit:
            seq.finish_reason = "eos" if row.eos else "length"
        return emitted

    def _retire(self) -> list[str]:
        if not any(s.finish_reason is not None for s in self.running):
            return []
        leaving = [s for s in self.running if s.finish_reason is not None]
        survivors = [s for s in self.running if s.finish_reason is None]
        n = len(survivors)  # compaction as in the live engine: rows past n move to the lowest free slots
        free = sorted({*range(n)} - {s.slot for s in survivors})
        for seq in survivors:
            if seq.slot >= n:
                seq.slot = free.pop(0)
        self.running = sorted(survivors, key=lambda s: s.slot)
        for seq in leaving:
            self._reserved -= self._reservation(seq.request)
        self.finished += leaving
        return [s.request_id for s in leaving]
