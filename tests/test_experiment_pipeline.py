"""The experiment pipeline end to end on experiments/tiny.yaml: table, plots, resume."""

from pathlib import Path

import pandas as pd
import pytest

from nightjar_rl.experiments import executor, runner
from nightjar_rl.experiments.cli import run_experiment_cli
from nightjar_rl.experiments.config import ExperimentError, experiment_from_dict, load_experiment

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"
PNGS = ("throughput_vs_rate.png", "latency_vs_rate.png", "k_by_batch.png")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert run_experiment_cli(str(TINY), None, str(out)) == 0
    (run_dir,) = out.iterdir()
    return run_dir


def test_pipeline_writes_table_and_plots(tiny_run):
    cfg = load_experiment(TINY)
    assert tiny_run.name.startswith(f"tiny__{cfg.name}__{cfg.seeds[0]}__")
    df = pd.read_csv(tiny_run / "results.csv")
    assert len(df) == len(cfg.policies) * len(cfg.rates) * len(cfg.seeds)
    assert not df.duplicated(["policy", "rate", "seed"]).any()
    for col in ("throughput_tok_s", "goodput_tok_s", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tpot_p95_s",
                "e2e_p50_s", "e2e_p95_s", "mean_k", "acceptance_rate"):
        assert col in df.columns
    assert (df["throughput_tok_s"] > 0).all()
    assert (df["requests"] == cfg.num_requests).all()
    fixed = df.set_index("policy")["mean_k"]
    assert (fixed.loc["k0"] == 0).all() and (fixed.loc["k2"] == 2).all()
    assert df.loc[df["policy"] == "nightjar", "learned"].all()
    # same seeded workload for every policy: the same number of output tokens per (rate, seed)
    # (greedy float32: speculation never changes the text)
    assert (df.groupby(["rate", "seed"])["output_tokens"].nunique() == 1).all()
    for name in PNGS:
        assert (tiny_run / name).stat().st_size > 1000
    assert (tiny_run / "policies" / "nightjar.json").is_file()
    train = pd.read_csv(tiny_run / "train.csv")
    assert len(train) == cfg.train.episodes
    kdf = pd.read_csv(tiny_run / "k_by_batch.csv")
    assert set(kdf["policy"]) == {p.name for p in cfg.policies}
    assert "throughput" in (tiny_run / "summary.txt").read_text()


