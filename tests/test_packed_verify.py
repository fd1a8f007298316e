"""Packed verify (rows flattened into one token batch) against padded verify: same tokens, same KV
cache, same StepStats (only `scored_tokens` differs: what each layout computes), on every drafter,
plan shape and decoder."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from nightjar_rl.contracts.plan import SpecPlan
from nightjar_rl.decoding import ParallelBatchDecoder, Request, SamplingParams, SpeculativeEngine
from nightjar_rl.decoding.datastore import Datastore
from nightjar_rl.decoding.drafters.sssd import SSSDDrafter
from nightjar_rl.decoding.runner import ModelRunner, split_rows
from nightjar_rl.decoding.tree import TokenTree, batch_tree_inputs
from nightjar_rl.schema import ConfigError
from nightjar_rl.stack import EngineConfig

from .conftest import greedy_reference, make_drafter
from .engines import stable_seed

VOCAB = 96
TIMES = {"prefill_time", "draft_time", "catchup_time", "verify_time", "wall_time", "model_time"}


def _requests(seed: int, n: int = 7) -> list[Request]:
    rng = random.Random(seed)
    return [Request(f"r{i}", [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 25))], rng.randrange(2, 22))
            for i in range(n)]


def _half_plan(engine, step: int) -> SpecPlan:
    """Every other running row drafts 8 (which rows alternates by step), the rest none."""
    rows = [s.request_id for s in engine.running]
    return SpecPlan.per_row({rid: 8 * ((i + step) % 2) for i, rid in enumerate(rows)})


def _mixed_plan(engine, step: int) -> SpecPlan:
    """A different length for every row, changing each step."""
    return SpecPlan.per_row({s.request_id: (3 * i + step) % 7 for i, s in enumerate(engine.running)})


PLANS = {
    "uniform-4": lambda engine, step: 4,
    "uniform-schedule": lambda engine, step: [0, 3, 0, 5, 1, 8][step % 6],
    "half-8": _half_plan,
    "mixed": _mixed_plan,
}


def _comparable(stats) -> dict:
    """A step's StepStats without times, the layout and what it computes (`verify_layout`, `scored_tokens`,
    `prefill_padded_tokens`) and timing detail in `extra`."""
    layout = {"verify_layout", "scored_tokens", "prefill_padded_tokens", "extra"}
    row = {k: v for k, v in vars(stats).items() if k not in TIMES | layout}
    row["extra"] = {k: v for k, v in stats.extra.items() if not k.startswith("psd")}
    if "psd" in stats.extra:
        row["psd"] = (stats.extra["psd"]["mode"], stats.extra["psd"]["halves"])
    return row


def _run(engine, requests: list[Request], plan) -> tuple[dict, list]:
    for r in requests:
        engine.submit(r)
    outputs, steps = {}, []
    try:
        while engine.has_work:
            stats = engine.step(plan(engine, len(steps)))
            steps.append(stats)
            for seq in engine.pop_finished():
                outputs[seq.request_id] = seq.output_ids
            assert len(steps) < 2000
    finally:
        engine.close()
    return outputs, steps


def _engine(kind: str, target, drafter, layout: str, **kwargs):
    kwargs = dict(max_batch_size=4, max_seq_len=128, max_speculation=8, verify_layout=layout, **kwargs)
    if kind == "standard":
        return SpeculativeEngine(target, drafter, **kwargs)
    return ParallelBatchDecoder(target, drafter, overlap=kind == "parallel", **kwargs)


def _check_scored(steps, layout: str) -> None:
    """Hand-countable: padded scores rows x (1 + longest draft), packed rows + drafts; a packed prefill
    computes the prompts' tokens, a padded one at least that."""
    for st in steps:
        rows, drafted = len(st.drafted), st.drafted
        if layout == "padded":
            psd = st.extra.get("psd")
            if psd is None:  # one verify pass per step
                assert st.scored_tokens == rows * (1 + max(drafted, default=0))
            assert st.prefill_padded_tokens >= st.prefill_tokens  # exact: test_hand_counted_prefill_tokens
        else:
            assert st.scored_tokens == rows + sum(drafted)
            assert st.prefill_padded_tokens == st.prefill_tokens


