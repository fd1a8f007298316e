"""`SimEngine`: the engine surface over a trace (tokens) and a hardware profile (time).

It is the trace-replay executor of the live engine's own step loop (`ScheduledEngine.step`):
admission, aborts, the step order and retirement are shared code, not a copy. A row at output
position p with plan length k drafts min(drafted[p, k], remaining - 1) tokens and accepts
min(accepted[p, k], drafted) of them, so per-request accepted lengths equal the live engine's for
any per-row plan (`tests/test_sim_exactness.py`). Every row also reports full information (`StepStats.shadow_drafted`,
`shadow_accepted`: the whole max_speculation proposal at its position and how much of it the trace's
output confirms), whatever its plan entry, k = 0 included. For a draft model (which drafts the whole batch
k_max = the largest plan length times) it also tracks how far the draft's KV cache lags, so the
catch-up after k = 0 is charged as in the live engine. Only time is modelled:

    wall = prefill + draft + catch-up + verify + overhead
    prefill  = sum over prefill groups of prefill_ms(the group's tokens: rows x longest prompt when
               padded, its prompts' tokens when packed); layout mixed: one prefill_ms(summed prompt
               tokens), less prefill_ms(1) when the step also decodes (the prompts ride in the decoding
               pass, vLLM's unified step: its weight reads are not repeated)
    draft    = k_max x draft_ms(B) (draft model) or D x ngram_lookup_ms_per_row (n-gram, SSSD;
               D = rows with a plan length > 0)
    catch-up = draft_prefill_ms(F), F = `layouts.catchup_tokens`, when the largest lag exceeds 2: B x
               (largest lag - 1) when padded, the sum of max(1, lag - 1) over the rows when packed or
               mixed (each row feeds the tokens its draft cache misses but the last, a row with none
               one dummy position, as the live engine's forward does); with `draft_catchup: folded`
               no pass of its own: the first drafting pass computes B + F positions, and draft gains
               max(0, draft_prefill_ms(B + F) - draft_ms(B)) (`HardwareProfile.catchup_time_ms`)
    verify   = verify_ms(B, tokens per row, context = longest row, `StepStats.context`), tokens per row by layout:
               padded: 1 + max drafted; packed (default), mixed: (B + sum drafted) / B (the live engine's
               `verify_layout`; `scored_tokens` is what the layout computes)
    overhead = overhead_ms(B)
    model_time = prefill + verify (+ draft + catch-up for a draft model), as the live engine counts it

Optional synthetic acceptance replaces the trace's tables with draws from per-position acceptance
rates (as vLLM's synthetic rejection sampler takes them), so cost can be studied at a chosen
acceptance: a drafter that always drafts k tokens, whose i-th token is accepted with
probability rates[i] x m given the previous ones were, with a per-request multiplier
m = exp(heterogeneity x N(0, 1)), priced as the scenario's drafter kind prices drafting (a draft
model's forward passes, or lookups for a model-free drafter such as the n-gram). With
`confidence_concentration` = kappa the drafter also states a calibrated confidence for every token it
proposes (a draft model's token probability, a suffix tree's frequency): token i's is drawn from
Beta(mu kappa, (1 - mu) kappa), mu = min(1, rates[i] x m), and the token is accepted with that
probability, so the rates are unchanged on average and a smaller kappa makes the confidences sharper (kappa -> 0: each is 0 or 1, the outcome
itself; kappa -> inf: all equal the rate, no information). The confidences of each row's next proposal
are reported by `proposal_confidences()`, and a plan may choose the drafts to verify by them
(`SpecPlan.verify_costs`: each row drafts its plan length, priced as such, and verifies what the plan
chooses). Draws depend only on the engine seed and the request id.
"""

from __future__ import annotations

import bisect
import warnings
import zlib
from dataclasses import dataclass

import numpy as np

