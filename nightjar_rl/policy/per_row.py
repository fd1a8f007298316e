"""Per-row speculation policies: a speculation length per running row (a `SpecPlan`), from the
per-row features the runtime's driver puts on the observation (`obs.rows`, a
`nightjar_rl.contracts.observation.RowBatch`).

- `AdaptiveBudget` (`adaptive_budget`, vLLM's adaptive verification / DSpark style): every draft slot
  (row r, depth j) survives with probability s[r, j] = alpha_r^j (zero past the row's cap: its
  proposal, budget and max_k). Slots are handed out greedily by survival (which keeps each row's
  slots a prefix), and the step's total budget B is the one maximising expected tokens per predicted
  step time:

      E(B) = rows + sum of the B largest survivals         (each row emits its bonus token)
      T(B) = draft_ms + verify_step_ms(rows, scored(B), context) + overhead_ms(rows)
      scored(B) = rows + B (packed layout)  |  rows x (1 + largest row length) (padded)
      B* = argmax_B E(B) / T(B)  (ties to the smaller B)

  A draft model pays a pass of the whole batch per depth, and the survival order can reach a confident
  row's deep slots before a weaker row's first, so (packed, without a guard) the same argmax is also
  taken over the slots of depth <= D for every cap D, and the best of all wins: "every row drafts one
  token" is always a candidate.

  With `tpot_slack` = tau set, only budgets that slow no row's expected time per token by more than
  tau against drafting nothing are allowed (B = 0 always is): row r expects E_r(B) = 1 + its handed-out
  survivals per step, so B is allowed when  max_r T(B) / E_r(B) <= (1 + tau) T(0).  A row left out of
  the plan pays T(B) for one token, so at high load, where a draft slot costs real time, the step drafts
  only as much as tau allows (throughput traded for the p95 time per output token). Any row with no
  usable slot (no proposal, or at its budget) keeps E_r = 1, so the guard is then a cap on the step's
  time, T(B) <= (1 + tau) T(0). Identical rows (the uniform fallback) need no guard: the best k there
  already lowers every row's time per token.

  draft_ms prices the drafter (`drafting`, the engine's; by default the profile's, see
  `HardwareProfile.drafting_kind`): a draft model drafts every row max-length times
  (`draft_model_time_ms`), a model-free drafter looks up the rows that draft (`lookup_time_ms`). A
  draft model that fell behind first catches up, so any B > 0 also pays draft_prefill_ms of it: in full
  for the steps it was off (`layouts.catchup_tokens` of the rows' `lag`: Nightjar's switching cost), and
  for a row new to it, whose prompt any drafting policy feeds once, a share per step of the row's
  remaining tokens, each token at what it costs in the pass that feeds all the new rows' prompts
  (`catchup_ms`; `price_catchup: false` leaves it all out). Priced as the engine's
  `draft_catchup` runs it (`HardwareProfile.catchup_time_ms`): a pass of its own, or folded into the
  first drafting pass (then only the extra positions cost).

  With `select_after_draft` the allocator follows adaptive verification's order instead: every row
  drafts the longest length of the history-based allocation, and the plan hands the engine the step's
  cost by verified drafts (`SpecPlan.verify_costs`), so that the engine picks B* and the slots by the
  confidences its drafter states while drafting (a live draft model's token probabilities).

  When the drafter states a confidence for each token it proposes (`RowBatch.confidences`: a draft
  model's token probability, a suffix tree's frequency), a slot's survival is the product of the
  row's stated confidences up to its depth, as adaptive verification computes it, instead of the
  row's acceptance history (`confidence=False` ignores them).
- `PerRequestK` (`per_request_k`, SGLang's per-request mode): each request holds its own k; it moves
  up one when its acceptance estimate reaches `up`, down one when it falls below `down` (hysteresis:
  up > down), never sooner than `dwell` of its own steps after its last move. Switches are counted.
- `PerRowBandit` (`per_row_bandit`): the Nightjar bandit (`nightjar_rl.policy.bandits`) lifted to per-row
  contexts: one bucketed bandit (contexts = batch-size buckets, arms = k) per acceptance bucket of the
  row (unknown, then `acceptance_edges`), so the context is (row acceptance bucket x batch bucket).
  Each row is credited its own tokens per second of the step (`emitted / wall_time`).

Without per-row features (a plain vector, e.g. in a micro-benchmark) every policy falls back to a
uniform k from the step-level fields (`fi_acceptance`, batch size), as documented per class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.contracts.plan import expected_tokens, ranked_slots, slot_lengths, slot_order
from nightjar_rl.contracts.observation import RowBatch, obs_field, rows_of
from nightjar_rl.decoding.layouts import DEFAULT_DRAFT_CATCHUP, VERIFY_LAYOUTS, catchup_tokens, check_draft_catchup
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.hardware import DRAFT_MODEL, HardwareProfile
from nightjar_rl.policy.bandits import NightjarBandit
from nightjar_rl.policy.base import Policy, batch_of, check_float, check_int
from nightjar_rl.policy.oracle import as_profile

LAYOUTS = tuple(VERIFY_LAYOUTS)  # what the allocator prices a verify pass as


def step_acceptance(obs: np.ndarray, prior: float) -> float:
    """The step-level full-information acceptance estimate, `prior` while unknown."""
    return obs_field(obs, "fi_acceptance") if obs_field(obs, "fi_known") > 0 else prior


def row_plan(rows: RowBatch, lengths: np.ndarray) -> SpecPlan:
    """The plan giving each row of `rows` its length (aligned arrays)."""
    return SpecPlan.per_row(dict(zip(rows.request_ids, np.asarray(lengths).tolist())))


def greedy_allocation(survival: np.ndarray, budget: int) -> np.ndarray:
    """Draft lengths per row for the `budget` best slots (`slot_order`). [rows, max_k] -> [rows]."""
    return slot_lengths(slot_order(survival), budget, survival.shape)


class AdaptiveBudget(Policy):
    """Step budget by expected tokens per predicted step time; slots by survival (module docs)."""

    type_name = "adaptive_budget"

    def __init__(self, profile: HardwareProfile | Mapping | str | Path, max_k: int, prior_acceptance: float = 0.5,
                 layout: str = "packed", max_budget: int | None = None, tpot_slack: float | None = None,
                 confidence: bool = True, drafting: str | None = None, select_after_draft: bool = False,
                 price_catchup: bool = True, draft_catchup: str = DEFAULT_DRAFT_CATCHUP):
        super().__init__(max_k)
        self.profile = as_profile(profile)
        self.drafting = drafting
        self.priced_as = self.profile.drafting_kind(drafting)  # resolved (and checked) once
        self.prior_acceptance = check_float("prior_acceptance", prior_acceptance, 0.0, 1.0)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.layout = layout
        self.max_budget = None if max_budget is None else check_int("max_budget", max_budget, 0)
        self.tpot_slack = None if tpot_slack is None else check_float("tpot_slack", tpot_slack, 0.0)
        if not isinstance(confidence, bool):
            raise ValueError(f"confidence must be true or false, got {confidence!r}")
        self.confidence = confidence
        if not isinstance(select_after_draft, bool):
            raise ValueError(f"select_after_draft must be true or false, got {select_after_draft!r}")
        if select_after_draft and tpot_slack is not None:
            raise ValueError("select_after_draft and tpot_slack cannot be combined (the guard needs the slots "
                             "before drafting)")
        if select_after_draft and layout == "padded":
            raise ValueError("select_after_draft needs a packed or mixed layout: a padded pass costs the same "
                             "whichever drafts it verifies")
        self.select_after_draft = select_after_draft
        if not isinstance(price_catchup, bool):
            raise ValueError(f"price_catchup must be true or false, got {price_catchup!r}")
        self.price_catchup = price_catchup
        self.draft_catchup = check_draft_catchup(draft_catchup)
        self._memo: dict = {}
        self.last_budget = 0  # B* of the last per-row decision (for inspection)

    # ---- the formula ---------------------------------------------------------------------------
    def step_ms(self, rows: int, drafted: int, longest: int, drafting: int, context: float | None,
                catchup_ms: float = 0.0) -> float:
        """T: predicted step time of `rows` rows, `drafted` draft tokens in all, the longest row's
        `longest`, `drafting` rows with a length > 0, plus `catchup_ms` when anything is drafted (module
        docs)."""
        p = self.profile
        scored = rows + drafted if self.layout == "packed" else rows * (1 + longest)
        draft = p.plan_draft_time_ms(rows, longest, drafting, self.priced_as) + (catchup_ms if longest else 0.0)
        return draft + self._verify_ms(rows, scored, context) + p.overhead_time_ms(rows)

    def catchup_ms(self, rows: RowBatch) -> float:
        """A draft model's catch-up before it drafts this step, priced by the profile's draft prefill; 0
        for lookups or without `price_catchup`. A row the draft model already drafted for (lag < its
        context) lags by the steps it was off: that switching cost counts in full (`layouts.catchup_tokens`).
        A fresh row (lag = its whole context) must have its prompt fed once by any policy that ever
        drafts for it, so it counts as its share per step of its remaining tokens, (lag - 1) / remaining,
        besides its one position in the pass: else every admission would look like a reason not to draft,
        and the lags (hence the price) would only grow while it does not. A share is priced at what a
        prompt token costs in the pass that feeds them all, not as a pass of its few tokens: a draft pass
        costs about the same for a few positions as for hundreds, so the shares came nearly free (C = 256,
        seed 0, the drain's first step: 51 fresh rows owing 7,490 prompt tokens, 52 ms when paid, priced
        4.1 ms a step that way and 5.8 ms this way, which keeps the allocator at k0 there). With F_s the
        positions of the rows in step or behind (`catchup_tokens`, the fresh rows one each), F_f = sum
        over fresh rows of (lag - 1), and P(F) = `HardwareProfile.catchup_time_ms` of F positions:

            catchup_ms = P(F_s) + (P(F_s + F_f) - P(F_s)) / F_f * sum_fresh (lag - 1) / max(1, remaining)

        (= P(F_s + the shares) where P is linear, as with the plain share). Lags come from the engine
        (`RowBatch.lag`, `engine.draft_lags()`). Myopic: a synced row's lag grows with every step off, so
        after long off the full price can keep the allocator off until those rows finish. Padded: a fresh
        row's prompt widens the real pass for every row, which its share does not price. Two alternatives
        measured worse on the 1B-draft study (2026-11-30): every row's prompt at its feeding rate (C = 128
        0.98 and C = 256 0.94 of k0 with its own catch-up pass, against 1.02 and 0.97 with this share) and,
        folded, the prompts in full (C = 64 and 128 0.94 and 0.97 of k1, against 1.00 and 1.02). Charging the
        shares over the fresh rows' steps left at the tokens a step emits ((lag - 1) x E_r / remaining, E_r
        from the row's history) moved the 1B-draft study's C = 256 to k0's throughput, but turned the
        folded study's C = 128 from k1's 1.02 to 0.94 (it stayed off where drafting from the first wave
        pays) (2026-11-30, probes of 5 seeds)."""
        if not (self.draft_model and self.price_catchup):
            return 0.0
        lags, contexts, remaining = rows.column_list("lag"), rows.column_list("context"), rows.column_list("remaining")
        if max(lags, default=0) <= 2:
            return 0.0
        switching = [1 if lag >= n else lag for lag, n in zip(lags, contexts)]  # fresh rows: their one position
        fresh = [(lag - 1, left) for lag, n, left in zip(lags, contexts, remaining) if lag >= n]
        prompts = sum(owed for owed, _ in fresh)  # F_f
        shares = sum(owed / max(1, left) for owed, left in fresh)
        fed = catchup_tokens(switching, self.layout, runs=True)  # F_s
        folded = self.draft_catchup == "folded"
        base = self.profile.catchup_time_ms(len(lags), fed, folded=folded)
        if prompts <= 0:
            return base
        whole = self.profile.catchup_time_ms(len(lags), fed + prompts, folded=folded)
        return base + (whole - base) / prompts * shares

    @property
    def draft_model(self) -> bool:
        """Whether drafting is priced as a draft model's forwards (else as lookups)."""
        return self.priced_as == DRAFT_MODEL

    def _verify_ms(self, rows: int, scored: int, context: float | None) -> float:
        """`verify_step_ms`, its context curve memoised by (rows, scored) (the allocator's hot loop)."""
        if context is None:
            return self.profile.verify_step_ms(rows, scored)
        curve = self._memo.get((rows, scored))
        if curve is None:
            if len(self._memo) > 100_000:
                self._memo.clear()
            curve = self._memo[(rows, scored)] = self.profile.verify_context_curve(rows, scored / rows)
        ctxs, ms = curve
        return float(np.interp(context, ctxs, ms))  # linear between contexts, clamped: as the profile

    def allocate(self, survival: np.ndarray, context: float | None = None,
                 catchup_ms: float = 0.0) -> tuple[np.ndarray, int, np.ndarray]:
        """(lengths per row, B*, E(B)/T(B) for B = 0..B_max) for a [rows, max_k] survival matrix; budgets
        the `tpot_slack` guard rules out have ratio -inf."""
        rows, depth = survival.shape
        order, flat = ranked_slots(survival, self.max_budget)
        top = len(order)
        gains = expected_tokens(rows, flat)
        level = order % depth  # depth of each slot as it is handed out: the row's length becomes level + 1
        longest = np.concatenate([[0], np.maximum.accumulate(level + 1)])
        drafting = np.concatenate([[0], np.cumsum(level == 0)])
        times = np.array([self.step_ms(rows, b, int(longest[b]), int(drafting[b]), context, catchup_ms)
                          for b in range(top + 1)])
        ratios = gains / times
        if self.tpot_slack is not None:
            ratios[times / self.least_row_tokens(order // depth, flat, rows)
                   > (1 + self.tpot_slack) * times[0]] = -np.inf
        best = int(np.argmax(ratios))  # first maximum: ties to the smaller budget
        if self.draft_model and self.layout == "packed" and self.tpot_slack is None and depth > 1 and top:
            capped = self._depth_capped(survival.shape, order, flat, level, times, longest, catchup_ms)
            if capped is not None and capped[2][capped[1]] > ratios[best]:
                return capped
        return slot_lengths(order, best, survival.shape), best, ratios

    def _depth_capped(self, shape: tuple[int, int], order: np.ndarray, flat: np.ndarray, level: np.ndarray,
                      times: np.ndarray, longest: np.ndarray, catchup_ms: float) -> tuple[np.ndarray, int, np.ndarray] | None:
        """A draft model pays a pass of the whole batch per depth, so the survival order (which reaches a
        confident row's deep slots before a weaker row's first) can miss "every row drafts D tokens". For
        each cap D below the deepest, the slots of depth <= D in the same order, priced as T(B) with D'
        <= D passes: the best (lengths, B*, ratios) of those caps, or None. Packed: the verify pass costs
        the same B scored tokens whichever slots they are, so only the passes change."""
        rows = shape[0]
        per_pass = self.profile.draft_model_time_ms(rows, 1)
        catchup = np.where(longest > 0, catchup_ms, 0.0)
        base = times - per_pass * longest - catchup  # verify + overhead by the number of slots B
        depth_of = level + 1
        best = None
        for cap in range(1, int(depth_of.max())):
            keep = depth_of <= cap  # never empty: a row's slots are a prefix, so its first has depth 1
            n = int(keep.sum())
            deepest = np.concatenate([[0], np.maximum.accumulate(depth_of[keep])])
            cost = base[:n + 1] + per_pass * deepest + np.where(deepest > 0, catchup_ms, 0.0)
            ratios = expected_tokens(rows, flat[keep]) / cost
            b = int(np.argmax(ratios))
            if best is None or ratios[b] > best[2][best[1]]:
                best = (slot_lengths(order[keep], b, shape), b, ratios)
        return best

    @staticmethod
    def least_row_tokens(slot_rows: np.ndarray, slot_survival: np.ndarray, rows: int) -> np.ndarray:
        """min_r E_r(B) for B = 0..len(slot_rows): the smallest expected tokens per step of any row once the
        first B slots (owned by `slot_rows`, surviving with `slot_survival`) are handed out."""
        least = np.ones(len(slot_rows) + 1)
        if len(slot_rows) and len(np.unique(slot_rows)) == rows:  # else some row never drafts: min stays 1
            per_row = np.zeros((rows, len(slot_rows) + 1))
            per_row[slot_rows, np.arange(1, len(slot_rows) + 1)] = slot_survival
            least = 1 + np.cumsum(per_row, axis=1).min(axis=0)
        return least

    # ---- policy interface ---------------------------------------------------------------------------
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> SpecPlan | int:
        """Per-row lengths with `obs.rows`; without them, the best uniform k for batch_size identical
        rows at the step-level acceptance (the same formula over uniform plans)."""
        rows = rows_of(obs)
        if rows is None:
            batch = max(batch_of(obs), 1)
            alpha = step_acceptance(obs, self.prior_acceptance)
            survival = alpha ** np.arange(1, self.max_k + 1)
            ratios = [(batch * (1 + survival[:k].sum())) / self.step_ms(batch, batch * k, k, batch * (k > 0), None)
                      for k in range(self.max_k + 1)]
            return int(np.argmax(ratios))  # identical rows: the best k lowers every row's time per token (no guard)
        if not len(rows):
            return 0
        if self.select_after_draft:
            return self.after_draft_plan(rows)
        lengths, self.last_budget, _ = self.allocate(*self.row_inputs(rows), self.catchup_ms(rows))
        return row_plan(rows, lengths)

    def after_draft_plan(self, rows: RowBatch) -> SpecPlan:
        """Adaptive verification's order (`select_after_draft`): rows draft D tokens, D the longest length
        of the allocation from the rows' acceptance history (stated confidences are not known before
        drafting), and the plan carries T(B) for B = 0..(drafting rows) x D verified drafts so that the
        engine verifies the B* best drafts by the confidences the drafter states as it drafts
        (`SpecPlan.verify_costs`; the drafting is in every T(B)). A draft model drafts every row D tokens
        for the price of the longest, so every row drafts; a model-free drafter pays per drafting row,
        so only the rows the allocation drafts do."""
        survival, context = self.row_inputs(rows, confidence=False)
        catchup = self.catchup_ms(rows)
        lengths, self.last_budget, _ = self.allocate(survival, context, catchup)
        depth, batch = int(lengths.max()), len(rows)
        if depth == 0:
            return row_plan(rows, lengths)
        drafting = batch if self.draft_model else int((lengths > 0).sum())
        most = drafting * depth if self.max_budget is None else min(drafting * depth, self.max_budget)
        costs = [self.step_ms(batch, b, depth, drafting, context, catchup) for b in range(most + 1)]
        if self.draft_model:
            return SpecPlan(default=depth, verify_costs=costs)
        return SpecPlan.per_row(dict(zip(rows.request_ids, np.where(lengths > 0, depth, 0).tolist())), verify_costs=costs)

    def row_inputs(self, rows: RowBatch, confidence: bool | None = None) -> tuple[np.ndarray, float]:
        """(survival [rows, max_k], context) of `rows` for `allocate`: survival at `prior_acceptance` where
        nothing is known (from the drafter's confidences where it states them and `confidence`, by
        default the policy's, is set), the context as the simulator prices it (the longest row's, before
        this step)."""
        use = self.confidence if confidence is None else confidence
        return rows.survival(self.max_k, self.prior_acceptance, use), float(rows.context.max() - 1)

    def params(self) -> dict:
        return {"profile": self.profile.to_dict(), "prior_acceptance": self.prior_acceptance, "layout": self.layout,
                "max_budget": self.max_budget, "tpot_slack": self.tpot_slack, "confidence": self.confidence,
                "drafting": self.drafting, "select_after_draft": self.select_after_draft,
                "price_catchup": self.price_catchup, "draft_catchup": self.draft_catchup}

    @property
    def name(self) -> str:
        guard = "" if self.tpot_slack is None else f",tpot_slack={self.tpot_slack:g}"
        blind = "" if self.confidence else ",no confidences"
        priced = "" if self.drafting is None else f",drafting={self.drafting}"
        after = (",after draft" if self.select_after_draft else "") + ("" if self.price_catchup else ",no catch-up")
        after += ",folded catch-up" if self.draft_catchup == "folded" else ""
        return f"adaptive_budget({self.profile.model}@{self.profile.device},{self.layout}{guard}{blind}{priced}{after})"


class PerRequestK(Policy):
    """Each request's own k, moved one step at a time with hysteresis and a minimum dwell (module docs).
    Without per-row features: `start_k` (0 above `off_above` rows)."""

    type_name = "per_request_k"

    def __init__(self, max_k: int, up: float = 0.7, down: float = 0.4, dwell: int = 8, start_k: int = 2,
                 off_above: int | None = None):
        super().__init__(max_k)
        self.up = check_float("up", up, 0.0, 1.0)
        self.down = check_float("down", down, 0.0, 1.0)
        if not self.down < self.up:
            raise ValueError(f"down must be below up (hysteresis), got down={down}, up={up}")
        self.dwell = check_int("dwell", dwell, 1)
        self.start_k = check_int("start_k", start_k, 0, self.max_k)
        self.off_above = None if off_above is None else check_int("off_above", off_above, 1)
        self.switches = 0  # per-request k changes so far (this episode)
        self._k: dict[str, int] = {}
        self._since: dict[str, int] = {}  # decisions since the request's last move

    def reset(self) -> None:
        self.switches = 0
        self._k.clear()
        self._since.clear()

    def _move(self, rid: str, alpha: float) -> int:
        k, since = self._k.get(rid, self.start_k), self._since.get(rid, 0) + 1
        if since >= self.dwell and not np.isnan(alpha):
            step = 1 if alpha >= self.up and k < self.max_k else -1 if alpha < self.down and k > 0 else 0
            if step:
                k, since = k + step, 0
                self.switches += 1
        self._k[rid], self._since[rid] = k, since
        return k

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> SpecPlan | int:
        rows = rows_of(obs)
        off = self.off_above is not None and batch_of(obs) > self.off_above
        if rows is None:
            return 0 if off else self.start_k
        live = set(rows.request_ids)
        for rid in [r for r in self._k if r not in live]:  # requests that left
            del self._k[rid], self._since[rid]
        lengths = {rid: self._move(rid, a) for rid, a in zip(rows.request_ids, rows.acceptance.tolist())}
        if off:
            return 0
        caps = rows.draft_caps(self.max_k)
        return SpecPlan.per_row({rid: min(k, int(c)) for (rid, k), c in zip(lengths.items(), caps)})

    def params(self) -> dict:
        return {"up": self.up, "down": self.down, "dwell": self.dwell, "start_k": self.start_k,
                "off_above": self.off_above}

    def state(self) -> dict:
        return {"switches": self.switches, "k": dict(self._k), "since": dict(self._since)}

    def load_state(self, state: dict) -> None:
        self.switches = check_int("state.switches", state.get("switches", 0), 0)
        ks, since = state.get("k", {}), state.get("since", {})
        if not isinstance(ks, Mapping) or not isinstance(since, Mapping) or set(ks) != set(since):
            raise ValueError("per_request_k state: 'k' and 'since' must be mappings over the same request ids")
        self._k = {str(r): check_int(f"state.k[{r!r}]", v, 0, self.max_k) for r, v in ks.items()}
        self._since = {str(r): check_int(f"state.since[{r!r}]", v, 0) for r, v in since.items()}


class PerRowBandit(Policy):
    """Nightjar bandits, one per row-acceptance bucket (module docs). Without per-row features: the
    bandit of the step-level acceptance's bucket, a uniform k."""

    type_name = "per_row_bandit"

    def __init__(self, max_k: int, acceptance_edges: Sequence[float] = (0.25, 0.5, 0.75),
                 bandit: Mapping | None = None):
        super().__init__(max_k)
        edges = [check_float("acceptance_edges", e, 0.0, 1.0) for e in acceptance_edges]
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"acceptance_edges must be strictly increasing, got {list(acceptance_edges)}")
        self.acceptance_edges = edges
        self.bandit_params = dict(bandit or {})
        self.bandit_params.pop("type", None)
        # bucket 0: unknown acceptance; then [0, e0), [e0, e1), ..., [e_last, 1]
        self.bandits = [NightjarBandit(max_k, **self.bandit_params) for _ in range(len(edges) + 2)]
        self.learning = True
        self._last: tuple[np.ndarray, dict[str, int], np.ndarray] | None = None  # (obs, plan, row buckets)
        self._credit: dict[str, float] = {}

    @property
    def learning(self) -> bool:  # type: ignore[override]
        return self._learning

    @learning.setter
    def learning(self, value: bool) -> None:
        self._learning = bool(value)
        for b in getattr(self, "bandits", ()):
            b.learning = self._learning

    def buckets(self, acceptance: np.ndarray) -> np.ndarray:
        """Acceptance bucket per row (0 = unknown)."""
        known = ~np.isnan(acceptance)
        return np.where(known, 1 + np.digitize(np.nan_to_num(acceptance), self.acceptance_edges), 0)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> SpecPlan | int:
        rows = rows_of(obs)
        if rows is None:
            known = obs_field(obs, "fi_known") > 0
            acc = np.array([obs_field(obs, "fi_acceptance") if known else np.nan])
            return self.bandits[int(self.buckets(acc)[0])].predict(obs, deterministic)
        buckets = self.buckets(rows.acceptance)
        if deterministic:  # one greedy choice per bucket serves all its rows
            choice = {int(b): self.bandits[b].predict(obs, True) for b in np.unique(buckets)}
            ks = [choice[int(b)] for b in buckets]
        else:
            ks = [self.bandits[b].predict(obs, False) for b in buckets]
        caps = rows.draft_caps(self.max_k)
        plan = {rid: min(int(k), int(c)) for rid, k, c in zip(rows.request_ids, ks, caps)}
        self._last = (np.asarray(obs), dict(zip(rows.request_ids, ks)), buckets)
        return SpecPlan.per_row(plan)

    def observe(self, stats: StepStats) -> None:
        """Each row's tokens per second of this step: its credit in `update`."""
        for b in self.bandits:
            b.observe(stats)
        secs = stats.wall_time
        self._credit = {rid: e / secs for rid, e in zip(stats.request_ids, stats.emitted)} if secs > 0 else {}

    def update(self, obs: np.ndarray, k, reward: float) -> None:
        """Credit each row's chosen arm with its own tokens/s (from `observe`); the step reward is
        used for every row when the step's stats were not observed."""
        if not self.learning or self._last is None:
            return
        vector, chosen, buckets = self._last
        for (rid, arm), b in zip(chosen.items(), buckets):
            self.bandits[b].update(vector, arm, self._credit.get(rid, reward))
        self._last = None

    def reset(self) -> None:
        for b in self.bandits:
            b.reset()
        self._last, self._credit = None, {}

    def params(self) -> dict:
        return {"acceptance_edges": list(self.acceptance_edges), "bandit": dict(self.bandit_params)}

    def state(self) -> dict:
        return {"bandits": [b.state() for b in self.bandits]}

    def load_state(self, state: dict) -> None:
        states = state.get("bandits")
        if not isinstance(states, list) or len(states) != len(self.bandits):
            raise ValueError(f"per_row_bandit state needs 'bandits': a list of {len(self.bandits)} bandit states")
        for b, s in zip(self.bandits, states):
            b.load_state(dict(s))
