import numpy as np
import pytest

from nightjar_rl.policy import DisableByBatchSize, FixedK, Hysteresis, NightjarBandit
from nightjar_rl.policy.base import make_observation

MAX_K = 4


def obs(batch: int) -> np.ndarray:
    return make_observation(MAX_K, batch_size=batch)


def run(policy, batches):
    return [policy.predict(obs(b)) for b in batches]


def test_no_thrash_around_a_threshold():
    inner = DisableByBatchSize(4, threshold=8, max_k=MAX_K)
    hovering = [7, 8, 7, 8, 9, 7, 8, 7]
    assert len(set(run(inner, hovering))) == 2  # the bare rule flips
    assert run(Hysteresis(inner, dwell=3), hovering) == [4] * len(hovering)


def test_changes_after_dwell_steps():
    wrapped = Hysteresis(DisableByBatchSize(4, threshold=8, max_k=MAX_K), dwell=3)
    assert run(wrapped, [1, 20, 20, 20, 20, 1, 1, 1]) == [4, 4, 4, 0, 0, 0, 0, 4]


def test_same_direction_streak_moves_to_latest_choice():
    class Sequence(FixedK):
        def __init__(self, ks):
            super().__init__(0, MAX_K)
            self.ks = iter(ks)

        def predict(self, obs, deterministic=True):
            return next(self.ks)

    wrapped = Hysteresis(Sequence([1, 3, 4, 3, 0, 3]), dwell=3)
    assert run(wrapped, [1] * 6) == [
        1,
        1,
        1,
        3,
        3,
        3,
    ]  # up, up, up -> latest (3); then down breaks nothing yet


def test_margin_ignores_small_changes():
    class Wobble(FixedK):
        def predict(self, obs, deterministic=True):
            return 3 if int(obs[0]) % 2 else 2

    wrapped = Hysteresis(Wobble(0, MAX_K), dwell=1, margin=1)
    assert run(wrapped, [1, 2, 3, 4]) == [3, 3, 3, 3]
    assert run(Hysteresis(Wobble(0, MAX_K), dwell=1), [1, 2, 3]) == [3, 2, 3]


def test_start_k_reset_and_forwarding():
    inner = NightjarBandit(MAX_K)
    wrapped = Hysteresis(inner, dwell=2, start_k=0)
    assert wrapped.learning
    wrapped.update(obs(1), 2, 5.0)
    assert inner.counts.sum() == 1
    wrapped.learning = False
    assert not inner.learning
    assert wrapped.predict(obs(1)) == 0  # held at start_k until the inner choice persists
    assert wrapped.predict(obs(1)) == 2
    wrapped.reset()
    assert wrapped.k == 0


def test_validation():
    with pytest.raises(ValueError, match="dwell"):
        Hysteresis(FixedK(1, MAX_K), dwell=0)
    with pytest.raises(ValueError, match="wraps a Policy"):
        Hysteresis("fixed-1")


def test_state_snapshot_includes_the_inner_learner():
    wrapped = Hysteresis(NightjarBandit(MAX_K), dwell=2)
    snapshot = wrapped.state()
    wrapped.update(obs(1), 3, 7.0)
    wrapped.predict(obs(1))
    wrapped.load_state(snapshot)
    assert wrapped.inner.counts.sum() == 0 and wrapped.k is None
