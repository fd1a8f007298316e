"""The simulated env: Gymnasium contract, seeded determinism, no model loaded, scenario checks, CLI."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import nightjar_rl  # noqa: F401  (registers the ids)
from nightjar_rl.cli import main
from nightjar_rl.env.scenario import ScenarioError, load_scenario
from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
from nightjar_rl.sim.trace import Trace

SIM_SCENARIOS = ["tiny-sim", "smollm2-ngram-sim", "gpu-whatif-ngram", "gpu-whatif-draft", "gpu-h100-measured-ngram"]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model fails the test."""
    import nightjar_rl.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("the simulator must not load a model")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "tiny_random_model", refuse)


def test_default_sim_id_needs_nothing_else(no_model_loading):
    env = gym.make("nightjar_rl/SpecDecodeSim-v1")
    assert env.unwrapped.scenario.name == "smollm2-ngram-sim" and env.unwrapped.backend.needs_model is False
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    obs, reward, *_ = env.step(2)  # prefill only: decode_throughput is 0
    assert env.observation_space.contains(obs) and reward == 0.0
    obs, reward, *_ = env.step(2)  # a decoding step
    assert env.observation_space.contains(obs) and reward > 0


@pytest.mark.parametrize("name", SIM_SCENARIOS)
def test_every_sim_scenario_passes_check_env(name, no_model_loading):
    env = gym.make("nightjar_rl/SpecDecodeSim-v1", scenario=name)
    check_env(env.unwrapped)


def episode(env, seed: int, actions_seed: int = 0):
    rng = np.random.default_rng(actions_seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(0, env.action_space.n)))
        out += [obs, np.float64(reward), np.float64(info["clock"])]
        done = terminated or truncated
    return out


def test_same_seed_same_episode_bit_for_bit():
    a = gym.make("nightjar_rl/SpecDecodeSim-v1", scenario="tiny-sim").unwrapped
    b = gym.make("nightjar_rl/SpecDecodeSim-v1", scenario="tiny-sim").unwrapped
    first, second = episode(a, seed=7), episode(b, seed=7)
    assert len(first) == len(second) and all(np.array_equal(x, y) for x, y in zip(first, second))
    other = episode(a, seed=8)
    assert len(other) != len(first) or not all(np.array_equal(x, y) for x, y in zip(first, other))


def test_sim_outputs_are_the_traced_greedy_outputs():
    env = SpecDecodeEnv("tiny-sim")
    trace = env.backend.trace
    for k in (0, env.max_k):
        env.reset(seed=3)
        done = False
        while not done:
            *_, terminated, truncated, _ = env.step(k)
            done = terminated or truncated
        for req in env.requests:
            rec = trace.lookup(req.prompt_ids)
            assert env.result().outputs[req.request_id] == rec.output_ids[: req.max_new_tokens].tolist()


def test_sim_scenario_checks(tmp_path):
    base = load_scenario("tiny-sim").to_dict()
    with pytest.raises(ScenarioError, match="'trace' is required"):
        load_scenario({**base, "trace": None})
    with pytest.raises(ScenarioError, match="'backend' must be one of"):
        load_scenario({**base, "backend": "gpu"})
    with pytest.raises(ScenarioError, match="synthetic_acceptance"):
        load_scenario({**load_scenario("tiny").to_dict(), "synthetic_acceptance": {"rates": [0.5]}})
    with pytest.raises(ScenarioError, match="non-increasing"):
        load_scenario({**base, "synthetic_acceptance": {"rates": [0.2, 0.9]}})
    envs = tiny_sim_paths()
    with pytest.raises(ValueError, match="exceeds the trace's max_k"):
        SpecDecodeEnv({**base, **envs, "max_speculation": 9})
    with pytest.raises(ValueError, match="recorded for 'ngram'"):
        SpecDecodeEnv({**base, **envs, "drafter": "sssd"})
    with pytest.raises(ValueError, match="not found"):
        SpecDecodeEnv({**base, **envs, "trace": str(tmp_path / "nope.npz")})


def tiny_sim_paths() -> dict:
    from pathlib import Path

    envs = Path(__file__).resolve().parents[1] / "envs"
    return {"trace": str(envs / "traces" / "tiny-ngram.npz"), "profile": str(envs / "profiles" / "tiny-random-cpu.json")}


