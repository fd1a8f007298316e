"""The exported neural policy (type mlp): numpy inference, safetensors weights, one-line load errors,
and loading without stable-baselines3."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nightjar_rl.contracts.observation import OBS_LAYOUT_VERSION, obs_layout, obs_size
from nightjar_rl.policy import MLPPolicy, load_policy, make_policy, save_policy

MAX_K = 4
ROOT = Path(__file__).resolve().parents[1]


def mlp(seed: int = 0, normalization: bool = True, output: str = "logits") -> MLPPolicy:
    rng = np.random.default_rng(seed)
    n = obs_size(MAX_K)
    tensors = {"layers.0.weight": rng.normal(size=(16, n)), "layers.0.bias": rng.normal(size=16),
               "layers.2.weight": rng.normal(size=(16, 16)), "layers.2.bias": rng.normal(size=16),
               "layers.4.weight": rng.normal(size=(MAX_K + 1, 16)), "layers.4.bias": rng.normal(size=MAX_K + 1)}
    norm = {"mean": rng.uniform(0, 3, n).tolist(), "var": rng.uniform(0.5, 4, n).tolist(), "clip": 3.0,
            "epsilon": 1e-8} if normalization else None
    return MLPPolicy(MAX_K, weights=tensors, layers=["linear", "tanh", "linear", "relu", "linear"], output=output,
                     normalization=norm, provenance={"algorithm": "PPO", "timesteps": 10})


def observations(n: int = 200, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 8, size=(n, obs_size(MAX_K))).astype(np.float32)


def reference(policy: MLPPolicy, obs: np.ndarray) -> np.ndarray:
    """The same network written out by hand, in float64 (agrees with float32 away from near-ties)."""
    p = policy.normalization
    x = np.clip((obs - np.array(p["mean"])) / np.sqrt(np.array(p["var"]) + p["epsilon"]), -p["clip"], p["clip"])
    t = {k: v.astype(np.float64) for k, v in policy.tensors.items()}
    h = np.tanh(x @ t["layers.0.weight"].T + t["layers.0.bias"])
    h = np.maximum(h @ t["layers.2.weight"].T + t["layers.2.bias"], 0)
    return h @ t["layers.4.weight"].T + t["layers.4.bias"]


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_policy(mlp(), tmp_path / "ppo.json")


def test_forward_matches_a_hand_written_network():
    policy, obs = mlp(), observations()
    np.testing.assert_allclose(policy.forward(obs), reference(policy, obs), rtol=1e-4, atol=1e-4)
    assert [policy.predict(o) for o in obs] == list(reference(policy, obs).argmax(axis=1))


def test_round_trip_writes_manifest_and_weights(saved):
    data = json.loads(saved.read_text())
    assert data["type"] == "mlp" and data["max_k"] == MAX_K
    params = data["params"]
    assert params["weights"] == "ppo.safetensors" and (saved.parent / "ppo.safetensors").is_file()
    assert len(params["weights_sha256"]) == 64
    assert params["observation"] == {"layout_version": OBS_LAYOUT_VERSION, "fields": obs_layout(MAX_K)}
    assert params["action_space"] == {"type": "discrete", "n": MAX_K + 1}
    assert params["provenance"]["algorithm"] == "PPO" and set(params["normalization"]) == {"mean", "var", "clip", "epsilon"}
    loaded = load_policy(saved)
    obs = observations()
    assert [loaded.predict(o) for o in obs] == [mlp().predict(o) for o in obs]
    assert loaded.name == "mlp(PPO)" and loaded.learning is False
    # the artifact moves with its folder, and loads by path from an experiment spec
    moved = saved.parent / "moved"
    moved.mkdir()
    for f in ("ppo.json", "ppo.safetensors"):
        (saved.parent / f).rename(moved / f)
    assert make_policy(str(moved / "ppo.json"), MAX_K).predict(obs[0]) == loaded.predict(obs[0])


def test_stochastic_predictions_sample_logits_but_q_values_stay_greedy():
    obs = observations(1)[0]
    logits = mlp()
    assert len({logits.predict(obs * 0, deterministic=False) for _ in range(200)}) > 1
    q = mlp(output="q_values")
    assert {q.predict(obs, deterministic=False) for _ in range(50)} == {q.predict(obs)}


def _edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data["params"])
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case, match", [
    ("missing weights", "weights file .* not found"),
    ("other weights", "does not match the manifest: sha256"),
    ("corrupt weights", "does not match the manifest"),
    ("layout version", "observation layout version 3 is not supported"),
    ("layout fields", "observation fields"),
    ("corrupt manifest", "not valid JSON"),
    ("truncated manifest", "not valid JSON"),
    ("wrong shape", "the network has 16 outputs, expected max_k"),
    ("weights outside", "weights must be a file inside the manifest.s folder"),
    ("absolute weights", "weights must be a file inside the manifest.s folder"),
    ("no sha256", "weights_sha256 .* is required"),
])
def test_broken_artifacts_give_one_clear_error(saved, case, match):
    weights = saved.with_suffix(".safetensors")
    if case == "missing weights":
        weights.unlink()
    elif case == "other weights":
        save_policy(mlp(seed=1), saved.parent / "other.json")
        (saved.parent / "other.safetensors").replace(weights)
    elif case == "corrupt weights":
        weights.write_bytes(weights.read_bytes()[:-7])
    elif case == "layout version":
        _edit(saved, lambda p: p["observation"].update(layout_version=3))
    elif case == "layout fields":
        _edit(saved, lambda p: p["observation"]["fields"].reverse())
    elif case == "corrupt manifest":
        saved.write_text(saved.read_text().replace('"params"', '"params" "'))
    elif case == "truncated manifest":
        saved.write_text(saved.read_text()[:200])
    elif case == "wrong shape":
        _edit(saved, lambda p: p.update(layers=["linear", "tanh", "linear"]))
    elif case == "weights outside":
        weights.replace(saved.parent.parent / weights.name)
        _edit(saved, lambda p: p.update(weights=f"../{weights.name}"))
    elif case == "absolute weights":
        _edit(saved, lambda p: p.update(weights=str(weights.resolve())))
    elif case == "no sha256":
        _edit(saved, lambda p: p.pop("weights_sha256"))
    with pytest.raises(ValueError, match=match) as info:
        load_policy(saved)
    assert "\n" not in str(info.value) and str(saved) in str(info.value)


def test_bad_constructor_fields():
    with pytest.raises(ValueError, match=f"do not fit an input of {obs_size(MAX_K + 1)}"):
        MLPPolicy(MAX_K + 1, weights=mlp().tensors, layers=mlp().layers)
    with pytest.raises(ValueError, match="unknown kind 'sigmoid'"):
        MLPPolicy(MAX_K, weights=mlp().tensors, layers=["linear", "sigmoid", "linear", "relu", "linear"])
    with pytest.raises(ValueError, match="action_space"):
        MLPPolicy(MAX_K, weights=mlp().tensors, layers=mlp().layers, action_space={"type": "box"})


def test_loading_does_not_import_stable_baselines3(saved):
    code = ("import sys; from nightjar_rl.policy import load_policy; "
            f"p = load_policy({str(saved)!r}); import numpy as np; p.predict(np.zeros({obs_size(MAX_K)}, np.float32)); "
            "assert 'stable_baselines3' not in sys.modules, 'stable_baselines3 was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_shipped_ppo_artifact_loads_without_sb3_and_picks_k_by_load():
    """policies/ppo-gpu-whatif-ngram.json (trained on the GPU what-if sim) loads with numpy alone,
    speculates at a small idle batch and turns speculation off at a full batch under load."""
    import sys
    from pathlib import Path

    from nightjar_rl.policy import load_policy
    from nightjar_rl.policy.export import typical_observation

    path = Path(__file__).resolve().parents[1] / "policies" / "ppo-gpu-whatif-ngram.json"
    before = "stable_baselines3" in sys.modules
    policy = load_policy(path)
    assert policy.max_k == 4 and ("stable_baselines3" in sys.modules) == before
    assert policy.predict(typical_observation(4, 2)) > 0
    assert policy.predict(typical_observation(4, 256, {"queue_len": 50, "arrival_rate": 240})) == 0
