"""The sb3 policy kind: training on the tiny scenarios with each algorithm, checkpoints and resume,
TensorBoard, the exported artifact against SB3's own predictions, the train command, config errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sb3 = pytest.importorskip("stable_baselines3")

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from nightjar_rl.cli import main
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
from nightjar_rl.experiments import runner
from nightjar_rl.experiments.config import ExperimentError, experiment_from_dict, load_experiment
from nightjar_rl.experiments.sb3_config import parse_sb3_spec
from nightjar_rl.experiments.sb3_train import latest_checkpoint, train_sb3
from nightjar_rl.policy import MLPPolicy, load_policy
from nightjar_rl.policy.sb3 import check_export

ALGO_KWARGS = {
    "PPO": {"n_steps": 32, "batch_size": 32, "n_epochs": 2},
    "A2C": {"n_steps": 8},
    "DQN": {"buffer_size": 1000, "learning_starts": 50, "train_freq": 4},
}
TOTAL = 256
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def sb3_spec(kind: str, total: int = TOTAL, **changes) -> dict:
    spec = {"type": "sb3", "algo": kind, "total_timesteps": total, "n_envs": 2, "train_on": "sim",
            "checkpoint_every": 64, "eval": {"every": 128, "episodes": 2}, "policy_kwargs": {"net_arch": [32, 32]},
            **ALGO_KWARGS[kind]}
    spec.update(changes)
    return spec


def experiment(policies: list, scenario: str = "tiny-sim", **changes) -> dict:
    data = {"name": "rl", "scenario": scenario, "rates": [5, 50], "seeds": [0], "num_requests": 3,
            "max_new_tokens": 8, "policies": policies, "train": {"rates": [5, 50, 200], "num_requests": 4}}
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run folder, three sb3 policies trained on the simulator."""
    cfg = experiment_from_dict(experiment([{"name": a.lower(), "spec": sb3_spec(a)} for a in ALGO_KWARGS]))
    return runner.train_experiment(cfg, out_dir=tmp_path_factory.mktemp("runs"), progress=False)


@pytest.fixture(scope="module")
def recorded_observations() -> np.ndarray:
    """1,200 observations of the tiny simulator under random k across light and heavy load."""
    env = SpecDecodeEnv("tiny-sim")
    rng = np.random.default_rng(0)
    obs, rates, out, episode = None, [1, 5, 50, 500], [], 0
    while len(out) < 1200:
        obs, _ = env.reset(seed=episode, options={"rate": rates[episode % len(rates)], "num_requests": 6})
        episode += 1
        done = False
        while not done and len(out) < 1200:
            out.append(obs)
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.max_k + 1)))
            done = terminated or truncated
    return np.array(out)


@pytest.mark.parametrize("algo", sorted(ALGO_KWARGS))
def test_each_algorithm_leaves_checkpoints_artifact_and_tensorboard(trained, algo):
    name, run = algo.lower(), trained.run_dir
    assert (run / "checkpoints" / name / f"model_{TOTAL}_steps.zip").is_file()
    assert (run / "checkpoints" / name / f"vecnormalize_{TOTAL}_steps.pkl").is_file()
    assert (run / "checkpoints" / name / "model_64_steps.zip").is_file()  # every checkpoint_every steps
    assert list((run / "tb").glob(f"{name}_1/events.out.tfevents.*"))
    assert (run / "eval" / name / "evaluations.npz").is_file()
    artifact = trained.artifacts()[name]
    assert artifact == run / "policies" / f"{name}.json" and artifact.with_suffix(".safetensors").is_file()
    policy = load_policy(artifact)
    assert isinstance(policy, MLPPolicy) and policy.normalization is not None
    prov = policy.provenance
    assert prov["algorithm"] == algo and prov["timesteps"] == TOTAL and prov["scenario"] == "tiny-sim"
    assert prov["seed"] == 10_000 and prov["rates"] == [5.0, 50.0, 200.0]  # the experiment's train defaults
    log = pd.read_csv(run / "train_sb3.csv").set_index("policy")
    assert log.loc[name, "timesteps"] == TOTAL and log.loc[name, "export_mismatches"] == 0
    assert policy.output == ("q_values" if algo == "DQN" else "logits")
    if algo == "DQN":
        assert (run / "checkpoints" / name / "replay_buffer.pkl").is_file()


