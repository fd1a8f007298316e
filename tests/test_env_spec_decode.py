"""SpecDecodeEnv on the tiny random-model scenario: Gymnasium contract, seeding, recording."""

import warnings

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

import nightjar_rl.env  # noqa: F401  (registers the ids)
from nightjar_rl.contracts.observation import OBS_INDEX, obs_size
from nightjar_rl.env import ENV_IDS
from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
from nightjar_rl.models import load_model
from nightjar_rl.registration import SIM_IDS

SMALL = {"num_requests": 3}


@pytest.fixture(scope="module")
def tiny_target():
    return load_model("tiny-random")


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_check_env_on_every_registered_id(env_id, tiny_target):
    sim = env_id in SIM_IDS
    env = gym.make(env_id, scenario="tiny-sim" if sim else "tiny", target=None if sim else tiny_target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Box is unbounded above (queue length, rates): a warning only
        check_env(env.unwrapped)
    assert env.spec.nondeterministic != sim  # live observations carry measured step times; the sim's are modelled
    assert env.action_space == gym.spaces.Discrete(env.unwrapped.max_k + 1)
    assert env.observation_space.shape == (obs_size(env.unwrapped.max_k),)


def run_to_end(env, k, seed, options=SMALL):
    obs, info = env.reset(seed=seed, options=options)
    steps = []
    while True:
        obs, reward, terminated, truncated, info = env.step(k)
        assert env.observation_space.contains(obs)
        assert np.isfinite(reward)
        steps.append(info)
        if terminated or truncated:
            return steps, terminated, truncated


def test_episode_terminates_and_info_carries_stats(tiny_target):
    env = SpecDecodeEnv("tiny", target=tiny_target)
    steps, terminated, truncated = run_to_end(env, 2, seed=3)
    assert terminated and not truncated
    frame = env.episode_frame()
    assert len(frame) == len(steps) and {"episode", "time", "reward"} <= set(frame.columns)
    for (_, row), info in zip(frame.iterrows(), steps):
        for key, value in info["stats"].as_row().items():
            assert row[key] == value or (value != value and row[key] != row[key])  # NaN: nothing drafted
        assert row["time"] == info["clock"]
    finished = sum(len(info["stats"].finished_ids) for info in steps)
    assert finished == 3
    total = sum(info["stats"].tokens_out for info in steps)
    assert 3 <= total <= 3 * env.scenario.max_new_tokens
    clocks = [info["clock"] for info in steps]
    assert clocks == sorted(clocks)


def test_same_seed_same_workload(tiny_target):
    env = SpecDecodeEnv("tiny", target=tiny_target)
    env.reset(seed=11, options={"num_requests": 5, "rate": 3.0})
    first = [(r.prompt_ids, r.arrival_time) for r in env.requests]
    env.reset(seed=12, options={"num_requests": 5, "rate": 3.0})
    other = [(r.prompt_ids, r.arrival_time) for r in env.requests]
    env.reset(seed=11, options={"num_requests": 5, "rate": 3.0})
    again = [(r.prompt_ids, r.arrival_time) for r in env.requests]
    assert first == again
    assert first != other


def test_greedy_outputs_match_plain_decoding(tiny_target):
    env = SpecDecodeEnv("tiny", target=tiny_target)

    def outputs(k):
        run_to_end(env, k, seed=5)
        return env.result().outputs, env.session.engine

    plain, _ = outputs(0)
    spec, _ = outputs(env.max_k)
    assert plain == spec


def test_truncation_at_step_horizon(tiny_target):
    env = SpecDecodeEnv({**env_dict("tiny"), "horizon": {"steps": 2}}, target=tiny_target)
    steps, terminated, truncated = run_to_end(env, 1, seed=0)
    assert len(steps) == 2 and truncated and not terminated


def env_dict(name):
    from nightjar_rl.env.scenario import load_scenario

    return load_scenario(name).to_dict()


def test_bad_action_and_options(tiny_target):
    env = SpecDecodeEnv("tiny", target=tiny_target)
    env.reset(seed=0, options=SMALL)
    with pytest.raises(ValueError, match="action"):
        env.step(env.max_k + 1)
    with pytest.raises(ValueError, match="reset option"):
        env.reset(seed=0, options={"speed": 2})


def test_observation_fields_follow_the_engine(tiny_target):
    env = SpecDecodeEnv("tiny", target=tiny_target)
    obs, _ = env.reset(seed=2, options={"num_requests": 4, "rate": "inf" and float("inf")})
    assert obs[OBS_INDEX["queue_len"]] == 4 and obs[OBS_INDEX["batch_size"]] == 0
    obs, *_ = env.step(3)
    assert obs[OBS_INDEX["batch_size"]] == len(env.session.engine.running)
    assert obs[OBS_INDEX["last_k"]] == 3


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_episode_recording(tmp_path, suffix, tiny_target):
    env = SpecDecodeEnv("tiny", target=tiny_target)
    steps, *_ = run_to_end(env, 1, seed=4)
    path = tmp_path / f"episode{suffix}"
    env.save_episode(str(path))
    df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    assert len(df) == len(steps)
    for col in ("time", "batch_size", "k", "accepted", "drafted", "wall_time", "verify_time", "reward"):
        assert col in df.columns
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.real_model
@pytest.mark.parametrize("scenario", ["smollm2-early-exit", "smollm2-load-ramp"])
def test_real_model_scenarios_step(scenario):
    env = gym.make("nightjar_rl/SpecDecode-v1", scenario=scenario)
    obs, _ = env.reset(seed=0, options={"num_requests": 2, "rate": float("inf")})
    for k in (2, 0, 2):
        obs, reward, _, _, info = env.step(k)
        assert env.observation_space.contains(obs) and reward >= 0
        assert info["stats"].k == k
    assert info["stats"].batch_size == 2


def test_piecewise_arrivals_per_episode(tiny_target):
    env = SpecDecodeEnv("tiny", target=tiny_target)
    ramp = {"kind": "piecewise", "schedule": [[0.5, 2.0], [0.5, 40.0], [0.5, 2.0]]}
    _, info = env.reset(seed=9, options={"arrivals": ramp, "num_requests": 100})
    times = np.array([r.arrival_time for r in env.requests])
    assert info["num_requests"] == len(times) < 100 and times.max() < 1.5
    assert np.sum((times >= 0.5) & (times < 1.0)) > np.sum(times < 0.5)
    with pytest.raises(ValueError, match="arrivals.kind"):
        env.reset(seed=9, options={"arrivals": {"kind": "burst"}})


def test_step_outside_an_episode_and_non_mapping_options_are_clear_errors():
    env = SpecDecodeEnv("tiny-sim")
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        env.step(1)
    with pytest.raises(TypeError, match="reset options must be a mapping"):
        env.reset(seed=0, options="x")
    env.reset(seed=0, options={"num_requests": 3, "rate": float("inf")})
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(2)
    with pytest.raises(RuntimeError, match=r"the episode has ended \((terminated|truncated).*call reset\(\)"):
        env.step(2)
    env.reset(seed=1)  # a new episode steps again
    env.step(0)
