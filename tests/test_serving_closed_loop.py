"""Closed-loop serving (`max_concurrency`, vLLM's client semaphore) on the simulator: requests are
sent when a slot frees, their arrival is the send time, nothing is lost or served twice, and a cap at
least the number of requests is open loop exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.policy.baselines import FixedK
from nightjar_rl.runtime import serve
from nightjar_rl.runtime.driver import PolicyDriver
from nightjar_rl.serving import ServingSession, build_requests
from nightjar_rl.serving.session import COMPLETED, REJECTED
from nightjar_rl.sim.engine import SimEngine


@pytest.fixture(scope="module")
def backend():
    return make_backend(load_scenario("tiny-sim"))


def engine(backend, **kwargs) -> SimEngine:
    s = backend.scenario
    kwargs.setdefault("max_batch_size", s.engine.max_batch_size)
    return SimEngine(backend.trace, backend.profile, max_seq_len=s.engine.max_seq_len, max_speculation=s.max_k, **kwargs)


def workload(backend, n: int, times=None) -> list[Request]:
    pool = backend.prompt_pool
    times = np.zeros(n) if times is None else np.asarray(times, dtype=float)
    return build_requests([pool.token_ids[i % len(pool)] for i in range(n)], [pool.ids[i % len(pool)] for i in range(n)],
                          times, backend.scenario.max_new_tokens)


def drive(session: ServingSession, k: int = 2, cap: int | None = None, on_step=None) -> pd.DataFrame:
    """Run a session by hand, checking after every step that at most `cap` requests are in the engine."""
    session.advance()
    while not session.done:
        session.step(k)
        if on_step is not None:
            on_step(session)
        if cap is not None:
            eng = session.engine
            assert len(eng.running) + len(eng.waiting) <= cap
            assert session.in_flight <= cap
        session.advance()
        if cap is not None:
            assert len(session.engine.running) + len(session.engine.waiting) <= cap
    return session.result().requests


def test_concurrency_one_serves_strictly_one_after_another(backend):
    reqs = workload(backend, 3)
    df = drive(ServingSession(engine(backend), reqs, max_concurrency=1), cap=1)
    df = df.sort_values("arrival").reset_index(drop=True)
    assert list(df["request_id"]) == [r.request_id for r in reqs]  # FIFO in scheduled order
    assert df["finish_reason"].isin(COMPLETED).all()
    assert df.loc[0, "arrival"] == 0.0
    for i in (1, 2):  # each is sent the moment the previous one finished
        assert df.loc[i, "arrival"] == df.loc[i - 1, "finish"]
        assert df.loc[i, "first_token"] > df.loc[i - 1, "finish"]
    assert (df["ttft"] > 0).all() and (df["ttft"] < df["e2e"]).all()


@pytest.mark.parametrize("cap", [2, 6])
def test_in_flight_never_exceeds_the_cap_and_arrivals_are_send_times(backend, cap):
    times = np.cumsum(np.random.default_rng(0).exponential(0.002, size=12))
    reqs = workload(backend, 12, times)
    df = drive(ServingSession(engine(backend), reqs, max_concurrency=cap), cap=cap)
    assert sorted(df["request_id"]) == sorted(r.request_id for r in reqs)
    scheduled = {r.request_id: r.arrival_time for r in reqs}
    assert (df["arrival"] >= df["request_id"].map(scheduled)).all()
    assert (df["arrival"] > df["request_id"].map(scheduled)).any()  # some waited for a slot
    sends = df.set_index("request_id").loc[[r.request_id for r in reqs], "arrival"].to_numpy()
    assert (np.diff(sends) >= 0).all()  # sent in scheduled order (FIFO)


@pytest.mark.parametrize("cap", [12, 40])
def test_a_cap_of_at_least_the_requests_is_open_loop_exactly(backend, cap):
    times = np.cumsum(np.random.default_rng(1).exponential(0.003, size=12))
    open_loop = serve(engine(backend), workload(backend, 12, times), k=3, progress=False)
    eng = engine(backend)
    closed = PolicyDriver(ServingSession(eng, workload(backend, 12, times), max_concurrency=cap), eng.max_speculation,
                          FixedK(3, eng.max_speculation)).run()
    pd.testing.assert_frame_equal(closed.requests, open_loop.requests)
    assert closed.steps == open_loop.steps and closed.duration == open_loop.duration


def test_rejected_requests_free_their_slot(backend):
    # one engine row, a queue of one: r0 takes the free row, r1 waits beyond it, r2.. find the queue
    # full and are rejected at once; each rejection frees its concurrency slot, so with 3 slots every
    # later request is still sent (and rejected)
    reqs = workload(backend, 5)
    session = ServingSession(engine(backend, max_batch_size=1, max_waiting=1), reqs, max_concurrency=3)
    assert session.advance() == 5
    df = drive(session, cap=3)
    reasons = df.set_index("request_id")["finish_reason"]
    ids = [r.request_id for r in reqs]
    assert reasons[ids[0]] in COMPLETED and reasons[ids[1]] in COMPLETED
    assert (reasons[ids[2:]] == REJECTED).all()
    assert len(df) == 5 and df["request_id"].is_unique and session.in_flight == 0


def test_aborts_free_slots_and_every_request_is_accounted_once(backend):
    reqs = workload(backend, 4)
    ids = [r.request_id for r in reqs]
    session = ServingSession(engine(backend), reqs, max_concurrency=1)
    aborted = []

    def abort_once(s: ServingSession) -> None:
        if not aborted:  # after the first step: abort the running request and one not sent yet
            assert s.abort(ids[0]) and s.abort(ids[2])
            assert not s.abort(ids[2]) and not s.abort("nope")
            aborted.append(s.clock)

    df = drive(session, cap=1, on_step=abort_once).set_index("request_id")
    assert sorted(df.index) == sorted(ids) and session.num_finished == 4
    assert df.loc[ids[0], "finish_reason"] == df.loc[ids[2], "finish_reason"] == "abort"
    assert df.loc[ids[1], "arrival"] == df.loc[ids[0], "finish"]  # sent when the abort freed the slot
    assert np.isnan(df.loc[ids[2], "first_token"]) and df.loc[ids[2], "arrival"] == 0.0  # never sent
    assert df.loc[ids[3], "arrival"] == df.loc[ids[1], "finish"]
    assert df.loc[[ids[1], ids[3]], "finish_reason"].isin(COMPLETED).all()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_bad_max_concurrency_is_refused(backend, bad):
    with pytest.raises(ValueError, match="max_concurrency"):
        ServingSession(engine(backend), workload(backend, 1), max_concurrency=bad)


def test_scenario_field_and_reset_option_close_the_env_loop():
    from nightjar_rl.env.spec_decode_env import SpecDecodeEnv

    scenario = load_scenario("tiny-sim").replace(max_concurrency=1, num_requests=3)
    env = SpecDecodeEnv(scenario)
    for options, cap in (({"rate": float("inf")}, 1), ({"rate": float("inf"), "max_concurrency": 2}, 2)):
        env.reset(seed=0, options=options)
        assert env.session.max_concurrency == cap
        while True:
            *_, terminated, truncated, _ = env.step(2)
            assert len(env.session.engine.running) + len(env.session.engine.waiting) <= cap
            if terminated or truncated:
                break
        assert terminated and len(env.result().requests) == 3
    env.reset(seed=0, options={"max_concurrency": None})
    assert env.session.max_concurrency is None


def test_bench_max_concurrency_flag(tmp_path, capsys):
    import json

    from nightjar_rl.cli import main

    outs = {}
    for flag in ([], ["--max-concurrency", "1"]):
        out = tmp_path / f"b{len(flag)}.json"
        assert main(["bench", "--scenario", "tiny-sim", "--k", "2", "--num-requests", "5", "--quiet", "--out", str(out),
                     *flag]) == 0
        outs[len(flag)] = json.loads(out.read_text())
    open_loop, closed = outs[0], outs[2]
    assert "max_concurrency" not in open_loop and closed["max_concurrency"] == 1
    assert closed["requests"] == open_loop["requests"] == 5 and closed["output_tokens"] == open_loop["output_tokens"]
    assert closed["mean_batch"] <= 1.0 < open_loop["mean_batch"]  # one request in flight at a time
    assert closed["ttft_p95_s"] < open_loop["ttft_p95_s"]  # TTFT counts from the send, not from t=0
    capsys.readouterr()
    assert main(["bench", "--scenario", "tiny-sim", "--max-concurrency", "0", "--quiet"]) == 2
    assert "--max-concurrency must be >= 1" in capsys.readouterr().err