@pytest.mark.parametrize("algo", sorted(ALGO_KWARGS))
def test_export_equals_sb3_predict_on_recorded_observations(trained, recorded_observations, algo):
    ckpt = trained.run_dir / "checkpoints" / algo.lower()
    steps, zip_path, stats_path = latest_checkpoint(ckpt)
    assert steps == TOTAL
    model = getattr(sb3, algo).load(zip_path, device="cpu")
    stats = VecNormalize.load(str(stats_path), DummyVecEnv([lambda: SpecDecodeEnv("tiny-sim")]))
    exported = load_policy(trained.artifacts()[algo.lower()])
    assert len(recorded_observations) >= 1000
    assert check_export(exported, model, recorded_observations, stats) == 0


class Interrupt(BaseCallback):
    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.at:
            raise KeyboardInterrupt
        return True


def test_resume_continues_the_step_count(tmp_path):
    spec = parse_sb3_spec(sb3_spec("PPO"))
    scenario = load_scenario("tiny-sim")
    with pytest.raises(KeyboardInterrupt):
        train_sb3(spec, scenario, tmp_path, "ppo", progress=False, callbacks=[Interrupt(150)])
    assert latest_checkpoint(tmp_path / "checkpoints" / "ppo")[0] == 128
    assert not (tmp_path / "policies" / "ppo.json").exists()
    result = train_sb3(spec, scenario, tmp_path, "ppo", progress=False)
    assert result.resumed_from == 128 and result.timesteps == TOTAL
    assert load_policy(result.artifact).provenance["timesteps"] == TOTAL
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["ppo_1"]  # one TensorBoard run, continued


def test_live_training_then_evaluation_with_the_other_policies(tmp_path):
    """train_on: live on the tiny random model (one thread), then the experiment evaluates it beside fixed k."""
    scenario = load_scenario("tiny").to_dict() | {"name": "tiny1", "threads": 1}
    (tmp_path / "tiny1.yaml").write_text(yaml.safe_dump(scenario))
    spec = sb3_spec("PPO", total=128, train_on="live", n_envs=2, eval={"every": 64, "episodes": 1})
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(experiment([{"name": "k0", "spec": "fixed-0"}, {"name": "ppo", "spec": spec}],
                                              scenario="tiny1.yaml")))
    cfg = load_experiment(path)
    result = runner.run_experiment(cfg, out_dir=tmp_path / "runs", progress=False)
    df = result.results
    assert set(df["policy"]) == {"k0", "ppo"} and df.loc[df["policy"] == "ppo", "learned"].all()
    assert (df["throughput_tok_s"] > 0).all()
    artifact = result.run_dir / "policies" / "ppo.json"
    before = artifact.read_text()
    again = runner.run_experiment(cfg, out_dir=tmp_path / "runs", resume=result.run_dir, progress=False)
    assert artifact.read_text() == before and len(again.results) == len(df)  # reused, not retrained


