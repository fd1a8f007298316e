"""Closed-loop experiments: the `concurrency` sweep in configs, results, resume, executors and analysis."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nightjar_rl.analysis import format_ci, format_summary, load_axis, plot_metric_vs_rate
from nightjar_rl.analysis.stats import ci_table
from nightjar_rl.analysis.study import headline, training_spread, verdict
from nightjar_rl.experiments import executor
from nightjar_rl.experiments.config import ExperimentError, experiment_from_dict, load_experiment
from nightjar_rl.experiments.runner import load_run, report_slices, run_experiment

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "study_tiny_closed.yaml"
BASE = {"scenario": "tiny-sim", "rates": [1], "seeds": [0], "policies": ["fixed-1"]}
SWEEP = {
    "name": "closed", "scenario": "tiny-sim", "rates": ["inf"], "concurrency": [1, 4, 8], "seeds": [0, 1],
    "num_requests": 6, "max_new_tokens": 8, "policies": ["fixed-0", "fixed-2", {"name": "nightjar", "spec": "nightjar"}],
    "train": {"episodes": 3, "num_requests": 4, "replicates": 2},
}


@pytest.mark.parametrize("change, field", [
    ({"concurrency": [0]}, "'concurrency'"),
    ({"concurrency": [4, 4]}, "'concurrency'"),
    ({"concurrency": [1.5]}, "'concurrency'"),
    ({"concurrency": 4}, "'concurrency'"),
    ({"concurrency": [True]}, "'concurrency'"),
    ({"rates": ["inf"]}, "'rates' has rate inf"),  # open loop: every request at t=0 needs a concurrency sweep
    ({"rates": ["fast"], "concurrency": [1]}, "'rates'"),
    ({"train": {"concurrency": [0]}}, "'train.concurrency'"),
    ({"train": {"rates": [float("inf")]}}, "'train.rates' has rate inf"),
    ({"policies": [{"name": "p", "spec": {"type": "sb3", "algo": "PPO", "total_timesteps": 8, "rates": ["inf"]}}]},
     "rates' has rate inf"),
    ({"policies": [{"name": "p", "spec": {"type": "sb3", "algo": "PPO", "total_timesteps": 8, "concurrency": [0]}}]},
     "concurrency'"),
])
def test_bad_concurrency_configs_name_the_field(change, field):
    with pytest.raises(ExperimentError) as err:
        experiment_from_dict({**BASE, **change}, "bad")
    assert field in str(err.value) and "\n" not in str(err.value)


def test_concurrency_config_fields_and_saved_config():
    cfg = experiment_from_dict({**BASE, "rates": ["inf", 5], "concurrency": [1, 64],
                                "train": {"concurrency": [64], "rates": [".inf"]}}, "ok")
    assert cfg.rates == [math.inf, 5.0] and cfg.concurrency == [1, 64]
    assert cfg.train.concurrency == [64] and cfg.train.rates == [math.inf]
    saved = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    assert saved["concurrency"] == [1, 64] and saved["rates"] == [math.inf, 5.0]
    saved["evaluate"] = {"learn": saved.pop("learn_during_eval")}  # as load_run reads a run's config.yaml
    assert experiment_from_dict(saved, "again").to_dict() == cfg.to_dict()
    open_loop = experiment_from_dict(BASE, "open").to_dict()  # older run folders stay resumable
    assert "concurrency" not in open_loop and "concurrency" not in open_loop["train"]
    from nightjar_rl.experiments.sb3_config import parse_sb3_spec

    spec = parse_sb3_spec({"type": "sb3", "algo": "PPO", "total_timesteps": 8, "concurrency": [1, 4], "rates": ["inf"]})
    assert spec.concurrency == [1, 4] and spec.rates == [math.inf]


@pytest.fixture(scope="module")
def tiny_closed(tmp_path_factory):
    cfg = load_experiment(TINY)
    return cfg, run_experiment(cfg, out_dir=tmp_path_factory.mktemp("runs"), progress=False)


def test_closed_study_table_order_reports_and_training(tiny_closed):
    cfg, result = tiny_closed
    df, run_dir = result.results, result.run_dir
    per_c = len(cfg.seeds) * (4 + cfg.train.replicates)
    assert len(df) == len(cfg.concurrency) * per_c
    assert list(df.columns[df.columns.get_loc("rate"):][:2]) == ["rate", "concurrency"]
    assert list(df["concurrency"]) == [c for c in cfg.concurrency for _ in range(per_c)]  # canonical: C, seed, policy
    assert (df["rate"] == math.inf).all() and not df.duplicated(["policy", "concurrency", "seed", "replicate"]).any()
    assert (df.loc[df["concurrency"] == 1, "mean_batch"] <= 1).all()  # one request in flight at a time
    assert (df.groupby(["concurrency", "seed"])["output_tokens"].nunique() == 1).all()  # same workload per cell
    assert "concurrency" in result.k_by_batch.columns
    assert sorted(result.train["concurrency"]) == sorted(cfg.concurrency * cfg.train.replicates)  # cycled
    for name in ("throughput_vs_concurrency.png", "latency_vs_concurrency.png", "k_by_batch.png"):
        assert (run_dir / name).stat().st_size > 1000
    assert not (run_dir / "throughput_vs_rate.png").exists()
    assert "by max concurrency" in result.summary and "high load (C=8)" in result.summary
    again = load_run(run_dir)
    pd.testing.assert_frame_equal(again.results, df)
    assert again.config.concurrency == cfg.concurrency


def test_resume_with_a_concurrency_sweep(tmp_path, monkeypatch):
    cfg = experiment_from_dict(SWEEP, "closed")
    real = executor.evaluate_cell
    calls = []

    def interrupted_after_seven(*args, **kwargs):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(kwargs["concurrency"])
        return real(*args, **kwargs)

    monkeypatch.setattr(executor, "evaluate_cell", interrupted_after_seven)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out_dir=tmp_path, progress=False)
    (run_dir,) = tmp_path.iterdir()
    partial = pd.read_csv(run_dir / "results.csv")
    assert len(partial) == 7 and list(partial["concurrency"]) == [1] * 7

    calls.clear()
    monkeypatch.setattr(executor, "evaluate_cell", lambda *a, **k: (calls.append(k["concurrency"]), real(*a, **k))[1])
    result = run_experiment(cfg, out_dir=tmp_path, resume=run_dir, progress=False)
    total = 3 * 2 * (2 + 2)
    assert len(calls) == total - 7 and len(result.results) == total
    assert not result.results.duplicated(["policy", "concurrency", "seed", "replicate"]).any()
    pd.testing.assert_frame_equal(result.results.iloc[:7].reset_index(drop=True), partial)


def _closed_frame() -> pd.DataFrame:
    """k0 best at high concurrency, k2 at C=1; the learner `nj` matches the best fixed k at each."""
    tput = {"k0": {1: 100, 64: 1000}, "k2": {1: 150, 64: 600}, "nj": {1: 150, 64: 1000}}
    return pd.DataFrame([
        {"policy": p, "rate": math.inf, "concurrency": c, "seed": seed, "throughput_tok_s": v + noise,
         "e2e_p50_s": 1.0, "learned": p == "nj", "replicate": 0}
        for p, by_c in tput.items() for c, v in by_c.items() for seed, noise in enumerate((-1.0, 0.0, 1.0))])


def test_analysis_on_a_concurrency_frame():
    df = _closed_frame()
    assert load_axis(df) == "concurrency"
    assert load_axis(df.drop(columns="concurrency")) == "rate"
    assert load_axis(df[df["concurrency"] == 64]) == "concurrency"  # one load point, closed loop
    assert load_axis(df.assign(concurrency=float("nan"), rate=df["concurrency"].astype(float))) == "rate"
    table = headline(df, ["nj"], ["k0", "k2"])
    assert list(table["concurrency"]) == [1, 64] and "rate" not in table.columns
    assert table.iloc[-1]["single_fixed"] == "k0" and table.iloc[0]["hindsight"] == "k2"
    lines = verdict(table)
    assert lines[0].startswith("high load (C=64): nj") and lines[1].startswith("low load (C=1): nj 1.500x")
    assert "per concurrency: worst 1.000x" in lines[2] and "/s)" not in " ".join(lines)
    assert list(format_ci(ci_table(df, "throughput_tok_s")).columns) == ["C=1", "C=64"]
    assert "by max concurrency" in format_summary(df) and "C=64" in format_summary(df)
    assert list(training_spread(df)["concurrency"]) == [1, 64]
    fig = plot_metric_vs_rate(df, "throughput_tok_s", "output tokens/s")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "max concurrency (requests in flight)" and "vs max concurrency" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "64"]
    open_fig = plot_metric_vs_rate(df.drop(columns="concurrency").assign(rate=df["concurrency"].astype(float)),
                                   "throughput_tok_s")
    assert open_fig.axes[0].get_xlabel() == "request rate (requests/s)"


def test_two_load_axes_are_analysed_one_rate_at_a_time():
    df = pd.concat([_closed_frame().assign(rate=r) for r in (10.0, math.inf)], ignore_index=True)
    with pytest.raises(ValueError, match="both rate and concurrency"):
        load_axis(df)
    slices = report_slices(df)
    assert [r for r, _ in slices] == [10.0, math.inf] and all(load_axis(part) == "concurrency" for _, part in slices)
    assert report_slices(_closed_frame())[0][0] is None


def test_open_loop_tables_keep_their_columns(tmp_path):
    cfg = experiment_from_dict({**SWEEP, "rates": [50], "concurrency": None, "seeds": [0], "policies": ["fixed-0"]}, "o")
    result = run_experiment(cfg, out_dir=tmp_path, progress=False)
    assert "concurrency" not in result.results.columns and "concurrency" not in result.k_by_batch.columns
    assert (result.run_dir / "throughput_vs_rate.png").is_file() and "by request rate" in result.summary


def test_sb3_envs_cycle_concurrency_per_episode_offset_per_env(tmp_path):
    pytest.importorskip("stable_baselines3")
    from nightjar_rl.env.scenario import load_scenario
    from nightjar_rl.experiments.runner import train_experiment
    from nightjar_rl.experiments.sb3_train import make_env

    scenario = load_scenario("tiny-sim")
    seen = []
    for offset in (0, 1):
        env = make_env(scenario, None, [math.inf], 4, offset, concurrency=[1, 2, 8])
        for episode in range(3):
            env.reset(seed=episode)
            seen.append(env.unwrapped.session.max_concurrency)
    assert seen == [1, 2, 8, 2, 8, 1]
    ppo = {"type": "sb3", "algo": "PPO", "total_timesteps": 64, "n_steps": 32, "batch_size": 32, "n_epochs": 1,
           "train_on": "sim", "n_envs": 2, "eval": {"every": 0}}
    cfg = experiment_from_dict({**SWEEP, "policies": [{"name": "ppo", "spec": ppo}]}, "closed")
    run = train_experiment(cfg, out_dir=tmp_path, progress=False)
    from nightjar_rl.policy import load_policy

    assert load_policy(run.run_dir / "policies" / "ppo.json").provenance["concurrency"] == [1, 4, 8]


def test_closed_study_config_mirrors_the_open_study():
    closed = load_experiment(ROOT / "experiments" / "nightjar_study_closed.yaml")
    study = load_experiment(ROOT / "experiments" / "nightjar_study.yaml")
    assert (closed.scenario, closed.seeds, closed.slo) == (study.scenario, study.seeds, study.slo)
    assert [e.name for e in closed.policies] == [e.name for e in study.policies]
    for mine, theirs in zip(closed.policies, study.policies):  # PPO trains longer in closed loop (300k vs 200k)
        if mine.name != "ppo":
            assert mine.spec == theirs.spec
        else:
            assert {**mine.spec, "total_timesteps": 0} == {**theirs.spec, "total_timesteps": 0}
    assert closed.rates == [math.inf] and closed.concurrency == [1, 4, 16, 64, 128, 256, 512]
    assert closed.num_requests > max(closed.concurrency)  # the cap binds at the largest C
    assert closed.train.replicates == 3 and closed.train.concurrency == closed.concurrency
