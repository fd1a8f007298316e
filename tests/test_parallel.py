"""Batch-parallel speculative decoding (PSD): lossless like the standard engine, balanced halves,
fallback to standard SD, a worker thread that really drafts and really stops."""

from __future__ import annotations

import math
import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nightjar_rl.decoding import (
    DraftModelDrafter,
    NgramDrafter,
    ParallelBatchDecoder,
    Request,
    SamplingParams,
    SpeculativeEngine,
    psd_model,
)
from nightjar_rl.decoding.parallel import WORKER_PREFIX
from nightjar_rl.models import early_exit_draft
from nightjar_rl.runtime import serve
from nightjar_rl.stack import DECODERS, EngineConfig, build_stack

from .conftest import greedy_reference, make_drafter

VOCAB = 96
DECODER_KINDS = ["standard", "parallel", "parallel-sequential"]




def make_decoder(kind: str, target, drafter, **kwargs):
    if kind == "standard":
        return SpeculativeEngine(target, drafter, **kwargs)
    return ParallelBatchDecoder(target, drafter, overlap=kind == "parallel", **kwargs)


def check_layout(dec: ParallelBatchDecoder) -> None:
    """Each half is a consecutive slot range at its own end of the cache; `running` lists them all."""
    lower, upper = dec._halves
    assert [s.slot for s in lower] == list(range(len(lower)))
    assert [s.slot for s in upper] == list(range(dec.max_batch_size - len(upper), dec.max_batch_size))
    assert dec.running == lower + upper
    assert not any(s.finished for s in dec.running)


def run_all(engine, ks, arrivals_per_step=None):
    """Step until done; `arrivals_per_step[i]` are submitted before step i. Checks served-once."""
    outputs, step = {}, 0
    pending = list(arrivals_per_step or [])
    while engine.has_work or any(pending):
        for req in pending.pop(0) if pending else []:
            engine.submit(req)
        engine.step(ks[step % len(ks)])
        step += 1
        if isinstance(engine, ParallelBatchDecoder):
            check_layout(engine)
        for seq in engine.pop_finished():
            assert seq.request_id not in outputs, "served twice"
            outputs[seq.request_id] = seq.output_ids
        assert step < 5000
    return outputs


def random_requests(rng: random.Random, n: int, max_prompt=20, max_new=16, min_new=1):
    return [
        Request(
            f"r{i}",
            [rng.randrange(VOCAB) for _ in range(rng.randrange(1, max_prompt))],
            rng.randrange(min_new, max_new),
        )
        for i in range(n)
    ]


POOL = random_requests(random.Random(0), 12, max_new=12)


@pytest.fixture(scope="module")
def references(tiny_target):
    cache = {}

    def get(req: Request):
        key = (tuple(req.prompt_ids), req.max_new_tokens)
        if key not in cache:
            cache[key] = greedy_reference(tiny_target, req.prompt_ids, req.max_new_tokens)
        return cache[key]

    return get


@pytest.mark.parametrize("decoder", DECODER_KINDS)
@pytest.mark.parametrize("drafter", ["none", "ngram", "self", "early-exit", "other"])
@pytest.mark.parametrize("ks", [[4], [0, 3, 0, 0, 5, 1, 6, 2]])
def test_greedy_output_equals_plain_decoding(tiny_target, references, decoders, decoder, drafter, ks):
    requests = POOL[:9]  # the same requests everywhere: references are computed once
    groups = [requests[:5], [], requests[5:7], [], [], requests[7:]]  # join while others leave
    engine = make_decoder(
        decoder,
        tiny_target,
        make_drafter(drafter, tiny_target),
        max_batch_size=4,
        max_seq_len=128,
        max_speculation=6,
    )
    decoders.append(engine)
    assert run_all(engine, ks, groups) == {r.request_id: references(r) for r in requests}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.permutations(range(len(POOL))),
    ks=st.lists(st.integers(0, 6), min_size=1, max_size=10),
    drafter=st.sampled_from(["ngram", "self", "early-exit", "other"]),
    max_batch=st.integers(1, 6),
    join=st.lists(st.integers(0, 4), min_size=1, max_size=6),
)
def test_lossless_under_random_schedules(tiny_target, references, order, ks, drafter, max_batch, join):
    requests = [POOL[i] for i in order][: max(1, sum(join))]
    groups, i = [], 0
    for size in join:
        groups.append(requests[i : i + size])
        i += size
    groups.append(requests[i:])
    with ParallelBatchDecoder(
        tiny_target,
        make_drafter(drafter, tiny_target),
        max_batch_size=max_batch,
        max_seq_len=128,
        max_speculation=6,
    ) as engine:
        outputs = run_all(engine, ks, groups)
    assert outputs == {r.request_id: references(r) for r in requests}


