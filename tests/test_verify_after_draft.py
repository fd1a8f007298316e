"""Adaptive verification's order: draft, then choose what to verify by the drafter's own confidences
(`SpecPlan.verify_costs`). The choice on a hand-computed case, the draft model's stated confidences,
losslessness and what StepStats records on the live engine, the same choice in the simulator, clear
refusals where no confidences are stated, and the allocator's `select_after_draft` plans."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from nightjar_rl.contracts import PlanError, SpecPlan
from nightjar_rl.contracts.observation import Observation, RowBatch, obs_size
from nightjar_rl.contracts.plan import survival_of
from nightjar_rl.decoding import DraftModelDrafter, NgramDrafter, Request, SpeculativeEngine
from nightjar_rl.decoding.drafters.base import DraftProposal
from nightjar_rl.decoding.verify import SamplingParams
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.models import tiny_random_model
from nightjar_rl.policy import load_policy, make_policy, save_policy
from nightjar_rl.policy.per_row import AdaptiveBudget
from nightjar_rl.sim.engine import SimEngine, SyntheticAcceptance

from .conftest import greedy_reference
from .engines import make_engine
from .test_sim_engine import CLOCK, requests, toy_trace

# The hand case of tests/test_per_row.py: two rows whose drafted tokens were stated .9, .9 and .5, .5
# (survivals [[.9, .81], [.5, .25]]), step costs T(B) = 10, 12, 13.5, 15.5, 17 ms for B = 0..4.
STATED = [[0.9, 0.9], [0.5, 0.5]]
COSTS = [10.0, 12.0, 13.5, 15.5, 17.0]


def test_verified_lengths_on_the_hand_computed_case():
    """E(B) = 2, 2.9, 3.71, 4.21, 4.46; E/T = .2, .24167, .27481, .27161, .26235 -> B* = 2, both slots to row
    0. Flat costs keep every slot with a positive survival; a cost curve shorter than the slots caps B."""
    np.testing.assert_allclose(survival_of(STATED), [[0.9, 0.81], [0.5, 0.25]])
    plan = SpecPlan(default=2, verify_costs=COSTS)
    assert plan.verified_lengths(STATED) == [2, 0]
    assert SpecPlan(default=2, verify_costs=[1.0] * 5).verified_lengths(STATED) == [2, 2]
    assert SpecPlan(default=2, verify_costs=[1.0] * 2).verified_lengths(STATED) == [1, 0]  # B <= 1
    assert SpecPlan(default=2, verify_costs=[1.0] * 5).verified_lengths([[0.9, 0.0], []]) == [1, 0]  # 0: never
    assert SpecPlan(default=2, verify_costs=[1.0, 100.0]).verified_lengths(STATED) == [0, 0]  # not worth a slot
    assert SpecPlan(default=2).verified_lengths(STATED) == [2, 2]  # no costs: verify every draft
    # ties go to the shallower slot, then the earlier row: equal confidences fill rows breadth-first
    assert SpecPlan(default=2, verify_costs=[1.0] * 3).verified_lengths([[1.0, 1.0], [1.0, 1.0]]) == [1, 1]


def test_plans_with_costs_round_trip_and_reject_bad_costs():
    plan = SpecPlan.per_row({"a": 2}, default=1, verify_costs=COSTS)
    assert SpecPlan.from_dict(plan.to_dict()) == plan and plan.to_dict()["verify_costs"] == COSTS
    assert not SpecPlan(default=2, verify_costs=[1.0]).is_uniform and "verify_costs=<5 costs>" in repr(plan)
    assert plan.capped({"a": 1}).verify_costs == plan.verify_costs
    for bad, message in (([], "at least B = 0"), ([1.0, -2.0], "positive finite"), ([float("nan")], "positive finite"),
                         ("12", "a list of step times"), ([True], "positive finite")):
        with pytest.raises(PlanError, match=message):
            SpecPlan(default=1, verify_costs=bad)


class Recording(DraftModelDrafter):
    """A draft model that keeps each step's whole proposal (before the plan's choice), and states its
    confidences whether or not the plan chooses by them."""

    def propose(self, rows, lengths, slot_start, params, generator=None) -> DraftProposal:
        self.wants_confidences = True
        self.last = super().propose(rows, lengths, slot_start, params, generator)
        return self.last


def test_the_draft_model_states_the_probability_of_each_token_it_proposes(tiny_target):
    """Greedy: token j's confidence is the draft model's softmax probability of it given the row and the
    drafts before it (checked against a full forward of the draft model without a cache)."""
    draft = tiny_random_model(seed=1, num_layers=2)
    drafter = Recording(draft)
    engine = SpeculativeEngine(tiny_target, drafter, max_batch_size=2, max_seq_len=64, max_speculation=3)
    prompt = [5, 9, 2, 7, 5, 9]
    engine.submit(Request("a", prompt, 8))
    engine.step(0)
    row = list(engine.running[0].tokens)
    engine.step(3)
    proposal = drafter.last
    assert len(proposal.confidences[0]) == len(proposal.tokens[0]) == 3
    plain = DraftModelDrafter(draft)  # not asked (no plan choosing by them): no softmax, no confidences
    plain_engine = SpeculativeEngine(tiny_target, plain, max_batch_size=2, max_seq_len=64, max_speculation=3)
    plain_engine.submit(Request("a", prompt, 8))
    plain_engine.step(0)
    plain_engine.step(3)
    assert not plain.wants_confidences
    with torch.inference_mode():
        for j, token in enumerate(proposal.tokens[0]):
            probs = torch.softmax(draft(torch.tensor([row + proposal.tokens[0][:j]])).logits[0, -1].float(), -1)
            assert int(probs.argmax()) == token
            assert proposal.confidences[0][j] == pytest.approx(float(probs[token]), rel=1e-5)


@pytest.mark.parametrize("draft", ["other", "early-exit"])
def test_choosing_after_drafting_is_lossless_and_verifies_what_the_plan_chose(tiny_target, draft):
    """Random cost curves over random plans: outputs equal plain greedy decoding, each row verifies
    exactly `verified_lengths` of its stated confidences (capped at its budget), and the rest is counted
    as unverified, not as drafted."""
    model = tiny_random_model(seed=1, num_layers=2) if draft == "other" else None
    engine = make_engine("standard", tiny_target, draft, max_batch_size=3, max_seq_len=128, max_speculation=4)
    engine.drafter = Recording(model if model is not None else engine.drafter.model)
    engine.drafter.setup(3, 128 + 4 + 1)
    rng = random.Random(3)
    reqs = [Request(f"r{i}", [rng.randrange(96) for _ in range(rng.randrange(3, 12))], rng.randrange(2, 20))
            for i in range(6)]
    for r in reqs:
        engine.submit(r)
    outputs, chose, left = {}, 0, 0
    while engine.has_work:
        rows = list(engine.running)
        caps = [max(0, s.remaining - 1) for s in rows]  # verification never goes past a row's token budget
        depth = rng.randrange(5)
        costs = np.cumsum([rng.uniform(5, 10)] + [rng.uniform(0.0, 4.0) for _ in range(3 * depth)]).tolist()
        plan = SpecPlan(default=depth, verify_costs=costs)
        engine.drafter.last = None
        stats = engine.step(plan)
        if engine.drafter.last is not None:
            assert stats.request_ids == [s.request_id for s in rows] and stats.plan == [depth] * len(rows)
            stated = [c[:cap] for c, cap in zip(engine.drafter.last.confidences, caps)]
            assert stats.drafted == plan.verified_lengths(stated)
            assert stats.unverified == sum(map(len, stated)) - sum(stats.drafted)
            chose += 1
            left += stats.unverified
        for s in engine.pop_finished():
            outputs[s.request_id] = s.output_ids
    assert outputs == {r.request_id: greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens) for r in reqs}
    assert chose > 5 and left > 0  # the plans did choose, and left drafts out


def test_engines_whose_drafter_states_no_confidences_refuse_such_plans(tiny_target, decoders):
    plan = SpecPlan(default=2, verify_costs=COSTS)
    ngram = SpeculativeEngine(tiny_target, NgramDrafter(), max_batch_size=2, max_seq_len=64, max_speculation=4)
    parallel = make_engine("parallel", tiny_target, "early-exit", max_batch_size=2, max_seq_len=64, max_speculation=4)
    decoders.append(parallel)
    for engine in (ngram, parallel):
        engine.submit(Request("a", [1, 2, 3], 5))
        engine.step(0)
        with pytest.raises(PlanError, match="states none"):
            engine.step(plan)
        assert engine.step(SpecPlan.per_row({"a": 1})).request_ids == ["a"]  # nothing ran: the engine goes on
    sampling = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=1, max_seq_len=32,
                                 sampling=SamplingParams(temperature=0.8))
    assert not sampling.states_confidences  # choosing by q(drawn token) would bias speculative sampling
    with pytest.raises(ValueError, match="packed or mixed"):
        AdaptiveBudget(draft_profile(), 2, layout="padded", select_after_draft=True)
    plain = SimEngine(toy_trace(), CLOCK, max_batch_size=2, max_speculation=3)
    assert not plain.states_confidences and not ngram.states_confidences
    assert SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=1,
                             max_seq_len=32).states_confidences


def test_the_simulator_chooses_after_drafting_as_the_engine_does():
    """Each row drafts its plan length (priced so) and verifies what `verified_lengths` picks from the
    confidences its synthetic drafter stated: the same tokens and counts as a second simulator handed
    those verified lengths as its per-row plan."""
    synth = SyntheticAcceptance.from_dict({"rates": [0.8, 0.6, 0.5], "confidence_concentration": 0.5}, "ngram")
    trace = toy_trace()
    choosing = SimEngine(trace, CLOCK, max_batch_size=2, max_speculation=3, synthetic=synth, seed=2)
    told = SimEngine(trace, CLOCK, max_batch_size=2, max_speculation=3, synthetic=synth, seed=2)
    assert choosing.states_confidences
    for r in requests(trace):
        choosing.submit(r)
        told.submit(r)
    choosing.step(0), told.step(0)
    rng = random.Random(0)
    left = 0
    while choosing.has_work:
        rows = list(choosing.running)
        depth = rng.randrange(1, 4)
        plan = SpecPlan(default=depth, verify_costs=np.cumsum([20.0] + [rng.uniform(0, 12) for _ in range(2 * depth)]))
        stated = [choosing.proposal_confidences()[s.request_id][: min(depth, s.remaining - 1)].tolist() for s in rows]
        verified = plan.verified_lengths(stated)
        a = choosing.step(plan)
        b = told.step(SpecPlan.per_row({s.request_id: v for s, v in zip(rows, verified)}))
        assert a.plan == [depth] * len(rows) and a.drafted == b.drafted == verified
        assert (a.accepted, a.emitted, a.verify_time) == (b.accepted, b.emitted, b.verify_time)
        assert a.unverified == sum(map(len, stated)) - sum(verified)
        assert a.draft_time == pytest.approx(0.0005 * len(rows))  # every row drafted (looked up)
        assert [s.tokens for s in choosing.running] == [s.tokens for s in told.running]
        left += a.unverified
    assert left > 0


def test_a_simulated_draft_model_choosing_after_drafting_stays_in_step():
    """Priced as a draft model: every row drafts D = 2 per step (2 draft steps x 3 ms), verifies what the
    plan chooses, and its draft cache keeps what it verified and kept, so after the first catch-up no
    step pays one again (a row's lag stays <= 2), however few drafts were verified."""
    synth = SyntheticAcceptance.from_dict({"rates": [0.8, 0.5], "confidence_concentration": 0.5}, "draft")
    trace = toy_trace("draft")
    profile = HardwareProfile({"2": {"1": 10.0, "3": 14.0}}, {"2": 3.0}, draft_prefill_ms={"10": 4.0, "20": 8.0})
    engine = SimEngine(trace, profile, max_batch_size=2, max_speculation=3, synthetic=synth, seed=1)
    for r in requests(trace):
        engine.submit(r)
    engine.step(0)
    first = engine.step(SpecPlan(default=2, verify_costs=[10.0, 11.0, 12.0, 13.0, 14.0]))
    assert first.catchup_time > 0  # the draft model never saw the prompts
    steps = []
    while engine.has_work:
        steps.append(engine.step(SpecPlan(default=2, verify_costs=[10.0, 13.0, 16.0, 19.0, 22.0])))
    assert steps and all(s.catchup_time == 0 for s in steps)
    assert all(s.draft_time == pytest.approx(0.006) for s in steps)
    assert sum(s.unverified for s in steps) > 0


# ---- the allocator in adaptive verification's order ----------------------------------------------
def draft_profile() -> HardwareProfile:
    """2 rows: verify 10 ms at 1 token per row, 16 ms at 3 (linear between); a draft-model step 1 ms; a
    draft-model pass over n tokens (its catch-up) 0.4 n ms."""
    return HardwareProfile({"2": {"1": 10.0, "3": 16.0}}, {"2": 1.0}, draft_prefill_ms={"1": 0.4, "20": 8.0})


def history_rows(alphas, confidence=None, lag=(1, 1), context=(20, 20), remaining=(100, 100)) -> RowBatch:
    """Rows of 20 tokens, by default in step with the draft model (lag 1: nothing to catch up)."""
    n = len(alphas)
    return RowBatch(tuple(f"r{i}" for i in range(n)), np.array(alphas, float), np.ones(n, int), np.full(n, -1),
                    np.zeros(n, int), np.array(remaining), np.array(context), confidence=confidence, lag=list(lag))


def test_select_after_draft_on_a_hand_computed_case():
    """Rows with histories .9 and .5, max_k 2, a draft model at 1 ms a step. Before drafting the allocator
    allocates as usual: T(B) = draft (1 ms x the longest length) + verify, E/T = 2/10, 2.9/12.5, 3.71/15,
    4.21/16.5, 4.46/18 = .2, .232, .2473, .2552, .2478 -> B* = 3, lengths [2, 1], so D = 2. Every row drafts 2, and the plan carries
    T(B) with both draft steps paid: 2 + 10, 11.5, 13, 14.5, 16 = 12, 13.5, 15, 16.5, 18 ms. Confidences
    stated while drafting ([.3, .3] and [.95, .9]: survivals .3, .09, .95, .855) then choose: gains 2,
    2.95, 3.805, 4.105, 4.195 -> E/T .1667, .2185, .2537, .2488, .2331 -> B* = 2, both to row 1: the
    row the history ranked last."""
    policy = AdaptiveBudget(draft_profile(), 2, select_after_draft=True)
    obs = Observation(np.zeros(obs_size(2), np.float32), history_rows([0.9, 0.5], confidence=[[0.1, 0.1], [0.1, 0.1]]))
    plan = policy.predict(obs)  # stated confidences before drafting are not used: a live drafter has none then
    assert plan.default == 2 and not plan.lengths and policy.last_budget == 3
    np.testing.assert_allclose(plan.verify_costs, [12.0, 13.5, 15.0, 16.5, 18.0])
    assert plan.verified_lengths([[0.3, 0.3], [0.95, 0.9]]) == [0, 2]
    assert ",after draft" in policy.name and policy.params()["select_after_draft"] is True
    # nothing worth drafting by history: a plain all-zero plan, no costs
    cold = policy.predict(Observation(np.zeros(obs_size(2), np.float32), history_rows([0.01, 0.01])))
    assert cold.max_length == 0 and cold.verify_costs is None
    with pytest.raises(ValueError, match="cannot be combined"):
        AdaptiveBudget(draft_profile(), 2, select_after_draft=True, tpot_slack=0.1)


def test_a_draft_model_behind_pays_its_catch_up_in_the_allocators_step_time():
    """The rows above, but row 0 is 16 tokens behind the draft model (speculation was off for 15 steps):
    before any drafting the draft model feeds 15 + 1 = 16 positions (packed: row 1, in step, still
    computes one), 0.4 x 16 = 6.4 ms, paid by every B > 0: T = 10, 12.5 + 6.4, 15 + 6.4, 16.5 + 6.4, 18 + 6.4
    -> E/T = .2, .1534, .1734, .1838, .1828 -> B* = 0: not worth drafting this step. Without the catch-up
    (`price_catchup: false`) B* = 3 as above. Padded: 2 x 15 = 30 positions."""
    from nightjar_rl.decoding.layouts import catchup_tokens

    assert catchup_tokens([16, 1], "packed") == 16 and catchup_tokens([16, 1], "padded") == 30
    assert catchup_tokens([2, 1, 2], "packed") == 0  # a normal round leaves lags of 1 or 2: nothing to catch up
    behind = history_rows([0.9, 0.5], lag=(16, 1))
    policy = AdaptiveBudget(draft_profile(), 2)
    assert policy.catchup_ms(behind) == pytest.approx(6.4)
    lengths, budget, ratios = policy.allocate(behind.survival(2, 0.5), None, policy.catchup_ms(behind))
    np.testing.assert_allclose(ratios, [2 / 10, 2.9 / 18.9, 3.71 / 21.4, 4.21 / 22.9, 4.46 / 24.4])
    assert budget == 0 and lengths.tolist() == [0, 0]
    obs = Observation(np.zeros(obs_size(2), np.float32), behind)
    assert policy.predict(obs).max_length == 0
    blind = AdaptiveBudget(draft_profile(), 2, price_catchup=False)
    assert blind.catchup_ms(behind) == 0.0 and blind.predict(obs) == SpecPlan.per_row({"r0": 2, "r1": 1})
    assert "no catch-up" in blind.name and blind.params()["price_catchup"] is False
    # the engine folding the catch-up into its first drafting pass (`draft_catchup: folded`): that pass computes
    # 2 + 16 positions, 0.4 x 18 = 7.2 ms instead of the 1 ms draft step: 6.2 ms more, no pass of its own
    folded = AdaptiveBudget(draft_profile(), 2, draft_catchup="folded")
    assert folded.catchup_ms(behind) == pytest.approx(6.2)
    assert "folded catch-up" in folded.name and folded.params()["draft_catchup"] == "folded"
    with pytest.raises(ValueError, match="draft_catchup must be one of"):
        AdaptiveBudget(draft_profile(), 2, draft_catchup="lazy")
    lookups = AdaptiveBudget(draft_profile(), 2, drafting="lookup")  # a model-free drafter never lags
    assert lookups.catchup_ms(behind) == 0.0
    # a fresh row (lag = its whole context of 16: the draft model never drafted for it, 5 tokens to go):
    # the pass runs, one position per row (2), plus the fresh prompt's share per step, 15 / 5 = 3:
    # 5 positions, 2 ms; T = 10, 14.5, 17, 18.5, 20 -> E/T .2, .2, .2182, .2276, .223: it still drafts
    fresh = history_rows([0.9, 0.5], lag=(16, 1), context=(16, 20), remaining=(5, 100))
    assert policy.catchup_ms(fresh) == pytest.approx(2.0)
    # folded: a pass of 2 + 5 = 7 positions costs 0.4 + 6 x 0.4 = 2.8 ms, 1.8 more than the draft step
    assert AdaptiveBudget(draft_profile(), 2, draft_catchup="folded").catchup_ms(fresh) == pytest.approx(1.8)
    assert policy.predict(Observation(np.zeros(obs_size(2), np.float32), fresh)).max_length == 2  # it drafts


def test_a_fresh_rows_share_is_priced_at_its_tokens_cost_in_the_pass_that_feeds_all_the_prompts():
    """A draft pass of 1-100 positions costs 3 ms, then 0.01 ms a position (1,100: 13 ms). Row 0 is fresh
    (lag = its context of 401: a 400-token prompt owed, 20 tokens to go), row 1 in step. The pass feeds
    F_s = 2 positions (one a row) and the prompt F_f = 400: P(2) = 3 ms, P(402) = 3 + 302 x 0.01 = 6.02 ms.
    The prompt's share per step, 400 / 20 = 20 tokens, costs 20 of its 400 tokens' 3.02 ms: 3 + 0.151 ms
    (a pass of 2 + 20 positions alone would be 3 ms: the share free). Folded (the first drafting pass,
    1 ms at 2 rows, widened): P = prefill(2 + F) - 1: 2 ms, then 5.04 - 2 = 3.04 ms for the prompt: 2.152."""
    profile = HardwareProfile({"2": {"1": 10.0, "3": 16.0}}, {"2": 1.0},
                              draft_prefill_ms={"1": 3.0, "100": 3.0, "1100": 13.0})
    fresh = history_rows([0.9, 0.5], lag=(401, 1), context=(401, 20), remaining=(20, 100))
    assert AdaptiveBudget(profile, 2).catchup_ms(fresh) == pytest.approx(3.0 + 3.02 * 20 / 400)
    assert AdaptiveBudget(profile, 2, draft_catchup="folded").catchup_ms(fresh) == pytest.approx(2.0 + 3.04 * 20 / 400)
    # a row behind (lag 31 < its context: speculation was off 30 steps) still counts in full: F_s = 1 + 1 + 30
    # = 32 positions, P(32) = 3 ms; the whole pass P(432) = 3 + 0.01 x 332; the fresh prompt's share of the rest
    behind = history_rows([0.9, 0.5, 0.7], lag=(401, 1, 31), context=(401, 20, 60), remaining=(20, 100, 50))
    base = 3.0
    assert AdaptiveBudget(profile, 2).catchup_ms(behind) == pytest.approx(base + (3.0 + 0.01 * 332 - base) * 20 / 400)


def test_an_after_draft_allocator_round_trips_and_serves_the_live_engine_losslessly(tiny_target, tmp_path):
    policy = make_policy({"type": "adaptive_budget", "profile": draft_profile().to_dict(), "select_after_draft": True,
                          "prior_acceptance": 0.9}, 2)
    path = save_policy(policy, tmp_path / "after.json")
    loaded = load_policy(path)
    assert isinstance(loaded, AdaptiveBudget) and loaded.select_after_draft
    from nightjar_rl.runtime.driver import serve

    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=2, max_seq_len=64,
                               max_speculation=2)
    reqs = [Request("a", [4, 8, 15, 16, 23], 12), Request("b", [42, 4, 8], 10)]
    result = serve(engine, reqs, k=loaded, progress=False)
    assert result.outputs == {r.request_id: greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens) for r in reqs}
    decoding = [s for s in result.steps if s.batch_size]
    assert all(len(set(s.plan)) == 1 and s.unverified + sum(s.drafted) <= s.k * s.batch_size for s in decoding)
    assert sum(s.unverified for s in decoding) > 0 and sum(sum(s.drafted) for s in decoding) > 0


