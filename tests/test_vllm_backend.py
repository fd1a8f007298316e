"""vLLM as a nightjar-rl backend: its engine stepped in-process behind the engine surface, every
step a `StepStats`, plans (uniform and per row) that never change greedy outputs, aborts, and the
Gymnasium env on it. One vLLM engine for the module (eager, 4 slots)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.vllm_support import MAX_K, skip_without_vllm

skip_without_vllm()

from nightjar_rl.contracts import SpecPlan  # noqa: E402
from nightjar_rl.env.backend import VLLMBackend, make_backend  # noqa: E402
from nightjar_rl.env.scenario import load_scenario  # noqa: E402
from nightjar_rl.serving import ServingSession, build_requests  # noqa: E402

SCENARIO = dict(name="vllm-test", backend="vllm", model="smollm2-135m", dtype="float32", max_batch_size=4,
                max_seq_len=512, max_speculation=MAX_K, prompts={"path": "bundled", "families": None},
                max_prompt_tokens=200, max_new_tokens=32, num_requests=6, arrivals={"kind": "poisson", "rate": 40.0},
                horizon={"steps": 12}, reward="decode_throughput")


@pytest.fixture(scope="module")
def backend():
    b = make_backend(load_scenario(SCENARIO))
    assert isinstance(b, VLLMBackend)
    return b


def requests(backend, n=6, arrivals=None):
    pool = backend.prompt_pool
    return build_requests(pool.token_ids[:n], pool.ids[:n], np.zeros(n) if arrivals is None else arrivals, 32)


def serve(backend, plan_of, reqs=None):
    """Serve to the end, the plan of each step from `plan_of(engine)`; returns (result, steps)."""
    engine = backend.make_engine(0)
    session = ServingSession(engine, reqs if reqs is not None else requests(backend))
    session.advance()
    while not session.done:
        session.step(plan_of(engine))
        session.advance()
    return session.result(), session.steps


@pytest.fixture(scope="module")
def plain(backend):
    return serve(backend, lambda e: 0)


def test_step_stats_contract(backend, plain):
    result, steps = serve(backend, lambda e: MAX_K, requests(backend, arrivals=np.linspace(0, 0.3, 6)))
    assert set(result.requests["finish_reason"]) <= {"eos", "length"} and len(result.requests) == 6
    for s in steps:
        n = len(s.request_ids)
        assert s.batch_size == n == len(s.plan) == len(s.drafted) == len(s.accepted) == len(s.emitted)
        assert all(d <= k == MAX_K for d, k in zip(s.drafted, s.plan))
        assert all(0 <= a <= d for a, d in zip(s.accepted, s.drafted))
        assert all(1 <= e <= a + 1 for e, a in zip(s.emitted, s.accepted))
        assert s.wall_time > 0 and s.scored_tokens == sum(1 + d for d in s.drafted)
        assert s.num_prefilled == len(s.first_token_ids)
    assert sum(s.tokens_out for s in steps) == sum(result.requests["output_tokens"])
    assert sum(s.num_prefilled for s in steps) == 6
    assert sum(map(sum, (s.accepted for s in steps))) > 0
    assert result.outputs == plain[0].outputs  # greedy: speculation changes no token
    assert all(sum(s.drafted) == 0 for s in plain[1])


def test_per_row_plans_are_exact_and_keep_outputs(backend, plain):
    def per_row(engine):
        return SpecPlan.per_row({s.request_id: i % (MAX_K + 1) for i, s in enumerate(engine.running)})

    result, steps = serve(backend, per_row)
    assert result.outputs == plain[0].outputs
    assert all(d <= k for s in steps for d, k in zip(s.drafted, s.plan))
    assert {k for s in steps for k in s.plan} == set(range(MAX_K))  # 4 slots: rows at 0..3
    assert any(s.plan[i] == 0 and s.drafted[i] == 0 for s in steps for i in range(len(s.plan)))


def test_bad_plans_and_requests_are_refused(backend):
    from nightjar_rl.contracts.plan import PlanError

    engine = backend.make_engine(0)
    engine.submit(requests(backend, 1)[0])
    with pytest.raises(PlanError, match=r"\[0, 4\]"):
        engine.step(MAX_K + 1)
    with pytest.raises(PlanError, match="not running"):
        engine.step(SpecPlan.per_row({"nobody": 1}))
    with pytest.raises(ValueError, match="duplicate"):
        engine.submit(requests(backend, 1)[0])
    engine.close()


def test_abort_leaves_at_the_next_step(backend):
    engine = backend.make_engine(0)
    a, b = requests(backend, 2)
    engine.submit(a)
    engine.submit(b)
    engine.step(2)
    assert {s.request_id for s in engine.running} == {a.request_id, b.request_id} and not engine.waiting
    assert engine.abort(a.request_id)
    stats = engine.step(2)
    assert stats.aborted_ids == [a.request_id] and [s.request_id for s in engine.running] == [b.request_id]
    (seq,) = engine.pop_finished()
    assert seq.finish_reason == "abort" and not engine.abort(a.request_id)
    engine.close()


def test_env_on_vllm_passes_check_env(backend):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from nightjar_rl.env import SpecDecodeEnv

    env = SpecDecodeEnv(load_scenario(SCENARIO), backend=backend)  # gym.make would deep-copy the engine
    env.spec = gym.spec("nightjar_rl/SpecDecodeVLLM-v1")  # the registered id (what gym.make would attach)
    assert env.spec.nondeterministic  # observations carry measured step times
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Box is unbounded above (queue length, rates): a warning only
        check_env(env)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(2)
    assert np.isfinite(reward) and info["stats"].k <= 2


def test_registered_id_names_the_vllm_scenario():
    from nightjar_rl.registration import ENV_IDS, SIM_IDS

    assert load_scenario(ENV_IDS["nightjar_rl/SpecDecodeVLLM-v1"][0]).backend == "vllm"
    assert "nightjar_rl/SpecDecodeVLLM-v1" not in SIM_IDS
