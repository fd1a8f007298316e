"""Policies driving the real engine through the PolicyDriver (tiny random models): lossless, in range, learning."""

from __future__ import annotations

import random

import pytest

from nightjar_rl.contracts.rewards import DecodeThroughputReward
from nightjar_rl.decoding import DraftModelDrafter, Request, SpeculativeEngine
from nightjar_rl.models import early_exit_draft
from nightjar_rl.policy import make_policy
from nightjar_rl.runtime import PolicyDriver
from nightjar_rl.serving import ServingSession

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
    reqs = requests()
    driver = PolicyDriver(ServingSession(engine, reqs), MAX_K, policy, reward=DecodeThroughputReward(), learn=True)
    result = driver.run()
    for req in reqs:
        assert result.outputs[req.request_id] == greedy_reference(
            tiny_target, req.prompt_ids, req.max_new_tokens
        )
    assert all(0 <= s.k <= MAX_K for s in result.steps)
    inner = getattr(policy, "inner", policy)
    if hasattr(inner, "counts"):  # one update per step that decoded (prefill-only steps do not depend on k)
        assert inner.counts.sum() == sum(1 for s in result.steps if s.batch_size > 0)
        assert len({s.k for s in result.steps}) > 1  # it explored