def test_after_drafting_a_model_free_drafter_drafts_only_the_rows_the_history_allocates():
    """Lookups are paid per drafting row: with histories .9 and .05 the allocation drafts row 0 only, so
    only row 0 drafts D and the costs price one drafting row (a draft model would draft both)."""
    profile = HardwareProfile({"2": {"1": 10.0, "3": 16.0}}, ngram_lookup_ms_per_row=0.5)
    policy = AdaptiveBudget(profile, 2, select_after_draft=True, drafting="lookup")
    plan = policy.predict(Observation(np.zeros(obs_size(2), np.float32), history_rows([0.9, 0.05])))
    assert plan.lengths == {"r0": 2, "r1": 0} and plan.default == 0
    np.testing.assert_allclose(plan.verify_costs, [10.5, 12.0, 13.5])  # verify 10, 11.5, 13 ms (packed) + 0.5 ms lookup


def test_the_engines_report_the_lag_their_catch_up_feeds(tiny_target):
    """`draft_lags()` before a step predicts the step's catch-up: on the live engine a catch-up pass runs
    exactly when a decoded row lags by more than 2 (random k, 0 included, rows joining and leaving), and
    the simulator charges draft_prefill_ms(`catchup_tokens` of the reported lags). The observation carries
    them (`RowBatch.lag`; 1 where nothing is reported)."""
    from nightjar_rl.contracts.observation import ObservationBuilder
    from nightjar_rl.decoding.layouts import catchup_tokens

    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=3, max_seq_len=128,
                               max_speculation=3)
    rng = random.Random(5)
    for i in range(7):
        engine.submit(Request(f"r{i}", [rng.randrange(96) for _ in range(rng.randrange(3, 9))], rng.randrange(2, 14)))
    caught = skipped = 0
    while engine.has_work:
        lags = engine.draft_lags() or {}
        rows = [s.request_id for s in engine.running]
        assert set(lags) == set(rows) and all(lag >= 1 for lag in lags.values())
        assert ObservationBuilder(3).observation(engine.running, 0, lags=lags).rows.lag.tolist() == [lags[r] for r in rows]
        k = rng.choice([0, 0, 1, 2, 3])
        stats = engine.step(k)
        decoded = [lags[r] for r in stats.request_ids if r in lags]
        if k and decoded:
            assert (stats.catchup_time > 0) == (max(decoded) > 2)
            caught += stats.catchup_time > 0
            skipped += stats.catchup_time == 0
        engine.pop_finished()
    assert caught and skipped
    ngram = SpeculativeEngine(tiny_target, NgramDrafter(), max_batch_size=1, max_seq_len=32)
    ngram.submit(Request("a", [1, 2, 3], 4))
    ngram.step(0)
    assert ngram.draft_lags() is None
    assert ObservationBuilder(3).observation(ngram.running, 0).rows.lag.tolist() == [1]

    synth = SyntheticAcceptance.from_dict({"rates": [0.8, 0.5]}, "draft")
    trace = toy_trace("draft")
    profile = HardwareProfile({"2": {"1": 10.0, "3": 14.0}}, {"2": 3.0}, draft_prefill_ms={"1": 0.4, "20": 8.0})
    sim = SimEngine(trace, profile, max_batch_size=2, max_speculation=3, synthetic=synth, seed=1)
    for r in requests(trace):
        sim.submit(r)
    charged = 0
    for k in [0, 2, 0, 0, 1, 0, 3, 2]:
        lags = sim.draft_lags()
        stats = sim.step(k)
        fed = catchup_tokens([lags[r] for r in stats.request_ids], "packed") if k and stats.request_ids else 0
        assert stats.catchup_time == pytest.approx(profile.draft_prefill_time_ms(fed) / 1000 if fed else 0.0)
        charged += fed > 0
    assert charged >= 2 and SimEngine(toy_trace(), CLOCK, max_batch_size=2, max_speculation=3).draft_lags() is None


