"""SimEngine's clock on hand-computed cases, synthetic acceptance, trace files and the roofline formula."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.sim.engine import SimEngine, SyntheticAcceptance
from nightjar_rl.hardware import HardwareProfile, ProfileError
from nightjar_rl.sim.roofline import GPUSpec, ModelShape, from_mapping, pass_time_ms, roofline_profile, step_time_ms
from nightjar_rl.sim.trace import Trace, TraceError, TraceRecord, make_meta

MAX_K = 3


def record(rid: str, prompt_len: int, out_len: int, drafted_at_2: list[int], accepted_at_2: list[int],
           eos: bool = False) -> TraceRecord:
    """A record whose tables at k = 2 are given (other columns: k, and min(k, accepted_at_2))."""
    drafted = np.zeros((out_len, MAX_K + 1), np.int64)
    accepted = np.zeros((out_len, MAX_K + 1), np.int64)
    for p in range(1, out_len):
        drafted[p] = [0, 1, drafted_at_2[p - 1], 3]
        accepted[p] = [0, min(1, accepted_at_2[p - 1]), accepted_at_2[p - 1], accepted_at_2[p - 1]]
    prompt = tuple(range(1 + 100 * len(rid), 1 + 100 * len(rid) + prompt_len)) if rid == "a" else tuple(
        range(500, 500 + prompt_len))
    return TraceRecord(rid, prompt, np.arange(7, 7 + out_len), eos, drafted, accepted)


def toy_trace(drafter: str = "ngram") -> Trace:
    recs = [record("a", 10, 6, [2, 2, 2, 2, 2], [1, 2, 0, 2, 1]), record("b", 10, 4, [0, 2, 2], [0, 1, 2], eos=True)]
    return Trace(make_meta("toy", drafter, MAX_K, 6, "float32"), recs)


def requests(trace: Trace, max_new: int = 6) -> list[Request]:
    return [Request(r.request_id, list(r.prompt_ids), max_new) for r in trace.records]


CLOCK = HardwareProfile(
    {"1": {"1": 10.0, "2": 12.0, "3": 14.0}, "2": {"1": 20.0, "2": 24.0, "3": 28.0}},
    {}, ngram_lookup_ms_per_row=0.5, prefill_ms={"10": 5.0, "20": 10.0}, overhead_ms={"1": 1.0, "2": 2.0},
)


def test_step_times_follow_the_documented_clock():
    trace = toy_trace()
    engine = SimEngine(trace, CLOCK, max_batch_size=2, max_speculation=MAX_K, verify_layout="padded")
    for r in requests(trace):
        engine.submit(r)
    s0 = engine.step(2)  # prefill only: both prompts (10 + 10 tokens, one group) -> 10 ms + overhead(1)
    assert (s0.batch_size, s0.num_prefilled, s0.prefill_tokens) == (0, 2, 20)
    assert s0.prefill_time == pytest.approx(0.010) and s0.wall_time == pytest.approx(0.011)
    s1 = engine.step(2)  # p = 1: a drafts 2 accepts 1; b drafts 0 -> verify(2 rows, 3 tokens) = 28 ms
    assert (s1.drafted, s1.accepted, s1.emitted, s1.verify_tokens) == ([2, 0], [1, 0], [2, 1], 3)
    assert s1.verify_time == pytest.approx(0.028)
    assert s1.draft_time == pytest.approx(0.001)  # 2 rows x 0.5 ms lookup
    assert s1.wall_time == pytest.approx(0.028 + 0.001 + 0.002)
    assert s1.model_time == pytest.approx(0.028)  # n-gram drafting is not a model forward
    s2 = engine.step(0)  # k = 0: one token each, verify(2, 1) = 20 ms, no drafting
    assert (s2.drafted, s2.emitted, s2.draft_time) == ([0, 0], [1, 1], 0.0)
    assert s2.wall_time == pytest.approx(0.020 + 0.002)
    s3 = engine.step(2)  # a at p=4: 2 tokens left, so drafts are capped at 1 (accepted 1, emits 2);
    # b at p=3 drafts 2, accepts 2, but only its last token (EOS) is left: emits 1, keeps 1 draft
    assert s3.drafted == [1, 2] and s3.emitted == [2, 1] and s3.accepted == [1, 1]
    assert set(s3.finished_ids) == {"a", "b"}
    done = {s.request_id: s for s in engine.pop_finished()}
    assert done["a"].finish_reason == "length" and done["b"].finish_reason == "eos"
    assert done["a"].output_ids == list(range(7, 13)) and done["b"].output_ids == list(range(7, 11))
    assert not engine.has_work



@pytest.mark.parametrize("layout, verify_ms, scored", [("padded", 28.0, 6), ("packed", 24.0, 4)])
def test_a_per_row_plan_is_priced_by_what_it_scores(layout, verify_ms, scored):
    """Step 1 with plan {a: 2, b: 0}: a drafts 2 (accepts 1), b drafts nothing. Padded (the live
    engine's verify pass) prices 2 rows x 3 positions: verify_ms[2][3] = 28 ms. Packed prices
    2 + 2 = 4 positions, 2 per row: verify_ms[2][2] = 24 ms."""
    trace = toy_trace()
    engine = SimEngine(trace, CLOCK, max_batch_size=2, max_speculation=MAX_K, verify_layout=layout)
    for r in requests(trace):
        engine.submit(r)
    engine.step(0)  # prefill
    s1 = engine.step(SpecPlan.per_row({"a": 2, "b": 0}))
    assert (s1.plan, s1.drafted, s1.accepted, s1.k) == ([2, 0], [2, 0], [1, 0], 2)
    assert (s1.verify_tokens, s1.scored_tokens) == (3, scored)  # what the live engine computes in that layout
    assert s1.verify_time == pytest.approx(verify_ms / 1000)
    assert s1.draft_time == pytest.approx(0.0005)  # only a row with a length > 0 looks up: 1 x 0.5 ms


def test_a_simulator_wider_than_its_profile_warns():
    """The tables clamp batch, so steps of more rows than the profile measured would be priced too low."""
    with pytest.warns(UserWarning, match="prices at most 2 rows"):
        SimEngine(toy_trace(), CLOCK, max_batch_size=3, max_speculation=MAX_K)


def test_bad_verify_layout_is_rejected():
    with pytest.raises(ValueError, match="verify_layout must be one of padded, packed, mixed, got 'dense'"):
        SimEngine(toy_trace(), CLOCK, verify_layout="dense")


def test_profile_prices_rows_and_total_scored_tokens():
    # 2 rows scoring 5 positions read the table at 2.5 tokens per row: 24 + (28 - 24) / 2 = 26 ms
    assert CLOCK.verify_step_ms(2, 5) == pytest.approx(26.0)
    assert CLOCK.verify_step_ms(2, 6) == CLOCK.verify_time_ms(2, 3) == 28.0  # uniform k = 2

def test_draft_model_catch_up_is_charged_after_speculation_was_off():
    trace = toy_trace("draft")
    profile = HardwareProfile({"1": {"1": 10.0, "3": 14.0}}, {"1": 3.0}, draft_prefill_ms={"10": 4.0, "20": 8.0})
    engine = SimEngine(trace, profile, max_batch_size=1, max_speculation=MAX_K)
    engine.submit(requests(trace)[0])
    engine.step(0)  # prefill: the draft's cache holds nothing of this row
    engine.step(0)  # k = 0: lag grows to 12 tokens (10 prompt + 2 output)
    s = engine.step(2)  # catch-up over 12 - 1 = 11 tokens for 1 row -> draft_prefill(11) = 4.4 ms
    assert s.catchup_time == pytest.approx(0.0044)
    assert s.draft_time == pytest.approx(0.006)  # 2 draft steps x 3 ms
    assert s.model_time == pytest.approx(s.verify_time + 0.0044 + 0.006)
    s = engine.step(2)  # in step: lag is 1 + (accepted - min(accepted, k - 1)) <= 2, no catch-up
    assert s.catchup_time == 0.0


def test_a_folded_catch_up_is_priced_as_the_positions_it_adds_to_the_first_drafting_pass():
    """By hand: 1 row, 11 tokens to catch up. A pass of its own: draft_prefill(11) = 4 + 1 x 0.4 = 4.4 ms.
    Folded: the first drafting pass computes 1 + 11 = 12 positions, draft_prefill(12) = 4.8 ms instead of
    draft(1) = 3 ms: 1.8 ms more drafting and no catch-up pass; never below 0 (a pass bound by its weights)."""
    profile = HardwareProfile({"1": {"1": 10.0, "3": 14.0}}, {"1": 3.0}, draft_prefill_ms={"10": 4.0, "20": 8.0})
    assert profile.catchup_time_ms(1, 11) == pytest.approx(4.4)
    assert profile.catchup_time_ms(1, 11, folded=True) == pytest.approx(1.8)
    assert profile.catchup_time_ms(1, 2, folded=True) == pytest.approx(1.0)  # draft_prefill(3): 4 (clamped below)
    slow_step = HardwareProfile({"1": {"1": 10.0}}, {"1": 5.0}, draft_prefill_ms={"10": 4.0, "20": 8.0})
    assert slow_step.catchup_time_ms(1, 2, folded=True) == 0.0  # 4 - 5 < 0: the positions ride for free
    assert profile.catchup_time_ms(1, 0) == profile.catchup_time_ms(1, 0, folded=True) == 0.0
    trace = toy_trace("draft")
    engine = SimEngine(trace, profile, max_batch_size=1, max_speculation=MAX_K, draft_catchup="folded")
    engine.submit(requests(trace)[0])
    engine.step(0)
    engine.step(0)
    s = engine.step(2)  # as in the test above, the lag is 12 tokens: 11 fed
    assert s.catchup_time == 0.0 and s.draft_time == pytest.approx(0.006 + 0.0018)
    with pytest.raises(ValueError, match="draft_catchup must be one of separate, folded"):
        SimEngine(trace, profile, draft_catchup="lazy")


@pytest.mark.parametrize("layout, fed", [("padded", 20), ("packed", 11), ("mixed", 11)])
def test_draft_model_catch_up_is_priced_by_the_tokens_it_feeds(layout, fed):
    """Row a is in step (lag 1: it accepted none of its one draft), row b was just admitted (lag 11: prompt +
    first token). The catch-up pass feeds each row its lag but the last token: padded, every row at the
    largest, 2 x 10 = 20 tokens (8 ms); packed and mixed, 1 + 10 = 11 tokens (4.4 ms): a row with nothing
    to feed still computes one position, as the live engine's packed forward does."""
    trace = toy_trace("draft")
    profile = HardwareProfile({"2": {"1": 10.0, "3": 14.0}}, {"2": 3.0}, draft_prefill_ms={"10": 4.0, "20": 8.0})
    engine = SimEngine(trace, profile, max_batch_size=2, max_speculation=MAX_K, verify_layout=layout)
    a, b = requests(trace)
    engine.submit(a)
    engine.step(0)
    engine.step(1)  # a catches up alone and accepts its one draft
    engine.submit(b)
    engine.step(1)  # b is admitted (prefilled) this step; a drafts in step and accepts nothing
    s = engine.step(1)
    assert s.request_ids == ["a", "b"]
    assert s.catchup_time == pytest.approx(fed * 0.4e-3)


def test_unknown_prompt_and_too_long_budget_are_refused():
    trace = toy_trace()
    engine = SimEngine(trace, CLOCK, max_speculation=MAX_K)
    with pytest.raises(TraceError, match="not in the trace"):
        engine.submit(Request("x", [1, 2, 3], 4))
    with pytest.raises(TraceError, match="record a longer trace"):
        engine.submit(Request("a2", list(trace.records[0].prompt_ids), 9))
    engine.submit(Request("b2", list(trace.records[1].prompt_ids), 50))  # ends in EOS: any budget fits
    with pytest.raises(ValueError, match="max_speculation"):
        SimEngine(trace, CLOCK, max_speculation=MAX_K + 1)


def test_synthetic_acceptance_is_seeded_per_request_and_follows_the_rates():
    synth = SyntheticAcceptance((0.8, 0.5), heterogeneity=0.0)
    d1, a1, stated = synth.tables(4000, 4, seed=3, request_id="r1")
    assert stated is None  # no `confidence`: the drafter states none
    assert synth.tables(4000, 4, seed=3, request_id="r1") == (d1, a1, None)
    assert synth.tables(4000, 4, seed=4, request_id="r1")[1] != a1
    a = np.array(a1)[1:]
    assert np.all(a <= np.arange(5)[None, :]) and np.all(np.array(d1)[1:] == np.arange(5)[None, :])
    first = (a[:, 1] == 1).mean()
    second_given_first = (a[:, 2] == 2).sum() / (a[:, 1] == 1).sum()
    assert abs(first - 0.8) < 0.03 and abs(second_given_first - 0.5) < 0.04
    assert ((a[:, 4] == 4).sum() / max(1, (a[:, 3] == 3).sum())) == pytest.approx(0.5, abs=0.08)  # last rate repeats
    with pytest.raises(ValueError, match="non-increasing"):
        SyntheticAcceptance((0.5, 0.9))


def test_stated_confidences_are_calibrated_and_keep_the_rates():
    """With `confidence_concentration` = kappa each proposed token carries a confidence drawn around its rate and survives
    with exactly that probability: the rates hold on average, and the tokens stated confident are the ones
    that survive (the sharper, the smaller kappa)."""
    synth = SyntheticAcceptance((0.6, 0.5), confidence_concentration=1.0)
    drafted, accepted, stated = synth.tables(20000, 4, seed=1, request_id="r1")
    assert stated.shape == (20000, 4)
    a, c = np.array(accepted)[1:], stated[1:]
    first = a[:, 1] == 1
    assert abs(first.mean() - 0.6) < 0.02 and abs(c[:, 0].mean() - 0.6) < 0.02
    assert abs((a[:, 2] == 2).sum() / first.sum() - 0.5) < 0.03
    assert first[c[:, 0] > 0.9].mean() > 0.9 and first[c[:, 0] < 0.1].mean() < 0.1  # calibrated
    same = synth.tables(20000, 4, seed=1, request_id="r1")
    assert same[:2] == (drafted, accepted) and np.array_equal(same[2], stated)
    with pytest.raises(ValueError, match="must be > 0"):
        SyntheticAcceptance.from_dict({"rates": [0.5], "confidence_concentration": 0}, "ngram")
    assert SyntheticAcceptance.from_dict({"rates": [0.5], "confidence_concentration": 2}, "ngram").confidence_concentration == 2.0


def test_the_simulator_reports_each_rows_next_proposal_confidences():
    """`proposal_confidences()` holds, per running row, the confidences stated for the proposal at its
    current output position: row i of the request's table."""
    trace = toy_trace()
    synth = SyntheticAcceptance.from_dict({"rates": [0.7, 0.5], "confidence_concentration": 0.5}, "ngram")
    engine = SimEngine(trace, CLOCK, max_batch_size=2, max_speculation=MAX_K, synthetic=synth, seed=5)
    plain = SimEngine(trace, CLOCK, max_batch_size=2, max_speculation=MAX_K)
    for r in requests(trace):
        engine.submit(r)
        plain.submit(r)
    checked = 0
    for _ in range(4):
        engine.step(MAX_K)
        plain.step(MAX_K)
        assert plain.proposal_confidences() == {}
        assert set(engine.proposal_confidences()) <= {s.request_id for s in engine.running}  # none left from last step
        for s in engine.running:
            limit = min(len(engine.trace.lookup(s.request.prompt_ids)), s.request.max_new_tokens)
            table = synth.tables(limit, trace.max_k, 5, s.request_id)[2]
            np.testing.assert_array_equal(engine.proposal_confidences()[s.request_id], table[len(s.output_ids)])
            checked += 1
    assert checked >= 2


def test_a_synthetic_drafter_is_priced_by_its_cost():
    """A synthetic drafter is priced as the scenario's drafter kind: a draft model (CLOCK has no draft_ms:
    refused) or, for the n-gram, lookups. Rates 1.0: every row accepts both drafts. Hand-computed step 1 of two
    rows at k = 2 (padded: 3 tokens a row): verify 28 ms, lookup 2 rows x 0.5 = 1 ms, overhead 2 ms."""
    trace = toy_trace()
    with pytest.raises(TraceError, match="synthetic draft model"):
        SimEngine(trace, CLOCK, max_speculation=MAX_K, synthetic=SyntheticAcceptance((1.0,)))
    assert SyntheticAcceptance.from_dict({"rates": [1.0]}, "draft").cost == "draft_model"
    lookup = SyntheticAcceptance.from_dict({"rates": [1.0]}, "ngram")
    engine = SimEngine(trace, CLOCK, max_batch_size=2, max_speculation=MAX_K, synthetic=lookup, verify_layout="padded")
    for r in requests(trace):
        engine.submit(r)
    engine.step(2)
    s1 = engine.step(2)
    assert s1.accepted == [2, 2] and s1.catchup_time == 0.0
    assert (s1.verify_time, s1.draft_time, s1.wall_time) == pytest.approx((0.028, 0.001, 0.031))
    with pytest.raises(ValueError, match="cost must be"):
        SyntheticAcceptance((0.5,), cost="free")
    with pytest.raises(ValueError, match="needs a drafter that drafts"):
        SyntheticAcceptance.from_dict({"rates": [0.5]}, "none")


def test_trace_round_trips_and_bad_files_get_one_clear_error(tmp_path):
    trace = toy_trace()
    path = trace.save(tmp_path / "t.npz")
    back = Trace.load(path)
    assert back.meta == trace.meta and len(back.records) == 2
    for a, b in zip(trace.records, back.records):
        assert a.prompt_ids == b.prompt_ids and a.eos == b.eos
        assert np.array_equal(a.output_ids, b.output_ids) and np.array_equal(a.accepted, b.accepted)
    with pytest.raises(TraceError, match="not found"):
        Trace.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TraceError, match="not a readable trace"):
        Trace.load(tmp_path / "junk.npz")
    wrong = Trace({**trace.meta, "version": 99}, trace.records).save(tmp_path / "v.npz")
    with pytest.raises(TraceError, match="version 99"):
        Trace.load(wrong)
    bad = toy_trace()
    bad.records[0].accepted[2, 2] = 3  # accepted > drafted
    with pytest.raises(TraceError, match="accepted must be <= drafted"):
        Trace.load(bad.save(tmp_path / "bad.npz"))


