"""Per-row decisions: observation layout 2 (full-information acceptance, per-row features), the per-row
policies (the adaptive-budget formula on a hand-computed case, per-request k, the per-row bandit) and
their artifacts."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.contracts.observation import (
    OBS_INDEX,
    Observation,
    ObservationBuilder,
    RowBatch,
    obs_field,
    obs_histogram,
    obs_layout,
    obs_size,
    obs_size_v1,
    rows_of,
)
from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.policy import load_policy, make_policy, save_policy
from nightjar_rl.policy.per_row import AdaptiveBudget, PerRequestK, greedy_allocation
from nightjar_rl.runtime.driver import PolicyDriver
from nightjar_rl.serving.session import ServingSession

MAX_K = 2


def seq(rid: str, prompt: int, out: int, max_new: int) -> Sequence:
    return Sequence(Request(rid, list(range(prompt)), max_new), list(range(prompt + out)))


def rows(alphas, proposals=None, remaining=None, ids=None, confidence=None) -> RowBatch:
    n = len(alphas)
    return RowBatch(tuple(ids or (f"r{i}" for i in range(n))), np.array(alphas, dtype=float), np.ones(n, int),
                    np.array(proposals if proposals is not None else [-1] * n), np.zeros(n, int),
                    np.array(remaining if remaining is not None else [100] * n), np.full(n, 10),
                    confidence=confidence)


# ---- the allocator formula, by hand ---------------------------------------------------------------
def hand_profile() -> HardwareProfile:
    # 2 rows: 10 ms at 1 token per row, 16 ms at 3 (linear between); n-gram lookup 0.5 ms per drafting row
    return HardwareProfile({"2": {"1": 10.0, "3": 16.0}}, ngram_lookup_ms_per_row=0.5)


def test_adaptive_budget_formula_on_a_hand_computed_case():
    """Rows with alpha 0.9 and 0.5, max_k 2: survivals [[0.9, 0.81], [0.5, 0.25]]. Slots by survival:
    (r0,1) .9, (r0,2) .81, (r1,1) .5, (r1,2) .25. Packed: scored = 2 + B, tokens/row 1, 1.5, 2, 2.5, 3
    -> verify 10, 11.5, 13, 14.5, 16 ms; lookup 0, .5, .5, 1, 1 ms (rows drafting 0, 1, 1, 2, 2).
    E(B) = 2, 2.9, 3.71, 4.21, 4.46; T(B) = 10, 12, 13.5, 15.5, 17;
    E/T = .2, .24167, .27481, .27161, .26235 -> B* = 2, both slots to row 0."""
    policy = AdaptiveBudget(hand_profile(), MAX_K)
    survival = rows([0.9, 0.5]).survival(MAX_K, prior=0.5)
    np.testing.assert_allclose(survival, [[0.9, 0.81], [0.5, 0.25]])
    lengths, budget, ratios = policy.allocate(survival)
    np.testing.assert_allclose(ratios, [2 / 10, 2.9 / 12, 3.71 / 13.5, 4.21 / 15.5, 4.46 / 17])
    assert budget == 2 and lengths.tolist() == [2, 0]
    # the padded layout prices the longest row for every row: scored 2, 4, 6, 6, 6 -> verify 10, 13, 16, 16,
    # 16, T = 10, 13.5, 16.5, 17, 17: once the longest row is paid for, the other row's slots cost only lookups
    padded = AdaptiveBudget(hand_profile(), MAX_K, layout="padded")
    lengths, budget, ratios = padded.allocate(survival)
    np.testing.assert_allclose(ratios, [2 / 10, 2.9 / 13.5, 3.71 / 16.5, 4.21 / 17, 4.46 / 17])
    assert budget == 4 and lengths.tolist() == [2, 2]
    # a budget cap, and the plan the policy hands the engine
    capped = AdaptiveBudget(hand_profile(), MAX_K, max_budget=1)
    assert capped.allocate(survival)[1] == 1
    obs = Observation(np.zeros(obs_size(MAX_K), np.float32), rows([0.9, 0.5]))
    assert policy.predict(obs) == SpecPlan.per_row({"r0": 2, "r1": 0})


def test_tpot_slack_guard_on_the_hand_computed_case():
    """The case above, T(0) = 10 ms. Slots in order go to rows 0, 0, 1, 1, so the least expected tokens
    per step of any row, min_r E_r(B), is 1, 1, 1, 1.5 (row 1 gets .5), 1.75, and the slowest row's time
    per token T(B) / min_r E_r(B) = 10, 12, 13.5, 15.5 / 1.5 = 10.333, 17 / 1.75 = 9.714 ms.
    tau = 0.05 (limit 10.5 ms) rules out B = 1, 2: B* = 3 (ratio .27161), lengths [2, 1], every row gains;
    tau = 0.2 (12 ms) allows B = 1 too: still B* = 3; tau = 0.36 (13.6 ms) allows all: B* = 2 as unguarded."""
    survival = np.array([[0.9, 0.81], [0.5, 0.25]])
    least = AdaptiveBudget.least_row_tokens(np.array([0, 0, 1, 1]), np.array([0.9, 0.81, 0.5, 0.25]), 2)
    np.testing.assert_allclose(least, [1, 1, 1, 1.5, 1.75])
    guarded = AdaptiveBudget(hand_profile(), MAX_K, tpot_slack=0.05)
    lengths, budget, ratios = guarded.allocate(survival)
    assert budget == 3 and lengths.tolist() == [2, 1]
    np.testing.assert_allclose(ratios, [0.2, -np.inf, -np.inf, 4.21 / 15.5, 4.46 / 17])
    _, budget, ratios = AdaptiveBudget(hand_profile(), MAX_K, tpot_slack=0.2).allocate(survival)
    assert budget == 3 and ratios[1] == pytest.approx(2.9 / 12) and ratios[2] == -np.inf
    _, budget, ratios = AdaptiveBudget(hand_profile(), MAX_K, tpot_slack=0.36).allocate(survival)
    assert budget == 2 and np.isfinite(ratios).all()
    # a row with no usable slot (survival 0: no proposal) never drafts, so min_r E_r stays 1 at every B: the
    # guard is then a cap on the step's time, T(B) <= (1 + tau) T(0)
    least = AdaptiveBudget.least_row_tokens(np.array([0, 0]), np.array([0.9, 0.81]), 2)
    np.testing.assert_allclose(least, [1, 1, 1])
    lengths, budget, _ = guarded.allocate(np.array([[0.9, 0.81], [0.0, 0.0]]))  # T(1) = 12 > 10.5: no budget
    assert budget == 0 and lengths.tolist() == [0, 0]
    # without per-row features, the uniform k: both rows at alpha .5 (prior): k = 1 is E = 1.5 tokens per row
    # in T = 13 + 1 (lookups) = 14 ms (9.33 ms a token), k = 2 is 1.75 in 16 + 1 = 17 (9.71): k = 1 best
    # (.1071 vs .1029 tokens/ms); a guard of 0 changes nothing: identical rows all gain when the step does
    obs = np.zeros(obs_size(MAX_K), np.float32)
    obs[obs_layout(MAX_K).index("batch_size")] = 2
    assert guarded.predict(obs) == AdaptiveBudget(hand_profile(), MAX_K).predict(obs) == 1
    assert AdaptiveBudget(hand_profile(), MAX_K, tpot_slack=0.0).predict(obs) == 1
    with pytest.raises(ValueError, match="tpot_slack"):
        AdaptiveBudget(hand_profile(), MAX_K, tpot_slack=-0.1)


def test_stated_confidences_set_survival_on_the_hand_computed_case():
    """The rows above (histories 0.9 and 0.5) with the drafter's stated confidences [.2, .9] and [.95, .8]:
    survivals [[.2, .18], [.95, .76]]. Slots by survival go to rows 1, 1, 0, 0, so rows drafting are 1, 1,
    2, 2 and T(B) = 10, 12, 13.5, 15.5, 17 as before; E(B) = 2, 2.95, 3.71, 3.91, 4.09;
    E/T = .2, .24583, .27481, .25226, .24059 -> B* = 2, both slots to row 1 (its history alone gave them to
    row 0). `confidence=False` ignores the statements; a row stating none (nan) keeps its history's."""
    stated = rows([0.9, 0.5], confidence=[[0.2, 0.9], [0.95, 0.8]])
    survival = stated.survival(MAX_K, prior=0.5)
    np.testing.assert_allclose(survival, [[0.2, 0.18], [0.95, 0.76]])
    policy = AdaptiveBudget(hand_profile(), MAX_K)
    lengths, budget, ratios = policy.allocate(survival)
    np.testing.assert_allclose(ratios, [2 / 10, 2.95 / 12, 3.71 / 13.5, 3.91 / 15.5, 4.09 / 17])
    assert budget == 2 and lengths.tolist() == [0, 2]
    obs = Observation(np.zeros(obs_size(MAX_K), np.float32), stated)
    assert policy.predict(obs) == SpecPlan.per_row({"r0": 0, "r1": 2})
    blind = AdaptiveBudget(hand_profile(), MAX_K, confidence=False)
    assert blind.predict(obs) == SpecPlan.per_row({"r0": 2, "r1": 0})
    assert "no confidences" in blind.name and blind.params()["confidence"] is False
    partial = rows([0.9, 0.5], confidence=[[math.nan, math.nan], [0.95, math.nan]], proposals=[2, 1])
    np.testing.assert_allclose(partial.survival(MAX_K, prior=0.5), [[0.9, 0.81], [0.95, 0.0]])
    with pytest.raises(ValueError, match="confidence must be"):
        AdaptiveBudget(hand_profile(), MAX_K, confidence="yes")


