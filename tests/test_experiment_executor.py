"""Executors: Ray and local give identical tables on tiny-sim; config and CLI fields; missing Ray."""

import builtins

import pandas as pd
import pytest

from nightjar_rl.experiments import executor as ex
from nightjar_rl.experiments.config import ExperimentError, experiment_from_dict
from nightjar_rl.experiments.runner import load_run, run_experiment

from .conftest import run_on_ray

SWEEP = {
    "name": "exec", "scenario": "tiny-sim", "rates": [5, 50], "seeds": [0, 1], "num_requests": 4, "max_new_tokens": 8,
    "policies": ["fixed-0", "fixed-2", "hf_heuristic", {"name": "oracle", "spec": {"type": "oracle", "profile": "scenario"}},
                 {"name": "nightjar", "spec": {"type": "nightjar", "epsilon": 0.3}}],
    "train": {"episodes": 2, "num_requests": 3, "replicates": 2},
}


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="run")


def test_replicates_and_canonical_order(tmp_path):
    result = run_experiment(experiment_from_dict(SWEEP, "exec"), out_dir=tmp_path, progress=False)
    df = result.results
    learned = df[df["policy"] == "nightjar"]
    assert len(df) == 2 * 2 * (4 + 2) and sorted(learned["replicate"].unique()) == [0, 1]
    assert (df.loc[df["policy"] != "nightjar", "replicate"] == 0).all()
    assert (result.run_dir / "policies" / "nightjar.json").is_file()
    assert (result.run_dir / "policies" / "nightjar.rep1.json").is_file()
    assert sorted(result.train["replicate"].unique()) == [0, 1] and len(result.train) == 4
    assert list(df["rate"].iloc[:6]) == [5.0] * 6 and list(df["policy"].iloc[:6]) == [
        "fixed-0", "fixed-2", "hf_heuristic", "oracle", "nightjar", "nightjar"]
    again = load_run(result.run_dir)
    pd.testing.assert_frame_equal(again.results, df)
    assert again.learned == ["nightjar"] and again.config.train.replicates == 2
    assert "95% CI" in result.summary


CLOSED = {**SWEEP, "rates": ["inf"], "concurrency": [1, 8], "seeds": [0]}  # closed loop: max requests in flight
PPO = {"name": "ppo", "spec": {"type": "sb3", "algo": "PPO", "train_on": "sim", "total_timesteps": 128, "n_envs": 2,
                               "n_steps": 32, "batch_size": 32, "n_epochs": 2, "checkpoint_every": 128,
                               "eval": {"every": 0}}}
WITH_SB3 = {**SWEEP, "seeds": [0], "policies": ["fixed-0", PPO]}  # sb3 replicates train as parallel Ray tasks


@pytest.mark.parametrize("sweep", [SWEEP, CLOSED, WITH_SB3], ids=["open", "closed", "sb3"])
def test_ray_executor_gives_the_local_table(tmp_path, sweep):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'nightjar-rl[ray]')")
    cfg = experiment_from_dict(sweep, "exec")
    local = run_experiment(cfg, out_dir=tmp_path / "local", progress=False)
    remote = run_on_ray(cfg, tmp_path / "ray")
    pd.testing.assert_frame_equal(_comparable(local.results), _comparable(remote.results))
    pd.testing.assert_frame_equal(local.k_by_batch, remote.k_by_batch)
    learner = "nightjar" if sweep is not WITH_SB3 else "ppo"
    for name in (f"{learner}.json", f"{learner}.rep1.json"):
        assert (local.run_dir / "policies" / name).is_file() and (remote.run_dir / "policies" / name).is_file()
        if learner == "nightjar":
            assert (local.run_dir / "policies" / name).read_text() == (remote.run_dir / "policies" / name).read_text()
    if learner == "ppo":  # the same weights: training did not depend on where it ran
        from safetensors.numpy import load_file

        for name in ("ppo.safetensors", "ppo.rep1.safetensors"):
            mine, theirs = load_file(local.run_dir / "policies" / name), load_file(remote.run_dir / "policies" / name)
            assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
        rows = pd.read_csv(remote.run_dir / "train_sb3.csv")
        assert sorted(rows["replicate"]) == [0, 1] and set(rows["policy"]) == {"ppo"}


def test_missing_ray_is_one_line(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ExperimentError) as err:
        ex.import_ray()
    assert "pip install" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value, field", [
    ({"executor": "spark"}, "'executor'"),
    ({"executor": {"kind": "ray", "workers": 0}}, "workers"),
    ({"executor": {"kind": "local", "address": "x:1"}}, "kind 'ray'"),
    ({"train": {"replicates": 0}}, "'train.replicates'"),
])
def test_bad_executor_or_replicates(value, field):
    with pytest.raises(ExperimentError) as err:
        experiment_from_dict({**SWEEP, **value}, "bad")
    assert field in str(err.value) and "\n" not in str(err.value)


def test_executor_config_and_cli_flags():
    import argparse

    from nightjar_rl.experiments.cli import add_experiment_parser

    cfg = experiment_from_dict({**SWEEP, "executor": {"kind": "ray", "address": "10.0.0.1:6379"}}, "x")
    assert (cfg.executor.kind, cfg.executor.address) == ("ray", "10.0.0.1:6379")
    assert "executor" not in cfg.to_dict()  # results do not depend on it: resumable on another executor
    parser = argparse.ArgumentParser()
    add_experiment_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experiment", "c.yaml", "--executor", "ray", "--ray-address", "auto", "--workers", "2"])
    assert (args.executor, args.ray_address, args.workers) == ("ray", "auto", 2)
