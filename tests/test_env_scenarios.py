"""Scenario files: the shipped ones load; bad ones fail with one line naming the field."""

from pathlib import Path

import numpy as np
import pytest

from nightjar_rl.contracts.rewards import REWARDS, make_reward
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.env.scenario import ScenarioError, load_scenario

ENVS = Path(__file__).resolve().parents[1] / "envs"


@pytest.mark.parametrize("path", sorted(ENVS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_scenarios_load(path):
    s = load_scenario(path)
    assert s.name == path.stem
    s.engine_config().validate()
    assert len(s.arrival_process().sample(3, np.random.default_rng(0))) > 0


def test_shipped_set_covers_the_issue():
    names = {p.stem for p in ENVS.glob("*.yaml")}
    assert {"smollm2-ngram", "smollm2-early-exit", "tiny", "smollm2-load-ramp"} <= names
    ramp = load_scenario("smollm2-load-ramp").arrivals
    rates = [r for _, r in ramp["schedule"]]
    assert rates[1] > rates[0] and rates[2] < rates[1]
    assert load_scenario("smollm2-early-exit").engine.draft == "early-exit:4"


BAD = [
    ("drafter: magic\n", "'drafter'"),
    ("max_speculation: -1\n", "'max_speculation'"),
    ("max_batch_size: 0\n", "'max_batch_size'"),
    ("reward: speed\n", "'reward'"),
    ("horizon: {minutes: 3}\n", "'horizon'"),
    ("horizon: {steps: 0}\n", "'horizon.steps'"),
    ("arrivals: {kind: poisson, rate: -2}\n", "arrivals.rate"),
    ("arrivals: {kind: burst}\n", "arrivals.kind"),
    ("arrivals: {kind: piecewise, schedule: [[10, 1], [0, 2]]}\n", "arrivals.schedule[1]"),
    ("arrivals: {kind: trace, path: /no/such/file.txt}\n", "arrivals.path"),
    ("drafter: draft\n", "'draft'"),
    ("colour: blue\n", "colour"),
    ("prompts: {path: bundled, families: chat}\n", "'prompts.families'"),
    ("reward: goodput\nreward_kwargs: {slo: 1}\n", "'reward_kwargs'"),
    ("max_new_tokens: 300\n", "'max_new_tokens'"),
    ("decoder: warp\n", "'decoder'"),
    ("max_concurrency: 0\n", "'max_concurrency'"),
    ("max_concurrency: 2.5\n", "'max_concurrency'"),
    ("max_concurrency: many\n", "'max_concurrency'"),
]


@pytest.mark.parametrize("line, field", BAD, ids=[b[1] for b in BAD])
def test_bad_scenario_names_the_field(tmp_path, line, field):
    base = (ENVS / "tiny.yaml").read_text()
    keys = {ln.split(":")[0] for ln in line.splitlines()}
    kept = "\n".join(ln for ln in base.splitlines() if ln.split(":")[0] not in keys)
    path = tmp_path / "bad.yaml"
    path.write_text(kept + "\n" + line)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    message = str(err.value)
    assert field in message and "\n" not in message


def test_unknown_scenario_name_lists_known():
    with pytest.raises(ScenarioError, match="tiny") as err:
        load_scenario("no-such-scenario")
    assert "did you mean" not in str(err.value)  # nothing close
    with pytest.raises(ScenarioError, match=r"unknown scenario 'gpu-whatif-ngrm'; did you mean 'gpu-whatif-ngram'"):
        load_scenario("gpu-whatif-ngrm")


def test_rewards_are_named_and_swappable():
    stats = StepStats(step=0, k=2, batch_size=2, num_waiting=0, num_prefilled=0, emitted=[3, 1], wall_time=0.1)
    assert set(REWARDS) >= {"throughput", "goodput", "latency"}
    assert make_reward("throughput")(stats) == pytest.approx(40.0)
    assert make_reward("latency")(stats) == pytest.approx(-0.025)
    # row 0: 0.1/3 s per token meets a 0.05 s SLO; row 1: 0.1 s per token does not
    assert make_reward("goodput", tpot_slo_s=0.05)(stats) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward("speed")


def test_max_k_is_another_name_for_max_speculation():
    assert load_scenario({"name": "x", "max_k": 3}).max_k == 3
    with pytest.raises(ScenarioError, match="fields 'max_k' and 'max_speculation' are the same setting"):
        load_scenario({"name": "x", "max_k": 3, "max_speculation": 4})


def test_every_engine_field_is_settable_from_a_scenario():
    s = load_scenario({"name": "x", "max_kv_tokens": 4096, "max_waiting": 7, "temperature": 0.5, "top_p": 0.9})
    e = s.engine_config(seed=3)
    assert (e.max_kv_tokens, e.max_waiting, e.temperature, e.top_p, e.seed) == (4096, 7, 0.5, 0.9, 3)
    assert load_scenario(s.to_dict()).engine == s.engine  # the flat form round-trips


def test_an_empty_scenario_file_is_an_error(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(ScenarioError, match="the file is empty"):
        load_scenario(path)
