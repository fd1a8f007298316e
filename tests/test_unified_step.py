"""The unified step (`verify_layout: mixed`, vLLM's): the step's prompts ride in the verify forward,
attended apart from the decoding rows. Same tokens as the packed layout (and plain greedy) on every
drafter and plan shape, one target forward per step, hand-counted tokens, the runner's parts and
kept positions against separate forwards."""

from __future__ import annotations

import pytest
import torch

from nightjar_rl.contracts.plan import SpecPlan
from nightjar_rl.decoding import ParallelBatchDecoder, Request, SamplingParams, SpeculativeEngine
from nightjar_rl.decoding.drafters.sssd import SSSDDrafter
from nightjar_rl.decoding.runner import ModelRunner
from nightjar_rl.schema import ConfigError
from nightjar_rl.stack import EngineConfig, build_stack

from .conftest import greedy_reference, make_drafter
from .engines import stable_seed
from .test_packed_verify import PLANS, _comparable, _requests, _run

ORDERLESS = ("finished_ids", "first_token_ids")  # the unified step retires once, at the end of the step


def _engine(target, drafter, layout: str, **kwargs) -> SpeculativeEngine:
    return SpeculativeEngine(target, drafter, max_batch_size=4, max_seq_len=128, max_speculation=8,
                             verify_layout=layout, **kwargs)


def _same(stats) -> dict:
    """Every StepStats field but the times and the layout's name (ids that leave in the step unordered)."""
    row = {**_comparable(stats), "scored_tokens": stats.scored_tokens, "prefill_padded": stats.prefill_padded_tokens}
    for key in ORDERLESS:
        row[key] = sorted(row[key])
    return row


def _counting_forwards(engine) -> list[list[int]]:
    """Record the row count of every target forward (and its attention parts)."""
    calls, forward = [], engine.runner.forward

    def counted(slot_start, token_rows, past_lens, *args, **kwargs):
        calls.append(kwargs.get("parts") or [len(token_rows)])
        return forward(slot_start, token_rows, past_lens, *args, **kwargs)

    engine.runner.forward = counted
    return calls


@pytest.mark.parametrize("drafter", ["none", "ngram", "self", "early-exit", "other"])
@pytest.mark.parametrize("plan", list(PLANS))
def test_unified_equals_packed_and_plain_greedy(tiny_target, drafter, plan):
    requests = _requests(stable_seed("unified", drafter, plan), n=9)
    runs = {layout: _run(_engine(tiny_target, make_drafter(drafter, tiny_target), layout), requests, PLANS[plan])
            for layout in ("packed", "mixed")}
    assert runs["mixed"][0] == runs["packed"][0]
    assert [_same(s) for s in runs["mixed"][1]] == [_same(s) for s in runs["packed"][1]]
    assert runs["mixed"][0] == {r.request_id: greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens)
                                for r in requests}
    assert {s.verify_layout for s in runs["mixed"][1]} == {"mixed"}
    assert any(s.num_prefilled and s.request_ids for s in runs["mixed"][1])  # some steps were unified


def test_one_target_forward_per_step_hand_counted(tiny_target):
    """Two running rows (the target drafting 3 for itself: all accepted, and none) and two prompts of
    3 and 5 tokens admitted together: one forward of 2 + 3 + 3 + 5 = 13 tokens, attended as the two
    decoding rows and one group of prompts (5 x 2 padded positions are within 1.25 x their 8); packed
    runs two forwards (the prefill, then the verify pass)."""
    counted = {}
    for layout in ("packed", "mixed"):
        engine = _engine(tiny_target, make_drafter("self", tiny_target), layout)
        engine.submit(Request("r0", [1, 2, 3], 30))
        engine.submit(Request("r1", [4, 5], 30))
        engine.step(0)  # prefill r0 and r1
        engine.submit(Request("a", [6, 7, 8], 4))
        engine.submit(Request("b", [9, 10, 11, 12, 13], 4))
        calls = _counting_forwards(engine)
        st = engine.step(SpecPlan.per_row({"r0": 3}))
        assert st.request_ids == ["r0", "r1"] and st.drafted == [3, 0] and st.accepted == [3, 0]
        assert (st.num_prefilled, st.prefill_tokens, st.prefill_padded_tokens) == (2, 8, 8)
        assert sorted(st.first_token_ids) == ["a", "b"] and st.prefill_emitted == 2
        assert st.scored_tokens == 2 + 3
        counted[layout] = calls
        if layout == "mixed":  # the pass's time split by tokens: the prompts' 8 of its 13 are prefill
            assert st.prefill_time > 0 and st.verify_time > 0
            assert st.prefill_time / (st.prefill_time + st.verify_time) == pytest.approx(8 / 13)
    assert counted == {"packed": [[2], [2]], "mixed": [[2, 2]]}