def test_observation_carries_the_drafters_confidences_by_row():
    builder = ObservationBuilder(MAX_K)
    running = [seq("a", 4, 1, 8), seq("b", 3, 2, 8)]
    obs = builder.observation(running, 0, {"a": 2, "b": 1}, {"a": np.array([0.7, 0.4, 0.1])})
    conf = rows_of(obs).confidences
    np.testing.assert_allclose(conf, [[0.7, 0.4], [math.nan, math.nan]])  # cut to max_k; b stated none
    back = pickle.loads(pickle.dumps(obs))
    np.testing.assert_allclose(rows_of(back).confidences, conf)
    lam = rows([0.5], confidence=lambda: [[0.3, 0.2]])  # a derived column pickles as its value
    np.testing.assert_allclose(rows_of(pickle.loads(pickle.dumps(Observation(np.zeros(3), lam)))).confidences, [[0.3, 0.2]])
    assert rows([], confidence=[]).confidences.shape == (0, 0)
    assert rows_of(builder.observation(running, 0, {"a": 2})).confidences is None


def test_survival_respects_proposals_budgets_and_unknown_rows():
    r = rows([0.8, math.nan, 0.5], proposals=[1, -1, 2], remaining=[10, 10, 2])
    np.testing.assert_allclose(r.survival(MAX_K, prior=0.3), [[0.8, 0.0], [0.3, 0.09], [0.5, 0.0]])
    assert r.draft_caps(MAX_K).tolist() == [1, 2, 1]


