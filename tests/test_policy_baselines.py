import numpy as np
import pytest

from nightjar_rl.contracts.observation import ObservationTracker
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.policy import BatchSizeTable, DisableByBatchSize, FixedK, HFHeuristic
from nightjar_rl.policy.base import make_observation
from nightjar_rl.policy.table import PRESETS, parse_table

MAX_K = 6


def obs(batch: int, **fields) -> np.ndarray:
    return make_observation(MAX_K, batch_size=batch, **fields)


def test_fixed_k():
    assert FixedK(0, MAX_K).predict(obs(1)) == 0
    assert FixedK(3, MAX_K).predict(obs(100)) == 3
    with pytest.raises(ValueError, match="k must be in"):
        FixedK(7, MAX_K)
    with pytest.raises(ValueError, match="k must be an integer"):
        FixedK(2.5, MAX_K)


def test_disable_by_batch_size():
    p = DisableByBatchSize(4, threshold=8, max_k=MAX_K)
    assert [p.predict(obs(b)) for b in (0, 1, 7, 8, 9, 64)] == [4, 4, 4, 0, 0, 0]
    with pytest.raises(ValueError, match="threshold"):
        DisableByBatchSize(4, threshold=0, max_k=MAX_K)


def test_table_presets():
    mlc = BatchSizeTable(preset="mlc_llm", max_k=MAX_K)
    assert [mlc.predict(obs(b)) for b in (1, 9, 10, 19, 20, 29, 30, 500)] == [4, 4, 3, 3, 2, 2, 0, 0]
    vllm = BatchSizeTable(preset="vllm_example", max_k=MAX_K)
    assert [vllm.predict(obs(b)) for b in (1, 16, 17, 128, 255, 256, 1000)] == [3, 3, 2, 2, 2, 0, 0]
    assert set(PRESETS) >= {"mlc_llm", "vllm_example"}


def test_table_clamps_to_max_k_and_accepts_triples():
    p = BatchSizeTable([[1, 4, 10], [5, None, 1]], max_k=MAX_K)
    assert p.predict(obs(2)) == MAX_K and p.predict(obs(5)) == 1
    assert p.table() == {"1-4": 10, "5+": 1}


@pytest.mark.parametrize(
    "table, match",
    [
        ({"2-5": 1, "6+": 0}, "uncovered"),
        ({"1-5": 1, "4+": 0}, "overlaps"),
        ({"1-5": 1}, "open range"),
        ({"1+": 1, "5+": 0}, "after an open-ended"),
        ({"1-x": 1}, "form"),
        ({"1+": -1}, "must be >= 0, got -1"),
        ({}, "empty"),
    ],
)
def test_table_errors(table, match):
    with pytest.raises(ValueError, match=match):
        parse_table(table)


def test_table_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        BatchSizeTable(max_k=MAX_K)
    with pytest.raises(ValueError, match="unknown table preset"):
        BatchSizeTable(preset="nope", max_k=MAX_K)


def stats(k: int, drafted: list[int], accepted: list[int]) -> StepStats:
    n = len(drafted)
    return StepStats(
        step=0,
        k=k,
        batch_size=n,
        num_waiting=0,
        num_prefilled=0,
        drafted=drafted,
        accepted=accepted,
        emitted=[a + 1 for a in accepted],
        wall_time=0.01,
    )


def test_hf_heuristic_with_observe_follows_transformers_rule():
    p = HFHeuristic(MAX_K, start_k=2)
    o = obs(1)
    assert p.predict(o) == 2
    p.observe(stats(2, [2], [2]))
    assert p.predict(o) == 4  # fully accepted: +2
    p.observe(stats(4, [4], [1]))
    assert p.predict(o) == 3  # partly: -1
    p.observe(stats(3, [3], [3]))
    assert p.predict(o) == 5
    p.observe(stats(5, [5], [5]))
    assert p.predict(o) == MAX_K  # capped
    for _ in range(10):
        p.observe(stats(p.k, [p.k], [0]))
        p.predict(o)
    assert p.k == 1  # never below 1
    p.observe(stats(1, [1, 1], [1, 0]))  # one row rejected: not fully accepted
    assert p.predict(o) == 1
    p.observe(stats(1, [1, 0], [1, 0]))  # the row that drafted accepted everything
    assert p.predict(o) == 3


def test_hf_heuristic_from_observations_only():
    tracker = ObservationTracker(MAX_K)
    p = HFHeuristic(MAX_K, start_k=2)
    assert p.predict(tracker.vector(1, 0)) == 2  # no speculative step yet: unchanged
    tracker.observe_step(stats(2, [2], [2]))
    assert p.predict(tracker.vector(1, 0)) == 4
    tracker.observe_step(stats(4, [4], [0]))
    assert p.predict(tracker.vector(1, 0)) == 3  # EMA accepted length fell below 0.95 * 4


def test_hf_heuristic_reset_and_max_k_zero():
    p = HFHeuristic(MAX_K, start_k=3)
    p.observe(stats(3, [3], [3]))
    p.predict(obs(1))
    p.reset()
    assert p.predict(obs(1)) == 3
    assert HFHeuristic(0).predict(obs(1)) == 0


def test_k_always_within_range_for_random_observations():
    rng = np.random.default_rng(0)
    policies = [
        FixedK(MAX_K, MAX_K),
        DisableByBatchSize(5, 3, MAX_K),
        BatchSizeTable(preset="mlc_llm", max_k=2),
        HFHeuristic(MAX_K, start_k=9),
    ]
    for _ in range(200):
        o = make_observation(
            MAX_K,
            hist=rng.dirichlet(np.ones(MAX_K + 1)),
            batch_size=rng.integers(0, 300),
            last_k=rng.integers(0, MAX_K + 1),
            ema_accepted_len=rng.uniform(0, MAX_K),
            ema_acceptance=rng.uniform(),
        )
        for p in policies:
            assert 0 <= p.predict(o, deterministic=bool(rng.integers(2))) <= p.max_k
