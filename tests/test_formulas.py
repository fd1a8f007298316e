"""The Nightjar switching cost and the goodput oracle, pinned by hand-computed cases (not only by
their effect: a mutation such as C * k for C / k must fail here)."""

import math

import numpy as np
import pytest

from nightjar_rl.policy import GoodputOracle, HardwareProfile, expected_goodput, expected_tokens_per_row
from nightjar_rl.policy.bandits import NightjarBandit
from nightjar_rl.policy.base import make_observation

MAX_K = 4


def test_switching_cost_by_hand():
    """g -> 1 / (1/g + C/k): g = 100 tok/s, C = 0.02 s; k = 0 is never charged, untried arms stay nan."""
    bandit = NightjarBandit(MAX_K, switch_cost=0.02)
    out = bandit.penalise(np.array([50.0, 100.0, 100.0, 100.0, 100.0]))
    #        k=0 untouched; 1/(0.01 + 0.02/1), 1/(0.01 + 0.02/2), 1/(0.01 + 0.02/3), 1/(0.01 + 0.02/4)
    want = [50.0, 1 / 0.03, 50.0, 60.0, 1 / 0.015]
    assert out == pytest.approx(want, rel=1e-12)
    assert out[2] != pytest.approx(1 / (0.01 + 0.02 * 2))  # the C * k mutation gives 20
    mixed = bandit.penalise(np.array([50.0, math.nan, 0.0, 400.0, 100.0]))
    assert math.isnan(mixed[1]) and mixed[2] == 0.0  # nothing to charge
    assert mixed[3] == pytest.approx(1200 / 11)  # 1 / (0.0025 + 0.02/3) = 1 / (11/1200)


def test_switching_cost_off_and_learned_estimate():
    raw = np.array([50.0, 100.0, 100.0, 100.0, 100.0])
    assert list(NightjarBandit(MAX_K, switch_cost=0.0).penalise(raw)) == list(raw)
    bandit = NightjarBandit(MAX_K, switch_cost=0.02)
    bandit.switch_estimate = 0.1  # the learned C is what is charged
    assert bandit.penalise(raw)[2] == pytest.approx(1 / (0.01 + 0.05))


def test_switching_cost_flips_the_choice_only_after_k0():
    """Bucket b=0 (batch 1): arm 0 earned 60 tok/s, arm 2 earned 100. After k = 0, arm 2 is worth
    1/(0.01 + 0.02/2) = 50 < 60, so the bandit stays off; otherwise it speculates."""
    bandit = NightjarBandit(MAX_K, switch_cost=0.02)
    for k, reward in ((0, 60.0), (2, 100.0)):
        for _ in range(3):
            bandit.update(make_observation(MAX_K, batch_size=1, last_k=k), k, reward)
    assert bandit.greedy(0, last_k=2) == 2
    assert bandit.greedy(0, last_k=0) == 0
    values = bandit.values(0, last_k=0)
    assert values[2] == pytest.approx(bandit.normalise(0, 50.0))


def linear_profile() -> HardwareProfile:
    """Verify: 10 ms + 1 ms per extra position per row; n-gram lookup 0.5 ms per row when k > 0."""
    return HardwareProfile.from_model_fn(lambda b, n: 10.0 + b * (n - 1), [1, 2, 4, 8], range(1, MAX_K + 2),
                                         ngram_lookup_ms_per_row=0.5)


def seen(batch: int, acceptance: float) -> np.ndarray:
    hist = np.full(MAX_K + 1, 1.0 / (MAX_K + 1))
    return make_observation(MAX_K, hist=hist, batch_size=batch, ema_acceptance=acceptance, last_k=2)


def test_expected_tokens_by_hand():
    assert [expected_tokens_per_row(0.5, k) for k in range(5)] == pytest.approx([1.0, 1.5, 1.75, 1.875, 1.9375])
    assert expected_tokens_per_row(0.9, 3) == pytest.approx(1 + 0.9 + 0.81 + 0.729)


def test_goodput_oracle_by_hand():
    """Batch 1, a = 0.5: step ms 10, 11.5, 12.5, 13.5, 14.5 -> 100, 130.4, 140.0, 138.9, 133.6 tok/s: k = 2.
    Batch 8, a = 0.5: step ms 10, 22, 30, 38, 46 -> 800, 545.5, 466.7, 394.7, 337.0 tok/s: k = 0.
    Batch 1, a = 0.9: 100, 165.2, 216.8, 254.7, 282.4 tok/s: k = 4."""
    prof = linear_profile()
    assert [prof.step_time_ms(1, k) for k in range(5)] == pytest.approx([10.0, 11.5, 12.5, 13.5, 14.5])
    assert [prof.step_time_ms(8, k) for k in range(5)] == pytest.approx([10.0, 22.0, 30.0, 38.0, 46.0])
    assert [expected_goodput(prof, 1, k, 0.5) for k in range(5)] == pytest.approx(
        [100.0, 1500 / 11.5, 140.0, 1875 / 13.5, 1937.5 / 14.5])
    assert expected_goodput(prof, 8, 1, 0.5) == pytest.approx(8 * 1.5 / 0.022)
    oracle = GoodputOracle(prof, MAX_K)
    assert oracle.predict(seen(1, 0.5)) == 2
    assert oracle.predict(seen(8, 0.5)) == 0
    assert oracle.predict(seen(1, 0.9)) == 4
    assert oracle.goodputs(1, 0.9) == pytest.approx([100.0, 1900 / 11.5, 2710 / 12.5, 3439 / 13.5, 4095.1 / 14.5])