def test_greedy_allocation_gives_each_row_a_prefix():
    survival = np.array([[0.9, 0.81, 0.729], [0.95, 0.2, 0.04], [0.5, 0.25, 0.125]])
    assert greedy_allocation(survival, 0).tolist() == [0, 0, 0]
    assert greedy_allocation(survival, 3).tolist() == [2, 1, 0]  # .95, .9, .81
    assert greedy_allocation(survival, 5).tolist() == [3, 1, 1]  # then .729, .5


# ---- observation layout 2 ---------------------------------------------------------------------------
def test_layout_2_extends_layout_1():
    assert obs_layout(MAX_K, 2)[:obs_size_v1(MAX_K)] == obs_layout(MAX_K, 1)
    assert obs_size(MAX_K) == len(obs_layout(MAX_K)) == obs_size_v1(MAX_K) + 8


def test_per_row_features_on_a_hand_built_step():
    """Rows a, b, c. Full information: a proposed 2 and got 1 accepted (1 success, 1 failure), b had no
    proposal (no trial: unknown), c proposed 2 and got both (2 successes). a and b were planned k = 0
    (drafted nothing), c k = 2 (drafted 2, accepted 2)."""
    builder = ObservationBuilder(MAX_K)
    stats = StepStats(step=0, k=2, batch_size=3, num_waiting=0, num_prefilled=0, request_ids=["a", "b", "c"],
                      plan=[0, 0, 2], drafted=[0, 0, 2], accepted=[0, 0, 2], emitted=[1, 1, 3],
                      shadow_drafted=[2, 0, 2], shadow_accepted=[1, 0, 2], wall_time=0.01)
    builder.update(stats, 0, 0.01)
    running = [seq("a", 5, 3, 10), seq("b", 4, 2, 3), seq("c", 6, 4, 20)]
    obs = builder.observation(running, queue_len=1, proposals={"a": 1, "c": 2})
    r = rows_of(obs)
    assert r.request_ids == ("a", "b", "c")
    np.testing.assert_allclose(r.acceptance, [0.5, math.nan, 1.0])
    assert r.samples.tolist() == [1, 0, 1]
    assert r.proposal.tolist() == [1, -1, 2]
    assert r.position.tolist() == [3, 2, 4] and r.remaining.tolist() == [7, 1, 16] and r.context.tolist() == [8, 6, 10]
    # the step-level estimate counts b (no proposal) as a rejection: successes 1 + 0 + 2, trials 2 + 1 + 2
    assert obs_field(obs, "fi_acceptance") == pytest.approx(3 / 5) and obs_field(obs, "fi_known") == 1
    assert obs_field(obs, "rows_unknown") == pytest.approx(1 / 3)
    assert [obs_field(obs, f"rows_acc_{i}") for i in range(4)] == pytest.approx([0, 0, 1 / 3, 1 / 3])
    assert obs_field(obs, "rows_proposal") == pytest.approx(1.5 / MAX_K)
    assert obs_field(obs, "batch_size") == 3 and obs_field(obs, "queue_len") == 1
    # layout-1 fields keep their meaning: what the rows drafted (only c): 2/2 accepted
    assert obs_field(obs, "ema_acceptance") == 1.0
    np.testing.assert_allclose(obs_histogram(obs), [0, 0, 1])
    # depth rates (s_rj + w g_j) / (t_rj + w), w = 2: a was a trial at depths 1-2 with a success at 1, c a
    # success at both, b no trial; batch-wide g (decay 0.999 per row-sample: a's counts decay once when c's
    # are added) = (1.999/1.999, 1/1.999)
    g2 = 1 / 1.999
    expected_rates = [[1.0, 2 * g2 / 3], [1.0, g2], [1.0, (1 + 2 * g2) / 3]]
    np.testing.assert_allclose(r.depth_rates, expected_rates)
    # the rows carry a snapshot: later steps do not move an observation already taken (its rates unread)
    unread = rows_of(builder.observation(running, 0))
    builder.update(StepStats(step=1, k=2, batch_size=1, num_waiting=0, num_prefilled=0, request_ids=["a"],
                             plan=[2], drafted=[2], accepted=[0], emitted=[1], wall_time=0.01), 0, 0.02)
    np.testing.assert_allclose(unread.depth_rates, expected_rates)
    assert rows_of(builder.observation(running, 0)).depth_rates[0, 0] < 1.0
    # a finished request is forgotten; the plain vector carries no rows
    builder.update(StepStats(step=2, k=0, batch_size=0, num_waiting=0, num_prefilled=0, finished_ids=["a"]), 0, 0.03)
    assert "a" not in builder.row_tracker.rows
    assert rows_of(np.asarray(obs)) is None and type(np.asarray(obs)) is np.ndarray