def test_train_command_then_experiment_resume_on_the_shipped_tiny_config(tmp_path, capsys):
    """experiments/tiny_sb3.yaml: `train` trains on the simulator and exports; `experiment --resume`
    then evaluates the exported policy live beside fixed k without retraining."""
    assert main(["train", str(EXPERIMENTS / "tiny_sb3.yaml"), "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (run_dir,) = tmp_path.iterdir()
    artifact = run_dir / "policies" / "ppo.json"
    assert f"run folder: {run_dir}" in out and f"policy ppo: {artifact}" in out
    assert not (run_dir / "results.csv").exists()  # train only
    trained = artifact.read_text()
    assert main(["experiment", str(EXPERIMENTS / "tiny_sb3.yaml"), "--resume", str(run_dir)]) == 0
    df = pd.read_csv(run_dir / "results.csv")
    assert set(df["policy"]) == {"k0", "k2", "ppo"} and df.loc[df["policy"] == "ppo", "learned"].all()
    assert artifact.read_text() == trained
    assert load_policy(artifact).provenance["scenario"] == "tiny-sim"


def test_gpu_whatif_config_is_valid():
    cfg = load_experiment(EXPERIMENTS / "ppo_gpu_whatif.yaml")
    spec = parse_sb3_spec(next(p.spec for p in cfg.policies if p.name == "ppo"))
    assert spec.algo == "PPO" and spec.train_on == "sim" and spec.total_timesteps == 200_000
    assert spec.algo_kwargs["n_steps"] == 256 and spec.reward_kwargs == {"per_row": True}


@pytest.mark.parametrize("changes, match", [
    ({"algo": "SAC"}, r"'policies\[0\].spec.algo' must be one of PPO, DQN, A2C"),
    ({"total_timesteps": 0}, r"spec.total_timesteps' must be an integer >= 1"),
    ({"n_stepz": 5}, r"spec.n_stepz' is not a field of sb3 specs nor an argument of PPO"),
    ({"train_on": "live", "vec_env": "subproc"}, r"spec.vec_env' cannot be subproc with train_on: live"),
    ({"policy_kwargs": {"net_arch": "big"}}, r"spec.policy_kwargs.net_arch' must be a list"),
    ({"policy_kwargs": {"activation_fn": "sigmoid"}}, r"spec.policy_kwargs.activation_fn' must be one of"),
    ({"normalize": {"obs": "yes"}}, r"spec.normalize.obs' must be true or false"),
    ({"eval": {"episodes": 0}}, r"spec.eval.episodes' must be an integer >= 1"),
    ({"rates": []}, r"spec.rates' must be a non-empty list"),
])
def test_bad_sb3_specs_name_the_field(changes, match):
    with pytest.raises(ExperimentError, match=match) as info:
        experiment_from_dict(experiment([{"name": "ppo", "spec": sb3_spec("PPO", **changes)}]))
    assert "\n" not in str(info.value)


def test_missing_required_field_and_backend_mismatch(tmp_path):
    spec = sb3_spec("PPO")
    del spec["total_timesteps"]
    with pytest.raises(ExperimentError, match=r"spec.total_timesteps' is required"):
        experiment_from_dict(experiment([{"name": "ppo", "spec": spec}]))
    cfg = experiment_from_dict(experiment([{"name": "ppo", "spec": sb3_spec("PPO")}], scenario="tiny"))
    with pytest.raises(ExperimentError, match=r"train_on' is sim but the training scenario 'tiny' \(from the experiment's 'scenario'\) runs on the live"):
        runner.train_experiment(cfg, out_dir=tmp_path, progress=False)


def test_replicates_train_one_policy_per_seed_and_evaluate_each(tmp_path):
    data = experiment([{"name": "k0", "spec": "fixed-0"}, {"name": "dqn", "spec": sb3_spec("DQN", total=64)}])
    data["train"]["replicates"] = 2
    result = runner.run_experiment(experiment_from_dict(data), out_dir=tmp_path, progress=False)
    seeds = [load_policy(result.run_dir / "policies" / f).provenance["seed"] for f in ("dqn.json", "dqn.rep1.json")]
    assert seeds == [10_000, 10_001]
    df = result.results
    assert sorted(df.loc[df["policy"] == "dqn", "replicate"].unique()) == [0, 1]
    assert (result.run_dir / "checkpoints" / "dqn.rep1" / "model_64_steps.zip").is_file()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A PPO run stopped after its 128-step checkpoint (copied by each test that tampers with it)."""
    folder = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(KeyboardInterrupt):
        train_sb3(parse_sb3_spec(sb3_spec("PPO")), load_scenario("tiny-sim"), folder, "ppo", progress=False,
                  callbacks=[Interrupt(150)])
    return folder


@pytest.mark.parametrize("tamper, match", [
    ("stats", "vecnormalize_128_steps.pkl: missing or changed since it was written"),
    ("model", "model_128_steps.zip: missing or changed since it was written"),
    ("no manifest", "it has no signed manifest"),
    ("forged manifest", "not signed with this user's key"),
    ("other key", "not signed with this user's key"),
])
def test_resume_refuses_checkpoints_it_did_not_write(interrupted, tmp_path, monkeypatch, tamper, match):
    import shutil

    from nightjar_rl.experiments.sb3_train import manifest_path
    from nightjar_rl.io import KEY_ENV, file_sha256

    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    ckpt = run / "checkpoints" / "ppo"
    manifest = manifest_path(ckpt, 128)
    if tamper == "stats":
        (ckpt / "vecnormalize_128_steps.pkl").write_bytes(b"crafted pickle")
    elif tamper == "model":
        with open(ckpt / "model_128_steps.zip", "ab") as fh:
            fh.write(b"\0")
    elif tamper == "no manifest":
        manifest.unlink()
    elif tamper == "forged manifest":  # a crafted pickle with a manifest whose hashes match it
        (ckpt / "vecnormalize_128_steps.pkl").write_bytes(b"crafted pickle")
        data = json.loads(manifest.read_text())
        data["files"]["vecnormalize_128_steps.pkl"] = file_sha256(ckpt / "vecnormalize_128_steps.pkl")
        manifest.write_text(json.dumps(data))
    elif tamper == "other key":
        monkeypatch.setenv(KEY_ENV, str(tmp_path / "someone-else.key"))
    with pytest.raises(ExperimentError, match=match) as info:
        train_sb3(parse_sb3_spec(sb3_spec("PPO")), load_scenario("tiny-sim"), run, "ppo", progress=False)
    assert "\n" not in str(info.value)


def test_start_level_gives_its_action_the_start_probability():
    """`prefer_action`: for n = 7 actions and p = 0.9 the head's bias gap is log(0.9 x 6 / 0.1) = log 54, so
    the untrained policy picks that action with 54 / (54 + 6) = 0.9 and each other with 1/60. `start_level`
    is for per-row rules trained with PPO or A2C only."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    from nightjar_rl.experiments.sb3_train import prefer_action

    class Seven(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        action_space = gym.spaces.Discrete(7)

    model = PPO("MlpPolicy", Seven(), seed=0, device="cpu", n_steps=8, batch_size=8)
    prefer_action(model, 3)
    assert model.policy.action_net.bias[3].item() == pytest.approx(np.log(54.0))
    probs = model.policy.get_distribution(torch.zeros((4, 3))).distribution.probs.detach().numpy()
    np.testing.assert_allclose(probs[:, 3], 0.9, atol=0.01)
    np.testing.assert_allclose(probs[:, 0], 1 / 60, atol=0.005)
    per_row = {"type": "learned_budget", "profile": "scenario"}
    assert parse_sb3_spec({"algo": "PPO", "total_timesteps": 8, "per_row": per_row, "start_level": 1}).start_level == 1.0
    with pytest.raises(ExperimentError, match="start_level"):
        parse_sb3_spec({"algo": "DQN", "total_timesteps": 8, "per_row": per_row, "start_level": 1.0})
    with pytest.raises(ExperimentError, match="start_level"):
        parse_sb3_spec({"algo": "PPO", "total_timesteps": 8, "start_level": 1.0})
    from nightjar_rl.experiments.sb3_train import per_row_rule

    spec = parse_sb3_spec({"algo": "PPO", "total_timesteps": 8, "per_row": per_row, "start_level": 0.9})
    with pytest.raises(ExperimentError, match="one of the rule's levels"):  # before any env or model is built
        per_row_rule(spec, load_scenario("tiny-sim"))