def test_cli_records_a_trace_and_writes_roofline_profiles(tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert main(["trace", "record", "--scenario", "tiny", "--max-k", "3", "--max-new-tokens", "5", "--out", str(out),
                 "--quiet"]) == 0
    trace = Trace.load(out)
    assert trace.max_k == 3 and trace.drafter == "ngram" and len(trace.records) == 70
    prof = tmp_path / "p.json"
    assert main(["profile", "--roofline", "--gpu", "a100", "--model", "llama-3-8b", "--draft", "llama-3.2-1b",
                 "--out", str(prof)]) == 0
    from nightjar_rl.hardware import HardwareProfile

    assert HardwareProfile.load(prof).has_draft_model
    capsys.readouterr()
    assert main(["profile", "--roofline", "--gpu", "tpu", "--model", "llama-3-8b", "--out", str(prof)]) == 2
    assert main(["trace", "record", "--scenario", "tiny-sim", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("nightjar-rl: error:") for line in err)


def test_generate_on_the_sim_twin_returns_the_live_engines_outputs(tmp_path):
    import json

    outs = {}
    for name in ("tiny", "tiny-sim"):
        path = tmp_path / f"{name}.jsonl"
        assert main(["generate", "--scenario", name, "--k", "3", "--out", str(path), "--quiet"]) == 0
        outs[name] = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(outs["tiny"]) == 70
    assert [(r["id"], r["token_ids"]) for r in outs["tiny"]] == [(r["id"], r["token_ids"]) for r in outs["tiny-sim"]]
    assert main(["bench", "--scenario", "tiny-sim", "--k", "9", "--quiet"]) == 2  # beyond the scenario's max_k


def test_a_scenario_takes_num_requests_and_max_new_tokens_as_given(tmp_path, capsys):
    """`--num-requests 0` was read as "not given" (the whole pool served) and `--max-new-tokens` was
    silently the scenario's: now 0 is refused, and a token budget within the scenario's trace is served."""
    import json

    out = ["--out", str(tmp_path / "never.jsonl"), "--quiet"]
    assert main(["generate", "--scenario", "tiny-sim", "--num-requests", "0", *out]) == 2
    assert main(["generate", "--scenario", "tiny-sim", "--max-new-tokens", "0", *out]) == 2
    err = capsys.readouterr().err
    assert "--num-requests must be >= 1, got 0" in err and "--max-new-tokens must be >= 1, got 0" in err
    lengths = {}
    for budget in (None, "3"):
        path = tmp_path / f"{budget}.jsonl"
        extra = ["--max-new-tokens", budget] if budget else []
        assert main(["generate", "--scenario", "tiny-sim", "--num-requests", "5", "--out", str(path), "--quiet", *extra]) == 0
        lengths[budget] = [len(json.loads(line)["token_ids"]) for line in path.read_text().splitlines()]
    assert len(lengths["3"]) == 5 and max(lengths["3"]) == 3 and max(lengths[None]) > 3
    assert main(["generate", "--scenario", "tiny-sim", "--max-new-tokens", "40", *out]) == 2  # past the trace (12)
    assert "exceeds the trace's" in capsys.readouterr().err


def test_the_sim_env_runs_without_torch_or_pandas():
    """Making, resetting and stepping a sim env (and importing the CLI) loads neither torch (nor
    transformers) nor pandas: a sim-only run starts in a fraction of a second, and the garbage
    collector walks a small heap (what the sim's steps/s depends on, `experiments/bench_sim_speed.py`).
    Each is blocked in a fresh interpreter, so an import of it anywhere on the path fails loudly."""
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'pandas'):\n"
        "    sys.modules[name] = None  # `import name` now raises ImportError\n"
        "import gymnasium as gym\n"
        "import nightjar_rl\n"
        "import nightjar_rl.cli  # the command's parser and its sim commands need none of them either\n"
        "env = gym.make('nightjar_rl/SpecDecodeSim-v1', scenario='gpu-whatif-sharegpt').unwrapped\n"
        "env.reset(seed=0)\n"
        "for i in range(50):\n"
        "    env.step(i % (env.max_k + 1))\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