def test_depth_counts_fold_a_step_as_sample_by_sample():
    """Hand-computed, decay 0.5, from zero: (reach 2, won 1) then (reach 1, won 0), with a (0, 0)
    no-sample between: trials [1.5, 0.5] (depth 1: 1 * 0.5 + 1; depth 2: 1 * 0.5), successes
    [0.5, 0] (depth 1 succeeded once, decayed once). The per-row counts (`add`, folded when read) and
    one fold of the step's samples (the batch-wide counts) agree."""
    from nightjar_rl.contracts.observation import DepthCounts, fold_depth_samples

    one_by_one = DepthCounts(2, 0.5)
    samples = [one_by_one.add(3, 1), one_by_one.add(0, 0), one_by_one.add(1, 0)]
    assert samples == [(2, 1), (0, 0), (1, 0)] and one_by_one.samples == [(2, 1), (1, 0)]
    successes, trials = fold_depth_samples(((0.0, 0.0), (0.0, 0.0)), samples, 0.5)
    assert one_by_one.trials == list(trials) == [1.5, 0.5]
    assert one_by_one.successes == list(successes) == [0.5, 0.0]
    # folding onto earlier counts: they decay once per sample, (reach 2, won 2) adds 1 at both depths
    assert fold_depth_samples((successes, trials), [(2, 2)], 0.5) == ((1.25, 1.0), (1.75, 1.25))


def test_depth_counts_snapshots_read_as_they_were():
    """Decay 0.5, stored scaled (raw / scale): one sample (reach 1, won 1) is raw 2 at scale 2. A count
    read at n samples stays what it was, bit for bit, after 2,000 more are added and read (an older n
    folds from the start, the same operations in the same order), and whether they were read every
    sample or once: the scale 2^2000 passes 1e100, so the raw counts are renormalised on the way, and
    the count is sum_{i<2001} 0.5^i = 2.0 in floats."""
    from nightjar_rl.contracts.observation import DepthCounts

    every, once = DepthCounts(2, 0.5), DepthCounts(2, 0.5)
    for counts in (every, once):
        assert counts.add(1, 1) == (1, 1)
    held = every.state_at(1)
    assert held == ((2.0, 0.0), (2.0, 0.0), 2.0)
    for _ in range(2000):
        every.add(1, 1)
        once.add(1, 1)
        every.state_at()
    assert every.state_at() == once.state_at() and every.state_at()[2] < DepthCounts.RENORMALISE_ABOVE
    assert every.trials == every.successes == [pytest.approx(2.0), 0.0]
    assert every.state_at(1) == held and every.state_at(0) == ((0.0, 0.0), (0.0, 0.0), 1.0)
    every.add(3, 1)  # reach 2, won 1: the cached fold (2001 samples) is extended by one
    assert every.trials == [pytest.approx(2.0), 1.0] and every.successes == [pytest.approx(2.0), 0.0]


def test_row_batch_columns_from_lists_are_arrays_when_read():
    """Columns handed in as lists read back as arrays of the column's dtype, the same as when handed
    in as arrays; `column_list` reads a column without building its array."""
    args = (("a", "b"), [0.5, math.nan], [1, 0], [2, -1], [3, 2], [7, 1], [8, 6])
    lists, arrays = RowBatch(*args), RowBatch(args[0], *(np.array(c) for c in args[1:]))
    assert lists.column_list("proposal") == [2, -1] and "proposal" not in vars(lists)
    for name in ("acceptance", "samples", "proposal", "position", "remaining", "context"):
        got, want = getattr(lists, name), getattr(arrays, name)
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert arrays.column_list("remaining") == [7, 1]


def test_row_summary_bins_at_their_edges():
    """Hand-computed: acceptances nan, 0, .25, .5, .75, 1 over six rows: one unknown, and a value on an
    edge goes to the bin above it (edges .25, .5, .75): rows_acc = [1, 1, 1, 2] / 6; proposals -1
    (unknown), 2, 4, 0, 0, 0 over max_k 4: mean of the known ones (6 / 5) / 4."""
    from nightjar_rl.contracts.observation import row_summary

    rows = RowBatch(tuple("abcdef"), [math.nan, 0.0, 0.25, 0.5, 0.75, 1.0], [0, 1, 1, 1, 1, 1],
                    [-1, 2, 4, 0, 0, 0], [1] * 6, [9] * 6, [5] * 6)
    assert row_summary(rows, 4) == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 6, 2 / 6, 6 / 5 / 4])
    assert row_summary(None, 4) == [0.0] * 6


