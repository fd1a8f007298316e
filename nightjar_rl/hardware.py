"""Hardware profile: what a step costs, as data. The goodput oracle, the SSSD budget and the
simulator's clock read it instead of timing the model again.

Format (JSON, written by `nightjar-rl profile`: measured by `nightjar_rl.decoding.profiler`, or
analytic with `--roofline`, see `nightjar_rl.sim.roofline`):

```
{
  "format": "nightjar-rl/hardware-profile",   # optional; checked when present
  "version": 2,                                # 1 or 2 (version 1 has only the first three tables)
  "device": "NVIDIA H100" | "x86_64" | ...,    # free text
  "model": "smollm2-135m",                     # target model the times belong to
  "dtype": "float32",
  "verify_ms": {"<batch>": {"<tokens_per_row>": ms, ...}, ...},   # required, non-empty
  "draft_ms": {"<batch>": ms, ...},            # optional: one draft-model step (1 token per row)
  "ngram_lookup_ms_per_row": 0.01,             # optional: n-gram drafting cost per row
  # version 2, all optional:
  "verify_ms_by_context": {"<context>": {"<batch>": {"<tokens_per_row>": ms}}},
  "prefill_ms": {"<tokens>": ms},              # one target prefill pass computing that many tokens
  "draft_prefill_ms": {"<tokens>": ms},        # one draft-model pass over that many tokens (catch-up)
  "overhead_ms": {"<batch>": ms},              # per-step time outside model forwards
  "speed_anchor": {...},                       # optional: fixed forwards timed when the profile was made
  ...                                          # any other keys are kept in `meta`
}
```

Machine drift. A CPU's speed moves by more than 5% from hour to hour, so a profile made this morning
misprices this afternoon's steps. `speed_anchor` (`nightjar_rl.decoding.profiler.measure_speed_anchor`)
records a few fixed forwards timed when the profile was made; timing them again later gives the
machine's speed ratio now/then (`speed_ratio`), and `HardwareProfile.scaled(ratio)` prices every step
at today's speed (a scenario's `profile_scale`). An anchor times bare forwards, while a profile prices
the engine's steps, host work included; `scaled_forwards(ratio)` scales only the forwards and keeps the
host work (`host_ms_by_rows`), which on slow days did not slow; given the anchor's ratio per row
count (`speed_ratio_by_rows`), it scales a b-row forward by b rows' own ratio.

`verify_ms[b][n]` is one target forward scoring `n` positions per row for `b` rows (a decode step
with speculation length k scores n = k + 1). A step is priced by rows, total scored tokens and
context (`verify_step_ms`): a per-row plan scoring T positions over b rows reads n = T / b. `draft_ms[b]` is one draft token for `b` rows, so
drafting k tokens costs k x draft_ms[b]. A model-free drafter (n-gram, SSSD) costs
`ngram_lookup_ms_per_row` per row. Which of the two prices a step is the drafter's (`drafting`:
`DRAFT_MODEL` or `LOOKUP`, `drafting_kind`); when nobody says, a profile with `draft_ms` prices a draft
model and one without prices lookups.

Interpolation. Verify: linear over tokens per row within each batch size, then linear over batch
size (bilinear on a full grid); with `verify_ms_by_context`, then linear over context between the
measured contexts (without it, context is ignored). Batch, tokens and context are clamped to the
measured range. Token-count tables (`prefill_ms`, `draft_prefill_ms`) are linear inside their
range, proportional to tokens beyond its largest point (a long pass is compute-bound) and clamped
below. `overhead_ms` is linear over batch, clamped.

Fallbacks when a version-2 table is missing (rough; measure, or use a roofline profile): prefill
of T tokens costs a verify pass of T rows x 1 token (the same tokens through the weights; beyond
the largest batch, proportional); a draft catch-up over T tokens costs a draft step at batch T;
overhead is 0.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from nightjar_rl.io import read_json

DRAFT_MODEL, LOOKUP = "draft_model", "lookup"  # how drafting is priced: a draft model's passes, or lookups
DRAFTING = (DRAFT_MODEL, LOOKUP)
PROFILE_FORMAT = "nightjar-rl/hardware-profile"
PROFILE_VERSION = 2
READABLE_VERSIONS = (1, 2)
_KNOWN_KEYS = (
    "format", "version", "device", "model", "dtype", "verify_ms", "draft_ms", "ngram_lookup_ms_per_row",
    "verify_ms_by_context", "prefill_ms", "draft_prefill_ms", "overhead_ms",
)
SPEED_ANCHOR = "speed_anchor"  # the profile key of the fixed forwards timed with it
ANCHOR_ENGINE_FIELDS = ("verify_layout", "model_forward", "linears", "threads")  # the forward an anchor timed
TIME_SCALE = "time_scale"  # the profile key recording the factor a scaled profile was multiplied by
HOST_MS_KEPT = "host_ms_kept"  # the host work per rows `scaled_forwards` kept at the profile's speed
TIME_SCALE_BY_ROWS = "time_scale_by_rows"  # the forwards' factor per rows a `scaled_forwards` profile was priced at


class ProfileError(ValueError):
    """A hardware profile file or dict is malformed."""


def _positive_int_key(key, where: str) -> int:
    try:
        value = int(str(key))
    except ValueError:
        raise ProfileError(f"{where}: key {key!r} is not an integer") from None
    if value < 1 or str(value) != str(key).strip():
        raise ProfileError(f"{where}: key {key!r} must be a positive integer")
    return value


def _time_ms(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError(f"{where}: expected a number of milliseconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ProfileError(f"{where}: milliseconds must be finite and >= 0, got {value!r}")
    return float(value)


def _scaled_times(value, factor: float):
    """A time table with every number multiplied by `factor` (nested mappings kept)."""
    if isinstance(value, Mapping):
        return {k: _scaled_times(v, factor) for k, v in value.items()}
    return value * factor


def _time_scale(factor) -> float:
    """A profile's time multiplier, checked: a positive finite number."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ProfileError(f"a profile's time scale must be a positive number, got {factor!r}")
    return float(factor)


