"""Faults survived, in both decoders: a drafter that raises only costs speculation (outputs stay
exact, `draft_failures` counts it, no request is lost); a failing target forward fails only the
requests it belongs to (finish_reason "error", message kept) and the engine serves the rest."""

from __future__ import annotations

import pytest

from nightjar_rl.decoding import Request
from nightjar_rl.runtime import serve
from nightjar_rl.serving import summarize

from .conftest import greedy_reference
from .engines import DECODER_KINDS, drain, fail_calls, make_engine, poison_target

REQUESTS = [Request(f"r{i}", [(7 * i + j) % 96 for j in range(2 + i % 5)], 8 + i % 6) for i in range(7)]


@pytest.fixture(scope="module")
def reference(tiny_target):
    return {r.request_id: greedy_reference(tiny_target, r.prompt_ids, r.max_new_tokens) for r in REQUESTS}


@pytest.mark.parametrize("kind", DECODER_KINDS)
@pytest.mark.parametrize("drafter, where", [("ngram", "propose"), ("self", "draft forward"), ("early-exit", "propose")])
def test_drafter_failures_cost_only_speculation(tiny_target, reference, kind, drafter, where):
    with make_engine(kind, tiny_target, drafter, max_batch_size=3, max_seq_len=64, max_speculation=4) as engine:
        if where == "propose":  # raises before drafting anything
            raised = fail_calls(engine.drafter, "propose", lambda i, *a: i % 3 == 1, "injected drafter fault")
        else:  # raises halfway through drafting, after the draft cache was partly written
            raised = fail_calls(engine.drafter.runner, "forward", lambda i, *a: i % 5 == 3, "injected drafter fault")
        for r in REQUESTS:
            engine.submit(r)
        outputs, reasons, failures, undrafted = {}, {}, 0, 0
        for step in range(500):
            if not engine.has_work:
                break
            stats = engine.step(3)
            failures += stats.draft_failures
            undrafted += sum(1 for d in stats.drafted if d == 0)
            if stats.draft_failures:
                assert stats.extra["draft_error"] == "RuntimeError: injected drafter fault"
            for seq in engine.pop_finished():
                outputs[seq.request_id], reasons[seq.request_id] = seq.output_ids, seq.finish_reason
    assert raised and failures >= len(raised)
    assert undrafted > 0
    assert outputs == reference  # lossless, nothing lost
    assert set(reasons.values()) <= {"eos", "length"}


@pytest.mark.parametrize("kind", DECODER_KINDS)
@pytest.mark.parametrize("min_tokens", [0, 6])  # fails at prefill / mid-decode
def test_failing_forward_fails_only_its_request(tiny_target, reference, kind, min_tokens):
    with make_engine(kind, tiny_target, "self", max_batch_size=4, max_seq_len=64, max_speculation=4) as engine:
        poison_target(engine, "r2", min_tokens)
        for r in REQUESTS:
            engine.submit(r)
        outputs, reasons, failed_ids = {}, {}, []
        errors = {}
        for step in range(500):
            if not engine.has_work:
                break
            stats = engine.step(2 if step % 3 else 0)
            failed_ids += stats.failed_ids
            for seq in engine.pop_finished():
                outputs[seq.request_id], reasons[seq.request_id] = seq.output_ids, seq.finish_reason
                errors[seq.request_id] = seq.error
        # the engine keeps serving after the failure: a request arriving later is served exactly
        late = Request("late", [1, 2, 3], 5)
        engine.submit(late)
        drain(engine, [2], outputs, reasons)
    assert failed_ids == ["r2"] and reasons["r2"] == "error"
    assert errors["r2"] == "RuntimeError: injected target fault (r2)"
    assert outputs["r2"] == reference["r2"][: len(outputs["r2"])]
    assert (len(outputs["r2"]) == 0) == (min_tokens == 0)
    assert {rid: out for rid, out in outputs.items() if rid not in ("r2", "late")} == {
        rid: out for rid, out in reference.items() if rid != "r2"
    }
    assert outputs["late"] == greedy_reference(tiny_target, late.prompt_ids, 5)
    assert engine.scheduler.reserved == 0


def test_a_broken_target_fails_every_request_and_serve_reports_them(tiny_target):
    engine = make_engine("standard", tiny_target, "ngram", max_batch_size=2, max_seq_len=64)
    fail_calls(engine.runner, "forward", lambda i, *a: True, "device lost")
    result = serve(engine, REQUESTS[:4], k=2, progress=False)
    assert list(result.requests["finish_reason"]) == ["error"] * 4
    assert set(result.requests["error"]) == {"RuntimeError: device lost"}
    assert summarize(result)["failed"] == 4