def _same_runs(target, drafter_factory, kind: str, plan, requests, **kwargs):
    runs = {}
    for layout in ("padded", "packed"):
        outputs, steps = _run(_engine(kind, target, drafter_factory(), layout, **kwargs), requests, plan)
        _check_scored(steps, layout)
        runs[layout] = (outputs, [_comparable(s) for s in steps], steps)
    assert runs["packed"][0] == runs["padded"][0]
    assert runs["packed"][1] == runs["padded"][1]
    return runs


@pytest.mark.parametrize("drafter", ["none", "ngram", "self", "early-exit", "other"])
@pytest.mark.parametrize("plan", list(PLANS))
def test_packed_equals_padded_and_plain_greedy(tiny_target, drafter, plan):
    requests = _requests(stable_seed(drafter, plan))
    runs = _same_runs(tiny_target, lambda: make_drafter(drafter, tiny_target), "standard", PLANS[plan], requests)
    assert runs["packed"][0] == {r.request_id: greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens)
                                 for r in requests}


@pytest.mark.parametrize("kind", ["parallel", "parallel-sequential"])
@pytest.mark.parametrize("drafter", ["ngram", "early-exit"])
@pytest.mark.parametrize("plan", ["uniform-schedule", "half-8", "mixed"])
def test_packed_equals_padded_in_the_batch_parallel_decoder(tiny_target, kind, drafter, plan):
    requests = _requests(stable_seed(kind, drafter, plan), n=9)
    _same_runs(tiny_target, lambda: make_drafter(drafter, tiny_target), kind, PLANS[plan], requests)


@pytest.fixture(scope="module")
def self_datastore(tiny_target):
    """The tiny model's own greedy continuations, so SSSD trees do get accepted."""
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, VOCAB, size=6).tolist() for _ in range(3)]
    docs = [p + greedy_reference(tiny_target, p, 30) for p in prompts]
    return Datastore.build(docs, vocab_size=VOCAB, fingerprint="tiny"), prompts


@pytest.mark.parametrize("kind", ["standard", "parallel"])
@pytest.mark.parametrize("plan", ["uniform-4", "half-8", "mixed"])
def test_tree_verify_under_packing(tiny_target, self_datastore, kind, plan):
    store, prompts = self_datastore
    rng = np.random.default_rng(11)
    requests = [Request(f"r{i}", rng.integers(0, VOCAB, size=int(rng.integers(2, 20))).tolist(), 20) for i in range(3)]
    requests += [Request(f"d{i}", p, 20) for i, p in enumerate(prompts)]  # drafts from the store get accepted
    runs = _same_runs(tiny_target, lambda: SSSDDrafter(datastore=store), kind, PLANS[plan], requests)
    assert runs["packed"][0] == {r.request_id: greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens)
                                 for r in requests}
    assert sum(sum(s.drafted) for s in runs["packed"][2]) > 0  # trees were verified


def test_sampling_is_identical_under_packing(tiny_target):
    requests = _requests(4)
    _same_runs(tiny_target, lambda: make_drafter("self", tiny_target), "standard", PLANS["mixed"], requests,
               sampling=SamplingParams(temperature=0.8, top_p=0.9), seed=3)


def test_hand_counted_scored_tokens(tiny_target):
    """4 rows, two drafting 8 (the target drafting for itself: all accepted) and two none: padded
    computes 4 x 9 = 36 positions, packed 1 + 9 + 1 + 9 = 20."""
    scored = {}
    for layout in ("padded", "packed"):
        engine = _engine("standard", tiny_target, make_drafter("self", tiny_target), layout)
        for i in range(4):
            engine.submit(Request(f"r{i}", [1 + i, 2, 3], 30))
        engine.step(0)  # prefill
        st = engine.step(SpecPlan.per_row({"r0": 8, "r2": 8}))
        assert st.drafted == [8, 0, 8, 0] and st.verify_tokens == 9
        scored[layout] = st.scored_tokens
    assert scored == {"padded": 36, "packed": 20}


def test_hand_counted_prefill_tokens(tiny_target):
    """Prompts of 3 and 5 tokens prefilled in one forward (10 padded positions are within 1.25 x their
    8 tokens): padded computes 2 x 5 = 10 positions, packed 3 + 5 = 8."""
    computed = {}
    for layout in ("padded", "packed"):
        engine = _engine("standard", tiny_target, make_drafter("none", tiny_target), layout)
        engine.submit(Request("a", [1, 2, 3], 4))
        engine.submit(Request("b", [4, 5, 6, 7, 8], 4))
        st = engine.step(0)
        assert (st.num_prefilled, st.prefill_tokens) == (2, 8)
        computed[layout] = st.prefill_padded_tokens
    assert computed == {"padded": 10, "packed": 8}


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_a_draft_model_runs_in_the_engines_layout(tiny_target, layout):
    engine = _engine("standard", tiny_target, make_drafter("other", tiny_target), layout)
    assert engine.drafter.runner.layout == layout