def test_new_requests_go_to_the_smaller_half_and_fallback_works(tiny_target, references, decoders):
    dec = ParallelBatchDecoder(
        tiny_target, NgramDrafter(), max_batch_size=6, max_seq_len=128, max_speculation=4
    )
    decoders.append(dec)
    # arrivals alternate lower, upper, lower, upper: the lower half's requests are short
    first = [Request(f"a{i}", [3 + i, 7, 9, 11], 3 if i % 2 == 0 else 16) for i in range(4)]
    for r in first:
        dec.submit(r)
    modes = [dec.step(3).extra["psd_mode"]]
    assert dec.halves == (2, 2)
    assert {s.request_id for s in dec._halves[0]} == {"a0", "a2"}
    outputs = {}
    while dec.halves[0]:  # the short ones leave: the lower half empties
        modes.append(dec.step(3).extra["psd_mode"])
        outputs.update({s.request_id: s.output_ids for s in dec.pop_finished()})
    assert dec.halves == (0, 2)
    modes.append(dec.step(3).extra["psd_mode"])
    assert modes[-1] == "fallback"  # one half empty: a standard round
    # both new requests join the (smaller) lower half: the pipeline is back once they decode
    second = [Request(f"b{i}", [5, 4, 3, 2, 1], 10) for i in range(2)]
    for r in second:
        dec.submit(r)
    modes.append(dec.step(3).extra["psd_mode"])
    assert dec.halves == (2, 2)
    assert {s.request_id for s in dec._halves[0]} == {"b0", "b1"}
    assert modes[-1] == "fallback"  # like the standard engine, rows are only prefilled in the step admitting them
    assert dec.step(3).extra["psd_mode"] in ("parallel", "bootstrap")
    assert dec.step(3).extra["psd_mode"] == "parallel"
    assert "parallel" in modes[:3]
    outputs.update(run_all(dec, [3]))
    assert outputs == {r.request_id: references(r) for r in first + second}


def test_halves_stay_balanced_under_a_steady_stream(tiny_target, decoders):
    dec = ParallelBatchDecoder(
        tiny_target, NgramDrafter(), max_batch_size=8, max_seq_len=128, max_speculation=4
    )
    decoders.append(dec)
    rng = random.Random(5)
    served = set()
    for step in range(60):
        for r in random_requests(rng, 2, max_new=12, min_new=2):  # none finishes at prefill
            dec.submit(Request(f"s{step}-{r.request_id}", r.prompt_ids, r.max_new_tokens))
        stats = dec.step(rng.randrange(0, 5))
        check_layout(dec)
        lower, upper = stats.extra["psd"]["halves"]
        if dec.waiting:  # a full batch after admission: the halves differ by at most one
            assert abs(lower - upper) <= 1 and lower + upper == 8
        for seq in dec.pop_finished():
            assert seq.request_id not in served
            served.add(seq.request_id)
    assert len(served) > 20


def test_step_stats_cover_every_token_and_report_phases(tiny_target, decoders):
    dec = ParallelBatchDecoder(tiny_target, DraftModelDrafter(tiny_target), max_batch_size=4, max_seq_len=128)
    decoders.append(dec)
    for i in range(4):
        dec.submit(Request(f"r{i}", [i + 1, i + 2], 12))
    total, steps = 0, 0
    while dec.has_work:
        s = dec.step(3)
        steps += 1
        total += s.tokens_out
        assert len(s.drafted) == len(s.accepted) == len(s.emitted) == len(s.request_ids) == s.batch_size
        assert all(0 <= a <= d <= 3 for a, d in zip(s.accepted, s.drafted))
        psd = s.extra["psd"]
        for phase in psd["phases"]:
            assert phase["phase_s"] > 0 and phase["overlap_s"] >= 0
        if psd["mode"] == "parallel":
            assert len(psd["phases"]) == 2 and s.batch_size == 4
        assert s.extra["psd_sequential_s"] >= s.extra["psd_ideal_s"]
    assert total == 4 * 12
    assert steps <= 12  # the target drafting for itself accepts everything: 4 tokens per round
    assert len(dec.pop_finished()) == 4


class ThreadRecordingNgram(NgramDrafter):
    """A real n-gram drafter that notes which thread each proposal ran on."""

    def __init__(self):
        super().__init__()
        self.threads: list[str] = []

    def propose(self, rows, k, slot_start, params, generator=None):
        self.threads.append(threading.current_thread().name)
        return super().propose(rows, k, slot_start, params, generator)


def psd_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)]


