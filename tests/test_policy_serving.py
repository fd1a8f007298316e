"""Policies driving the real engine through `serve` (tiny random models): lossless, in range, learning."""

from __future__ import annotations

import random

import pytest

from nightjar_rl.decoding import DraftModelDrafter, Request, SpeculativeEngine
from nightjar_rl.env.rewards import DecodeThroughputReward
from nightjar_rl.experiments.evaluate import PolicyController
from nightjar_rl.models import early_exit_draft
from nightjar_rl.policy import make_policy
from nightjar_rl.serving.loop import serve

from .conftest import greedy_reference

MAX_K = 4


def requests(n: int = 4) -> list[Request]:
    rng = random.Random(0)
    return [
        Request(
            f"r{i}",
            [rng.randrange(96) for _ in range(rng.randrange(3, 12))],
            rng.randrange(6, 14),
            arrival_time=0.001 * i,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "spec", ["nightjar", "hf_heuristic", {"type": "hysteresis", "policy": "ucb1", "dwell": 2}]
)
def test_policy_driven_serving_is_lossless_and_learns(tiny_target, spec):
    engine = SpeculativeEngine(
        tiny_target,
        DraftModelDrafter(early_exit_draft(tiny_target, 2)),
        max_batch_size=4,
        max_seq_len=64,
        max_speculation=MAX_K,
    )
    policy = make_policy(spec, MAX_K)
    controller = PolicyController(engine, policy, MAX_K, learn=True, reward=DecodeThroughputReward())
    reqs = requests()
    result = serve(engine, reqs, k=controller, progress=False)
    for req in reqs:
        assert result.outputs[req.request_id] == greedy_reference(
            tiny_target, req.prompt_ids, req.max_new_tokens
        )
    assert all(0 <= s.k <= MAX_K for s in result.steps)
    inner = getattr(policy, "inner", policy)
    if hasattr(inner, "counts"):  # one update per reported step that decoded (serve never reports the last)
        assert inner.counts.sum() == sum(1 for s in result.steps[:-1] if s.batch_size > 0)
        assert len({s.k for s in result.steps}) > 1  # it explored
