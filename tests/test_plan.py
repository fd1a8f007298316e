"""Per-row speculation plans: the value type, losslessness of random per-row plans for every drafter
and both decoders, what StepStats records of the plan, and clear errors for bad plans."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nightjar_rl.contracts import PlanError, SpecPlan
from nightjar_rl.decoding import DraftModelDrafter, NgramDrafter, Request, SpeculativeEngine
from nightjar_rl.decoding.drafters.sssd import SSSDDrafter

from .conftest import greedy_reference
from .engines import DECODER_KINDS, make_engine, stable_seed

VOCAB = 96


# ---- the value type ---------------------------------------------------------------------------------
def test_uniform_and_per_row_plans_resolve_by_request_id():
    assert SpecPlan.coerce(3) == SpecPlan.uniform(3) == SpecPlan(default=3)
    assert SpecPlan.coerce(3) is SpecPlan.uniform(np.int64(3))  # one immutable plan per k, shared
    for bad in (True, -1, 1.0):
        with pytest.raises(PlanError, match="plan default must be"):
            SpecPlan.uniform(bad)
    assert SpecPlan.uniform(3).resolve(["a", "b"]) == [3, 3]
    plan = SpecPlan.per_row({"a": 5, "c": 0}, default=2)
    assert plan.resolve(["c", "b", "a"]) == [0, 2, 5]
    assert (plan.max_length, plan.is_uniform, plan.length_for("zz")) == (5, False, 2)
    assert SpecPlan.per_row({"a": 1}).max_length == 1 and SpecPlan.per_row({}).is_uniform
    assert SpecPlan.coerce(np.int64(4)) == SpecPlan.uniform(4)  # policies often return numpy ints
    assert SpecPlan.from_dict(plan.to_dict()) == plan
    assert repr(SpecPlan.uniform(2)) == "SpecPlan.uniform(2)"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SpecPlan.coerce(-1), "k must be >= 0, got -1"),
        (lambda: SpecPlan.coerce(1.5), "k must be an int, got 1.5"),
        (lambda: SpecPlan.coerce(True), "k must be an int, got True"),
        (lambda: SpecPlan.per_row({"a": -2}), "plan length of request 'a' must be >= 0, got -2"),
        (lambda: SpecPlan.per_row({3: 1}), "plan keys are request ids"),
        (lambda: SpecPlan.from_dict({"k": 3}), "a plan is"),
    ],
)
def test_bad_plans_are_rejected_in_one_line(make, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        make()
    assert "\n" not in str(info.value)


def test_plans_are_checked_against_the_batch(tiny_target):
    engine = SpeculativeEngine(tiny_target, NgramDrafter(), max_batch_size=2, max_seq_len=64, max_speculation=4)
    engine.submit(Request("a", [1, 2, 3], 5))
    engine.step(0)  # prefill: "a" is running now
    with pytest.raises(PlanError, match="speculation length 5 for request 'a' is above max_speculation 4"):
        engine.step(SpecPlan.per_row({"a": 5}))
    with pytest.raises(PlanError, match="speculation length 6 for the plan default is above max_speculation 4"):
        engine.step(SpecPlan.per_row({"a": 1}, default=6))
    with pytest.raises(PlanError, match="plan names 1 request\\(s\\) that are not running: 'ghost'"):
        engine.step(SpecPlan.per_row({"a": 1, "ghost": 2}))
    with pytest.raises(ValueError, match="k must be an int in \\[0, 4\\], got 7"):
        engine.step(7)
    assert engine.step_count == 1  # nothing ran: a bad plan leaves the engine as it was
    stats = engine.step(SpecPlan.per_row({"a": 2}))
    assert stats.request_ids == ["a"] and stats.plan == [2]


# ---- losslessness ---------------------------------------------------------------------------------------
def random_requests(rng: random.Random, n: int) -> list[Request]:
    out = []
    for i in range(n):
        base = [rng.randrange(VOCAB) for _ in range(rng.randrange(2, 7))]
        out.append(Request(f"r{i}", (base * 4)[: rng.randrange(3, 26)], rng.randrange(1, 22)))  # repetitive: drafts hit
    return out


def serve_with_random_plans(engine, requests: list[Request], seed: int, max_k: int) -> tuple[dict, list]:
    """Submit all, then step with a random length per running row (zeros included) until idle."""
    rng = random.Random(seed)
    for r in requests:
        engine.submit(r)
    outputs, steps = {}, []
    while engine.has_work:
        running = [s.request_id for s in engine.running]
        plan = SpecPlan.per_row({rid: rng.randrange(max_k + 1) for rid in running if rng.random() < 0.8},
                                default=rng.randrange(max_k + 1))
        stats = engine.step(plan)
        steps.append((plan, stats))
        for seq in engine.pop_finished():
            assert seq.request_id not in outputs, "served twice"
            outputs[seq.request_id] = seq.output_ids
        assert len(steps) < 3000
    return outputs, steps


@pytest.mark.parametrize("decoder", DECODER_KINDS)
@pytest.mark.parametrize("drafter", ["none", "ngram", "self", "early-exit", "other", "sssd"])
def test_random_per_row_plans_are_lossless(tiny_target, decoders, decoder, drafter):
    requests = random_requests(random.Random(stable_seed(decoder, drafter)), 7)
    kwargs = {"max_batch_size": 3, "max_seq_len": 128, "max_speculation": 6}
    if drafter == "sssd":
        engine = make_engine(decoder, tiny_target, "none", **kwargs)
        engine.drafter = SSSDDrafter()  # token trees, a per-row node budget
        engine.drafter.setup(3, 128 + 6 + 1)
    else:
        engine = make_engine(decoder, tiny_target, drafter, **kwargs)
    decoders.append(engine)
    outputs, steps = serve_with_random_plans(engine, requests, seed=7, max_k=6)
    assert outputs == {r.request_id: greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens) for r in requests}
    for plan, stats in steps:  # the plan each row ran is recorded, and no row drafts past it
        assert stats.plan == (plan.resolve(stats.request_ids) if drafter != "none" else [0] * stats.batch_size)
        assert stats.k == max(stats.plan, default=plan.max_length if drafter != "none" else 0)
        if drafter not in ("sssd",) or decoder == "standard":  # PSD prunes pending trees by depth only
            assert all(d <= n for d, n in zip(stats.drafted, stats.plan))
    if drafter != "none":
        assert any(len(set(stats.plan)) > 1 for _, stats in steps)  # the plans were really per row
        assert sum(sum(stats.accepted) for _, stats in steps) > 0 or drafter == "other"


def test_a_uniform_plan_is_the_old_scalar_k(tiny_target):
    """step(k) and step(SpecPlan.uniform(k)) run the same rounds, step for step."""
    rng = random.Random(11)
    requests = random_requests(rng, 6)
    runs = []
    for as_plan in (False, True):
        engine = SpeculativeEngine(tiny_target, NgramDrafter(), max_batch_size=3, max_seq_len=128, max_speculation=5)
        for r in requests:
            engine.submit(Request(r.request_id, r.prompt_ids, r.max_new_tokens))
        rows = []
        for i in range(200):
            if not engine.has_work:
                break
            k = [3, 0, 5, 1][i % 4]
            st = engine.step(SpecPlan.uniform(k) if as_plan else k)
            rows.append((st.k, st.request_ids, st.plan, st.drafted, st.accepted, st.emitted, st.scored_tokens))
        runs.append(rows)
    assert runs[0] == runs[1]


def test_scored_tokens_count_the_padded_verify_pass(tiny_target):
    """The live verify pass pads every row to the longest: rows x (1 + max drafted) positions."""
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=3, max_seq_len=128,
                               max_speculation=6, verify_layout="padded")
    for i in range(3):
        engine.submit(Request(f"r{i}", [5, 6, 7, 8] * 5, 20))
    engine.step(0)  # prefill
    stats = engine.step(SpecPlan.per_row({"r0": 4, "r1": 0, "r2": 2}))
    assert stats.plan == [4, 0, 2]
    assert stats.drafted == [4, 0, 2]  # a draft model drafts its full length
    assert stats.accepted == [4, 0, 2]  # the target drafting for itself
    assert (stats.verify_tokens, stats.scored_tokens) == (5, 15)


def test_the_default_verify_layout_is_packed(tiny_target):
    """By default a step computes what it scores: rows + drafted positions (3 + 4 + 0 + 2)."""
    engine = SpeculativeEngine(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=3, max_seq_len=128,
                               max_speculation=6)
    assert engine.verify_layout == "packed"
    for i in range(3):
        engine.submit(Request(f"r{i}", [5, 6, 7, 8] * 5, 20))
    engine.step(0)  # prefill
    stats = engine.step(SpecPlan.per_row({"r0": 4, "r1": 0, "r2": 2}))
    assert (stats.verify_tokens, stats.scored_tokens) == (5, 9)