def test_derived_row_columns_are_computed_once_and_pickle():
    """A column handed in as a function is called on its first read, once, whichever way it is read;
    a pickled batch (vector envs, Ray) carries the computed values, the tracker's held depth counts
    included."""
    calls = []

    def remaining():
        calls.append(1)
        return [7, 1]

    rows = RowBatch(("a", "b"), [0.5, math.nan], [1, 0], [2, -1], [3, 2], remaining, [8, 6])
    assert calls == []
    assert rows.column_list("remaining") == [7, 1] and rows.remaining.tolist() == [7, 1] and calls == [1]
    builder = ObservationBuilder(MAX_K)
    builder.update(StepStats(step=0, k=2, batch_size=1, num_waiting=0, num_prefilled=0, request_ids=["a"], plan=[2],
                             drafted=[2], accepted=[1], emitted=[2], wall_time=0.01), 0, 0.01)
    running = [seq("a", 5, 3, 10)]
    tracked = rows_of(builder.observation(running, 0))
    fresh = len(pickle.dumps(rows_of(builder.observation(running, 0))))
    copy = pickle.loads(pickle.dumps(tracked))
    assert copy.position.tolist() == tracked.position.tolist() == [3]
    assert copy.remaining.tolist() == tracked.remaining.tolist() == [7]
    np.testing.assert_array_equal(copy.depth_rates, tracked.depth_rates)
    held = len(pickle.dumps(tracked))  # with the columns it has read since
    for step in range(1, 200):  # the request ages: its sample history grows, a pickled batch does not
        builder.update(StepStats(step=step, k=2, batch_size=1, num_waiting=0, num_prefilled=0, request_ids=["a"],
                                 plan=[2], drafted=[2], accepted=[1], emitted=[2], wall_time=0.01), 0, 0.01 * step)
    assert len(builder.row_tracker.rows["a"][3].samples) == 200
    assert len(pickle.dumps(rows_of(builder.observation(running, 0)))) == fresh
    assert len(pickle.dumps(tracked)) == held  # a batch taken earlier still pickles its own snapshot


def _reference_rows(steps, max_k: int, decay: float = 0.8, g: float = 0.999):
    """RowTracker's estimates written row by row, as the module docs define them: per request
    (successes, trials, samples) of the geometric model and per-depth (successes, trials); batch-wide
    depth counts decayed per row-sample in step order."""
    geo, depth, glob = {}, {}, [[0.0] * max_k, [0.0] * max_k]
    for ids, drafted, accepted, finished in steps:
        for rid, d, a in zip(ids, drafted, accepted):
            s0, t0, n0 = geo.get(rid, (0.0, 0.0, 0))
            trials = a + (a < d) if d > 0 else 0
            if trials:
                geo[rid] = (decay * s0 + a, decay * t0 + trials, n0 + 1)
            reach = min(a + 1, d, max_k)
            if reach > 0:
                ds, dt = depth.get(rid, ([0.0] * max_k, [0.0] * max_k))
                won = min(reach, a)
                depth[rid] = ([x * decay + (j < won) for j, x in enumerate(ds)],
                              [x * decay + (j < reach) for j, x in enumerate(dt)])
                glob = [[x * g + (j < won) for j, x in enumerate(glob[0])],
                        [x * g + (j < reach) for j, x in enumerate(glob[1])]]
        for rid in finished:
            geo.pop(rid, None)
            depth.pop(rid, None)
    return geo, depth, glob


def test_row_tracker_matches_its_row_by_row_definition():
    """Random steps over requests that join and finish: pending samples (-1), no proposal (0), partial
    and full acceptance; the batch-wide depth counts folded a step at a time equal the per-sample fold."""
    rng = np.random.default_rng(3)
    max_k, builder = 4, ObservationBuilder(4)
    live, steps, next_id = [], [], 0
    for step in range(60):
        while len(live) < 25:
            live.append(f"r{next_id}")
            next_id += 1
        drafted = rng.integers(-1, max_k + 2, len(live)).tolist()
        accepted = [int(rng.integers(0, max(d, 0) + 1)) for d in drafted]
        finished = [rid for rid in live if rng.random() < 0.15]
        steps.append((list(live), drafted, accepted, finished))
        builder.update(StepStats(step=step, k=max_k, batch_size=len(live), num_waiting=0, num_prefilled=0,
                                 request_ids=list(live), plan=[max_k] * len(live), drafted=[max(d, 0) for d in drafted],
                                 accepted=[min(a, max(d, 0)) for a, d in zip(accepted, drafted)], emitted=[1] * len(live),
                                 shadow_drafted=drafted, shadow_accepted=accepted, finished_ids=finished, wall_time=0.01),
                       0, 0.01 * (step + 1))
        live = [rid for rid in live if rid not in finished]
    geo, depth, (gs, gt) = _reference_rows(steps, max_k)
    running = [seq(rid, 3, 1, 50) for rid in live + ["new"]]
    r = rows_of(builder.observation(running, 0))
    assert set(builder.row_tracker.rows) == set(live) and len(live) > 15
    want = [geo[rid][0] / geo[rid][1] if rid in geo else math.nan for rid in live] + [math.nan]
    np.testing.assert_allclose(r.acceptance, want)
    assert r.samples.tolist() == [geo.get(rid, (0, 0, 0))[2] for rid in live] + [0]
    w, glob = 2.0, np.array(gs) / np.array(gt)
    zeros = ([0.0] * max_k, [0.0] * max_k)
    rates = [[(s + w * glob[j]) / (t + w) for j, (s, t) in enumerate(zip(*depth.get(rid, zeros)))]
             for rid in live + ["new"]]
    np.testing.assert_allclose(r.depth_rates, rates)


