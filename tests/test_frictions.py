"""Frictions a new user hit (issue 21): plain SB3's make_vec_env on every registered id, one torch
thread per sim-training process, the transformers cache argument, run folders under the working
directory."""

import inspect
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from nightjar_rl.analysis import notebook
from nightjar_rl.decoding.runner import ModelRunner
from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
from nightjar_rl.registration import ENV_IDS, SIM_IDS

sb3 = pytest.importorskip("stable_baselines3")

from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

from nightjar_rl.env.scenario import load_scenario  # noqa: E402
from nightjar_rl.experiments import sb3_train  # noqa: E402
from nightjar_rl.experiments.sb3_config import parse_sb3_spec  # noqa: E402
from nightjar_rl.models import tiny_random_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_make_vec_env_on_every_registered_id(env_id):
    """SB3 asks for render_mode='rgb_array'; the env declares none and make_vec_env falls back."""
    kwargs = {} if env_id in SIM_IDS or ENV_IDS[env_id][0] == "tiny" else {"scenario": "tiny"}  # live SmolLM2: tiny
    venv = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs=kwargs)
    try:
        obs = venv.reset()
        assert obs.shape == (2, *venv.observation_space.shape)
        obs, rewards, dones, _ = venv.step(np.array([0, 1]))
        assert np.isfinite(rewards).all()
    finally:
        venv.close()


def test_env_has_no_render_modes():
    assert SpecDecodeEnv.metadata["render_modes"] == []
    with pytest.raises(TypeError, match="renders nothing"):
        SpecDecodeEnv("tiny-sim", render_mode="human")


class ThreadProbe(BaseCallback):
    def __init__(self):
        super().__init__()
        self.threads: set[int] = set()

    def _on_step(self) -> bool:
        self.threads.add(torch.get_num_threads())
        return True


def test_sim_training_runs_on_one_torch_thread(tmp_path):
    spec = parse_sb3_spec({"type": "sb3", "algo": "A2C", "total_timesteps": 32, "n_envs": 1, "n_steps": 8,
                           "train_on": "sim", "eval": {"every": 0}, "checkpoint_every": 32,
                           "policy_kwargs": {"net_arch": [8]}})
    before = torch.get_num_threads()
    probe = ThreadProbe()
    sb3_train.train_sb3(spec, load_scenario("tiny-sim"), tmp_path, "a2c", progress=False, callbacks=[probe])
    assert probe.threads == {1}
    assert torch.get_num_threads() == before  # restored afterwards


def test_subprocess_envs_get_the_trainers_thread_count(monkeypatch):
    """Each SubprocVecEnv worker sets the trainer's torch threads (1 on the sim) before building its env."""
    made = {}
    monkeypatch.setattr(sb3_train, "SubprocVecEnv", lambda fns, start_method: made.setdefault("fns", fns))
    spec = parse_sb3_spec({"type": "sb3", "algo": "A2C", "total_timesteps": 32, "n_envs": 2, "vec_env": "subproc",
                           "train_on": "sim"})
    with sb3_train.torch_threads(1):
        sb3_train.make_vec_env(spec, load_scenario("tiny-sim"), None, [5.0], 4)
    assert [fn.keywords["threads"] for fn in made["fns"]] == [1, 1]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, before))
        made["fns"][0]()  # what the worker process runs
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_model_runner_uses_the_current_cache_argument():
    """transformers 5.x: `cache=`, not the deprecated `past_key_values=` (which logs a warning every step)."""
    runner = ModelRunner(tiny_random_model(seed=0), num_slots=2, capacity=32, layout="padded",
                         model_forward="transformers")
    seen = []
    decoder = runner._decoder

    def spy(**kwargs):
        seen.append(set(kwargs))
        return decoder(**kwargs)

    runner._decoder = spy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits = runner.forward(0, [[1, 2, 3], [4, 5]], [0, 0])
    assert logits.shape[:2] == (2, 3)
    # the argument the installed transformers names (`cache` from the version that deprecates
    # `past_key_values`; earlier 5.x, e.g. 5.19 under vLLM's pin, has only `past_key_values`)
    expected = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    assert runner._cache_arg == expected
    assert seen and all(expected in s and ({"cache", "past_key_values"} - {expected}).isdisjoint(s) for s in seen)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_notebook_folders_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("NIGHTJAR_RUNS_DIR", raising=False)
    monkeypatch.delenv("NIGHTJAR_FIGURES_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert notebook.runs_dir() == tmp_path / "runs"
    assert notebook.figures_dir("nb") == tmp_path / "runs" / "figures" / "nb" and (tmp_path / "runs/figures/nb").is_dir()
    monkeypatch.setenv("NIGHTJAR_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert notebook.runs_dir() == tmp_path / "elsewhere"


def test_experiment_command_writes_under_the_working_directory(tmp_path, monkeypatch):
    from nightjar_rl.cli import main

    monkeypatch.chdir(tmp_path)
    before = set((REPO / "runs").iterdir()) if (REPO / "runs").is_dir() else set()
    assert main(["experiment", str(REPO / "experiments" / "study_tiny.yaml")]) == 0
    assert len(list((tmp_path / "runs").glob("tiny-sim__study_tiny__*"))) == 1
    assert main(["experiment", str(REPO / "experiments" / "study_tiny.yaml"), "--out-dir", "mine"]) == 0
    assert len(list((tmp_path / "mine").glob("tiny-sim__study_tiny__*"))) == 1
    after = set((REPO / "runs").iterdir()) if (REPO / "runs").is_dir() else set()
    assert after == before  # nothing written into the checkout


def test_registered_ids_scale_rewards_and_carry_a_time_limit():
    """v1: rewards x REWARD_SCALE (the same argmax, thousands instead of millions per episode) and
    Gymnasium's TimeLimit at the default scenario's horizon; the class itself is unscaled."""
    from nightjar_rl.registration import REWARD_SCALE

    env = gym.make("nightjar_rl/SpecDecodeSim-v1", scenario="tiny-sim")
    assert env.spec.max_episode_steps == ENV_IDS["nightjar_rl/SpecDecodeSim-v1"][1] == 400
    env.reset(seed=0)
    _, reward, *_ = env.step(2)
    raw = env.unwrapped.reward_fn(env.unwrapped.episode_log[-1][0])
    assert reward == pytest.approx(raw * REWARD_SCALE) and REWARD_SCALE == 1e-3 and raw > 0
    assert SpecDecodeEnv("tiny-sim").reward_scale == 1.0
    with pytest.raises(ValueError, match="reward_scale"):
        SpecDecodeEnv("tiny-sim", reward_scale=0)
