import numpy as np
import pytest

from nightjar_rl.policy import GoodputOracle, HardwareProfile, expected_goodput, expected_tokens_per_row
from nightjar_rl.policy.base import make_observation

MAX_K = 6


def roofline_profile() -> HardwareProfile:
    """Memory-bound at small batch (flat), compute-bound at large batch (grows with batch x tokens)."""
    return HardwareProfile.from_model_fn(
        lambda b, n: max(40.0, 0.9 * b * n),
        [1, 2, 4, 8, 16, 32, 64],
        range(1, MAX_K + 2),
        draft_fn=lambda b: 2.0 + 0.05 * b,
    )


def seen(batch: int, acceptance: float) -> np.ndarray:
    hist = np.full(MAX_K + 1, 1.0 / (MAX_K + 1))
    return make_observation(MAX_K, hist=hist, batch_size=batch, ema_acceptance=acceptance, last_k=2)


def test_expected_tokens_per_row():
    assert expected_tokens_per_row(0.0, 4) == 1.0
    assert expected_tokens_per_row(1.0, 4) == 5.0
    assert expected_tokens_per_row(0.5, 2) == pytest.approx(1.75)


def test_larger_k_for_higher_acceptance():
    oracle = GoodputOracle(roofline_profile(), MAX_K)
    ks = [oracle.predict(seen(1, a)) for a in (0.1, 0.5, 0.8, 0.95)]
    assert ks == sorted(ks) and ks[0] < ks[-1]


def test_smaller_k_for_larger_batch():
    oracle = GoodputOracle(roofline_profile(), MAX_K)
    ks = [oracle.predict(seen(b, 0.8)) for b in (1, 8, 16, 32, 64)]
    assert ks == sorted(ks, reverse=True)
    assert ks[0] > 0 and ks[-1] == 0


def test_prediction_is_the_argmax_of_predicted_goodput():
    prof = roofline_profile()
    oracle = GoodputOracle(prof, MAX_K)
    for b in (1, 3, 12, 40):
        want = int(np.argmax([expected_goodput(prof, b, k, 0.7) for k in range(MAX_K + 1)]))
        assert oracle.predict(seen(b, 0.7)) == want


def test_prior_before_any_acceptance_is_seen():
    prof = roofline_profile()
    fresh = make_observation(MAX_K, batch_size=1)  # acceptance 0, empty histogram: nothing seen yet
    assert GoodputOracle(prof, MAX_K, prior_acceptance=0.9).predict(fresh) == GoodputOracle(
        prof, MAX_K
    ).predict(seen(1, 0.9))
    assert GoodputOracle(prof, MAX_K, prior_acceptance=0.0).predict(fresh) == 0


def test_oracle_accepts_dict_and_path(tmp_path):
    prof = roofline_profile()
    path = tmp_path / "prof.json"
    path.write_text(__import__("json").dumps(prof.to_dict()))
    for source in (prof.to_dict(), str(path)):
        assert GoodputOracle(source, MAX_K).predict(seen(1, 0.8)) == GoodputOracle(prof, MAX_K).predict(
            seen(1, 0.8)
        )
    with pytest.raises(ValueError, match="profile must be"):
        GoodputOracle(3, MAX_K)