def test_unknown_is_not_zero_acceptance():
    builder = ObservationBuilder(MAX_K)
    obs = builder.observation([seq("a", 3, 1, 5)], 0)
    assert obs_field(obs, "fi_known") == 0 and obs_field(obs, "rows_unknown") == 1
    assert math.isnan(rows_of(obs).acceptance[0])
    zero = StepStats(step=0, k=0, batch_size=1, num_waiting=0, num_prefilled=0, request_ids=["a"], plan=[0],
                     drafted=[0], accepted=[0], emitted=[1], shadow_drafted=[2], shadow_accepted=[0], wall_time=0.01)
    builder.update(zero, 0, 0.01)
    obs = builder.observation([seq("a", 3, 2, 5)], 0)
    assert obs_field(obs, "fi_known") == 1 and obs_field(obs, "fi_acceptance") == 0
    assert rows_of(obs).acceptance[0] == 0 and obs_field(obs, "rows_acc_0") == 1


def _positions(scenario, k: int, seed: int = 0):
    """{(request, output position): (accepted, shadow_accepted)} of a tiny-sim workload served at uniform k."""
    backend = make_backend(scenario)
    reqs = [Request(f"q{i}", list(p), scenario.max_new_tokens) for i, p in enumerate(backend.prompt_pool.token_ids[:4])]
    engine = backend.make_engine(seed)
    for r in reqs:
        engine.submit(r)
    seen = {}
    while engine.has_work:
        before = {s.request_id: len(s.output_ids) for s in engine.running}
        stats = engine.step(k)
        for rid, a, sa in zip(stats.request_ids, stats.accepted, stats.shadow_accepted):
            seen[(rid, before[rid])] = (a, sa)
    return seen


def test_full_information_at_k0_equals_what_rows_accept_at_max_k():
    """Served at k = 0, every row still reports what its proposal would have got accepted: at every
    position the k = max_k run also visits, that equals what the k = max_k run accepted there."""
    scenario = load_scenario("tiny-sim")
    off, full = _positions(scenario, 0), _positions(scenario, scenario.max_k)
    assert all(a == 0 for a, _ in off.values())  # nothing drafted at k = 0
    common = set(off) & set(full)
    assert len(common) >= 10
    assert {p: off[p][1] for p in common} == {p: full[p][0] for p in common}
    assert any(off[p][1] > 0 for p in common)  # the check is not vacuous
    assert all(a == sa for a, sa in full.values())  # at max_k the shadow is what ran


def test_acceptance_keeps_moving_while_speculation_is_off():
    scenario = load_scenario("tiny-sim")
    backend = make_backend(scenario)
    reqs = [Request(f"q{i}", list(p), scenario.max_new_tokens) for i, p in enumerate(backend.prompt_pool.token_ids[:4])]
    driver = PolicyDriver(ServingSession(backend.make_engine(0), reqs), scenario.max_k, make_policy("off", scenario.max_k))
    seen = []
    driver.drive(lambda d, s, r: seen.append(np.asarray(driver.obs).copy()))
    fi = [obs_field(o, "fi_acceptance") for o in seen]
    assert all(obs_field(o, "ema_acceptance") == 0 for o in seen)  # layout 1: frozen at k = 0
    assert len(set(np.round(fi, 6))) > 2  # layout 2: moves


# ---- per-request k ----------------------------------------------------------------------------------
def test_per_request_k_moves_with_hysteresis_and_dwell():
    policy = PerRequestK(4, up=0.7, down=0.4, dwell=2, start_k=2)
    obs = lambda alphas: Observation(np.zeros(obs_size(4), np.float32), rows(alphas, ids=["a", "b"]))  # noqa: E731
    ks = [policy.predict(obs(a)).resolve(["a", "b"]) for a in ([0.9, 0.5], [0.9, 0.5], [0.9, 0.3], [0.9, 0.3],
                                                               [0.6, 0.3], [0.6, 0.5])]
    # a: up once its dwell has passed (2nd decision), again 2 decisions later; 0.6 is between the thresholds
    # b: 0.5 is between; at 0.3 (3rd decision, dwell long passed) down at once, then again after its dwell
    assert [k[0] for k in ks] == [2, 3, 3, 4, 4, 4]
    assert [k[1] for k in ks] == [2, 2, 1, 1, 0, 0]
    assert policy.switches == 4


# ---- artifacts ---------------------------------------------------------------------------------------
def served_observations(spec, n_steps: int = 40):
    """Observations with per-row features from a tiny-sim episode served by `spec` (learning)."""
    scenario = load_scenario("tiny-sim").replace(verify_layout="packed")
    backend = make_backend(scenario)
    from nightjar_rl.contracts.rewards import make_reward

    reqs = [Request(f"q{i}", list(p), scenario.max_new_tokens) for i, p in enumerate(backend.prompt_pool.token_ids[:6])]
    policy = make_policy(spec, scenario.max_k)
    driver = PolicyDriver(ServingSession(backend.make_engine(0), reqs), scenario.max_k, policy,
                          reward=make_reward("throughput"), learn=policy.learning)
    obs = []
    driver.drive(lambda d, s, r: obs.append(driver.obs))
    return policy, [o for o in obs if len(rows_of(o))][:n_steps]