def speed_ratio(then: Mapping, now: Mapping) -> tuple[float, dict[str, float]]:
    """The machine's speed now against when a profile was made: the median over the anchor's shapes of
    (ms now / ms then), and that ratio per shape ("rows x tokens @ context"). Above 1: slower now.
    Both anchors come from `measure_speed_anchor` with the same shapes."""
    for name, anchor in (("the profile's", then), ("today's", now)):
        if not isinstance(anchor, Mapping) or not isinstance(anchor.get("shapes"), list) \
                or not isinstance(anchor.get("ms"), list) or len(anchor["shapes"]) != len(anchor["ms"]) \
                or not anchor["shapes"]:
            raise ProfileError(f"{name} speed anchor must be {{shapes: [[rows, tokens, context], ...], ms: [...]}}")
    if [list(x) for x in then["shapes"]] != [list(x) for x in now["shapes"]]:
        raise ProfileError(f"speed anchors of different shapes: {then['shapes']} then, {now['shapes']} now")
    per_shape = {}
    for (rows, tokens, context), a, b in zip(then["shapes"], then["ms"], now["ms"]):
        a, b = _time_ms(a, "speed_anchor.ms"), _time_ms(b, "speed_anchor.ms")
        if a <= 0:
            raise ProfileError("speed_anchor.ms must be positive")
        per_shape[f"{rows} x {tokens} @ {context}"] = b / a
    return float(np.median(list(per_shape.values()))), per_shape


def speed_ratio_by_rows(then: Mapping, now: Mapping) -> dict[int, float]:
    """`speed_ratio`'s per-shape ratios of the anchor's one-token-per-row shapes, by row count (the
    median where several contexts share one): how much slower a decode forward of that many rows runs
    now. On four slow-day runs a one-row forward slowed 17-28% less than the shapes' median."""
    speed_ratio(then, now)  # validates both and checks the shapes agree
    by_rows: dict[int, list[float]] = {}
    for (rows, tokens, context), a, b in zip(then["shapes"], then["ms"], now["ms"]):
        if tokens == 1:
            by_rows.setdefault(int(rows), []).append(float(b) / float(a))
    return {rows: float(np.median(ratios)) for rows, ratios in sorted(by_rows.items())}


