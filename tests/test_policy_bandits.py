import numpy as np
import pytest

from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.policy import NightjarBandit, ThompsonBandit, UCB1Bandit
from nightjar_rl.policy.base import make_observation
from nightjar_rl.policy.buckets import BatchBuckets

MAX_K = 6
# mean goodput (tokens/s) per arm: best k = 4 at batch 1, k = 0 at batch 32; very different scales
MEANS = {
    1: np.array([10.0, 14.0, 17.0, 19.0, 21.0, 19.5, 18.0]),
    32: np.array([300.0, 285.0, 260.0, 230.0, 200.0, 170.0, 150.0]),
}


def obs(batch: int, last_k: int = 3) -> np.ndarray:
    return make_observation(MAX_K, batch_size=batch, last_k=last_k)


def train(policy, steps: int = 3000, seed: int = 1, noise: float = 0.05):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = int(rng.choice([1, 32]))
        o = obs(batch)
        k = policy.predict(o, deterministic=False)
        assert 0 <= k <= MAX_K
        policy.update(o, k, MEANS[batch][k] * (1 + noise * rng.standard_normal()))
    return policy


@pytest.mark.parametrize("cls", [NightjarBandit, UCB1Bandit, ThompsonBandit])
def test_converges_to_best_arm_per_bucket(cls):
    policy = train(cls(MAX_K, switch_cost=0.0))
    assert policy.predict(obs(1)) == 4
    assert policy.predict(obs(32)) == 0
    b1 = policy.buckets.index(1)
    assert policy.counts[b1].argmax() == 4  # it also spent most pulls on the best arm


def test_buckets_default_and_custom():
    buckets = BatchBuckets()
    assert buckets.labels() == ["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65+"]
    assert [buckets.index(b) for b in (0, 1, 2, 3, 4, 5, 64, 65, 1000)] == [0, 0, 1, 2, 2, 3, 6, 7, 7]
    assert BatchBuckets([8]).labels() == ["1-8", "9+"]
    with pytest.raises(ValueError, match="strictly increasing"):
        BatchBuckets([4, 2])


def test_unseen_bucket_borrows_nearest_and_empty_uses_default():
    policy = NightjarBandit(MAX_K, default_k=2)
    assert policy.predict(obs(5)) == 2
    policy.update(obs(1), 5, 10.0)
    policy.update(obs(1), 1, 5.0)
    assert policy.predict(obs(4)) == 5  # nearest bucket with data is batch 1


def test_epsilon_decays_per_bucket():
    policy = NightjarBandit(MAX_K, epsilon=0.4, decay_steps=10)
    assert policy.epsilon_for(0) == pytest.approx(0.4)
    for _ in range(30):
        policy.update(obs(1), 0, 1.0)
    assert policy.epsilon_for(0) == pytest.approx(0.1)
    assert policy.epsilon_for(policy.buckets.index(32)) == pytest.approx(0.4)


def marginal_bandit(switch_cost: float) -> NightjarBandit:
    """k = 2 only 2% better than staying off at ~100 tokens/s."""
    policy = NightjarBandit(MAX_K, switch_cost=switch_cost)
    rng = np.random.default_rng(0)
    for _ in range(50):
        for k, mean in ((0, 100.0), (2, 102.0)):
            policy.update(obs(1), k, mean + rng.normal(0, 0.5))
    return policy


def test_switching_cost_keeps_speculation_off_when_gains_are_marginal():
    assert marginal_bandit(0.0).predict(obs(1, last_k=0)) == 2
    costly = marginal_bandit(0.05)  # 50 ms per switch, amortised over k tokens
    assert costly.predict(obs(1, last_k=0)) == 0  # off stays off
    assert costly.predict(obs(1, last_k=2)) == 2  # but when already on, stays on


def test_switch_cost_learned_from_catchup_time():
    policy = NightjarBandit(MAX_K, switch_cost=1.0)

    def step(k: int, catchup: float) -> StepStats:
        return StepStats(step=0, k=k, batch_size=1, num_waiting=0, num_prefilled=0, catchup_time=catchup)

    policy.observe(step(3, 0.5))  # no previous step: not a switch
    policy.observe(step(0, 0.0))
    policy.observe(step(3, 0.010))  # switch 0 -> 3
    assert policy.switch_estimate == pytest.approx(0.010)
    policy.observe(step(2, 0.9))  # not a switch
    policy.observe(step(0, 0.0))
    policy.observe(step(2, 0.020))
    assert policy.switch_estimate == pytest.approx(0.010 + 0.2 * 0.010)
    assert policy.switch_samples == 2


def test_frozen_learner_ignores_updates_and_bad_input_errors():
    policy = UCB1Bandit(MAX_K)
    policy.learning = False
    policy.update(obs(1), 3, 10.0)
    assert policy.counts.sum() == 0
    policy.learning = True
    with pytest.raises(ValueError, match="k must be in"):
        policy.update(obs(1), MAX_K + 1, 1.0)
    with pytest.raises(ValueError, match="reward"):
        policy.update(obs(1), 1, float("nan"))
    with pytest.raises(ValueError, match="epsilon"):
        NightjarBandit(MAX_K, epsilon=2.0)


def test_same_seed_same_choices():
    a = train(ThompsonBandit(MAX_K, seed=7), steps=200)
    b = train(ThompsonBandit(MAX_K, seed=7), steps=200)
    assert np.array_equal(a.counts, b.counts)


def test_greedy_table_exports_a_batch_size_table():
    from nightjar_rl.policy import BatchSizeTable

    policy = train(NightjarBandit(MAX_K, switch_cost=0.0))
    table = BatchSizeTable(policy.greedy_table(), max_k=MAX_K)
    assert table.k_for_batch(1) == 4 and table.k_for_batch(32) == 0