@pytest.mark.parametrize("spec", [
    {"type": "adaptive_budget", "profile": "envs/profiles/tiny-random-cpu.json", "prior_acceptance": 0.4},
    {"type": "per_request_k", "dwell": 2, "up": 0.6, "down": 0.3},
    {"type": "per_row_bandit", "bandit": {"epsilon": 0.3, "seed": 2}},
])
def test_per_row_artifacts_round_trip(spec, tmp_path):
    policy, obs = served_observations(spec)
    assert obs
    path = save_policy(policy, tmp_path / "p.json")
    loaded = load_policy(path)
    assert loaded.params() == policy.params()
    assert loaded.state() == policy.state()
    ours, theirs = [policy.predict(o) for o in obs], [loaded.predict(o) for o in obs]
    assert ours == theirs
    assert all(isinstance(p, SpecPlan) for p in ours)
    assert set(OBS_INDEX) <= set(obs_layout(MAX_K))


def test_allocator_prices_a_step_as_the_simulator_charges_it():
    """On the GPU what-if (packed verify), the allocator's predicted T for the plan it chose equals the
    simulated step's draft + verify + overhead time (steps without prefill)."""
    scenario = load_scenario("gpu-whatif-ngram").replace(verify_layout="packed", max_new_tokens=24)
    backend = make_backend(scenario)
    reqs = [Request(f"q{i}", list(p), scenario.max_new_tokens) for i, p in enumerate(backend.prompt_pool.token_ids[:24])]
    policy = AdaptiveBudget(backend.profile, scenario.max_k)
    driver = PolicyDriver(ServingSession(backend.make_engine(0), reqs), scenario.max_k, policy)
    checked = 0
    driver.start()
    while not driver.done:
        obs = driver.obs
        stats = driver.step()
        if stats.num_prefilled or not stats.batch_size:
            continue
        r = rows_of(obs)
        d = np.array(stats.drafted)
        assert stats.drafted == stats.plan  # the allocator never plans past a row's proposal
        predicted = policy.step_ms(len(r), int(d.sum()), int(d.max()), int((d > 0).sum()), float(r.context.max() - 1))
        assert predicted == pytest.approx(1000 * stats.wall_time, rel=1e-9)
        checked += 1
    assert checked > 10


def test_live_ngram_full_information_at_k0_matches_the_trace():
    """The live engine with an n-gram drafter, served at k = 0 through the driver: every resolved
    full-information sample (a proposal made at output position p, checked against the tokens the
    target then emitted) equals the trace's drafted/accepted at p for max_k; pending checks report none."""
    from nightjar_rl.models import load_model
    from nightjar_rl.sim.record import record_trace
    from nightjar_rl.stack import EngineConfig, build_stack

    from .test_sim_exactness import random_prompts

    tiny = load_model("tiny-random")
    cfg = EngineConfig(model="tiny-random", drafter="ngram", max_batch_size=3, max_seq_len=128, max_speculation=4)
    prompts, max_new = random_prompts(6, seed=2), 14
    trace = record_trace(tiny, prompts, cfg, 4, max_new, progress=False)
    engine = build_stack(cfg, target=tiny).engine
    driver = PolicyDriver(ServingSession(engine, [Request(r, ids, max_new) for r, ids in prompts]), 4,
                          make_policy("off", 4))
    assert driver.shadow is not None
    made: dict[str, int] = {}  # request -> output position of its pending proposal
    checked = pending = 0
    driver.start()
    while not driver.done:
        before = {s.request_id: len(s.output_ids) for s in engine.running}
        for rid, pos in before.items():
            made.setdefault(rid, pos)
        stats = driver.step()
        assert stats.drafted == [0] * stats.batch_size
        for rid, d, a in zip(stats.request_ids, stats.shadow_drafted, stats.shadow_accepted):
            if d < 0:
                pending += 1
                continue
            rec = trace.lookup(next(ids for r, ids in prompts if r == rid))
            p = made.pop(rid)
            assert (d, a) == (rec.drafted[p, 4], rec.accepted[p, 4]), (rid, p)
            checked += 1
    assert checked >= 20 and pending > 0
    assert obs_field(driver.obs, "fi_known") == 1


def test_mixed_layout_folds_a_decoding_steps_prefill_into_its_pass():
    """`verify_layout: mixed`: a step that prefills and decodes pays prefill_ms(tokens) - prefill_ms(1) for
    its prefill (the weights are read once); a prefill-only step pays it whole, as packed does."""
    scenario = load_scenario("tiny-sim")
    out = {}
    for layout in ("packed", "mixed"):
        backend = make_backend(scenario.replace(verify_layout=layout))
        engine = backend.make_engine(0)
        ids = backend.prompt_pool.token_ids
        engine.submit(Request("a", list(ids[0]), 6))
        first = engine.step(0)
        engine.submit(Request("b", list(ids[1]), 6))
        second = engine.step(0)
        out[layout] = (first, second)
    prefill_ms = backend.profile.prefill_time_ms
    (p1, p2), (m1, m2) = out["packed"], out["mixed"]
    assert m1.prefill_time == p1.prefill_time == pytest.approx(prefill_ms(p1.prefill_tokens) / 1000)
    assert m2.batch_size == 1 and m2.prefill_tokens == p2.prefill_tokens > 0
    assert m2.prefill_time == pytest.approx((prefill_ms(p2.prefill_tokens) - prefill_ms(1)) / 1000)
    assert m2.verify_time == p2.verify_time