def test_drafting_runs_in_the_worker_and_close_stops_it(tiny_target):
    assert not psd_threads()
    drafter = ThreadRecordingNgram()
    dec = ParallelBatchDecoder(tiny_target, drafter, max_batch_size=4, max_seq_len=128)
    for i in range(4):
        dec.submit(Request(f"r{i}", [1, 2, 3, 1, 2, 3, i], 10))
    dec.step(3)
    dec.step(3)
    assert any(name.startswith(WORKER_PREFIX) for name in drafter.threads)
    assert len(psd_threads()) == 1
    dec.close()
    assert not psd_threads()
    dec.step(3)  # a closed decoder restarts its worker on demand
    assert len(psd_threads()) == 1
    with dec:
        run_all(dec, [2])
    assert not psd_threads()


def test_without_overlap_nothing_leaves_the_main_thread(tiny_target):
    drafter = ThreadRecordingNgram()
    with ParallelBatchDecoder(tiny_target, drafter, max_batch_size=4, max_seq_len=128, overlap=False) as dec:
        for i in range(4):
            dec.submit(Request(f"r{i}", [1, 2, 3, 1, 2, 3, i], 10))
        run_all(dec, [3])
        assert drafter.threads and set(drafter.threads) == {threading.main_thread().name}
        assert not psd_threads()


def test_sampling_runs_and_respects_budgets(tiny_target):
    with ParallelBatchDecoder(
        tiny_target,
        DraftModelDrafter(early_exit_draft(tiny_target, 2)),
        max_batch_size=4,
        max_seq_len=128,
        sampling=SamplingParams(temperature=0.8, top_p=0.9),
    ) as dec:
        requests = [Request(f"r{i}", [i + 1, 5, 9], 8 + i) for i in range(6)]
        for r in requests:
            dec.submit(r)
        outputs = run_all(dec, [3, 0, 2])
    assert {rid: len(out) for rid, out in outputs.items()} == {
        r.request_id: r.max_new_tokens for r in requests
    }
    assert all(0 <= t < VOCAB for out in outputs.values() for t in out)


def test_serving_loop_and_stack_build_the_parallel_decoder(tiny_target):
    assert "parallel" in DECODERS
    stack = build_stack(
        EngineConfig(
            model="tiny-random",
            drafter="ngram",
            decoder="parallel",
            max_batch_size=4,
            max_seq_len=128,
            extra={"overlap": True},
        )
    )
    assert isinstance(stack.engine, ParallelBatchDecoder)
    standard = build_stack(
        EngineConfig(model="tiny-random", drafter="ngram", max_batch_size=4, max_seq_len=128)
    )
    requests = [Request(f"r{i}", [1, 2, 3, 4, i], 10, arrival_time=0.0) for i in range(6)]
    with stack.engine as engine:
        got = serve(engine, requests, k=3, progress=False)
    want = serve(standard.engine, requests, k=3, progress=False)
    assert got.outputs == want.outputs
    assert len(got.requests) == 6
    with pytest.raises(ValueError, match="field 'decoder' must be one of standard, parallel"):
        build_stack(EngineConfig(model="tiny-random", decoder="pipelined"))


def test_bad_arguments_raise_clear_errors(tiny_target):
    with pytest.raises(ValueError, match="draft_threads"):
        ParallelBatchDecoder(tiny_target, NgramDrafter(), draft_threads=0)
    with pytest.raises(ValueError, match="own model"):
        ParallelBatchDecoder(tiny_target, NgramDrafter(), draft_device="cpu")
    with ParallelBatchDecoder(tiny_target, NgramDrafter(), max_speculation=4) as dec:
        with pytest.raises(ValueError, match="k must be"):
            dec.step(5)
        dec.submit(Request("x", [1, 2], 3))
        with pytest.raises(ValueError, match="duplicate"):
            dec.submit(Request("x", [1, 2], 3))


def test_psd_model_matches_the_paper_bounds():
    # linear scaling: a round costs max(V, t); the saving peaks at 50% when V = t
    est = psd_model.estimate_linear(verify=0.1, draft=0.1)
    assert est.psd_s == pytest.approx(0.1) and est.saving == pytest.approx(0.5)
    assert psd_model.estimate_linear(0.3, 0.1).saving == pytest.approx(0.25)
    # memory-bound: a half costs as much as the batch, PSD loses
    assert psd_model.estimate(0.1, 0.05, 0.1, 0.05).saving < 0
    assert psd_model.overlap_efficiency(sequential=2.0, parallel=1.5, ideal=1.0) == pytest.approx(0.5)
    assert psd_model.overlap_efficiency(sequential=2.0, parallel=2.2, ideal=1.0) < 0
    assert math.isnan(psd_model.overlap_efficiency(1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        psd_model.psd_round(-1, 0, 0, 0)