def test_a_step_with_only_prompts_is_one_packed_prefill(tiny_target):
    engine = _engine(tiny_target, None, "mixed")
    for i, n in enumerate([3, 5, 30]):  # the 30-token prompt attends in a group of its own
        engine.submit(Request(f"p{i}", list(range(1, n + 1)), 3))
    calls = _counting_forwards(engine)
    st = engine.step(0)
    assert calls == [[2, 1]] and st.num_prefilled == 3 and st.prefill_time > 0 and not st.request_ids


def test_runner_parts_and_kept_positions_match_separate_forwards(tiny_target):
    """Decoding rows and prompts in one forward with attention parts: the same logits (and greedy
    choices) as the decoding rows' forward and the prompts' forward run apart."""
    prompts, decode = [[1, 2, 3, 4, 5, 6, 7], [8, 9]], [[20, 21, 22], [23]]
    past = [[10, 11, 12, 13], [14, 15, 16, 17, 18, 19]]
    apart = ModelRunner(tiny_target, num_slots=4, capacity=64, layout="packed")
    together = ModelRunner(tiny_target, num_slots=4, capacity=64, layout="packed")
    for runner in (apart, together):
        runner.forward(0, past, [0, 0], last_only=True)
    want = apart.forward_rows(0, decode, [4, 6]) + list(apart.forward(2, prompts, [0, 0], last_only=True))
    got = together.forward(0, decode + prompts, [4, 6, 0, 0], keep=[3, 1, 1, 1], parts=[2, 2])
    assert got.shape == (3 + 1 + 1 + 1, want[0].shape[-1])
    for a, b in zip(want, [got[0:3], got[3:4], got[4], got[5]]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        assert torch.equal(b.argmax(-1), a.argmax(-1))
    for ka, kb in zip(apart.cache.keys, together.cache.keys):
        for slot, n in enumerate([7, 7, 7, 2]):
            torch.testing.assert_close(kb[slot, :, :n], ka[slot, :, :n], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="parts"):
        together.forward(0, [[1], [2]], [0, 0], parts=[1, 2])
    with pytest.raises(ValueError, match="keep"):
        together.forward(0, [[1], [2, 3]], [0, 0], keep=[1, 3])


def test_trees_and_sampling_under_the_unified_step(tiny_target):
    """SSSD token trees (their pass attends as one part, so prompts are prefilled apart first) stay
    lossless; sampling runs and is reproducible by seed."""
    requests = _requests(21, n=8)
    engine = _engine(tiny_target, SSSDDrafter(), "mixed")
    calls = _counting_forwards(engine)
    outputs, steps = _run(engine, requests, PLANS["half-8"])
    assert outputs == {r.request_id: greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens) for r in requests}
    # steps that verified trees and admitted prompts ran two forwards: the prompts apart, then the trees
    assert len(calls) > len(steps) and any(s.num_prefilled and sum(s.drafted) for s in steps)
    sampled = [_run(_engine(tiny_target, make_drafter("self", tiny_target), "mixed",
                            sampling=SamplingParams(temperature=0.8, top_p=0.9), seed=3), requests, PLANS["mixed"])[0]
               for _ in range(2)]
    assert sampled[0] == sampled[1] and all(len(v) for v in sampled[0].values())


def test_the_unified_step_is_an_engine_config_and_needs_one_slot_region(tiny_target):
    stack = build_stack(EngineConfig(model="tiny-random", drafter="ngram", verify_layout="mixed"))
    assert stack.engine.verify_layout == "mixed" and stack.engine.runner.layout == "packed"
    with pytest.raises(ValueError, match="needs one slot region"):
        ParallelBatchDecoder(tiny_target, make_drafter("ngram", tiny_target), verify_layout="mixed")
    with pytest.raises(ConfigError, match="'verify_layout': 'mixed' needs the standard decoder"):
        EngineConfig(model="tiny-random", drafter="ngram", decoder="parallel", verify_layout="mixed").validate()


@pytest.mark.real_model
def test_real_model_unified_equals_packed():
    from nightjar_rl.models import load_model

    loaded = load_model("smollm2-135m")
    tok = loaded.tokenizer
    texts = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, there was a",
             "1, 2, 3, 4, 5, 6,", "Write a haiku about the sea.", "import numpy as np\n"]
    requests = [Request(f"q{i}", tok(t)["input_ids"], 24) for i, t in enumerate(texts)]
    runs = {layout: _run(SpeculativeEngine(loaded.model, make_drafter("ngram", loaded.model), max_batch_size=4,
                                           max_seq_len=128, max_speculation=8, verify_layout=layout,
                                           eos_token_ids=loaded.eos_token_ids), requests, PLANS["half-8"])
            for layout in ("packed", "mixed")}
    assert runs["mixed"][0] == runs["packed"][0]
    assert sum(len(v) for v in runs["mixed"][0].values()) > 0
    assert any(s.num_prefilled and s.request_ids for s in runs["mixed"][1])
