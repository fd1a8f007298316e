"""The observation vector: what a speculation policy sees before choosing k.

Layout (float32, fixed per `max_k`):

| index       | field              | meaning                                                        |
| ----------- | ------------------ | -------------------------------------------------------------- |
| 0           | batch_size         | rows that the next step will decode (running requests)         |
| 1           | queue_len          | requests waiting for admission                                  |
| 2           | arrival_rate       | EMA estimate of the request arrival rate (requests/s)           |
| 3           | ema_acceptance     | EMA of the per-token acceptance rate (accepted / drafted)       |
| 4           | ema_accepted_len   | EMA of accepted draft tokens per row per speculative step       |
| 5           | last_k             | k used in the previous step                                     |
| 6           | last_time_per_token| wall time of the previous step / tokens it produced (s)         |
| 7 .. 7+max_k| hist_0..hist_max_k | share of recent row-steps that accepted 0..max_k draft tokens   |
| then        | fi_acceptance      | full-information per-token acceptance estimate over all rows, a |
|             |                    | row without a proposal counted as a rejection (0 while unknown) |
|             | fi_known           | 1 once full information has been seen, 0 = unknown yet          |
|             | rows_unknown       | share of running rows with no acceptance estimate yet           |
|             | rows_acc_0..3      | share of running rows whose estimate is in [0, .25), [.25, .5), [.5, .75), [.75, 1] |
|             | rows_proposal      | mean draft tokens the running rows' drafters hold for the next step / max_k (0 unknown) |

Version 1 was the first 8 + max_k entries alone; they keep their meaning in version 2 (a version-1
policy reads `obs[:obs_size_v1(max_k)]`). Fields 0..7+max_k summarise the steps that drafted: they
do not move while k = 0. The version-2 fields do: they come from full information
(`StepStats.shadow_drafted/shadow_accepted`: the drafter's whole proposal at each row's position
checked against the tokens the target emitted, no verify cost), and where the executor has none, from
the rows that drafted.

Acceptance estimates are the geometric model's maximum likelihood (the model behind "the j-th draft
survives with probability alpha^j"): a row that drafted d tokens and had a accepted contributes a
successes and, when a < d, one failure; alpha = EMA(successes) / EMA(successes + failures). A row
with no trial yet (no proposal so far) is *unknown*, not zero: per-row estimates count only rows that
had a proposal (the proposal is a feature of its own); the step-level `fi_acceptance` counts a row
without one as a rejection of its first draft, what a uniform k gets from it. A row-step with
drafted < 0 is no sample at all (`nightjar_rl.runtime.full_info`: a check still pending). Both sums
are written inline in the trackers' per-row loops (`RowTracker.observe_step`,
`ObservationTracker.observe_step`): they run once per row per step.

Per-row features (`RowBatch`) ride on the observation the runtime's driver builds (`Observation`,
an ndarray with a `rows` attribute; `rows_of(obs)` reads it): per running row its acceptance
estimate (nan = unknown), the samples behind it, the proposal its drafter holds (-1 = unknown), its
output position, its remaining budget and its length (prompt + output). Per-step policies see only
the vector.

`ObservationBuilder` computes it, the same way wherever a policy runs (the env, evaluation, the
CLI and the server all go through the runtime's `PolicyDriver`, which owns one).

Policies read fields by name through `OBS_INDEX`, never by magic numbers. `OBS_LAYOUT_VERSION`
numbers this layout (fields, order, meaning); exported neural policies record it with
`obs_layout(max_k)` and refuse to load against another one (version-1 artifacts load and read the
version-1 prefix). Bump it whenever the table changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property, partial

import numpy as np

from nightjar_rl.contracts.step import StepRecord

SCALAR_FIELDS = (
    "batch_size",
    "queue_len",
    "arrival_rate",
    "ema_acceptance",
    "ema_accepted_len",
    "last_k",
    "last_time_per_token",
)
OBS_INDEX = {name: i for i, name in enumerate(SCALAR_FIELDS)}
HIST_START = len(SCALAR_FIELDS)
ROW_BINS = (0.25, 0.5, 0.75)  # upper edges of the rows_acc_0..2 bins; rows_acc_3 holds the rest
SUMMARY_FIELDS = ("fi_acceptance", "fi_known", "rows_unknown",
                  *(f"rows_acc_{i}" for i in range(len(ROW_BINS) + 1)), "rows_proposal")

OBS_LAYOUT_VERSION = 2
LAYOUT_VERSIONS = (1, 2)


def obs_size_v1(max_k: int) -> int:
    """Entries of a version-1 observation (the prefix of a version-2 one)."""
    return HIST_START + max_k + 1


def obs_size(max_k: int) -> int:
    return obs_size_v1(max_k) + len(SUMMARY_FIELDS)


def obs_layout(max_k: int, version: int = OBS_LAYOUT_VERSION) -> list[str]:
    """Field names of the observation vector in order: the scalars, hist_0..hist_{max_k}, then (version
    2) the full-information summary."""
    if version not in LAYOUT_VERSIONS:
        raise ValueError(f"observation layout version must be one of {LAYOUT_VERSIONS}, got {version!r}")
    v1 = [*SCALAR_FIELDS, *(f"hist_{i}" for i in range(max_k + 1))]
    return v1 if version == 1 else [*v1, *SUMMARY_FIELDS]


def _summary_start(obs: np.ndarray) -> int:
    return len(obs) - len(SUMMARY_FIELDS)


def obs_field(obs: np.ndarray, name: str) -> float:
    """Read one field of an observation by name (a scalar or a version-2 summary field)."""
    obs = np.asarray(obs)
    if name in OBS_INDEX:
        return float(obs[OBS_INDEX[name]])
    if name in SUMMARY_FIELDS:
        return float(obs[_summary_start(obs) + SUMMARY_FIELDS.index(name)])
    raise ValueError(f"unknown observation field {name!r}; fields: {', '.join((*OBS_INDEX, *SUMMARY_FIELDS))}")


def obs_histogram(obs: np.ndarray) -> np.ndarray:
    obs = np.asarray(obs)
    return obs[HIST_START:_summary_start(obs)]


def step_sample_lists(stats: StepRecord) -> tuple[Sequence[int], Sequence[int]]:
    """(drafted, accepted), aligned per row of a step, for the acceptance estimates: full information
    when the executor reports it (`shadow_drafted/shadow_accepted`), else what the rows drafted."""
    shadow_d, shadow_a = getattr(stats, "shadow_drafted", None), getattr(stats, "shadow_accepted", None)
    if shadow_d and len(shadow_d) == len(stats.drafted):
        return shadow_d, shadow_a
    return stats.drafted, stats.accepted


class AcceptanceEstimate:
    """alpha = EMA(successes) / EMA(trials) of the geometric model (see module docs); None = unknown."""

    __slots__ = ("decay", "successes", "trials", "samples")

    def __init__(self, decay: float):
        self.decay, self.successes, self.trials, self.samples = decay, 0.0, 0.0, 0

    def add(self, successes: int, trials: int) -> None:
        """Fold one sample (a row-step's successes and trials, or a whole step's sums) in."""
        if trials:
            self.successes = self.decay * self.successes + successes
            self.trials = self.decay * self.trials + trials
            self.samples += 1

    @property
    def value(self) -> float | None:
        return self.successes / self.trials if self.trials > 0 else None


class _Column:
    """A `RowBatch` column: handed in as a list or an array (or a function of no arguments returning
    one: a column derived from others), an ndarray of `dtype` from its first read (a per-step policy
    never reads the columns; building every array each step would cost more than the step itself in
    the simulator)."""

    def __init__(self, dtype: type):
        self.dtype = dtype

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, rows, owner=None):
        if rows is None:
            return self
        value = rows.__dict__[self.name] = np.asarray(rows._given_value(self.name), dtype=self.dtype)
        return value  # stored on the instance: later reads skip this descriptor


class RowBatch:
    """Per-row features of the rows the next step decodes (aligned arrays, running order)."""

    acceptance = _Column(float)  # per-token acceptance estimate; nan = unknown yet (not zero)
    samples = _Column(int)  # row-steps with a trial behind the estimate (0 = unknown)
    proposal = _Column(int)  # draft tokens the row's drafter holds for the next step; -1 = unknown
    position = _Column(int)  # output tokens generated so far
    remaining = _Column(int)  # output budget left (tokens)
    context = _Column(int)  # tokens in the row (prompt + output)
    lag = _Column(int)  # tokens of the row a draft model's cache lacks (its catch-up feeds all but the last); 1: none

    def __init__(self, request_ids: Sequence[str], acceptance: Sequence[float], samples: Sequence[int],
                 proposal: Sequence[int], position: Sequence[int], remaining: Sequence[int],
                 context: Sequence[int], depth_counts: tuple | None = None, confidence=None, lag=None):
        """Columns as lists or arrays (not copied: hand in values nothing changes later), or functions
        of no arguments that return one (called on first read; `depth_counts` and `confidence` too).
        `depth_counts`, behind `depth_rates`: (per row (raw successes [max_k], raw trials [max_k],
        scale) as `DepthCounts.state_at` gives them, the batch-wide (successes [max_k], trials
        [max_k]), the prior weight w); None: geometric acceptance. `confidence`, behind `confidences`:
        [rows, depth] the drafter's own probability that each token of the row's next proposal is
        accepted given the ones before it (nan where it gives none); None: no drafter confidences.
        `lag`: as the engine reports it (`engine.draft_lags()`); None: 1 for every row (nothing to catch up)."""
        self.request_ids = tuple(request_ids)
        self._given = {"acceptance": acceptance, "samples": samples, "proposal": proposal, "position": position,
                       "remaining": remaining, "context": context,
                       "lag": lag if lag is not None else (lambda: [1] * len(self.request_ids))}
        self.depth_counts = depth_counts
        self.confidence = confidence

    def __len__(self) -> int:
        return len(self.request_ids)

    def __getstate__(self) -> dict:
        """Pickled (vector envs, Ray) with derived columns computed and each row's depth counts as the
        state the batch holds (not the request's live history: a pickle's size does not grow with the
        request's age)."""
        for name in self._given:
            self._given_value(name)
        self._depth_counts()
        self.confidences  # noqa: B018 - computed before pickling
        return self.__dict__

    def _depth_counts(self) -> tuple | None:
        """`depth_counts`, a derived one computed once, on first read."""
        if callable(self.depth_counts):
            self.depth_counts = self.depth_counts()
        return self.depth_counts

    def column_list(self, name: str) -> Sequence:
        """A column as a Python sequence, to read only (without building its array)."""
        value = self.__dict__.get(name)
        if value is None:
            value = self._given_value(name)
        return value.tolist() if isinstance(value, np.ndarray) else value

    def _given_value(self, name: str) -> Sequence:
        """The column as handed in (a list or an array), a derived one computed once on first read."""
        value = self._given[name]
        if callable(value):
            value = self._given[name] = value()
        return value

    @cached_property
    def depth_rates(self) -> np.ndarray | None:
        """[rows, max_k] P(depth j accepted | j - 1 were), nan where unknown; None: geometric. A row's
        counts shrunk towards the batch-wide rate g_j: (s_rj + w g_j) / (t_rj + w)."""
        if self.depth_counts is None:
            return None
        per_row, (gs, gt), w = self._depth_counts()
        gs, gt = np.asarray(gs, dtype=float), np.asarray(gt, dtype=float)
        g = np.divide(gs, gt, out=np.full(len(gt), math.nan), where=gt > 0)
        shape = (len(per_row), len(g))
        ds, dt, scales = zip(*per_row) if per_row else ((), (), ())
        scale = np.array(scales, dtype=float).reshape(-1, 1)
        s = np.array(ds, dtype=float).reshape(shape) / scale
        t = np.array(dt, dtype=float).reshape(shape) / scale
        known = ~np.isnan(g)
        rates = np.divide(s, t, out=np.full(shape, math.nan), where=(t > 0) & ~known)  # no batch-wide rate yet
        rates[:, known] = (s[:, known] + w * g[known]) / (t[:, known] + w)
        return rates

    @cached_property
    def confidences(self) -> np.ndarray | None:
        """[rows, depth] the drafter's per-token confidences (`confidence`, nan where none), or None. A
        derived `confidence` is replaced by its value (what a pickle then carries)."""
        given = self.confidence() if callable(self.confidence) else self.confidence
        if given is None:
            return None
        matrix = np.asarray(given, dtype=float)
        if matrix.ndim != 2:
            matrix = matrix.reshape(len(self), -1) if len(self) else matrix.reshape(0, 0)
        self.confidence = matrix
        return matrix

    def alpha(self, prior: float) -> np.ndarray:
        """Acceptance estimates with unknown rows at `prior`."""
        return np.where(np.isnan(self.acceptance), prior, self.acceptance)

    def draft_caps(self, max_k: int) -> np.ndarray:
        """Most draft tokens each row can use next step: max_k, its budget left - 1, its proposal if known."""
        caps = np.minimum(max_k, np.maximum(self.remaining - 1, 0))
        return np.where(self.proposal >= 0, np.minimum(caps, self.proposal), caps).astype(int)

    def survival(self, max_k: int, prior: float, confidence: bool = True) -> np.ndarray:
        """[rows, max_k]: P(the row's j-th draft is accepted) for j <= its cap, 0 beyond: the product of
        its depth rates up to j (unknown ones at `prior`), or alpha^j without depth rates. With
        `confidence` and drafter confidences, a depth the drafter gives a confidence for takes it
        instead of the rate (the product is then the drafter's own survival, as adaptive verification
        computes it)."""
        j = np.arange(1, max_k + 1)
        conf = self.confidences if confidence else None
        if self.depth_rates is None and conf is None:
            surv = self.alpha(prior)[:, None] ** j[None, :]
        else:
            if self.depth_rates is None:
                rates = np.repeat(self.alpha(prior)[:, None], max_k, axis=1)
            else:
                rates = np.asarray(self.depth_rates, dtype=float)[:, :max_k]
                rates = np.where(np.isnan(rates), prior, rates)
            if conf is not None:
                given = np.full((len(self), max_k), math.nan)
                given[:, : min(max_k, conf.shape[1])] = conf[:, :max_k]
                rates = np.where(np.isnan(given), rates, np.clip(given, 0.0, 1.0))
            surv = np.cumprod(rates, axis=1)
        return np.where(j[None, :] <= self.draft_caps(max_k)[:, None], surv, 0.0)


class Observation(np.ndarray):
    """The observation vector (a float32 ndarray) carrying the per-row features in `rows` (None when
    built without them). `np.asarray(obs)` is the plain vector."""

    rows: RowBatch | None

    def __new__(cls, vector: np.ndarray, rows: RowBatch | None = None) -> Observation:
        obj = np.asarray(vector, dtype=np.float32).view(cls)
        obj.rows = rows
        return obj

    def __array_finalize__(self, obj) -> None:
        self.rows = getattr(obj, "rows", None)

    def __reduce__(self):  # pickles (vector envs, Ray) as the plain vector plus rows
        return (Observation, (np.asarray(self), self.rows))


def rows_of(obs: np.ndarray) -> RowBatch | None:
    """The per-row features an observation carries (None for a plain vector)."""
    return getattr(obs, "rows", None)


def depth_sample(drafted: int, accepted: int, max_k: int) -> tuple[int, int]:
    """A row-step's sample for the per-depth counts: (depths with a trial, depths with a success) =
    (min(accepted + 1, drafted, max_k), min(accepted, that)); (0, 0) when it drafted nothing."""
    reach = min(accepted + 1, drafted, max_k)
    return (reach, min(accepted, reach)) if reach > 0 else (0, 0)


def fold_depth_samples(state: tuple[Sequence[float], Sequence[float]], samples: Sequence[tuple[int, int]],
                       decay: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(successes, trials) per depth after folding in `samples` ((reach, won), in order): each sample
    decays the counts by `decay` and adds 1 at depths 1..reach (trials) and 1..won (successes); a
    (0, 0) is no sample (no decay either). After m samples a count is decay^m times what it was plus,
    per sample i, decay^(m - 1 - i) at each depth it reached: one pass over the samples, one over the
    depths."""
    old_successes, old_trials = state
    max_k = len(old_trials)
    reached, won = [0.0] * (max_k + 1), [0.0] * (max_k + 1)  # decayed weight of the samples by depth reached
    weight = 1.0
    for r, w in reversed(samples):
        if not r:
            continue
        reached[r] += weight
        won[w] += weight
        weight *= decay
    trials, successes, at_least_t, at_least_s = [0.0] * max_k, [0.0] * max_k, 0.0, 0.0
    for j in range(max_k - 1, -1, -1):  # depth j + 1 counts every sample that reached past j
        at_least_t += reached[j + 1]
        at_least_s += won[j + 1]
        trials[j] = old_trials[j] * weight + at_least_t
        successes[j] = old_successes[j] * weight + at_least_s
    return tuple(successes), tuple(trials)


class DepthCounts:
    """One request's conditional acceptance per draft depth j = 1..max_k: a proposal of d tokens with a
    accepted is a trial at depths 1..min(a + 1, d) and a success at depths 1..a (decayed counts).

    Folded when read: `add` appends the sample to `samples` (the request's whole history, append-only;
    a request's life bounds it) and `state_at(n)` folds the first n in order, caching the latest fold,
    so reading every step folds each sample once. The fold is the same sequence of float operations
    whenever it runs, so a count depends only on n (not on when it was read), and a reader that took
    n earlier (a held `RowBatch`) still reads the counts as they were then. Stored scaled: the state is
    (raw successes, raw trials, scale), counts = raw / scale; each sample multiplies the scale by
    1 / decay and adds the new scale at the depths it reached (renormalised to scale 1 before it could
    overflow), so a sample touches only those depths."""

    __slots__ = ("_folded", "decay", "max_k", "samples")
    RENORMALISE_ABOVE = 1e100

    def __init__(self, max_k: int, decay: float):
        self.decay, self.max_k = decay, max_k
        self.samples: list[tuple[int, int]] = []
        self._folded: tuple[int, tuple, tuple, float] = (0, (0.0,) * max_k, (0.0,) * max_k, 1.0)  # (n, state)

    def add(self, drafted: int, accepted: int) -> tuple[int, int]:
        """Fold one row-step in (lazily); returns its sample (`depth_sample`), (0, 0) for none."""
        sample = depth_sample(drafted, accepted, self.max_k)
        if sample[0]:
            self.samples.append(sample)
        return sample

    def state_at(self, n: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...], float]:
        """(raw successes, raw trials, scale) after the first `n` samples (default: all)."""
        n = len(self.samples) if n is None else n
        done, raw_s, raw_t, scale = self._folded
        if done > n:  # an older snapshot than the cached fold: fold from the start
            done, raw_s, raw_t, scale = 0, (0.0,) * self.max_k, (0.0,) * self.max_k, 1.0
        if done < n:
            successes, trials, grow = list(raw_s), list(raw_t), 1.0 / self.decay
            for reach, won in self.samples[done:n]:
                if scale > self.RENORMALISE_ABOVE:
                    successes, trials, scale = [x / scale for x in successes], [x / scale for x in trials], grow
                else:
                    scale *= grow
                for j in range(reach):
                    trials[j] += scale
                for j in range(won):
                    successes[j] += scale
            raw_s, raw_t = tuple(successes), tuple(trials)
            if n > self._folded[0]:
                self._folded = (n, raw_s, raw_t, scale)
        return raw_s, raw_t, scale

    @property
    def successes(self) -> list[float]:
        raw, _, scale = self.state_at()
        return [x / scale for x in raw]

    @property
    def trials(self) -> list[float]:
        _, raw, scale = self.state_at()
        return [x / scale for x in raw]


class RowTracker:
    """Per-request acceptance estimates (full information where the executor has it), forgotten when
    the request leaves: the geometric `AcceptanceEstimate`'s and, per draft depth, conditional
    acceptance shrunk towards all rows' (`depth_rates`: (s_rj + w g_j) / (t_rj + w), g_j the batch-wide
    rate at depth j, w = `prior_weight`), which calibrates survival when acceptance is not geometric
    (an n-gram that copies a span tends to keep copying).

    `rows[request_id]` is an immutable tuple, replaced by each sample: (geometric successes, trials,
    samples, the request's `DepthCounts`, the depth samples it holds). A `RowBatch` keeps the tuples of
    its rows, so taking one is a lookup per row, and what it reads later is the state it was taken at."""

    def __init__(self, max_k: int, decay: float = 0.8, global_decay: float = 0.999, prior_weight: float = 2.0):
        self.max_k, self.decay, self.prior_weight = max_k, decay, prior_weight
        self.global_decay = global_decay
        self.reset()
        # `depth_sample(d, a)` for every d <= max_k, a <= d: looked up, not recomputed, in the per-row loop
        self._depth_samples = [[depth_sample(d, a, max_k) for a in range(d + 1)] for d in range(max_k + 1)]

    def reset(self) -> None:
        self.rows: dict[str, tuple[float, float, int, DepthCounts, int]] = {}
        self.depths: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0,) * self.max_k, (0.0,) * self.max_k)
        self._unseen = (0.0, 0.0, 0, DepthCounts(self.max_k, self.decay), 0)  # a row not decoded yet

    def observe_step(self, stats: StepRecord) -> None:
        """Fold a step's samples in. Per row, `AcceptanceEstimate.add` and `DepthCounts.add` written
        inline (this loop runs once per row per step); batch-wide, one fold of the step's depth samples
        in row order (decay `global_decay` per row-sample)."""
        rows, reached, table, max_k, decay = self.rows, [], self._depth_samples, self.max_k, self.decay
        add_reached = reached.append
        for rid, d, a in zip(getattr(stats, "request_ids", ()), *step_sample_lists(stats)):
            entry = rows.get(rid)
            if entry is None:
                entry = rows[rid] = (0.0, 0.0, 0, DepthCounts(max_k, decay), 0)
            if d <= 0:  # no proposal (or a pending check): no trial for either estimate
                continue
            successes, trials, samples, depth, held = entry
            sample = table[d][a] if 0 <= a <= d <= max_k else depth_sample(d, a, max_k)
            if sample[0]:
                depth.samples.append(sample)
                held += 1
                add_reached(sample)
            # the geometric model's sample: a successes, a + (a < d) trials (module docstring)
            rows[rid] = (decay * successes + a, decay * trials + a + (a < d), samples + 1, depth, held)
        if reached:
            self.depths = fold_depth_samples(self.depths, reached, self.global_decay)
        for rid in getattr(stats, "finished_ids", ()):
            rows.pop(rid, None)

    def batch(self, running, proposals: dict[str, int] | None = None,
              confidences: dict[str, Sequence[float]] | None = None, lags: dict[str, int] | None = None) -> RowBatch:
        """The `RowBatch` of `running` (Sequences: request_id, tokens, request); `proposals`, the
        drafter's per-token `confidences` and a draft model's `lags` by request id (absent: unknown; no
        confidences at all: None in the batch; a lag not reported: 1, nothing to catch up). Eager only where the state would move on (the rows' estimate tuples,
        their lengths, the proposals): it runs every step, and `RowBatch` derives the rest when read."""
        proposals = proposals or {}
        running = list(running)  # a snapshot: the engine's list changes with admissions
        ids = [seq.request.request_id for seq in running]
        get, unseen = self.rows.get, self._unseen
        entries = [get(rid, unseen) for rid in ids]
        context = [len(seq.tokens) for seq in running]
        nan, batch_wide, w = math.nan, self.depths, self.prior_weight

        def acceptance() -> list[float]:  # `AcceptanceEstimate.value`; nan: unknown
            return [e[0] / e[1] if e[1] > 0 else nan for e in entries]

        def samples() -> list[int]:
            return [e[2] for e in entries]

        def position() -> list[int]:
            return [n - len(seq.request.prompt_ids) for n, seq in zip(context, running)]

        def remaining() -> list[int]:
            return [seq.request.max_new_tokens - n + len(seq.request.prompt_ids) for n, seq in zip(context, running)]

        def depth_counts() -> tuple:  # each row's counts at the samples it held when the batch was taken
            return [e[3].state_at(e[4]) for e in entries], batch_wide, w

        confidence = None
        if confidences:  # the rows' arrays are read when the batch is (the drafter must not change them in place)
            held = [confidences.get(rid) for rid in ids]  # taken now: the drafter's dict moves on next step
            confidence = partial(_confidence_matrix, held, self.max_k)
        lag = [lags.get(rid, 1) for rid in ids] if lags else None  # taken now: the engine's state moves on
        return RowBatch(ids, acceptance, samples, [proposals.get(rid, -1) for rid in ids], position, remaining,
                        context, depth_counts, confidence, lag)


def _confidence_matrix(held: list, depth: int) -> np.ndarray:
    """[rows, depth] of per-row confidence lists (None or short: nan where missing)."""
    out = np.full((len(held), depth), math.nan)
    for i, conf in enumerate(held):
        if conf is not None:
            values = np.asarray(conf, dtype=float)[:depth]
            out[i, : len(values)] = values
    return out


def row_summary(rows: RowBatch | None, max_k: int) -> list[float]:
    """rows_unknown, rows_acc_0..3, rows_proposal of the observation (zeros without rows). Plain Python:
    it runs every step, mostly over a few rows."""
    out = [0.0] * (len(ROW_BINS) + 3)
    n = len(rows) if rows is not None else 0
    if not n:
        return out
    share, (low, mid, high) = 1.0 / n, ROW_BINS
    for a in rows.column_list("acceptance"):  # a != a: nan, unknown; else its bin (comparisons: once per row)
        out[0 if a != a else 1 if a < low else 2 if a < mid else 3 if a < high else 4] += share
    known = total = 0
    for p in rows.column_list("proposal"):
        if p >= 0:
            known += 1
            total += p
    out[-1] = total / known / max_k if known and max_k else 0.0
    return out


class ObservationTracker:
    """Folds engine steps into the running statistics behind the observation (EMAs, histogram)."""

    def __init__(self, max_k: int, ema: float = 0.2, hist_decay: float = 0.9):
        self.max_k, self.ema, self.hist_decay = max_k, ema, hist_decay
        self.reset()

    def reset(self) -> None:
        self.acceptance = 0.0
        self.accepted_len = 0.0
        self.arrival_rate = 0.0
        self.last_k = 0
        self.last_tpt = 0.0
        self.hist = [0.0] * (self.max_k + 1)  # decayed share of row-steps by accepted length (Python: 9 entries)
        self._seen_acceptance = False
        self.full_info = AcceptanceEstimate(1.0 - self.ema)

    def observe_step(self, stats: StepRecord) -> None:
        succ = trials = 0  # full information: the model's samples, no proposal a failure (module docs)
        max_k = self.max_k
        hist = [0] * (max_k + 1)  # rows by accepted length, rows that drafted nothing excluded
        drafted = accepted = spec_rows = 0
        sample_d, sample_a = step_sample_lists(stats)
        for sd, sa, d, a in zip(sample_d, sample_a, stats.drafted, stats.accepted):  # one pass per step
            if sd > 0:
                succ += sa
                trials += sa + (sa < sd)
            elif sd == 0:
                trials += 1
            if d > 0:
                hist[a if a < max_k else max_k] += 1
                drafted += d
                accepted += a
                spec_rows += 1
        self.full_info.add(succ, trials)
        self.last_k = stats.k
        tokens = stats.tokens_out
        self.last_tpt = stats.wall_time / tokens if tokens else stats.wall_time
        if drafted:
            rate, length = accepted / drafted, accepted / spec_rows
            if self._seen_acceptance:
                self.acceptance += self.ema * (rate - self.acceptance)
                self.accepted_len += self.ema * (length - self.accepted_len)
            else:
                self.acceptance, self.accepted_len, self._seen_acceptance = rate, length, True
            keep, weight = self.hist_decay, (1 - self.hist_decay) / spec_rows
            self.hist = [h * keep + weight * c for h, c in zip(self.hist, hist)]

    def observe_arrivals(self, count: int, elapsed: float) -> None:
        """`count` requests arrived over `elapsed` seconds of clock."""
        if elapsed > 0:
            self.arrival_rate += self.ema * (count / elapsed - self.arrival_rate)

    def vector(self, batch_size: int, queue_len: int, rows: RowBatch | None = None) -> np.ndarray:
        total = sum(self.hist)
        hist = [h / total for h in self.hist] if total > 0 else [0.0] * (self.max_k + 1)
        fi = self.full_info.value
        return np.array([batch_size, queue_len, self.arrival_rate, self.acceptance, self.accepted_len, self.last_k,
                         self.last_tpt, *hist, fi or 0.0, fi is not None, *row_summary(rows, self.max_k)],
                        dtype=np.float32)


class ObservationBuilder:
    """Wraps `ObservationTracker` and `RowTracker`: folds in the last step and the arrivals seen since
    the previous decision (over the clock elapsed since then), then returns the observation."""

    def __init__(self, max_k: int):
        self.tracker = ObservationTracker(max_k)
        self.row_tracker = RowTracker(max_k)
        self._last_clock = 0.0

    def reset(self) -> None:
        self.tracker.reset()
        self.row_tracker.reset()
        self._last_clock = 0.0

    def update(self, stats: StepRecord | None, new_arrivals: int, clock: float) -> None:
        if stats is not None:
            self.tracker.observe_step(stats)
            self.row_tracker.observe_step(stats)
        self.tracker.observe_arrivals(new_arrivals, clock - self._last_clock)
        self._last_clock = clock

    def vector(self, batch_size: int, queue_len: int) -> np.ndarray:
        """The plain vector, without per-row features (the row summary fields are 0)."""
        return self.tracker.vector(batch_size, queue_len)

    def observation(self, running, queue_len: int, proposals: dict[str, int] | None = None,
                    confidences: dict[str, Sequence[float]] | None = None,
                    lags: dict[str, int] | None = None) -> Observation:
        """The observation over the `running` rows (Sequences), carrying their `RowBatch`."""
        rows = self.row_tracker.batch(running, proposals, confidences, lags)
        return Observation(self.tracker.vector(len(rows), queue_len, rows), rows)
