import json

import numpy as np
import pytest

from nightjar_rl.contracts.observation import obs_size
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.policy import POLICY_TYPES, load_policy, make_policy, save_policy
from nightjar_rl.policy.base import make_observation

MAX_K = 5


def profile_dict() -> dict:
    return HardwareProfile.from_model_fn(
        lambda b, n: max(30.0, b * n), [1, 8, 64], [1, 3, 6], draft_fn=lambda b: 1.0
    ).to_dict()


SPECS = {
    "fixed": {"type": "fixed", "k": 3},
    "disable_by_batch_size": {"type": "disable_by_batch_size", "k": 4, "threshold": 8},
    "table": {"type": "table", "table": {"1-3": 5, "4-10": 2, "11+": 0}},
    "hf_heuristic": {"type": "hf_heuristic", "start_k": 2},
    "oracle": {"type": "oracle", "profile": profile_dict(), "prior_acceptance": 0.6},
    "nightjar": {"type": "nightjar", "epsilon": 0.3, "seed": 3},
    "ucb1": {"type": "ucb1", "c": 0.5, "buckets": [2, 16]},
    "thompson": {"type": "thompson", "prior_strength": 2.0},
    "hysteresis": {"type": "hysteresis", "policy": {"type": "nightjar"}, "dwell": 2},
    "sssd": {"type": "sssd", "knee": 12, "cap": 8},
    # per-row policies: on plain vectors (no per-row features) they decide a uniform k (tests/test_per_row.py
    # round-trips them on observations that carry rows)
    "adaptive_budget": {"type": "adaptive_budget", "profile": profile_dict(), "prior_acceptance": 0.6},
    "per_request_k": {"type": "per_request_k", "dwell": 3, "off_above": 40},
    "per_row_bandit": {"type": "per_row_bandit", "bandit": {"epsilon": 0.3, "seed": 3}},
    "mlp": {"type": "mlp", "layers": ["linear", "tanh", "linear"], "weights": {  # arrays: written on save
        "layers.0.weight": np.random.default_rng(0).normal(size=(8, obs_size(MAX_K))), "layers.0.bias": np.zeros(8),
        "layers.2.weight": np.random.default_rng(1).normal(size=(MAX_K + 1, 8)), "layers.2.bias": np.ones(MAX_K + 1)}},
    # learned per-row: an mlp with len(levels) outputs and its rule (on plain vectors: a uniform k)
    "learned_budget": {"type": "learned_budget", "profile": profile_dict(), "levels": [0, 1, 2], "layers": ["linear"],
                       "weights": {"layers.0.weight": np.random.default_rng(2).normal(size=(3, obs_size(MAX_K))),
                                   "layers.0.bias": np.zeros(3)}},
    "learned_row_scorer": {"type": "learned_row_scorer", "profile": profile_dict(), "levels": [0.9, 0.5, 0.1],
                           "layers": ["linear"],
                           "weights": {"layers.0.weight": np.random.default_rng(3).normal(size=(3, obs_size(MAX_K))),
                                       "layers.0.bias": np.zeros(3)}},
}


def observations(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        make_observation(
            MAX_K,
            hist=rng.dirichlet(np.ones(MAX_K + 1)),
            batch_size=rng.integers(0, 80),
            last_k=rng.integers(0, MAX_K + 1),
            ema_acceptance=rng.uniform(),
            ema_accepted_len=rng.uniform(0, MAX_K),
        )
        for _ in range(n)
    ]


def exercise(policy) -> None:
    """Give learners some state to save."""
    rng = np.random.default_rng(1)
    for o in observations(300, seed=2):
        k = policy.predict(o, deterministic=False)
        policy.update(o, k, float(o[0] + 1) * (1 + k * rng.uniform()))


def test_every_registered_type_has_a_spec():
    assert set(SPECS) == set(POLICY_TYPES)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_roundtrip_preserves_deterministic_predictions(name, tmp_path):
    policy = make_policy(SPECS[name], MAX_K)
    exercise(policy)
    path = save_policy(policy, tmp_path / "policies" / f"{name}.json")
    data = json.loads(path.read_text())
    assert data["format"] == "nightjar-rl/policy" and data["version"] == 1 and data["type"] == name
    assert data["max_k"] == MAX_K
    loaded = load_policy(path)
    assert type(loaded) is type(policy)
    assert loaded.params() == policy.params()
    obs = observations(100, seed=5)
    assert [loaded.predict(o) for o in obs] == [policy.predict(o) for o in obs]
    assert not list(tmp_path.glob("policies/.*"))  # no temp files left behind


def test_bandit_state_and_rng_survive(tmp_path):
    policy = make_policy("nightjar", MAX_K)
    exercise(policy)
    loaded = load_policy(save_policy(policy, tmp_path / "p.json"))
    assert np.array_equal(loaded.counts, policy.counts) and np.allclose(loaded.sums, policy.sums)
    o = observations(1)[0]
    assert [loaded.predict(o, deterministic=False) for _ in range(20)] == [
        policy.predict(o, deterministic=False) for _ in range(20)
    ]


def write(tmp_path, data) -> str:
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def good(**changes) -> dict:
    data = {
        "format": "nightjar-rl/policy",
        "version": 1,
        "type": "fixed",
        "max_k": 4,
        "params": {"k": 2},
        "state": {},
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "data, match",
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "JSON object"),
        (good(format="other"), "format"),
        (good(version=2), "version 2"),
        (good(type="magic"), "unknown policy type 'magic'"),
        (good(params={"k": 2, "speed": 1}), "no field 'speed'"),
        (good(params={"k": 9}), "k must be in"),
        ({k: v for k, v in good().items() if k != "max_k"}, "missing field 'max_k'"),
        (good(state={"x": 1}), "has no state"),
        (good(type="nightjar", params={}, state={"counts": [[1]]}), "shape"),
    ],
)
def test_malformed_artifacts(tmp_path, data, match):
    with pytest.raises(ValueError, match=match):
        load_policy(write(tmp_path, data))


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_policy(tmp_path / "none.json")
