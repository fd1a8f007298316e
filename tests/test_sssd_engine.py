"""SSSD in the engine: tree verification stays token-identical to plain greedy decoding."""

from __future__ import annotations

import numpy as np
import pytest

from nightjar_rl.decoding.datastore import Datastore
from nightjar_rl.decoding.drafters.sssd import SSSDDrafter
from nightjar_rl.decoding.engine import SpeculativeEngine
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.decoding.verify import SamplingParams
from nightjar_rl.runtime import serve
from tests.conftest import greedy_reference


def _plain(model, requests: list[Request], eos=()) -> dict[str, list[int]]:
    """Plain decoding (k = 0) with the same engine: the reference (itself checked against a no-cache
    greedy decoder in test_engine.py)."""
    engine = SpeculativeEngine(model, None, max_batch_size=8, max_seq_len=96, max_speculation=0, eos_token_ids=eos)
    return serve(engine, requests, k=0, progress=False).outputs


class _ScheduledK:
    """A policy that plays a fixed list of k values (then 3)."""

    def __init__(self, ks: list[int]):
        self.ks = list(ks)

    def reset(self) -> None: ...

    def observe(self, stats) -> None: ...

    def predict(self, obs, deterministic: bool = True) -> int:
        return self.ks.pop() if self.ks else 3


def _requests(rng: np.random.Generator, n: int, max_new: int) -> list[Request]:
    return [
        Request(f"r{i}", rng.integers(0, 96, size=int(rng.integers(2, 24))).tolist(), int(rng.integers(1, max_new)))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def self_datastore(tiny_target):
    """A datastore of the tiny model's own greedy outputs, so datastore drafts do get accepted."""
    rng = np.random.default_rng(123)
    docs = list(_plain(tiny_target, [Request(f"d{i}", rng.integers(0, 96, size=6).tolist(), 30) for i in range(3)]).values())
    return Datastore.build(docs, vocab_size=96, fingerprint="tiny")


def test_one_row_matches_no_cache_greedy(tiny_target):
    prompt = [7, 1, 7, 1, 9, 30, 7, 1]
    engine = SpeculativeEngine(tiny_target, SSSDDrafter(), max_batch_size=1, max_seq_len=64, max_speculation=8)
    out = serve(engine, [Request("a", prompt, 24)], k=8, progress=False).outputs["a"]
    assert out == greedy_reference(tiny_target, prompt, 24)


@pytest.mark.parametrize("seed", range(4))
def test_tree_verification_matches_plain_greedy(tiny_target, self_datastore, seed):
    rng = np.random.default_rng(seed)
    requests = _requests(rng, 4, 32)
    expected = _plain(tiny_target, requests)
    drafter = SSSDDrafter(self_datastore if seed % 2 else None, max_matches=int(rng.integers(1, 9)))
    engine = SpeculativeEngine(tiny_target, drafter, max_batch_size=int(rng.integers(1, 5)), max_seq_len=96,
                               max_speculation=12)
    ks = rng.integers(0, 13, size=200).tolist()
    result = serve(engine, requests, k=_ScheduledK(ks), progress=False)
    assert result.outputs == expected
    drafted = sum(sum(s.drafted) for s in result.steps)
    accepted = sum(sum(s.accepted) for s in result.steps)
    assert drafted > 0 and accepted > 0  # the trees were really exercised


def test_branching_trees_with_kv_repair_and_live_datastore(tiny_target, self_datastore):
    """Many branches per row (max_matches high, long budget), EOS and a live datastore."""
    rng = np.random.default_rng(7)
    requests = _requests(rng, 4, 40)
    expected = _plain(tiny_target, requests, eos=[5])
    store = Datastore(self_datastore.tokens, self_datastore.sa, self_datastore.header)
    engine = SpeculativeEngine(tiny_target, SSSDDrafter(store, max_matches=16, recency=1.0, live=True),
                               max_batch_size=3, max_seq_len=96, max_speculation=16, eos_token_ids=[5])
    result = serve(engine, requests, k=16, progress=False)
    assert result.outputs == expected
    assert max(max(s.drafted, default=0) for s in result.steps) > 1
    assert len(store.live_docs) == len(requests)


def test_sampling_falls_back_to_a_single_path(tiny_target):
    engine = SpeculativeEngine(tiny_target, SSSDDrafter(), max_batch_size=2, max_seq_len=64, max_speculation=4,
                               sampling=SamplingParams(temperature=0.8), seed=3)
    rng = np.random.default_rng(1)
    result = serve(engine, _requests(rng, 3, 20), k=4, progress=False)
    assert all(len(v) >= 1 for v in result.outputs.values())
    assert all("tree" not in s.extra for s in result.steps)


@pytest.mark.real_model
def test_real_model_tree_verification_is_lossless():
    import tempfile
    from importlib import resources
    from pathlib import Path

    from nightjar_rl.decoding.datastore_cli import build_datastore
    from nightjar_rl.models import load_model
    from nightjar_rl.serving.workload import load_prompts
    from nightjar_rl.text import encode_prompt

    target = load_model("smollm2-135m")
    vocab = target.model.config.vocab_size
    prompts = [encode_prompt(target.tokenizer, p.prompt, vocab) for p in load_prompts(families=["code", "grounded"])[:2]]
    corpus = Path(str(resources.files("nightjar_rl") / "data" / "corpus.jsonl"))
    with tempfile.TemporaryDirectory() as tmp:
        store = build_datastore(corpus, "smollm2-135m", Path(tmp) / "ds.npz")
    requests = [Request(f"p{i}", p, 24) for i, p in enumerate(prompts)]
    plain = serve(SpeculativeEngine(target.model, None, max_batch_size=2, max_seq_len=1024,
                                    eos_token_ids=target.eos_token_ids), requests, k=0, progress=False)
    engine = SpeculativeEngine(target.model, SSSDDrafter(store), max_batch_size=2, max_seq_len=1024,
                               max_speculation=8, eos_token_ids=target.eos_token_ids)
    tree = serve(engine, requests, k=8, progress=False)
    assert tree.outputs == plain.outputs