def test_a_draft_model_allocator_also_weighs_every_row_drafting_fewer_passes():
    """By hand. 2 rows, verify 10 ms at 2 scored positions + 1.5 ms per more, a draft pass of both rows 3 ms.
    Survivals r0 = [0.9, 0.81], r1 = [0.5, 0.25]: in survival order r0's second slot (0.81) comes before
    r1's first (0.5), so B = 1..4 cost 1, 2, 2, 2 passes: E/T = 2/10, 2.9/14.5, 3.71/19, 4.21/20.5,
    4.46/22 = .2, .2, .1953, .2054, .2027 -> B = 3 (lengths 2, 1). Capped at depth 1 (one pass): 2/10,
    2.9/14.5, 3.4/16 = .2125 > .2054 -> both rows draft 1. A padded pass scores rows x the longest, so
    only the survival order applies there."""
    profile = HardwareProfile({"2": {"1": 10.0, "3": 16.0}}, {"2": 3.0})
    survival = np.array([[0.9, 0.81], [0.5, 0.25]])
    lengths, budget, ratios = AdaptiveBudget(profile, 2).allocate(survival)
    assert lengths.tolist() == [1, 1] and budget == 2
    np.testing.assert_allclose(ratios, [0.2, 0.2, 0.2125])
    # padded (rows x (1 + longest) scored): 2/10, 2.9/16, 3.71/22, 4.21/22, 4.46/22 -> B = 4, both rows 2
    padded_lengths, padded_budget, padded = AdaptiveBudget(profile, 2, layout="padded").allocate(survival)
    assert padded_lengths.tolist() == [2, 2] and padded_budget == 4
    np.testing.assert_allclose(padded, [0.2, 2.9 / 16, 3.71 / 22, 4.21 / 22, 4.46 / 22])
