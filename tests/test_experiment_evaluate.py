"""Evaluation of one cell: the controller sees the env's observations on the serve() clock."""

import numpy as np
import pandas as pd
import pytest

from nightjar_rl.env.observation import OBS_INDEX
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
from nightjar_rl.experiments.evaluate import PolicyController, eval_workload, evaluate_cell, goodput
from nightjar_rl.models import load_model
from nightjar_rl.policy import make_policy
from nightjar_rl.serving import serve
from nightjar_rl.stack import build_stack


@pytest.fixture(scope="module")
def setup():
    scenario = load_scenario("tiny")
    target = load_model(scenario.model)
    return scenario, target, SpecDecodeEnv.prompt_pool_for(scenario, target)


class Recorder:
    """A real policy (fixed k) that also keeps the observations it was shown."""

    def __init__(self, policy):
        self.policy, self.seen = policy, []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def predict(self, obs, deterministic=True):
        self.seen.append(np.array(obs))
        return self.policy.predict(obs, deterministic)


def test_controller_tracks_serve_clock_and_arrivals(setup):
    scenario, target, pool = setup
    requests = eval_workload(scenario, pool, rate=4.0, seed=3, num_requests=5, max_new_tokens=6)
    engine = build_stack(scenario.engine_config(), target=target).engine
    policy = Recorder(make_policy("fixed-1", scenario.max_k))
    controller = PolicyController(engine, policy, scenario.max_k)
    result = serve(engine, requests, k=controller, progress=False)
    assert controller.clock + result.steps[-1].wall_time == pytest.approx(result.duration)
    assert len(controller._seen) == len(requests)
    first = policy.seen[0]
    assert first[OBS_INDEX["batch_size"]] == 0 and first[OBS_INDEX["queue_len"]] >= 1
    assert first[OBS_INDEX["arrival_rate"]] > 0
    batches = [o[OBS_INDEX["batch_size"]] for o in policy.seen]
    assert batches == [0] + [s.batch_size for s in result.steps[1:]]


def test_same_workload_for_every_policy_and_exact_outputs(setup):
    scenario, target, pool = setup
    a = eval_workload(scenario, pool, 2.0, 7, 4, 8)
    b = eval_workload(scenario, pool, 2.0, 7, 4, 8)
    assert [(r.prompt_ids, r.arrival_time) for r in a] == [(r.prompt_ids, r.arrival_time) for r in b]
    slo = {"tpot_s": 1.0}
    cells = [evaluate_cell(make_policy(spec, scenario.max_k), scenario, target, pool, 2.0, 7, 4, 8, slo)
             for spec in ("fixed-0", "fixed-3", "table-mlc_llm")]
    outputs = [c.serve_result.outputs for c in cells]
    assert outputs[0] == outputs[1] == outputs[2]  # greedy float32: speculation is lossless
    assert cells[0].summary["mean_k"] == 0 and cells[1].summary["mean_k"] == 3
    kdf = cells[1].k_by_batch
    assert (kdf["mean_k"] == 3).all() and kdf["steps"].sum() == sum(s.batch_size > 0 for s in cells[1].serve_result.steps)


def test_goodput_counts_only_requests_within_slo():
    df = pd.DataFrame({"tpot": [0.1, 0.3, 0.2], "ttft": [1.0, 0.1, 5.0], "output_tokens": [10, 20, 30]})
    assert goodput(df, 10.0, tpot_s=0.25) == pytest.approx(4.0)
    assert goodput(df, 10.0, tpot_s=0.25, ttft_s=2.0) == pytest.approx(1.0)


def test_learner_does_not_learn_in_evaluation_by_default(setup):
    scenario, target, pool = setup
    policy = make_policy({"type": "nightjar"}, scenario.max_k)
    policy.learning = False
    before = policy.state()
    evaluate_cell(policy, scenario, target, pool, 5.0, 0, 3, 6, {"tpot_s": 1.0})
    after = policy.state()
    assert before["counts"] == after["counts"] and before["sums"] == after["sums"]