from nightjar_rl.contracts.plan import SpecPlan
from nightjar_rl.decoding.drafters.registry import drafter_kind
from nightjar_rl.decoding.layouts import (
    DEFAULT_DRAFT_CATCHUP,
    DEFAULT_VERIFY_LAYOUT,
    MIXED_LAYOUT,
    STEP_LAYOUTS,
    catchup_tokens,
    check_draft_catchup,
    prices_alike,
)
from nightjar_rl.decoding.scheduler import ScheduledEngine, Scheduler
from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.hardware import DRAFT_MODEL, DRAFTING, LOOKUP, HardwareProfile
from nightjar_rl.sim.trace import Trace, TraceError, TraceRecord, replay_table

ROW = "sim"  # per-row replay state in Sequence.state


@dataclass(frozen=True)
class SyntheticAcceptance:
    """Per-position acceptance rates (non-increasing, in [0, 1]) and per-request heterogeneity. `cost`: how
    drafting is priced, the scenario's drafter kind's (`DrafterKind.cost`): a draft model's, or a model-free
    lookup's (a drafter proposing at this acceptance with no forward pass of its own, e.g. an n-gram)."""

    rates: tuple[float, ...]
    heterogeneity: float = 0.0
    cost: str = DRAFT_MODEL
    confidence_concentration: float | None = None  # Beta concentration kappa of the stated confidences; None: none

    def __post_init__(self) -> None:
        r = self.rates
        if not r or any(not 0.0 <= x <= 1.0 for x in r) or any(b > a for a, b in zip(r, r[1:])):
            raise ValueError(f"synthetic acceptance rates must be a non-empty, non-increasing list in [0, 1], got {list(r)}")
        if not self.heterogeneity >= 0:
            raise ValueError(f"synthetic acceptance heterogeneity must be >= 0, got {self.heterogeneity}")
        if self.cost not in DRAFTING:
            raise ValueError(f"synthetic acceptance cost must be {DRAFT_MODEL!r} or {LOOKUP!r}, got {self.cost!r}")
        kappa = self.confidence_concentration
        if kappa is not None and not kappa > 0:
            raise ValueError(f"synthetic acceptance confidence_concentration (a Beta concentration) must be > 0, got {kappa}")

    @classmethod
    def from_dict(cls, data: dict, drafter: str = "draft") -> SyntheticAcceptance:
        """From a scenario's `synthetic_acceptance`, priced as the scenario's `drafter` kind."""
        unknown = set(data) - {"rates", "heterogeneity", "confidence_concentration"}
        if unknown or "rates" not in data:
            raise ValueError(f"synthetic_acceptance takes {{rates: [...], heterogeneity: x, confidence_concentration: kappa}}, "
                             f"got {data!r}")
        cost = drafter_kind(drafter).cost
        if cost not in DRAFTING:
            raise ValueError(f"synthetic_acceptance needs a drafter that drafts, got drafter {drafter!r}")
        kappa = data.get("confidence_concentration")
        return cls(tuple(float(x) for x in data["rates"]), float(data.get("heterogeneity", 0.0)), cost,
                   None if kappa is None else float(kappa))

    def tables(self, n: int, max_k: int, seed: int, request_id: str) -> tuple[list, list, np.ndarray | None]:
        """(drafted, accepted) tables of a request's first `n` positions (`replay_table`'s input) and
        the confidences stated for each position's proposal ([n, max_k]; None without `confidence_concentration`)."""
        rng = np.random.default_rng([seed, zlib.crc32(request_id.encode())])
        rates = np.array((self.rates + self.rates[-1:] * max_k)[:max_k])  # positions past the list take its last rate
        rates = np.minimum(1.0, rates * np.exp(self.heterogeneity * rng.standard_normal()))
        confidences = None
        kappa = self.confidence_concentration
        if kappa is None:
            hits = rng.random((n, max_k)) < rates[None, :]
        else:  # calibrated: drawn around the rate, then the token survives with its own confidence
            mu = np.clip(rates, 1e-6, 1.0 - 1e-6)
            confidences = rng.beta(mu * kappa, (1.0 - mu) * kappa, size=(n, max_k))
            confidences[:, rates >= 1.0] = 1.0
            hits = rng.random((n, max_k)) < confidences
        run = np.where(hits.all(axis=1), max_k, np.argmin(hits, axis=1))  # leading successes
        ks = np.arange(max_k + 1)
        drafted = np.broadcast_to(ks, (n, max_k + 1)).copy()
        accepted = np.minimum(ks[None, :], run[:, None])
        drafted[0] = accepted[0] = 0
        return drafted.tolist(), accepted.tolist(), confidences