def test_resume_skips_finished_cells(tmp_path, monkeypatch):
    cfg = load_experiment(TINY)
    real = executor.evaluate_cell
    calls = []

    def interrupted_after_five(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(args[4:6])
        return real(*args, **kwargs)

    monkeypatch.setattr(executor, "evaluate_cell", interrupted_after_five)
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(cfg, out_dir=tmp_path, progress=False)
    (run_dir,) = tmp_path.iterdir()
    partial = pd.read_csv(run_dir / "results.csv")
    assert len(partial) == 5
    policy_file = run_dir / "policies" / "nightjar.json"
    trained = policy_file.read_text()

    calls.clear()
    monkeypatch.setattr(executor, "evaluate_cell", lambda *a, **k: (calls.append(a[4:6]), real(*a, **k))[1])
    result = runner.run_experiment(cfg, out_dir=tmp_path, resume=run_dir, progress=False)
    total = len(cfg.policies) * len(cfg.rates) * len(cfg.seeds)
    assert len(calls) == total - 5
    assert len(result.results) == total
    assert not result.results.duplicated(["policy", "rate", "seed"]).any()
    pd.testing.assert_frame_equal(result.results.iloc[:5].reset_index(drop=True), partial)  # kept as measured
    assert policy_file.read_text() == trained  # reused, not retrained
    assert len(pd.read_csv(run_dir / "train.csv")) == cfg.train.episodes


def test_resume_refuses_a_changed_config(tiny_run):
    cfg = load_experiment(TINY)
    cfg.seeds = [0, 1, 2]
    with pytest.raises(ExperimentError, match="seeds"):
        runner.run_experiment(cfg, resume=tiny_run, progress=False)


BASE = {"scenario": "tiny", "rates": [1], "seeds": [0], "policies": ["fixed-1"]}


@pytest.mark.parametrize("change, field", [
    ({"rates": [0]}, "'rates'"),
    ({"rates": "fast"}, "'rates'"),
    ({"seeds": [0, 0]}, "'seeds'"),
    ({"policies": []}, "'policies'"),
    ({"policies": [{"name": "a", "spec": False}]}, "policies[0].spec"),
    ({"policies": ["fixed-1", "fixed-1"]}, "duplicate"),
    ({"train": {"episodes": -1}}, "'train.episodes'"),
    ({"evaluate": {"learn": "yes"}}, "'evaluate'"),
    ({"slo": {"tpot_s": 0}}, "'slo'"),
    ({"colour": "blue"}, "colour"),
    ({"scenario": None}, "'scenario'"),
])
def test_bad_config_names_the_field(change, field):
    with pytest.raises(ExperimentError) as err:
        experiment_from_dict({**BASE, **change}, "bad")
    assert field in str(err.value) and "\n" not in str(err.value)


def test_missing_field_and_bad_policy_spec(tmp_path):
    with pytest.raises(ExperimentError, match="'seeds' is required"):
        experiment_from_dict({k: v for k, v in BASE.items() if k != "seeds"}, "bad")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: tiny\nrates: [1]\nseeds: [0]\npolicies: [warp-9]\n")
    with pytest.raises(ValueError, match="warp-9"):
        run_experiment_cli(str(bad), None, str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()  # nothing written for a bad config


def test_experiment_subcommand_parser():
    import argparse

    from nightjar_rl.experiments.cli import add_experiment_parser

    parser = argparse.ArgumentParser()
    add_experiment_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experiment", "experiments/tiny.yaml", "--resume", "runs/x"])
    assert (args.command, args.config, args.resume, args.out_dir) == ("experiment", "experiments/tiny.yaml", "runs/x", "runs")
    assert callable(args.func)


def test_fixed_policies_names_only_fixed_k_entries(tmp_path):
    """An artifact given by path (as spot_check.py passes trained policies) is not a fixed k, nor an error."""
    from nightjar_rl.policy import make_policy
    from nightjar_rl.policy.artifact import save_policy

    artifact = save_policy(make_policy({"type": "nightjar"}, 3), tmp_path / "nj.json")
    cfg = experiment_from_dict({"name": "f", "scenario": "tiny-sim", "rates": [1.0], "seeds": [0], "policies": [
        {"name": "k0", "spec": "fixed-0"}, {"name": "k2", "spec": {"type": "fixed", "k": 2}},
        {"name": "nj", "spec": str(artifact)}, {"name": "hf", "spec": "hf_heuristic"}]}, "f")
    assert runner.fixed_policies(cfg) == ["k0", "k2"]


def test_every_shipped_study_config_loads():
    """experiments/*.yaml: the per-row studies load as per-row studies, every other file as an
    experiment (a config a README command names cannot rot unnoticed)."""
    from nightjar_rl.experiments.per_row_study import load_study

    configs = sorted((ROOT / "experiments").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        if path.name.startswith("per_row_study"):
            assert load_study(path)
        else:
            assert load_experiment(path).name == path.stem


def test_a_study_sets_every_scenarios_row_limit(tmp_path):
    """`max_batch_size` in a per-row study: each scenario file it writes has that row limit (and says so in
    its name); anything but a positive integer is refused before any run."""
    import yaml

    from nightjar_rl.env.scenario import load_scenario
    from nightjar_rl.experiments.per_row_study import experiment_dicts, load_study

    base = {"scenarios": ["tiny-sim"], "verify_layout": "mixed", "concurrency": [1], "seeds": [0],
            "per_step": ["k0"], "per_row": ["ab"], "policies": [
                {"name": "k0", "spec": "fixed-0"},
                {"name": "ab", "spec": {"type": "adaptive_budget", "profile": "scenario"}}]}
    path = tmp_path / "per_row_study_rows.yaml"
    path.write_text(yaml.safe_dump({**base, "max_batch_size": 3}))
    [(stem, loop, experiment)] = experiment_dicts(load_study(path), tmp_path)
    assert stem == "tiny-sim-mixed-b3" and loop == "closed"
    assert load_scenario(experiment["scenario"]).engine.max_batch_size == 3
    path.write_text(yaml.safe_dump({**base, "max_batch_size": 0}))
    with pytest.raises(ExperimentError, match="max_batch_size"):
        load_study(path)


def test_learners_train_on_the_train_scenario(tmp_path):
    """`train.scenario`: the bandit trains on another scenario with its own workload (3 requests of at
    most 5 tokens per episode) while evaluation stays on the experiment's (6 requests of 12); a
    scenario with another max_k is one clear error before any run folder is made."""
    envs = ROOT / "envs"
    text = (envs / "tiny-sim.yaml").read_text()
    small = (text.replace("name: tiny-sim", "name: tiny-sim-small").replace("num_requests: 6", "num_requests: 3")
             .replace("max_new_tokens: 12", "max_new_tokens: 5").replace("trace: traces/", f"trace: {envs}/traces/")
             .replace("profile: profiles/", f"profile: {envs}/profiles/"))
    assert small.count(str(envs)) == 2 and "num_requests: 3" in small and "max_new_tokens: 5" in small
    (tmp_path / "tiny-sim-small.yaml").write_text(small)
    data = {"scenario": "tiny-sim", "rates": [50.0], "seeds": [0],
            "policies": ["fixed-0", {"name": "nightjar", "spec": {"type": "nightjar", "epsilon": 0.2}}],
            "train": {"episodes": 2, "scenario": "tiny-sim-small.yaml"}}
    cfg = experiment_from_dict(data, "held_out", str(tmp_path))
    result = runner.run_experiment(cfg, out_dir=tmp_path / "runs", progress=False)
    train = pd.read_csv(result.run_dir / "train.csv")
    assert len(train) == 2 and train["tokens"].between(1, 3 * 5).all()
    results = pd.read_csv(result.run_dir / "results.csv")
    assert (results["requests"] == 6).all() and (results["output_tokens"] > 3 * 5).all()
    (tmp_path / "tiny-sim-small.yaml").write_text(small.replace("max_speculation: 4", "max_speculation: 2"))
    with pytest.raises(ExperimentError, match="'train.scenario' 'tiny-sim-small' has max_k=2"):
        runner.run_experiment(experiment_from_dict(data, "held_out2", str(tmp_path)), out_dir=tmp_path / "runs2",
                              progress=False)
    assert not (tmp_path / "runs2").exists()
