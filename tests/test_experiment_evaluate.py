"""Evaluation of one cell: the driver shows the policy the env's observations on the session clock."""

import numpy as np
import pandas as pd
import pytest

from nightjar_rl.contracts.observation import OBS_INDEX
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
from nightjar_rl.experiments.evaluate import eval_workload, evaluate_cell, goodput
from nightjar_rl.policy import make_policy


@pytest.fixture(scope="module")
def setup():
    scenario = load_scenario("tiny")
    backend = make_backend(scenario)
    return scenario, backend, backend.prompt_pool


class Recorder:
    """A real policy (fixed k) that also keeps the observations it was shown."""

    def __init__(self, policy):
        self.policy, self.seen = policy, []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def predict(self, obs, deterministic=True):
        self.seen.append(np.array(obs))
        return self.policy.predict(obs, deterministic)


def test_driver_shows_the_policy_session_state_before_every_step(setup):
    scenario, backend, pool = setup
    policy = Recorder(make_policy("fixed-1", scenario.max_k))
    cell = evaluate_cell(policy, scenario, backend, 4.0, 3, 5, 6, {"tpot_s": 1.0})
    result = cell.serve_result
    assert len(policy.seen) == len(result.steps)
    first = policy.seen[0]
    assert first[OBS_INDEX["batch_size"]] == 0 and first[OBS_INDEX["queue_len"]] >= 1
    assert first[OBS_INDEX["arrival_rate"]] > 0
    batches = [o[OBS_INDEX["batch_size"]] for o in policy.seen]
    assert batches == [0] + [s.batch_size for s in result.steps[1:]]
    assert result.duration >= sum(s.wall_time for s in result.steps)  # the session's clock, idle gaps included


@pytest.mark.parametrize("scenario_name", ["tiny", "tiny-sim"])
def test_evaluation_and_the_env_drive_the_same_loop(scenario_name):
    """The same seeded workload served by evaluate_cell (a policy inside the driver) and by an env
    loop (the agent's actions through the driver) decodes the same rows and outputs."""
    scenario = load_scenario(scenario_name)
    backend = make_backend(scenario)
    cell = evaluate_cell(make_policy("table-mlc_llm", scenario.max_k), scenario, backend, 1e6, 4, 5,
                         scenario.max_new_tokens,
                         {"tpot_s": 1.0})
    env = SpecDecodeEnv(scenario, backend=backend)
    policy = make_policy("table-mlc_llm", scenario.max_k)
    obs, _ = env.reset(seed=4, options={"rate": 1e6, "num_requests": 5})
    done, steps = False, []
    while not done:
        obs, _, terminated, truncated, info = env.step(policy.predict(obs))
        steps.append(info["stats"])
        done = terminated or truncated
    key = lambda st: (st.k, st.batch_size, st.request_ids, st.drafted, st.accepted, st.emitted)  # noqa: E731
    assert [key(st) for st in steps] == [key(st) for st in cell.serve_result.steps]
    assert env.result().outputs == cell.serve_result.outputs
    if scenario.backend == "sim":  # modelled time: the clocks agree too
        assert env.result().duration == cell.serve_result.duration


def test_same_workload_for_every_policy_and_exact_outputs(setup):
    scenario, backend, pool = setup
    a = eval_workload(scenario, pool, 2.0, 7, 4, 8)
    b = eval_workload(scenario, pool, 2.0, 7, 4, 8)
    assert [(r.prompt_ids, r.arrival_time) for r in a] == [(r.prompt_ids, r.arrival_time) for r in b]
    slo = {"tpot_s": 1.0}
    cells = [evaluate_cell(make_policy(spec, scenario.max_k), scenario, backend, 2.0, 7, 4, 8, slo)
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
    scenario, backend, pool = setup
    policy = make_policy({"type": "nightjar"}, scenario.max_k)
    policy.learning = False
    before = policy.state()
    evaluate_cell(policy, scenario, backend, 5.0, 0, 3, 6, {"tpot_s": 1.0})
    after = policy.state()
    assert before["counts"] == after["counts"] and before["sums"] == after["sums"]