def test_mixed_layout_packs_a_steps_prompts_into_one_prefill():
    """`verify_layout: mixed` (vLLM's step): prompts admitted together are one prefill of their summed
    tokens; packed keeps the engine's prefill forwards (groups), each priced at its prompts' tokens."""
    out = {}
    for layout in ("packed", "mixed"):
        backend = make_backend(load_scenario("tiny-sim").replace(verify_layout=layout))
        engine = backend.make_engine(0)
        ids = backend.prompt_pool.token_ids
        engine.submit(Request("a", list(ids[0]), 6))
        engine.step(0)
        engine.submit(Request("b", list(ids[1]), 6))
        engine.submit(Request("c", list(ids[2]), 6))
        out[layout] = engine.step(0)
    prefill_ms = backend.profile.prefill_time_ms
    lengths = len(ids[1]), len(ids[2])
    mixed, packed = out["mixed"], out["packed"]
    assert mixed.batch_size == 1 and mixed.num_prefilled == 2
    assert mixed.prefill_padded_tokens == mixed.prefill_tokens == sum(lengths)
    assert mixed.prefill_time == pytest.approx((prefill_ms(sum(lengths)) - prefill_ms(1)) / 1000)
    # packed prices the engine's prefill forwards (here one per prompt or one group of both) at their prompts' tokens
    assert packed.prefill_padded_tokens == sum(lengths)
    assert packed.prefill_time in (pytest.approx((prefill_ms(lengths[0]) + prefill_ms(lengths[1])) / 1000),
                                   pytest.approx(prefill_ms(sum(lengths)) / 1000))
    assert prefill_ms(sum(lengths)) - prefill_ms(1) != pytest.approx(prefill_ms(lengths[0]) + prefill_ms(lengths[1]))


def test_profile_scenario_prices_drafting_as_the_simulator_does():
    """`profile: scenario` on an n-gram scenario whose profile also times a draft model (the measured H100
    profile) sets the policy's `drafting` to the scenario drafter's, lookups: the allocator then prices
    one drafted token at batch 1 as the simulator does, verify(1 row, 2 tokens) + one lookup = 23.5662 +
    0.08022 ms (the table's values), not as a draft model's forward. A draft-model scenario prices its
    draft model; a spec that says how to price drafting keeps it."""
    from nightjar_rl.experiments.config import resolve_spec

    measured = load_scenario("gpu-h100-measured-ngram")
    spec = resolve_spec({"type": "adaptive_budget", "profile": "scenario"}, measured)
    assert spec["drafting"] == "lookup"
    policy = make_policy(spec, measured.max_k)
    assert policy.profile.has_draft_model and not policy.draft_model
    assert policy.step_ms(1, 1, 1, 1, None) == pytest.approx(23.5662 + 0.08022)
    oracle = make_policy(resolve_spec({"type": "oracle", "profile": "scenario"}, measured), measured.max_k)
    assert oracle.profile.step_time_ms(1, 1, drafting=oracle.drafting) == pytest.approx(23.5662 + 0.08022)
    as_model = resolve_spec({"type": "adaptive_budget", "profile": "scenario", "drafting": "draft_model"}, measured)
    assert make_policy(as_model, measured.max_k).draft_model  # the spec's own choice stands
    draft = load_scenario("gpu-whatif-draft")
    oracle = make_policy(resolve_spec({"type": "oracle", "profile": "scenario"}, draft), draft.max_k)
    assert oracle.drafting == "draft_model" and oracle.profile.has_draft_model
    assert resolve_spec({"type": "sssd", "profile": "scenario"}, measured).keys() == {"type", "profile"}  # prices no drafting
    learned = resolve_spec({"type": "learned_budget", "profile": "scenario"}, measured)  # a learned agent's rule too
    assert learned["drafting"] == "lookup"
    from nightjar_rl.policy.learned_per_row import plan_rule

    assert not plan_rule(learned, measured.max_k).allocator.draft_model


def test_the_engines_drafter_sets_how_a_named_policy_prices_drafting():
    """`--policy adaptive-budget-PATH` on an n-gram engine prices lookups even when the profile also times a
    draft model; a policy that prices no drafting is built as it is; an unknown pricing is refused."""
    from nightjar_rl.policy.resolve import resolve_policy

    path = "envs/profiles/random-llama-3-8b-h100-bf16.json"
    assert HardwareProfile.load(path).has_draft_model
    assert not resolve_policy(f"adaptive-budget-{path}", 4, "lookup").draft_model
    assert resolve_policy(f"adaptive-budget-{path}", 4).draft_model  # nothing said: the profile's default
    assert resolve_policy(f"oracle-{path}", 4, "lookup").drafting == "lookup"
    assert resolve_policy("fixed-2", 4, "lookup").k == 2
    from nightjar_rl.experiments.config import resolve_spec
    from nightjar_rl.policy.registry import with_drafting

    wrapped = with_drafting({"type": "hysteresis", "policy": {"type": "oracle", "profile": path}}, "lookup")
    assert wrapped["policy"]["drafting"] == "lookup" and "drafting" not in wrapped  # the inner oracle prices it
    measured = load_scenario("gpu-h100-measured-ngram")  # a path named directly is priced as the scenario's drafter too
    assert resolve_spec({"type": "adaptive_budget", "profile": path}, measured)["drafting"] == "lookup"
    with pytest.raises(ValueError, match="drafting must be one of"):
        AdaptiveBudget(path, 4, drafting="tree")
    with pytest.raises(ValueError, match="cannot price a draft model"):
        AdaptiveBudget(hand_profile(), MAX_K, drafting="draft_model")

