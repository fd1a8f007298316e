"""Abort and overload, in both decoders: aborted requests leave at the next step boundary with
finish_reason "abort", everything else stays identical to plain greedy decoding, slots and KV are
reused; a bounded queue rejects with QueueFullError and memory stays flat under overload."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nightjar_rl.decoding import QueueFullError, Request
from nightjar_rl.runtime import serve
from nightjar_rl.serving import ServingSession, summarize

from .conftest import greedy_reference
from .engines import DECODER_KINDS, drain, make_engine

VOCAB = 96
POOL = [
    Request(f"r{i}", [random.Random(i).randrange(VOCAB) for _ in range(3 + i % 7)], 6 + (i * 5) % 11)
    for i in range(10)
]


@pytest.fixture(scope="module")
def reference(tiny_target):
    cache: dict[str, list[int]] = {}

    def get(req: Request) -> list[int]:
        if req.request_id not in cache:
            cache[req.request_id] = greedy_reference(tiny_target, req.prompt_ids, req.max_new_tokens)
        return cache[req.request_id]

    return get


@pytest.mark.parametrize("kind", DECODER_KINDS)
@pytest.mark.parametrize("drafter", ["ngram", "self"])
def test_abort_waiting_running_and_finishing(tiny_target, reference, decoders, kind, drafter):
    engine = make_engine(kind, tiny_target, drafter, max_batch_size=3, max_seq_len=64, max_speculation=4)
    decoders.append(engine)
    short = Request("short", [5, 6, 7], 1)  # finishes with its first token
    for r in [*POOL[:5], short]:
        engine.submit(r)
    outputs, reasons = {}, {}
    engine.step(3)  # admits r0..r2
    engine.step(3)
    running = [s.request_id for s in engine.running]
    assert engine.abort("r1") and "r1" in running  # running
    assert engine.abort("r4") and "r4" in {r.request_id for r in engine.waiting}  # queued
    assert engine.abort("r4")  # asking twice is harmless
    assert not engine.abort("nope")
    stats = engine.step(3)  # the aborts apply at this step's boundary
    for seq in engine.pop_finished():
        outputs[seq.request_id], reasons[seq.request_id] = seq.output_ids, seq.finish_reason
    assert sorted(stats.aborted_ids) == ["r1", "r4"] and set(stats.aborted_ids) <= set(stats.finished_ids)
    assert "r1" not in stats.request_ids  # not decoded
    assert reasons["r1"] == reasons["r4"] == "abort"
    assert outputs["r4"] == []
    assert outputs["r1"] == reference(POOL[1])[: len(outputs["r1"])]  # partial, and exact so far
    assert "r1" not in {s.request_id for s in engine.running}
    # slots freed by the aborts are reused by later requests
    for r in POOL[5:8]:
        engine.submit(r)
    drain(engine, [3, 0, 2], outputs, reasons)
    assert not engine.abort("r0")  # already finished
    assert reasons["short"] == "length"
    for r in [POOL[0], POOL[2], POOL[3], *POOL[5:8]]:
        assert outputs[r.request_id] == reference(r), r.request_id
        assert reasons[r.request_id] in ("eos", "length")
    assert engine.scheduler.reserved == 0 and not engine.running and not engine.waiting


@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_abort_of_a_request_that_would_finish_this_step(tiny_target, reference, decoders, kind):
    """An abort asked before a step wins over the tokens that step would have produced."""
    engine = make_engine(kind, tiny_target, "self", max_batch_size=2, max_seq_len=64, max_speculation=4)
    decoders.append(engine)
    engine.submit(Request("a", [1, 2, 3], 3))
    engine.submit(POOL[0])
    engine.step(4)  # prefill: one token each
    engine.step(4)  # the target drafting for itself: "a" has all its tokens after this round...
    finished = {s.request_id: s for s in engine.pop_finished()}
    if "a" in finished:  # ...so it finished before the abort was asked: the abort is refused
        assert not engine.abort("a") and finished["a"].finish_reason == "length"
    outputs = {rid: s.output_ids for rid, s in finished.items()}
    reasons = {rid: s.finish_reason for rid, s in finished.items()}
    engine.submit(Request("b", [4, 5], 2))
    engine.step(4)  # prefill of "b" (one token left)
    assert engine.abort("b")
    drain(engine, [4], outputs, reasons)
    assert reasons["b"] == "abort" and outputs["b"] == greedy_reference(tiny_target, [4, 5], 2)[:1]
    assert outputs[POOL[0].request_id] == reference(POOL[0])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(DECODER_KINDS),
    drafter=st.sampled_from(["ngram", "self", "early-exit"]),
    ks=st.lists(st.integers(0, 4), min_size=1, max_size=6),
    aborts=st.lists(st.tuples(st.integers(0, 10), st.integers(0, 5)), max_size=4),
    max_batch=st.integers(1, 4),
)
def test_random_aborts_leave_everything_else_exact(tiny_target, reference, kind, drafter, ks, aborts, max_batch):
    engine = make_engine(kind, tiny_target, drafter, max_batch_size=max_batch, max_seq_len=64, max_speculation=4)
    with engine:
        for r in POOL[:6]:
            engine.submit(r)
        outputs, reasons, asked = {}, {}, set()
        for step in range(400):
            if not engine.has_work:
                break
            for when, idx in aborts:
                if when == step and engine.abort(POOL[idx].request_id):
                    asked.add(POOL[idx].request_id)
            engine.step(ks[step % len(ks)])
            for seq in engine.pop_finished():
                assert seq.request_id not in outputs
                outputs[seq.request_id], reasons[seq.request_id] = seq.output_ids, seq.finish_reason
    assert set(outputs) == {r.request_id for r in POOL[:6]}
    for r in POOL[:6]:
        out, want = outputs[r.request_id], reference(r)
        if reasons[r.request_id] == "abort":
            assert r.request_id in asked and out == want[: len(out)]
        else:
            assert out == want
    assert engine.scheduler.reserved == 0


@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_queue_bound_rejects_clearly_and_memory_stays_flat(tiny_target, decoders, kind):
    engine = make_engine(kind, tiny_target, "ngram", max_batch_size=2, max_seq_len=64, max_speculation=4, max_waiting=3)
    decoders.append(engine)
    for i in range(5):  # two for the free slots, three waiting beyond them
        engine.submit(Request(f"q{i}", [1, 2, 3], 4))
    assert engine.backlog() == 3 and engine.backlog(pending=1) == 4
    with pytest.raises(QueueFullError, match="3 requests already waiting beyond the free batch slots"):
        engine.submit(Request("q5", [1, 2, 3], 4))
    assert issubclass(QueueFullError, ValueError)
    # sustained overload: five arrivals per step, far more than the engine serves
    rejected = completed = 0
    sizes = []
    for step in range(60):
        for j in range(5):
            try:
                engine.submit(Request(f"o{step}-{j}", [1 + j, 2, 3], 3))
            except QueueFullError:
                rejected += 1
        engine.step(2)
        completed += len(engine.pop_finished())
        sched = engine.scheduler
        assert len(engine.waiting) + len(engine.running) <= 2 + 3
        sizes.append(len(sched._live) + len(sched._unpopped) + len(sched._aborts) + len(sched.finished))
    assert rejected > 150 and completed > 20
    assert max(sizes) <= 2 + 3  # bookkeeping is bounded by slots + queue, not by requests seen
    with pytest.raises(ValueError, match="max_waiting"):
        make_engine(kind, tiny_target, "none", max_waiting=0)


def test_session_accounts_for_aborted_and_rejected_requests(tiny_target, reference):
    engine = make_engine("standard", tiny_target, "ngram", max_batch_size=2, max_seq_len=64, max_waiting=2)
    late = Request("late", [9, 9, 9], 5, arrival_time=1e6)
    requests = [Request(r.request_id, r.prompt_ids, r.max_new_tokens) for r in POOL[:6]] + [late]
    session = ServingSession(engine, requests)
    assert session.advance() == 6  # all arrive at t=0: two take the free slots, two wait, two are rejected
    session.step(2)
    assert session.abort("r0") and session.abort("late")
    assert not session.abort("r5")  # rejected: already accounted for
    while True:
        session.advance()
        if session.done:
            break
        session.step(2)
    result = session.result()
    reasons = dict(zip(result.requests["request_id"], result.requests["finish_reason"]))
    assert sorted(reasons) == sorted(r.request_id for r in requests)
    assert reasons["r0"] == reasons["late"] == "abort"
    assert [reasons[f"r{i}"] for i in (4, 5)] == ["rejected"] * 2
    for i in (1, 2, 3):
        assert reasons[f"r{i}"] in ("eos", "length") and result.outputs[f"r{i}"] == reference(POOL[i])
    assert result.requests.set_index("request_id").loc["r5", "error"].startswith("request 'r5' rejected")
    summary = summarize(result)
    assert (summary["completed"], summary["aborted"], summary["rejected"], summary["failed"]) == (3, 2, 2, 0)
    # serve(): rejected requests count as accounted for, not as "never served"
    engine = make_engine("standard", tiny_target, "ngram", max_batch_size=2, max_seq_len=64, max_waiting=2)
    served = serve(engine, requests[:6], k=2, progress=False)
    assert (served.requests["finish_reason"] == "rejected").sum() == 2
