"""The engine on CUDA (skipped on machines without a GPU)."""

import random

import pytest
import torch

from nightjar_rl.decoding import DraftModelDrafter, NgramDrafter, Request, SpeculativeEngine
from nightjar_rl.models import early_exit_draft, tiny_random_model

from .conftest import greedy_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("drafter", ["none", "ngram", "self", "early-exit"])
def test_cuda_greedy_equals_plain_decoding(drafter):
    target = tiny_random_model(seed=0, device="cuda")
    make = {
        "none": lambda: None,
        "ngram": NgramDrafter,
        "self": lambda: DraftModelDrafter(target),
        "early-exit": lambda: DraftModelDrafter(early_exit_draft(target, 2)),
    }[drafter]
    engine = SpeculativeEngine(target, make(), max_batch_size=3, max_seq_len=128, max_speculation=6)
    rng = random.Random(0)
    requests = [Request(f"r{i}", [rng.randrange(96) for _ in range(rng.randrange(2, 30))], rng.randrange(1, 25))
                for i in range(7)]
    for r in requests:
        engine.submit(r)
    outputs, ks, step = {}, [0, 3, 6, 1, 0, 4], 0
    while engine.has_work:
        stats = engine.step(ks[step % len(ks)])
        step += 1
        assert stats.wall_time >= stats.model_time >= 0
        for seq in engine.pop_finished():
            outputs[seq.request_id] = seq.output_ids
    assert outputs == {r.request_id: greedy_reference(target, r.prompt_ids, r.max_new_tokens) for r in requests}