def test_runner_layouts_give_the_same_logits_and_cache(tiny_target):
    """Ragged rows (and a tree row) through both layouts: same logits at every real position and the
    same KV entries (up to float rounding of different matmul shapes)."""
    rows = [[5, 6, 7, 8, 9], [11], [12, 13, 14]]
    past_prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    tree = TokenTree((20, 21, 22, 23), (-1, -1, 0, 2))
    out = {}
    for layout in ("padded", "packed"):
        runner = ModelRunner(tiny_target, num_slots=4, capacity=64, layout=layout)
        runner.forward(0, past_prompts, [0, 0, 0])
        logits = runner.forward_rows(0, rows, [len(p) for p in past_prompts])
        tree_logits = runner.forward_rows(3, [[30, *tree.tokens]], [0], tree=batch_tree_inputs([tree]))
        both = runner.forward_rows(1, [[40], [41, *tree.tokens]], [9, 4],
                                   tree=batch_tree_inputs([TokenTree(), tree]))
        out[layout] = (logits, tree_logits, both, [k.clone() for k in runner.cache.keys])
    for a, b in zip(out["padded"][0] + out["padded"][1] + out["padded"][2],
                    out["packed"][0] + out["packed"][1] + out["packed"][2]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    lengths = [3 + 5, 6 + 1 + 1, 1 + 3, 1 + 4 + 1]  # real entries per slot after the forwards above
    for ka, kb in zip(out["padded"][3], out["packed"][3]):
        for slot, n in enumerate(lengths):
            torch.testing.assert_close(ka[slot, :, :n], kb[slot, :, :n], atol=1e-5, rtol=1e-5)


def test_split_rows_padded_and_packed():
    padded = torch.arange(2 * 3 * 1).view(2, 3, 1)
    assert [r.flatten().tolist() for r in split_rows(padded, [3, 1])] == [[0, 1, 2], [3]]
    packed = torch.arange(4).view(4, 1)
    assert [r.flatten().tolist() for r in split_rows(packed, [3, 1])] == [[0, 1, 2], [3]]


def test_bad_layout_is_rejected(tiny_target):
    with pytest.raises(ValueError, match="verify_layout must be one of padded, packed"):
        SpeculativeEngine(tiny_target, None, verify_layout="ragged")
    with pytest.raises(ConfigError, match="verify_layout"):
        EngineConfig(model="tiny-random", verify_layout="ragged").validate()


@pytest.mark.real_model
@pytest.mark.parametrize("plan", ["uniform-4", "half-8"])
def test_real_model_packed_equals_padded(plan):
    from nightjar_rl.models import load_model

    loaded = load_model("smollm2-135m")
    tok = loaded.tokenizer
    texts = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, there was a",
             "1, 2, 3, 4, 5, 6,"]
    requests = [Request(f"q{i}", tok(t)["input_ids"], 24) for i, t in enumerate(texts)]
    runs = _same_runs(loaded.model, lambda: make_drafter("ngram", loaded.model), "standard", PLANS[plan], requests,
                      eos_token_ids=loaded.eos_token_ids)
    assert sum(len(v) for v in runs["packed"][0].values()) > 0


@pytest.mark.parametrize("model_forward", ["native", "native-eager", "transformers"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_an_early_exit_draft_runs_alone_and_matches_transformers(layout, model_forward):
    """The runner on an early-exit draft (whose layers read the target's config) with no target
    runner built first: its logits equal a plain transformers forward of the draft."""
    from nightjar_rl.models import early_exit_draft, tiny_random_model

    draft = early_exit_draft(tiny_random_model(seed=3), 2)
    runner = ModelRunner(draft, num_slots=2, capacity=32, layout=layout, model_forward=model_forward)
    assert runner.forward_kind == model_forward
    rows = [[1, 2, 3, 4], [5, 6]]
    got = runner.forward(0, rows, [0, 0], last_only=True)
    with torch.inference_mode():
        want = [draft(torch.tensor([r])).logits[0, -1] for r in rows]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