def test_profile_v2_interpolation_by_context_prefill_and_overhead():
    p = HardwareProfile(
        {"1": {"1": 10.0}},
        verify_ms_by_context={"100": {"1": {"1": 10.0}, "3": {"1": 30.0}}, "300": {"1": {"1": 20.0}, "3": {"1": 50.0}}},
        prefill_ms={"100": 40.0, "200": 60.0}, overhead_ms={"1": 1.0, "5": 3.0},
    )
    assert p.verify_time_ms(1, 1, 200) == pytest.approx(15.0)  # halfway between contexts
    assert p.verify_time_ms(2, 1, 200) == pytest.approx(27.5)  # batch 2: 20 at context 100, 35 at 300
    assert p.verify_time_ms(1, 1, 50) == 10.0 and p.verify_time_ms(1, 1, 900) == 20.0  # clamped
    assert p.verify_time_ms(1, 1) == 10.0  # no context: the base table
    assert p.prefill_time_ms(150) == pytest.approx(50.0) and p.prefill_time_ms(400) == pytest.approx(120.0)
    assert p.prefill_time_ms(50) == 40.0  # clamped below
    assert p.overhead_time_ms(3) == pytest.approx(2.0) and p.overhead_time_ms(9) == 3.0
    again = HardwareProfile.from_dict(p.to_dict())
    assert again.verify_time_ms(2, 1, 200) == pytest.approx(27.5) and again.prefill_time_ms(400) == pytest.approx(120.0)
    assert p.to_dict()["version"] == 2
    v1 = HardwareProfile.from_dict({"version": 1, "verify_ms": {"1": {"1": 10.0}, "4": {"1": 16.0}}})
    assert v1.prefill_time_ms(2) == pytest.approx(12.0) and v1.prefill_time_ms(8) == pytest.approx(32.0)
    with pytest.raises(ProfileError, match="prefill_ms"):
        HardwareProfile.from_dict({"verify_ms": {"1": {"1": 1.0}}, "prefill_ms": {"x": 1.0}})