def scale_by_rows(by_rows) -> dict[int, float]:
    """A per-rows time scale ({rows: factor}: `speed_ratio_by_rows`, a scenario's `profile_scale_by_rows`)
    checked: row counts integers >= 1 (or JSON's decimal strings), each once; factors positive numbers.
    Keyed by int, sorted by rows."""
    if not isinstance(by_rows, Mapping) or not by_rows:
        raise ProfileError(f"a per-rows time scale must be a non-empty mapping {{rows: factor}}, got {by_rows!r}")
    out: dict[int, float] = {}
    for key, factor in by_rows.items():
        rows = int(key) if isinstance(key, str) and key.isdecimal() else key
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ProfileError(f"a per-rows time scale's row count must be an integer >= 1, got {key!r}")
        if rows in out:
            raise ProfileError(f"a per-rows time scale names a row count twice: {by_rows!r}")
        out[rows] = _time_scale(factor)
    return dict(sorted(out.items()))


def mean_anchor(anchors: list[Mapping]) -> dict:
    """Several speed anchors of the same shapes (timed around a long calibration) as one: the mean ms
    per shape; the other fields of the first, `measured` listing every anchor's time."""
    if not anchors:
        raise ProfileError("no speed anchors to average")
    first = anchors[0]
    for anchor in anchors:
        speed_ratio(first, anchor)  # validates both and checks the shapes agree
        theirs, ours = ({f: a.get(f) for f in ANCHOR_ENGINE_FIELDS} for a in (anchor, first))
        if theirs != ours:
            raise ProfileError(f"speed anchors of different forwards cannot be averaged: {ours} and {theirs}")
    ms = [float(np.mean([a["ms"][i] for a in anchors])) for i in range(len(first["ms"]))]
    return {**first, "ms": [round(x, 4) for x in ms], "measured": [a.get("measured") for a in anchors]} \
        if len(anchors) > 1 else dict(first)


