"""The engine against plain greedy decoding: every k schedule, batch composition and drafter."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nightjar_rl.decoding import DraftModelDrafter, NgramDrafter, Request, SamplingParams, SpeculativeEngine
from nightjar_rl.decoding.engine import prefill_groups
from nightjar_rl.models import early_exit_draft, tiny_random_model

from .conftest import greedy_reference, make_drafter
from .engines import stable_seed

VOCAB = 96




DRAFTERS = ["none", "ngram", "self", "early-exit", "other"]


def run_all(engine: SpeculativeEngine, ks, arrivals_per_step=None):
    """Step the engine until done; `arrivals_per_step[i]` requests are submitted before step i."""
    outputs = {}
    step = 0
    pending = list(arrivals_per_step or [])
    while engine.has_work or (pending and any(pending)):
        for req in pending.pop(0) if pending else []:
            engine.submit(req)
        engine.step(ks[step % len(ks)])
        step += 1
        for seq in engine.pop_finished():
            assert seq.request_id not in outputs, "served twice"
            outputs[seq.request_id] = seq.output_ids
        assert step < 5000
    return outputs


def random_requests(rng: random.Random, n: int, max_prompt=30, max_new=25):
    return [
        Request(f"r{i}", [rng.randrange(VOCAB) for _ in range(rng.randrange(1, max_prompt))], rng.randrange(1, max_new))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def references(tiny_target):
    cache = {}

    def get(req: Request, eos=frozenset()):
        key = (tuple(req.prompt_ids), req.max_new_tokens, eos)
        if key not in cache:
            cache[key] = greedy_reference(tiny_target, req.prompt_ids, req.max_new_tokens, eos)
        return cache[key]

    return get


@pytest.mark.parametrize("drafter", DRAFTERS)
@pytest.mark.parametrize("ks", [[0], [1], [4], [8], [0, 3, 0, 0, 5, 1, 8]])
def test_greedy_output_equals_plain_decoding(tiny_target, references, drafter, ks):
    rng = random.Random(stable_seed(drafter, tuple(ks)))
    requests = random_requests(rng, 7)
    engine = SpeculativeEngine(tiny_target, make_drafter(drafter, tiny_target), max_batch_size=3, max_seq_len=128,
                               max_speculation=8)
    for r in requests:
        engine.submit(r)
    outputs = run_all(engine, ks)
    assert outputs == {r.request_id: references(r) for r in requests}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    ks=st.lists(st.integers(0, 6), min_size=1, max_size=12),
    drafter=st.sampled_from(DRAFTERS),
    max_batch=st.integers(1, 5),
    join=st.lists(st.integers(0, 3), min_size=1, max_size=8),
)
def test_lossless_under_random_join_leave_schedules(tiny_target, references, seed, ks, drafter, max_batch, join):
    """Requests join between steps in random groups while others finish; k varies every step."""
    rng = random.Random(seed)
    requests = random_requests(rng, sum(join) or 1)
    groups, i = [], 0
    for size in join:
        groups.append(requests[i : i + size])
        i += size
    groups.append(requests[i:])
    engine = SpeculativeEngine(tiny_target, make_drafter(drafter, tiny_target), max_batch_size=max_batch,
                               max_seq_len=128, max_speculation=6)
    outputs = run_all(engine, ks, groups)
    assert outputs == {r.request_id: references(r) for r in requests}


def test_eos_stops_a_row_exactly_where_plain_decoding_does(tiny_target):
    rng = random.Random(3)
    requests = random_requests(rng, 6, max_new=40)
    # choose an EOS token that plain decoding actually emits for some request
    first_outputs = [greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens) for r in requests]
    eos = frozenset({first_outputs[0][len(first_outputs[0]) // 2]})
    engine = SpeculativeEngine(tiny_target, NgramDrafter(), max_batch_size=4, max_seq_len=128, max_speculation=8,
                               eos_token_ids=tuple(eos))
    for r in requests:
        engine.submit(r)
    outputs = run_all(engine, [5])
    for r in requests:
        assert outputs[r.request_id] == greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens, eos)
    assert any(len(outputs[r.request_id]) < r.max_new_tokens for r in requests)


def test_rollback_does_not_touch_other_rows(tiny_target):
    """A row that rejects everything (other draft) shares a batch with one that accepts everything."""
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=2, max_seq_len=128)
    a = Request("a", [1, 2, 3], 20)
    b = Request("b", list(range(40, 70)), 20)
    engine.submit(a)
    engine.submit(b)
    outputs = run_all(engine, [7])
    assert outputs["a"] == greedy_reference(tiny_target, a.prompt_ids, 20)
    assert outputs["b"] == greedy_reference(tiny_target, b.prompt_ids, 20)


def test_step_stats_account_for_every_token(tiny_target):
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=4, max_seq_len=128)
    for i in range(4):
        engine.submit(Request(f"r{i}", [i + 1, i + 2], 12))
    total = 0
    while engine.has_work:
        s = engine.step(3)
        total += s.tokens_out
        assert len(s.drafted) == len(s.accepted) == len(s.emitted) == s.batch_size
        assert all(0 <= a <= d <= 3 for a, d in zip(s.accepted, s.drafted))
        assert s.wall_time >= s.verify_time + s.draft_time
        if s.batch_size:
            hist = s.accept_histogram()
            assert hist.sum() == sum(1 for d in s.drafted if d > 0)
    assert total == 4 * 12
    assert len(engine.pop_finished()) == 4


def test_capacity_queues_instead_of_crashing(tiny_target):
    engine = SpeculativeEngine(tiny_target, NgramDrafter(), max_batch_size=2, max_seq_len=64, max_kv_tokens=60,
                               max_speculation=4)
    # each request reserves 10 + 10 + 4 = 24 KV tokens: only two fit in 60 at once
    for i in range(5):
        engine.submit(Request(f"r{i}", list(range(1, 11)), 10))
    max_running = 0
    done = set()
    while engine.has_work:
        engine.step(2)
        max_running = max(max_running, len(engine.running))
        assert engine.scheduler.reserved <= 60
        for seq in engine.pop_finished():
            assert seq.request_id not in done
            done.add(seq.request_id)
    assert max_running == 2 and done == {f"r{i}" for i in range(5)}


def test_admission_is_fifo_and_slots_stay_compact(tiny_target):
    engine = SpeculativeEngine(tiny_target, None, max_batch_size=3, max_seq_len=64)
    budgets = [2, 9, 3, 9, 1, 5]
    for i, b in enumerate(budgets):
        engine.submit(Request(f"r{i}", [5, 6, 7], b))
    admitted = []
    while engine.has_work:
        before = {s.request_id for s in engine.running}
        engine.step(0)
        admitted += [s.request_id for s in engine.running if s.request_id not in before]
        assert [s.slot for s in engine.running] == list(range(len(engine.running)))
        engine.pop_finished()
    assert admitted == [f"r{i}" for i in range(len(budgets)) if budgets[i] > 1]


def test_compaction_moves_the_outermost_survivors_into_the_holes():
    """Hand-computed, 6 slots. Region growing up, rows in slots 0-4, those in 1 and 3 finish: three
    survive, so the span is slots 0-2 and the row in slot 4 moves to the one free slot there, 1.
    Region growing down, rows in slots 1-5, those in 2 and 5 finish: the span is 3-5 and the row in
    slot 1 moves to 5. Rows stay in slot order; nothing moves when nothing leaves."""
    from nightjar_rl.decoding.scheduler import SlotMove, SlotRegion
    from nightjar_rl.decoding.sequence import Sequence

    for up, done, after in ((True, (1, 3), {0: 0, 2: 2, 4: 1}), (False, (2, 5), {3: 3, 4: 4, 1: 5})):
        region = SlotRegion(6, up=up)
        rows = [Sequence(Request(f"r{i}", [1], 4), [1]) for i in range(5)]
        for seq in rows:
            region.add(seq)
        assert region.compact().moves == [] and [s.slot for s in region.rows] == sorted(s.slot for s in rows)
        by_slot = {s.slot: s for s in rows}
        for slot in done:
            by_slot[slot].finish_reason = "eos"
        out = region.compact()
        assert sorted(s.slot for s in out.leaving) == list(done)
        assert out.moves == [SlotMove(by_slot[src], src, dst) for src, dst in after.items() if src != dst]
        assert {src: by_slot[src].slot for src in after} == after
        assert [s.slot for s in region.rows] == sorted(after.values())


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        (dict(prompt_ids=[], max_new_tokens=4), "empty prompt"),
        (dict(prompt_ids=[1] * 60, max_new_tokens=10), "exceeds the context"),
        (dict(prompt_ids=[1, 2], max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_requests_are_rejected_clearly(tiny_target, request_kwargs, message):
    engine = SpeculativeEngine(tiny_target, None, max_batch_size=2, max_seq_len=64)
    with pytest.raises(ValueError, match=message):
        engine.submit(Request("x", **request_kwargs))


def test_duplicate_ids_and_bad_k_are_rejected(tiny_target):
    engine = SpeculativeEngine(tiny_target, NgramDrafter(), max_batch_size=2, max_seq_len=64, max_speculation=4)
    engine.submit(Request("x", [1], 3))
    with pytest.raises(ValueError, match="duplicate"):
        engine.submit(Request("x", [1], 3))
    for bad in (-1, 5, 1.5):
        with pytest.raises(ValueError, match="k must be"):
            engine.step(bad)


def test_draft_model_catch_up_after_speculation_off_is_timed_separately(tiny_target):
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=2, max_seq_len=128)
    engine.submit(Request("a", [3, 4, 5], 60))
    stats = [engine.step(k) for k in [0, 0, 3, 3] + [0] * 10 + [3]]
    assert stats[2].catchup_time > 0  # the draft model never saw the prompt
    assert stats[3].catchup_time == 0  # in step: a lag of 1-2 tokens is normal drafting
    assert stats[-1].catchup_time > 0  # after ten steps with k = 0
    assert sum(stats[-1].accepted) == 3  # and it is in sync again: self-drafting accepts everything


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_a_folded_catch_up_rides_in_the_first_drafting_pass_and_changes_no_token(tiny_target, layout):
    """`draft_catchup: folded`: no pass of its own (catchup_time 0, its positions in draft_time), the draft
    model as much in step afterwards, and greedy outputs identical to the separate catch-up's and to
    plain decoding, whatever the on/off pattern."""
    pattern = [0, 0, 3, 3] + [0] * 10 + [3, 2, 0, 0, 0, 4] + [1] * 8
    outputs, last = {}, {}
    for catchup in ("separate", "folded", None):
        drafter = DraftModelDrafter(early_exit_draft(tiny_target, 2), catchup=catchup) if catchup else None
        engine = SpeculativeEngine(tiny_target, drafter, max_batch_size=2, max_seq_len=128, verify_layout=layout)
        engine.submit(Request("a", [3, 4, 5], 40))
        engine.submit(Request("b", [9, 8, 7, 6, 5, 4], 40))
        stats = [engine.step(k if catchup else 0) for k in pattern]
        while engine.has_work:
            engine.step(0)
        outputs[catchup] = {seq.request_id: seq.output_ids for seq in engine.pop_finished()}
        last[catchup] = stats
    assert outputs["folded"] == outputs["separate"] == outputs[None]
    folded, separate = last["folded"], last["separate"]
    assert all(s.catchup_time == 0 for s in folded)
    assert separate[2].catchup_time > 0 and separate[14].catchup_time > 0  # a prompt, then ten steps off
    assert [s.accepted for s in folded] == [s.accepted for s in separate]  # the draft cache as much in step
    with pytest.raises(ValueError, match="catchup must be one of separate, folded"):
        DraftModelDrafter(tiny_target, catchup="lazy")


def test_sampling_runs_and_respects_budgets(tiny_target):
    params = SamplingParams(temperature=0.8, top_p=0.9)
    for drafter in (None, NgramDrafter(), DraftModelDrafter(tiny_random_model(seed=1, num_layers=2))):
        engine = SpeculativeEngine(tiny_target, drafter, max_batch_size=3, max_seq_len=128, sampling=params, seed=1)
        reqs = random_requests(random.Random(0), 5)
        for r in reqs:
            engine.submit(r)
        outputs = run_all(engine, [0, 4])
        assert {k: len(v) for k, v in outputs.items()} == {r.request_id: r.max_new_tokens for r in reqs}
        assert all(0 <= t < VOCAB for v in outputs.values() for t in v)


def test_sampling_with_self_draft_accepts_everything(tiny_target):
    """p == q: every draft token is accepted with probability 1."""
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=2, max_seq_len=128,
                               sampling=SamplingParams(temperature=1.0), seed=0)
    engine.submit(Request("a", [1, 2, 3], 40))
    drafted = accepted = 0
    while engine.has_work:
        s = engine.step(4)
        drafted += sum(s.drafted)
        accepted += sum(s.accepted)
    assert drafted > 0 and accepted == drafted


def test_prefill_groups_limit_padding():
    assert prefill_groups([10, 10, 11]) == [[0, 1, 2]]
    groups = prefill_groups([300, 10, 12, 11, 280])
    assert [0] in groups and sum(len(g) for g in groups) == 5
    for g in groups:
        assert g == list(range(g[0], g[-1] + 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_engine_runs_in_bf16(dtype):
    target = tiny_random_model(seed=0, dtype=dtype)
    engine = SpeculativeEngine(target, NgramDrafter(), max_batch_size=2, max_seq_len=64)
    engine.submit(Request("a", [1, 2, 3], 10))
    outputs = run_all(engine, [3])
    assert len(outputs["a"]) == 10


def test_long_prompt_joining_rows_far_along_stays_in_the_cache(tiny_target):
    """Draft catch-up pads every row to the longest lag: a long new prompt next to a row near the end
    of its context must not write past the row's KV slot."""
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(early_exit_draft(tiny_target, 2)), max_batch_size=2,
                               max_seq_len=64, max_speculation=4)
    a = Request("a", [1, 2, 3], 58)
    b = Request("b", list(range(10, 50)), 12)
    engine.submit(a)
    outputs = {}
    for _ in range(30):
        engine.step(2)
    engine.submit(b)
    while engine.has_work:
        engine.step(2)
        outputs.update({s.request_id: s.output_ids for s in engine.pop_finished()})
    assert outputs["a"] == greedy_reference(tiny_target, a.prompt_ids, a.max_new_tokens)
    assert outputs["b"] == greedy_reference(tiny_target, b.prompt_ids, b.max_new_tokens)
