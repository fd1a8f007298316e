"""The first run (issue 21): results stated against the user's config (goals opt-in), the speedup
table and figure, and the live confirmation with measured noise; the shipped quickstart configs."""

import json
from pathlib import Path

import pandas as pd
import pytest

from nightjar_rl.analysis.study import findings, headline, verdict
from nightjar_rl.analysis.tables import with_speedup
from nightjar_rl.env.scenario import ScenarioError
from nightjar_rl.experiments import load_experiment
from nightjar_rl.experiments.config import ExperimentError, experiment_from_dict
from nightjar_rl.experiments.confirm import by_rows_text, choose_policies, confirmation_table, speed_hint
from nightjar_rl.experiments.drift import ratio_by_rows
from nightjar_rl.experiments.runner import load_run, run_experiment

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def frame() -> pd.DataFrame:
    tput = {"k0": {1: 100.0, 64: 500.0}, "k2": {1: 120.0, 64: 400.0}, "nj": {1: 150.0, 64: 500.0}}
    return pd.DataFrame([
        {"policy": p, "rate": r, "seed": s, "throughput_tok_s": v * (1 + 0.01 * s), "learned": p == "nj", "replicate": 0}
        for p, by in tput.items() for r, v in by.items() for s in range(3)])


def test_findings_state_results_without_targets():
    table = headline(frame(), ["nj"], ["k0", "k2"])
    lines = findings(table)
    assert "goal" not in " ".join(lines) and "met" not in " ".join(lines)
    assert lines[0].startswith("high load (64/s): nj") and "= 1.000x" in lines[0]
    assert lines[1].startswith("low load (1/s): nj 1.500x") and "paired per seed 1.500 ± 0.000x" in lines[1]
    checked = verdict(table, win=1.1)
    assert [c.split("; goal")[0] for c in checked] == lines and "goal >= 1.10x: NOT met" in checked[0]


def test_speedup_is_paired_per_load_and_seed():
    df = with_speedup(frame(), "k0")
    nj = df[(df.policy == "nj") & (df.rate == 1)].sort_values("seed")
    assert list(nj["speedup"]) == pytest.approx([1.5, 1.5, 1.5])
    assert (df[df.policy == "k0"]["speedup"] == 1.0).all()
    with pytest.raises(ValueError, match="baseline policy 'k9'"):
        with_speedup(frame(), "k9")


def tiny(**changes) -> dict:
    data = {"name": "first", "scenario": "tiny-sim", "rates": [5, 50], "seeds": [0, 1], "num_requests": 4,
            "max_new_tokens": 6, "policies": [{"name": "k0", "spec": "fixed-0"}, {"name": "k2", "spec": "fixed-2"},
                                              {"name": "nj", "spec": {"type": "nightjar", "epsilon": 0.2}}],
            "train": {"episodes": 2, "num_requests": 4}}
    data.update(changes)
    return data


def test_goals_and_confirm_are_validated():
    cfg = experiment_from_dict(tiny(goals={"win": 1.2}, confirm={"scenario": "tiny", "concurrency": [1, 2]}))
    assert cfg.goals == {"win": 1.2}
    assert cfg.confirm.rates == [float("inf")] and cfg.confirm.repeats == 3 and cfg.confirm.top == 2
    assert "goals" not in cfg.to_dict() and "confirm" not in cfg.to_dict()  # reporting only: resumable
    for bad, field in (({"goals": {"wins": 1.2}}, "'goals'"), ({"goals": {"win": 0}}, "'goals'"),
                       ({"confirm": {"rates": [1]}}, "'confirm.scenario'"),
                       ({"confirm": {"scenario": "tiny"}}, "'confirm.rates'"),
                       ({"confirm": {"scenario": "tiny", "rates": [1], "repeats": 1}}, "'confirm.repeats'"),
                       ({"confirm": {"scenario": "tiny", "rates": [1], "policies": ["zz"]}}, "'confirm.policies'"),
                       ({"confirm": {"scenario": "tiny", "rates": [1], "extra": 1}}, "field 'confirm' must"),
                       ({"confirm": {"scenario": "tiny", "rates": [1], "rescale_twin": True}}, "'confirm.rescale_twin'"),
                       ({"confirm": {"scenario": "tiny", "twin": "tiny-sim", "rates": [1], "rescale_twin": 1}},
                        "'confirm.rescale_twin'")):
        with pytest.raises(ExperimentError, match=field):
            experiment_from_dict(tiny(**bad))


def test_summary_without_goals_states_results_and_with_goals_checks_them(tmp_path):
    plain = run_experiment(experiment_from_dict(tiny()), out_dir=tmp_path, progress=False)
    assert "goal" not in plain.summary and "high load (50/s): nj" in plain.summary
    assert "speedup over k0 (throughput ratio paired per seed)" in plain.summary
    assert (plain.run_dir / "speedup_vs_rate.png").stat().st_size > 2000
    checked = run_experiment(experiment_from_dict(tiny(goals={})), out_dir=tmp_path / "g", progress=False)
    assert "goal >= 1.15x" in checked.summary