class _Row:
    """Replay state of one running request. `table`: its drafted/accepted tables flat
    (`nightjar_rl.sim.trace.replay_table`)."""

    __slots__ = ("budget", "confidences", "eos", "limit", "output", "pos", "synced", "table")

    def __init__(self, output: tuple[int, ...], limit: int, eos: bool, table: tuple[int, ...], budget: int,
                 confidences: np.ndarray | None = None):
        self.output, self.limit, self.eos, self.table = output, limit, eos, table
        self.confidences = confidences  # [positions, max_k] stated per proposal (synthetic acceptance's), or None
        self.budget = budget  # the request's max_new_tokens (>= limit)
        self.pos = 0  # output tokens produced so far
        self.synced = 0  # draft model: tokens of this row in the draft's KV cache


class SimEngine(ScheduledEngine):
    """Drop-in for `SpeculativeEngine` on the engine surface (submit, abort, step, pop_finished, ...).
    Admission, aborts, the queue bound and retirement are the live engine's own `Scheduler`."""

    def __init__(
        self,
        trace: Trace,
        profile: HardwareProfile,
        *,
        max_batch_size: int = 16,
        max_seq_len: int = 1024,
        max_kv_tokens: int | None = None,
        max_waiting: int | None = None,
        max_speculation: int = 8,
        seed: int = 0,
        synthetic: SyntheticAcceptance | None = None,
        memo: dict | None = None,
        verify_layout: str = DEFAULT_VERIFY_LAYOUT,
        draft_catchup: str = DEFAULT_DRAFT_CATCHUP,
    ):
        """`memo`: a dict of profile lookups to share between engines over the same profile (a
        backend makes one engine per episode; the lookups repeat across episodes). `verify_layout`:
        how the verify pass is priced (`layouts.STEP_LAYOUTS`, the module docs); `draft_catchup`: how a
        draft model's catch-up is priced (`layouts.DRAFT_CATCHUPS`)."""
        if verify_layout not in STEP_LAYOUTS:
            raise ValueError(f"verify_layout must be one of {', '.join(STEP_LAYOUTS)}, got {verify_layout!r}")
        self.verify_layout = verify_layout
        self.folded_catchup = check_draft_catchup(draft_catchup) == "folded"
        fitted = profile.meta.get("verify_layout")
        if fitted and not prices_alike(fitted, verify_layout):  # tokens counted one way, priced another
            warnings.warn(f"the profile ({profile.model}, {profile.device}) was fitted to {fitted!r} steps; this "
                          f"simulator prices {verify_layout!r} steps with it (set the scenario's verify_layout to "
                          f"{fitted!r}, or fit a profile to {verify_layout!r} step logs)", stacklevel=2)
        if max_batch_size > profile.batch_sizes[-1]:  # the tables clamp batch: larger steps would be underpriced
            warnings.warn(f"the profile ({profile.model}, {profile.device}) prices at most {profile.batch_sizes[-1]} rows; "
                          f"steps of up to {max_batch_size} rows are priced as {profile.batch_sizes[-1]} (profile larger "
                          f"batches, e.g. `nightjar-rl profile --roofline` tabulates up to 512)", stacklevel=2)
        if not 0 <= max_speculation <= trace.max_k:
            raise ValueError(f"max_speculation must be in [0, {trace.max_k}] (the trace's max_k), got {max_speculation}")
        self.scheduler = Scheduler(max_batch_size, max_seq_len, max_speculation, max_kv_tokens, max_waiting)
        self.trace, self.profile, self.synthetic = trace, profile, synthetic
        self.max_batch_size, self.max_speculation, self.seed = max_batch_size, max_speculation, seed
        # how drafting is priced is the drafter kind's (a synthetic drafter's is its `cost`)
        self.draft_model = (synthetic.cost if synthetic is not None else drafter_kind(trace.drafter).cost) == DRAFT_MODEL
        if self.draft_model and not profile.has_draft_model:
            raise TraceError(f"the trace's drafter ({'synthetic draft model' if synthetic else trace.drafter}) is a "
                             f"draft model but the profile ({profile.model}, {profile.device}) has no draft_ms: "
                             f"profile it with a draft model")
        self.step_count = 0
        self._memo: dict = {} if memo is None else memo  # profile lookups by (table, arguments)
        self._proposals: dict[str, int] = {}  # `proposal_lengths`, rebuilt by every step
        self._confidences: dict[str, np.ndarray] = {}  # `proposal_confidences`, likewise
        self._records: dict[str, TraceRecord] = {}  # queued requests' trace records (looked up once)
        self._width = trace.max_k + 1  # a position's entries in a row's replay table: drafted, then accepted

    def submit(self, request: Request) -> None:
        """Queue a request whose prompt is in the trace (plus the live engine's checks and queue bound)."""
        self.scheduler.check(request)
        rec = self.trace.lookup(request.prompt_ids)
        rid = request.request_id
        if rec is None:
            raise TraceError(f"request {rid!r}: its prompt is not in the trace (record one for this prompt set)")
        if not rec.eos and request.max_new_tokens > len(rec):
            raise TraceError(f"request {rid!r} may generate {request.max_new_tokens} tokens but the trace recorded "
                             f"only {len(rec)} (max_new_tokens {self.trace.max_new_tokens}); record a longer trace")
        self.scheduler.submit(request)
        self._records[rid] = rec

    def pop_finished(self) -> list[Sequence]:
        done = super().pop_finished()
        for seq in done:  # aborted while queued: never admitted
            self._records.pop(seq.request_id, None)
        return done

    def _row_state(self, req: Request) -> _Row:
        rec = self._records.pop(req.request_id)
        limit = min(len(rec), req.max_new_tokens)
        output, table = rec.replay_tables()  # positions past `limit` are never read
        confidences = None
        if self.synthetic is not None:
            drafted, accepted, confidences = self.synthetic.tables(limit, self.trace.max_k, self.seed, req.request_id)
            table = replay_table(drafted, accepted)
        return _Row(output, limit, rec.eos and limit == len(rec), table, req.max_new_tokens, confidences)

    # ---- executor hooks of the step loop (`ScheduledEngine.step`, the live engine's own) ----------
    def _stop_clock(self, clock, stats: StepStats) -> None:
        """The modelled clock: the step's parts from the profile (see the module docstring)."""
        overhead = self._seconds("overhead", max(1, stats.batch_size))
        drafting = stats.draft_time + stats.catchup_time
        stats.model_time = stats.prefill_time + stats.verify_time + (drafting if self.draft_model else 0.0)
        stats.wall_time = stats.prefill_time + drafting + stats.verify_time + overhead

    def _prefill(self, admitted: list[Sequence], stats: StepStats) -> None:
        self._proposals = {}  # this step's rows fill it in (`proposal_lengths`, `proposal_confidences`)
        self._confidences = {}
        if not admitted:
            return
        if self.verify_layout == MIXED_LAYOUT:  # packed into the step's one pass: one prefill, no padding
            groups = [(admitted, sum(s.num_prompt for s in admitted))]
            stats.prefill_padded_tokens += groups[0][1]
        else:
            groups = self._prefill_groups(admitted, stats)
        full = self.max_speculation
        for rows, size in groups:
            stats.prefill_time += self._seconds("prefill", size)
            for seq in rows:
                row = seq.state[ROW] = self._row_state(seq.request)
                self._append(seq, row, 1)
                stats.first_token_ids.append(seq.request_id)
                if row.pos < row.limit:
                    proposal = row.table[2 * self._width * row.pos + full]
                    self._proposals[seq.request_id] = min(proposal, row.budget - row.pos - 1)
                    if row.confidences is not None:
                        self._confidences[seq.request_id] = row.confidences[row.pos]
        stats.prefill_emitted = stats.num_prefilled = len(admitted)
        stats.prefill_tokens = sum(s.num_prompt for s in admitted)

    @property
    def states_confidences(self) -> bool:
        """Whenever the synthetic drafter states confidences, whatever kind it is priced as: for a model-free
        kind that is a what-if (a drafter stating, say, a suffix tree's frequencies); the live n-gram
        drafter states none."""
        return self.synthetic is not None and self.synthetic.confidence_concentration is not None

    def _verified(self, rows: list[Sequence], lengths: list[int], plan: SpecPlan, stats: StepStats) -> list[int]:
        """The drafts `plan` verifies per row, chosen by the stated confidences of what each row drafts
        (`SpecPlan.verified_lengths`), as the live engine chooses after drafting."""
        stated = []
        for seq, k in zip(rows, lengths):
            row: _Row = seq.state[ROW]
            drafted = min(row.table[2 * self._width * row.pos + k], row.budget - row.pos - 1)
            stated.append(row.confidences[row.pos][:drafted].tolist())
        verified = plan.verified_lengths(stated)
        stats.unverified += sum(map(len, stated)) - sum(verified)
        return verified

    def _decode(self, rows: list[Sequence], lengths: list[int], stats: StepStats,
                selecting: SpecPlan | None = None) -> None:
        if not rows:
            return
        planned = lengths
        if selecting is not None:  # the rows draft their plan lengths, then verify what the plan chooses
            lengths = self._verified(rows, lengths, selecting, stats)
        batch, k_max, full = len(rows), stats.k, self.max_speculation  # stats.k: the largest length
        width = self._width
        draft_model = self.draft_model and k_max > 0  # the draft model runs the whole batch k_max times
        lags = []  # each row's lag of the draft's cache (draft model)
        ids, drafted, accepted, emitted, shadow_drafted, shadow_accepted = [], [], [], [], [], []
        proposals = self._proposals
        # bound appends and comparisons, not min(): this loop is the simulator's hot path
        add_id, add_drafted, add_accepted, add_emitted = ids.append, drafted.append, accepted.append, emitted.append
        add_shadow_drafted, add_shadow_accepted = shadow_drafted.append, shadow_accepted.append
        for seq, k in zip(rows, lengths):
            row: _Row = seq.state[ROW]
            rid = seq.request.request_id
            p, limit, budget = row.pos, row.limit, row.budget
            cap = budget - p - 1  # >= 0: a running row has p < limit <= budget
            table, at = row.table, 2 * width * p
            d = table[at + k]
            if d > cap:
                d = cap
            a = table[at + width + k]
            if a > d:
                a = d
            if draft_model:
                lags.append(len(seq.tokens) - row.synced)
                row.synced = len(seq.tokens) + min(a, k_max - 1)  # what the draft's cache holds after commit
            shadow = table[at + full]  # full information: the whole proposal
            if shadow > cap:
                shadow = cap
            add_shadow_drafted(shadow)
            confirmed = table[at + width + full]
            if confirmed > shadow:
                confirmed = shadow
            if confirmed > limit - p:
                confirmed = limit - p
            add_shadow_accepted(confirmed)
            end = p + a + 1  # the accepted drafts and the target's own token, up to the output's end
            if end >= limit:
                end = limit
                seq.finish_reason = "eos" if row.eos else "length"
            else:
                proposal = table[2 * width * end + full]
                proposals[rid] = proposal if proposal < budget - end else budget - end - 1
                if row.confidences is not None:
                    self._confidences[rid] = row.confidences[end]
            if end == p + 1:  # the target's own token only (no slice to build)
                seq.tokens.append(row.output[p])
            else:
                seq.tokens += row.output[p:end]
            row.pos = end
            out = end - p
            kept = a if a < out else out
            seq.drafted += d
            seq.accepted += kept
            seq.steps += 1
            add_id(rid)
            add_drafted(d)
            add_accepted(kept)
            add_emitted(out)
        stats.request_ids += ids
        stats.plan += planned
        stats.drafted += drafted
        stats.accepted += accepted
        stats.emitted += emitted
        stats.shadow_drafted += shadow_drafted
        stats.shadow_accepted += shadow_accepted
        max_drafted, total_drafted = max(drafted), sum(drafted)
        if k_max > 0:
            stats.draft_time = (self._seconds("draft", batch, k_max) if self.draft_model
                                else self._seconds("lookup", batch - planned.count(0)))
            fed = catchup_tokens(lags, self.verify_layout) if draft_model else 0
            if fed and self.folded_catchup:  # the catch-up widens the first drafting pass
                stats.draft_time += self._seconds("catchup", batch, fed, True)
            elif fed:
                stats.catchup_time = self._seconds("catchup", batch, fed, False)
        stats.verify_tokens = 1 + max_drafted
        stats.scored_tokens = self.scored_size(batch, max_drafted, total_drafted)  # what the live engine computes
        if self.verify_layout == MIXED_LAYOUT and stats.prefill_time:  # this step's prefill joins the pass
            stats.prefill_time = max(0.0, stats.prefill_time - self._seconds("prefill", 1))
        stats.verify_time = self._verify_seconds(batch, stats.scored_tokens, stats.context)

    def proposal_lengths(self) -> dict[str, int]:
        """Draft tokens each running row's drafter has for its next step at max_speculation (capped by
        the row's budget), by request id: what a drafter knows before verifying (an n-gram's match
        continuation), so per-row policies may read it (`nightjar_rl.contracts.observation.RowBatch`).
        Filled in by the step that brought each row to its position; a new dict every step."""
        return self._proposals

    def draft_lags(self) -> dict[str, int] | None:
        """How many tokens of each running row the draft model's cache lacks, as the live engine's
        `draft_lags` (a draft model's pricing only; else None)."""
        if not self.draft_model:
            return None
        return {seq.request_id: len(seq.tokens) - seq.state[ROW].synced for seq in self.running}

    def proposal_confidences(self) -> dict[str, np.ndarray]:
        """The confidence stated for each token of each running row's next proposal ([max_k] by request
        id; synthetic acceptance with `confidence_concentration` only, else empty), filled in as
        `proposal_lengths` is."""
        return self._confidences

    def _verify_seconds(self, batch: int, scored: int, context: int) -> float:
        """Verify time of `batch` rows scoring `scored` positions in all (`HardwareProfile.verify_step_ms`),
        linear over context between the profile's contexts (clamped), as the profile does."""
        key = ("verify", batch, scored)
        curve = self._memo.get(key)
        if curve is None:
            ctxs, ms = self.profile.verify_context_curve(batch, scored / batch)
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
            fn = {"overhead": p.overhead_time_ms, "prefill": p.prefill_time_ms, "draft": p.draft_model_time_ms,
                  "lookup": p.lookup_time_ms,
                  "catchup": p.catchup_time_ms}[table]
            value = self._memo[key] = fn(*args) / 1000.0
        return value

    @staticmethod
    def _append(seq: Sequence, row: _Row, count: int) -> int:
        """Append the next `count` true tokens (fewer at the end of the output). Returns how many."""
        p, end = row.pos, min(row.pos + count, row.limit)
        seq.tokens.extend(row.output[p:end])
        row.pos = end
        if end >= row.limit:
            seq.finish_reason = "eos" if row.eos else "length"
        return end - p