def test_roofline_pass_time_on_a_hand_computed_shape():
    shape = ModelShape("toy", hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=10, bytes_per_param=2.0)
    assert shape.params_per_token == 184  # attention 48 + MLP 96 + LM head 40
    assert shape.kv_bytes_per_token == 8.0
    gpu = GPUSpec("toy", memory_bandwidth_gbps=1e-6, peak_tflops=1e-9, launch_overhead_ms=0.5)  # 1000 B/s, 1000 FLOP/s
    # bytes 184*2 + 2*(5+3)*8 = 496 -> 0.496 s; FLOPs 2*184*6 + 4*1*2*2*6*8 = 2976 -> 2.976 s (compute-bound)
    assert pass_time_ms(gpu, shape, batch=2, tokens=3, context=5) == pytest.approx(2976.5)
    # one row, one token, no context: bytes 368 + 8 = 376 (0.376 s) vs FLOPs 368 + 16 = 384 (0.384 s)
    assert pass_time_ms(gpu, shape, batch=1, tokens=1, context=0) == pytest.approx(384.5)
    # priced by rows and total scored tokens: 2 rows scoring 5 (a per-row plan {2 drafts, 1 draft}, packed):
    # bytes 368 + (2*5 + 5)*8 = 488 (0.488 s); FLOPs 2*184*5 + 4*1*2*2*5*(5 + 2.5) = 1840 + 600 = 2440 (2.44 s)
    assert step_time_ms(gpu, shape, rows=2, scored=5, context=5) == pytest.approx(2440.5)
    assert step_time_ms(gpu, shape, rows=2, scored=6, context=5) == pass_time_ms(gpu, shape, 2, 3, 5)
    prof = roofline_profile(gpu, shape, shape, batch_sizes=[1, 2], tokens_per_row=[1, 3], contexts=[5], prefill_tokens=[4])
    assert prof.verify_time_ms(2, 3, 5) == pytest.approx(2976.5) and prof.has_draft_model
    with pytest.raises(ProfileError, match="unknown field"):
        from_mapping(GPUSpec, {"name": "x", "memory_bandwidth_gbps": 1, "peak_tflops": 1, "bogus": 2}, "GPU spec f.json")
    with pytest.raises(ProfileError, match="must be a number"):
        from_mapping(GPUSpec, {"name": "x", "memory_bandwidth_gbps": "fast", "peak_tflops": 1}, "GPU spec f.json")


def test_roofline_h100_8b_is_memory_bound_at_batch_1_and_compute_bound_at_256():
    from nightjar_rl.sim.roofline import GPU_PRESETS, model_shape

    prof = roofline_profile(GPU_PRESETS["h100"], model_shape("llama-3-8b"))
    flat = prof.verify_time_ms(1, 9, 512) / prof.verify_time_ms(1, 1, 512)
    steep = prof.verify_time_ms(256, 5, 512) / prof.verify_time_ms(256, 1, 512)
    assert flat == pytest.approx(1.0, abs=0.01) and steep > 2.0
    assert json.loads(json.dumps(prof.to_dict()))["roofline"]["target"]["name"] == "llama-3-8b"