def _compose_scale_by_rows(data: dict, meta: Mapping, rows: np.ndarray, factors: np.ndarray, per_rows: bool) -> None:
    """Record in `data` the forwards' factor per rows after scaling a profile whose meta is `meta` by
    `factors` at `rows` (interpolated, clamped): the earlier record (or the earlier `time_scale`, the same
    at every row count) times the new factors, at the row counts of both. Nothing is recorded while no
    scaling was per rows."""
    before = meta.get(TIME_SCALE_BY_ROWS)
    if before is None and not per_rows:
        return
    old_rows = np.array([int(b) for b in before], float) if before else np.array([1.0])
    old = np.array([float(f) for f in before.values()]) if before else np.array([float(meta.get(TIME_SCALE, 1.0))])
    order = np.argsort(old_rows)
    old_rows, old = old_rows[order], old[order]
    every = sorted({int(b) for b in old_rows} | {int(b) for b in rows})
    data[TIME_SCALE_BY_ROWS] = {str(b): _interp(old_rows, old, b) * _interp(rows, factors, b) for b in every}


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Piecewise-linear interpolation, clamped at both ends (np.interp clamps)."""
    return float(np.interp(x, xs, ys))


class Curve:
    """A 1-D table {x: ms}: linear inside, clamped below, clamped or proportional above."""

    def __init__(self, table: Mapping, where: str, proportional_above: bool):
        if not isinstance(table, Mapping) or not table:
            raise ProfileError(f"{where} must be a non-empty mapping {{int: ms}}")
        pts = sorted((_positive_int_key(x, where), _time_ms(ms, f"{where}[{x!r}]")) for x, ms in table.items())
        if len({x for x, _ in pts}) != len(pts):
            raise ProfileError(f"{where}: a key appears twice")
        self.xs = np.array([x for x, _ in pts], float)
        self.ys = np.array([ms for _, ms in pts], float)
        self.proportional_above = proportional_above

    def __call__(self, x: float) -> float:
        if self.proportional_above and x > self.xs[-1]:
            return float(self.ys[-1] * x / self.xs[-1])
        return _interp(self.xs, self.ys, x)

    def to_dict(self) -> dict:
        return {str(int(x)): float(y) for x, y in zip(self.xs, self.ys)}


class VerifyTable:
    """{batch: {tokens_per_row: ms}} at one context, interpolated as the module docstring says."""

    def __init__(self, table: Mapping, where: str = "verify_ms"):
        if not isinstance(table, Mapping) or not table:
            raise ProfileError(f"{where} must be a non-empty mapping {{batch: {{tokens_per_row: ms}}}}")
        rows: dict[int, Curve] = {}
        for bkey, cells in table.items():
            b = _positive_int_key(bkey, where)
            if b in rows:
                raise ProfileError(f"{where}: batch size {b} appears twice")
            rows[b] = Curve(cells, f"{where}[{bkey!r}]", proportional_above=False)
        self.rows = dict(sorted(rows.items()))
        self.batches = np.array(list(self.rows), float)

    def __call__(self, batch: float, tokens_per_row: float) -> float:
        per_batch = np.array([row(tokens_per_row) for row in self.rows.values()])
        return _interp(self.batches, per_batch, batch)

    def to_dict(self) -> dict:
        return {str(b): row.to_dict() for b, row in self.rows.items()}


class HardwareProfile:
    """Validated, interpolating view of a hardware profile (see the module docstring)."""

    def __init__(
        self,
        verify_ms: Mapping,
        draft_ms: Mapping | None = None,
        *,
        ngram_lookup_ms_per_row: float = 0.0,
        device: str = "unknown",
        model: str = "unknown",
        dtype: str = "unknown",
        verify_ms_by_context: Mapping | None = None,
        prefill_ms: Mapping | None = None,
        draft_prefill_ms: Mapping | None = None,
        overhead_ms: Mapping | None = None,
        meta: Mapping | None = None,
    ):
        self._verify = VerifyTable(verify_ms)
        draft_ms = draft_ms or {}
        if not isinstance(draft_ms, Mapping):
            raise ProfileError("draft_ms must be a mapping {batch: ms per draft token}")
        self._draft = Curve(draft_ms, "draft_ms", proportional_above=False) if draft_ms else None
        self.ngram_lookup_ms_per_row = _time_ms(ngram_lookup_ms_per_row, "ngram_lookup_ms_per_row")
        by_context = verify_ms_by_context or {}
        if not isinstance(by_context, Mapping):
            raise ProfileError("verify_ms_by_context must be a mapping {context: {batch: {tokens_per_row: ms}}}")
        tables = sorted(
            (_positive_int_key(c, "verify_ms_by_context"), VerifyTable(t, f"verify_ms_by_context[{c!r}]"))
            for c, t in by_context.items()
        ) if by_context else []
        if len({c for c, _ in tables}) != len(tables):
            raise ProfileError("verify_ms_by_context: a context appears twice")
        self._contexts = [c for c, _ in tables]
        self._by_context = [t for _, t in tables]
        self._prefill = Curve(prefill_ms, "prefill_ms", proportional_above=True) if prefill_ms else None
        self._draft_prefill = (
            Curve(draft_prefill_ms, "draft_prefill_ms", proportional_above=True) if draft_prefill_ms else None
        )
        self._overhead = Curve(overhead_ms, "overhead_ms", proportional_above=False) if overhead_ms else None
        for name, value in (("device", device), ("model", model), ("dtype", dtype)):
            if not isinstance(value, str):
                raise ProfileError(f"{name} must be a string, got {value!r}")
        self.device, self.model, self.dtype = device, model, dtype
        self.meta = dict(meta or {})

    # ---- lookups ----------------------------------------------------------------------------
    def verify_time_ms(self, batch: float, tokens_per_row: float, context: float | None = None) -> float:
        """Milliseconds of one verify forward over `tokens_per_row` positions for `batch` rows, each
        row holding `context` cached tokens (ignored unless the profile has `verify_ms_by_context`)."""
        if context is None or not self._by_context:
            return self._verify(batch, tokens_per_row)
        ctxs = self._contexts
        if context <= ctxs[0]:
            return self._by_context[0](batch, tokens_per_row)
        if context >= ctxs[-1]:
            return self._by_context[-1](batch, tokens_per_row)
        hi = bisect.bisect_right(ctxs, context)
        c0, c1 = ctxs[hi - 1], ctxs[hi]
        t0 = self._by_context[hi - 1](batch, tokens_per_row)
        t1 = self._by_context[hi](batch, tokens_per_row)
        return t0 + (t1 - t0) * (context - c0) / (c1 - c0)

    def verify_step_ms(self, rows: float, scored_tokens: float, context: float | None = None) -> float:
        """One verify pass priced by what it computes: `rows` rows, `scored_tokens` positions in all
        (a uniform k over B rows scores B x (k + 1); a per-row plan, packed, scores B + its drafts).
        The tables are read at scored_tokens / rows tokens per row, so version 1 and 2 profiles
        (measured with uniform rows) price plans as they are."""
        return self.verify_time_ms(rows, scored_tokens / rows, context)

    def verify_context_curve(self, batch: float, tokens_per_row: float) -> tuple[list[float], list[float]]:
        """(contexts, ms) of `verify_time_ms(batch, tokens_per_row, context)` at the measured contexts
        (one point at context 0 without `verify_ms_by_context`): for callers that interpolate over
        context themselves, as the simulator's hot loop does."""
        if not self._by_context:
            return [0.0], [self._verify(batch, tokens_per_row)]
        return [float(c) for c in self._contexts], [t(batch, tokens_per_row) for t in self._by_context]

    @property
    def has_draft_model(self) -> bool:
        return self._draft is not None

    def drafting_kind(self, drafting: str | None = None) -> str:
        """How drafting is priced: `drafting` (`DRAFT_MODEL` or `LOOKUP`; a draft model needs draft_ms),
        or when None this profile's default (a draft model when it times one)."""
        if drafting is None:
            return DRAFT_MODEL if self._draft is not None else LOOKUP
        if drafting not in DRAFTING:
            raise ProfileError(f"drafting must be one of {', '.join(DRAFTING)}, got {drafting!r}")
        if drafting == DRAFT_MODEL and self._draft is None:
            raise ProfileError(f"the profile ({self.model}, {self.device}) has no draft_ms, so it cannot price a draft "
                               f"model's drafting: profile it with the draft model (`nightjar-rl profile --draft`), "
                               f"or set the policy's drafting: lookup")
        return drafting

    def draft_time_ms(self, batch: float, k: int, drafting: str | None = None) -> float:
        """Milliseconds to draft `k` tokens per row for `batch` rows (0 when k = 0), priced as
        `drafting_kind(drafting)`."""
        if k <= 0:
            return 0.0
        return self.plan_draft_time_ms(batch, k, batch, drafting)  # the uniform plan: every row drafts k

    def draft_model_time_ms(self, batch: float, k: int) -> float:
        """Milliseconds for a draft model to draft `k` tokens for each of `batch` rows (needs draft_ms)."""
        if self._draft is None:
            raise ProfileError("this profile has no draft_ms: it cannot price a draft model")
        return k * self._draft(batch) if k > 0 else 0.0

    def plan_draft_time_ms(self, rows: float, longest: int, drafting_rows: float, drafting: str | None = None) -> float:
        """Milliseconds of drafting for a per-row plan over `rows` rows whose longest row drafts `longest`
        tokens and `drafting_rows` rows draft at all, priced as `drafting_kind(drafting)`: a draft model
        drafts every row `longest` times, a model-free drafter looks up the drafting rows."""
        if self.drafting_kind(drafting) == DRAFT_MODEL:
            return self.draft_model_time_ms(rows, longest)
        return self.lookup_time_ms(drafting_rows)

    def catchup_time_ms(self, rows: float, fed: float, folded: bool = False) -> float:
        """A draft model's catch-up over `fed` positions for `rows` rows (`layouts.catchup_tokens`): a pass
        of its own, draft_prefill_ms(fed); or `folded` into the first drafting pass, which then computes
        rows + fed positions instead of rows: max(0, draft_prefill_ms(rows + fed) - draft_ms(rows))."""
        if fed <= 0:
            return 0.0
        if not folded:
            return self.draft_prefill_time_ms(fed)
        return max(0.0, self.draft_prefill_time_ms(rows + fed) - self.draft_model_time_ms(rows, 1))

    def lookup_time_ms(self, rows: float) -> float:
        """Milliseconds of model-free drafting (n-gram lookup, SSSD trees) for `rows` rows."""
        return rows * self.ngram_lookup_ms_per_row

    def step_time_ms(self, batch: float, k: int, context: float | None = None, drafting: str | None = None) -> float:
        """Predicted decode-step time with speculation length k: drafting (`draft_time_ms`) plus verifying
        k + 1 positions."""
        return self.draft_time_ms(batch, k, drafting) + self.verify_time_ms(batch, k + 1, context)

    def prefill_time_ms(self, tokens: float) -> float:
        """One target prefill pass computing `tokens` prompt tokens (padded: rows x the longest prompt)."""
        if tokens <= 0:
            return 0.0
        if self._prefill is not None:
            return self._prefill(tokens)
        largest = float(self._verify.batches[-1])
        if tokens > largest:
            return self._verify(largest, 1) * tokens / largest
        return self._verify(tokens, 1)

    def draft_prefill_time_ms(self, tokens: float) -> float:
        """One draft-model pass over `tokens` tokens (the catch-up after speculation was off)."""
        if tokens <= 0:
            return 0.0
        if self._draft_prefill is not None:
            return self._draft_prefill(tokens)
        return self._draft(tokens) if self._draft is not None else 0.0

    def overhead_time_ms(self, batch: float) -> float:
        """Per-step time outside model forwards (scheduling, inputs, accept/reject)."""
        return self._overhead(batch) if self._overhead is not None else 0.0

    @property
    def speed_anchor(self) -> dict | None:
        """The fixed forwards timed when the profile was made (see the module docstring), if any."""
        return self.meta.get(SPEED_ANCHOR)

    def scaled(self, factor: float) -> HardwareProfile:
        """This profile with every time multiplied by `factor` (e.g. `speed_ratio`'s: the machine is
        `factor` times slower now than when the profile was made). The factor is recorded in `time_scale`
        (multiplied into any earlier one)."""
        factor = _time_scale(factor)
        data = self.to_dict()
        for key in ("verify_ms", "verify_ms_by_context", "draft_ms", "ngram_lookup_ms_per_row", "prefill_ms",
                    "draft_prefill_ms", "overhead_ms", "verify_ms_half_drafted"):
            if key in data:
                data[key] = _scaled_times(data[key], factor)
        data[TIME_SCALE] = factor * float(self.meta.get(TIME_SCALE, 1.0))
        _compose_scale_by_rows(data, self.meta, np.array([1.0]), np.array([factor]), False)
        return HardwareProfile.from_dict(data, source=f"{self.model} profile scaled by {factor:.4g}")

    def host_ms_by_rows(self) -> dict[int, float]:
        """What this profile prices a one-token-per-row step at beyond its speed anchor's bare forward of
        the same shape (`{rows: ms}`, at least 0): the engine's host work around the forward (sampling,
        acceptance, bookkeeping), timed with the profile and absent from the anchor. Needs an anchor."""
        anchor = self.speed_anchor
        if anchor is None:
            raise ProfileError("the profile has no speed_anchor: its host work cannot be told from its forwards")
        host = {int(rows): max(0.0, self.verify_step_ms(rows, rows, context) - float(ms))
                for (rows, tokens, context), ms in zip(anchor["shapes"], anchor["ms"]) if tokens == 1}
        if not host:
            raise ProfileError("the profile's speed_anchor has no one-token-per-row shape to tell host work from forwards")
        return host

    def scaled_forwards(self, factor: float, by_rows: Mapping | None = None) -> HardwareProfile:
        """This profile on a machine whose forwards run `factor` times slower (the anchor's `speed_ratio`)
        while its host work does not: at b rows a verify price v becomes f x v - (f - 1) x min(h(b), v),
        with h the host work (`host_ms_by_rows`, linear over rows, clamped) and f = `factor`, or with
        `by_rows` ({rows: factor}, `speed_ratio_by_rows`) f(b) interpolated over rows and clamped; prefill
        and draft passes are multiplied by `factor`; per-step overhead and n-gram lookups are kept. On two
        slow days the anchor's forwards slowed 3.0-3.4x and 4.1-4.4x at 16 rows while the live engine's
        steps slowed 2.4-2.8x and about 3.3x: a step's host work (4-14 ms on the profile's day) had not
        slowed. One-row forwards slowed less than the others (1.7-2.5x while the shapes' median read 2.4-3.3x
        on four slow-day runs): `by_rows`. The profile records the forwards' factor per rows it now carries
        in `time_scale_by_rows` (composed with earlier scalings)."""
        factor = _time_scale(factor)
        host = self.host_ms_by_rows()
        rows, host_ms = np.array(sorted(host), float), np.array([host[r] for r in sorted(host)])
        if by_rows is not None:
            per_rows = scale_by_rows(by_rows)
            factor_rows, factors = np.array(list(per_rows), float), np.array(list(per_rows.values()))
        else:
            factor_rows, factors = np.array([1.0]), np.array([factor])

        def verify(table: Mapping) -> dict:
            out = {}
            for b, per_row in table.items():
                h = _interp(rows, host_ms, int(b))  # the host work at b rows, once per batch size
                f = _interp(factor_rows, factors, int(b))
                out[b] = {n: f * v - (f - 1) * min(h, v) for n, v in per_row.items()}
            return out

        data = self.to_dict()
        for key in ("verify_ms", "verify_ms_half_drafted"):
            if key in data:
                data[key] = verify(data[key])
        if "verify_ms_by_context" in data:
            data["verify_ms_by_context"] = {c: verify(t) for c, t in data["verify_ms_by_context"].items()}
        for key in ("draft_ms", "prefill_ms", "draft_prefill_ms"):
            if key in data:
                data[key] = _scaled_times(data[key], factor)
        data[TIME_SCALE] = factor * float(self.meta.get(TIME_SCALE, 1.0))
        data[HOST_MS_KEPT] = {str(r): round(ms, 4) for r, ms in host.items()}
        _compose_scale_by_rows(data, self.meta, factor_rows, factors, by_rows is not None)
        return HardwareProfile.from_dict(data, source=f"{self.model} profile, forwards scaled by {factor:.4g}")

    @property
    def batch_sizes(self) -> list[int]:
        return [int(b) for b in self._verify.batches]

    @property
    def contexts(self) -> list[int]:
        return list(self._contexts)

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {
            **self.meta,
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "device": self.device,
            "model": self.model,
            "dtype": self.dtype,
            "verify_ms": self._verify.to_dict(),
            "draft_ms": self._draft.to_dict() if self._draft is not None else {},
            "ngram_lookup_ms_per_row": self.ngram_lookup_ms_per_row,
        }
        if self._by_context:
            out["verify_ms_by_context"] = {str(c): t.to_dict() for c, t in zip(self._contexts, self._by_context)}
        for key, curve in (("prefill_ms", self._prefill), ("draft_prefill_ms", self._draft_prefill),
                           ("overhead_ms", self._overhead)):
            if curve is not None:
                out[key] = curve.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "profile") -> HardwareProfile:
        """Validate and build from a parsed profile; errors name `source` and the bad field."""
        if not isinstance(data, Mapping):
            raise ProfileError(
                f"{source}: a hardware profile must be a JSON object, got {type(data).__name__}"
            )
        if "format" in data and data["format"] != PROFILE_FORMAT:
            raise ProfileError(f"{source}: format is {data['format']!r}, expected {PROFILE_FORMAT!r}")
        if "version" in data and data["version"] not in READABLE_VERSIONS:
            raise ProfileError(
                f"{source}: profile version {data['version']!r} is not supported (reads {READABLE_VERSIONS})"
            )
        if "verify_ms" not in data:
            raise ProfileError(f"{source}: missing required field 'verify_ms'")
        try:
            return cls(
                data["verify_ms"],
                data.get("draft_ms") or {},
                ngram_lookup_ms_per_row=data.get("ngram_lookup_ms_per_row", 0.0),
                device=data.get("device", "unknown"),
                model=data.get("model", "unknown"),
                dtype=data.get("dtype", "unknown"),
                verify_ms_by_context=data.get("verify_ms_by_context"),
                prefill_ms=data.get("prefill_ms"),
                draft_prefill_ms=data.get("draft_prefill_ms"),
                overhead_ms=data.get("overhead_ms"),
                meta={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
            )
        except ProfileError as exc:
            raise ProfileError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> HardwareProfile:
        return cls.from_dict(read_json(path, "hardware profile", ProfileError), source=str(path))

    @classmethod
    def from_model_fn(
        cls,
        verify_fn: Callable[[int, int], float],
        batch_sizes: Iterable[int],
        tokens_per_row: Iterable[int],
        draft_fn: Callable[[int], float] | None = None,
        **kwargs,
    ) -> HardwareProfile:
        """Tabulate analytic cost functions (ms) on a grid: synthetic profiles for tests and studies."""
        batch_sizes, tokens_per_row = list(batch_sizes), list(tokens_per_row)
        verify = {str(b): {str(n): float(verify_fn(b, n)) for n in tokens_per_row} for b in batch_sizes}
        draft = {str(b): float(draft_fn(b)) for b in batch_sizes} if draft_fn is not None else {}
        kwargs.setdefault("device", "synthetic")
        return cls(verify, draft, **kwargs)

    def __repr__(self) -> str:
        return f"HardwareProfile(model={self.model!r}, device={self.device!r}, batches={self.batch_sizes})"