def test_live_confirmation_reports_repeats_and_the_twin(tmp_path):
    cfg = experiment_from_dict(tiny(confirm={"scenario": "tiny", "twin": "tiny-sim", "rates": [20], "policies": ["nj"],
                                             "repeats": 2, "num_requests": 3, "max_new_tokens": 5,
                                             "rescale_twin": True}))
    result = run_experiment(cfg, out_dir=tmp_path, progress=False)
    df = result.confirm
    live, twin, twin_now = df[df.backend == "live"], df[df.backend == "sim"], df[df.backend == "sim_rescaled"]
    names = list(dict.fromkeys(live["policy"]))
    assert names == ["k0", "nj"]  # the baseline first
    assert len(live) == 2 * len(names) and list(live["repeat"]) == [0] * len(names) + [1] * len(names)  # interleaved
    assert len(twin) == len(names) and (twin["repeat"] == 0).all()
    assert (result.run_dir / "confirm.csv").is_file()
    # the twin again at the speed timed around the live cells (the mean of the before and after ratios)
    drift = json.loads((result.run_dir / "speed_drift.json").read_text())
    assert [m["label"] for m in drift["measurements"]] == ["before", "after"]
    assert drift["ratio"] == pytest.approx(sum(m["ratio"] for m in drift["measurements"]) / 2)
    assert len(twin_now) == len(names) and (twin_now["profile_scale"] == drift["ratio"]).all()
    assert twin_now["profile_scale_keeps_host"].all() and not twin["profile_scale_keeps_host"].any()
    assert (twin["profile_scale"] == 1.0).all()
    by_rows = ratio_by_rows(drift)  # each forward by the anchor's ratio at its rows
    assert set(by_rows) == {1, 4, 16} and (twin_now["profile_scale_by_rows"] == by_rows_text(by_rows)).all()
    assert (twin["profile_scale_by_rows"] == "").all() and f"forwards x {by_rows_text(by_rows)} by rows" in result.summary
    assert {"twin", "live/twin", "twin_now", "live/twin_now"} <= set(confirmation_table(df, "k0"))
    assert "twin_now: the twin at this machine's speed" in result.summary and "host work kept" in result.summary
    text = result.summary
    assert "live confirmation on tiny: 2 repeats of one workload" in text and "twin prediction from tiny-sim" in text
    assert "repeat-to-repeat spread up to" in text and "20/s: live order" in text
    assert "live confirmation" in (result.run_dir / "summary.txt").read_text()
    assert load_run(result.run_dir).config.confirm is None  # not part of the run's config.yaml


def test_confirmation_table_by_hand():
    rows = [{"backend": "live", "policy": p, "rate": 4.0, "concurrency": None, "seed": 0, "repeat": r,
             "throughput_tok_s": v} for p, vals in (("k0", [10.0, 12.0, 11.0]), ("nj", [12.0, 12.0, 13.2]))
            for r, v in enumerate(vals)]
    rows += [{"backend": "sim", "policy": p, "rate": 4.0, "concurrency": None, "seed": 0, "repeat": 0,
              "throughput_tok_s": v} for p, v in (("k0", 10.0), ("nj", 15.0))]
    table = confirmation_table(pd.DataFrame(rows), "k0").set_index("policy")
    assert table.loc["k0", "median"] == 11.0 and table.loc["k0", "min"] == 10.0 and table.loc["k0", "max"] == 12.0
    assert table.loc["nj", "live/twin"] == pytest.approx(12.0 / 15.0)
    assert table.loc["nj", "vs_baseline"] == pytest.approx((1.2 + 1.0 + 1.2) / 3)
    assert table.loc["k0", "vs_baseline"] == 1.0
    assert speed_hint(table) is None  # live/twin 1.1 and 0.8: within the twin's error
    slow = confirmation_table(pd.DataFrame([r | {"throughput_tok_s": r["throughput_tok_s"] * 0.6} if r["backend"] == "live"
                                            else r for r in rows]), "k0")
    assert "the live engine ran at 0.57x the twin's prediction" in speed_hint(slow)  # median of 0.66 and 0.48
    assert "likely slower now" in speed_hint(slow) and "rescale_twin: true" in speed_hint(slow)


def test_choose_policies_puts_the_baseline_first():
    cc = experiment_from_dict(tiny(confirm={"scenario": "tiny", "rates": [1], "top": 1})).confirm
    assert choose_policies(cc, frame(), ["k0", "k2"]) == ["k0", "nj"]
    cc.policies = ["k2"]
    assert choose_policies(cc, frame(), ["k0", "k2"]) == ["k0", "k2"]


def test_shipped_quickstarts_load():
    first = load_experiment(EXPERIMENTS / "quickstart.yaml")
    assert first.scenario == "gpu-whatif-ngram" and first.goals is None and len(first.seeds) >= 5
    assert first.confirm.scenario == "smollm2-ngram" and first.confirm.twin == "smollm2-ngram-sim"
    assert first.confirm.repeats >= 3
    assert load_experiment(EXPERIMENTS / "quickstart-live.yaml").scenario == "smollm2-ngram"
    assert load_experiment(EXPERIMENTS / "nightjar_study.yaml").goals == {"win": 1.15, "low_loss": 0.97,
                                                                          "hindsight": 0.97}


def test_a_confirmation_that_cannot_rescale_its_twin_is_refused_before_the_sweep(tmp_path):
    """`rescale_twin` with a twin whose profile has no speed anchor fails when the experiment starts, not
    after the sweep and the live cells."""
    cfg = experiment_from_dict(tiny(confirm={"scenario": "tiny", "twin": "gpu-whatif-ngram", "rates": [20],
                                             "rescale_twin": True}))
    with pytest.raises(ScenarioError, match="'gpu-whatif-ngram': its profile .* has no speed_anchor"):
        run_experiment(cfg, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # no run folder
