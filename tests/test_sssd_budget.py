"""SSSD's hardware-aware budget: knee from a profile, table non-increasing in batch size."""

from __future__ import annotations

import itertools
import json

import pytest

from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.policy.sssd import BUDGET_TABLE, SSSDBudget, knee_tokens, round_to_table

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128]


def roofline_profile(knee: float) -> HardwareProfile:
    """Flat until batch x tokens reaches `knee`, then linear in the tokens: a memory/compute roofline."""
    return HardwareProfile.from_model_fn(
        lambda b, n: 10.0 * max(1.0, b * n / knee), BATCHES, [1, 2, 4, 8, 16, 32, 64]
    )


def test_knee_recovered_from_a_roofline_profile():
    assert knee_tokens(roofline_profile(64)) == pytest.approx(64, rel=0.3)
    assert knee_tokens(roofline_profile(192)) == pytest.approx(192, rel=0.4)


def test_paper_example_table():
    budget = SSSDBudget(192, cap=32)
    assert budget.as_table(BATCHES) == {1: 32, 2: 32, 4: 32, 8: 24, 16: 12, 32: 6, 64: 3, 128: 1}
    assert budget.k(128) == 0 and budget.k(8) == 23 and budget.k(8, max_speculation=8) == 8
    assert budget.k(16) == 11


@pytest.mark.parametrize("knee", [3, 20, 64, 192, 1000])
def test_budget_non_increasing_in_batch_size(knee):
    budget = SSSDBudget.from_profile(roofline_profile(knee), cap=24)
    values = [budget.budget(b) for b in range(1, 300)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert set(values) <= set(BUDGET_TABLE) and max(values) <= 24 and min(values) >= 1


def test_profile_from_file_and_dict(tmp_path):
    data = roofline_profile(64).to_dict()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert knee_tokens(path) == knee_tokens(data) == knee_tokens(data["verify_ms"])


def test_bad_inputs():
    assert round_to_table(0.5) == 1 and round_to_table(5) == 4 and round_to_table(100) == 32
    for kwargs in ({"knee": 0}, {"knee": 10, "cap": 0}, {"knee": 10, "table": (2, 4)}):
        with pytest.raises(ValueError):
            SSSDBudget(**kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        SSSDBudget(10).budget(0)
    with pytest.raises(ValueError):
        knee_tokens({"verify_ms": {}})


def test_sssd_policy_from_registry_follows_the_budget_table():
    from nightjar_rl.policy import make_policy
    from nightjar_rl.policy.base import make_observation

    policy = make_policy({"type": "sssd", "knee": 16}, max_k=8)
    ks = [policy.predict(make_observation(8, batch_size=b)) for b in (1, 2, 4, 8, 16, 32, 64)]
    assert ks == sorted(ks, reverse=True) and ks[0] == 8 and ks[-1] == 0
    with pytest.raises(ValueError, match="exactly one"):
        make_policy({"type": "sssd"}, max_k=8)


def test_sssd_policy_artifact_round_trip(tmp_path):
    from nightjar_rl.policy import load_policy, make_policy, save_policy
    from nightjar_rl.policy.base import make_observation

    policy = make_policy({"type": "sssd", "knee": 12, "cap": 8}, max_k=6)
    save_policy(policy, tmp_path / "sssd.json")
    again = load_policy(tmp_path / "sssd.json")
    for b in (1, 3, 6, 12, 24):
        obs = make_observation(6, batch_size=b)
        assert again.predict(obs) == policy.predict(obs)
