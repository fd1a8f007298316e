"""The StepStats contract: every field means the same thing whichever engine produced it, so the env's
observation, the rewards and the metrics never branch on the decoder.

Engines are built by the factories in `ENGINES`: both live decoders and the simulator (`SimEngine`
over a trace of the same requests recorded on the fly, priced by a synthetic profile). Names in
`MEASURED_OVERLAP` may overlap draft and verify time; every other check applies to all unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nightjar_rl.contracts.step import StepRecord
from nightjar_rl.decoding import Request, StepStats

from .engines import make_engine

EngineFactory = Callable[..., object]  # (target, **engine kwargs) -> an EngineSurface

ENGINES: dict[str, EngineFactory] = {
    "standard": lambda target, **kw: make_engine("standard", target, "self", **kw),
    "unified": lambda target, **kw: make_engine("unified", target, "self", **kw),
    "parallel": lambda target, **kw: make_engine("parallel", target, "self", **kw),
    "parallel-sequential": lambda target, **kw: make_engine("parallel-sequential", target, "self", **kw),
    "sim": lambda target, **kw: sim_engine(target, **kw),
}
MEASURED_OVERLAP = {"parallel"}  # draft_time runs beside verify_time: they need not add up within wall_time
EPS = 1e-6


def sim_engine(target, **kw):
    """A SimEngine over a trace of this test's prompts (the target drafting for itself)."""
    from nightjar_rl.hardware import HardwareProfile
    from nightjar_rl.models import LoadedModel
    from nightjar_rl.sim.engine import SimEngine
    from nightjar_rl.sim.record import record_trace
    from nightjar_rl.stack import EngineConfig

    prompts = [(r.request_id, r.prompt_ids) for step in _requests() for r in step]
    budget = max(r.max_new_tokens for step in _requests() for r in step)
    loaded = LoadedModel("tiny", target, None, ())
    cfg = EngineConfig(model="tiny", drafter="draft", draft="early-exit:2", max_speculation=kw["max_speculation"])
    trace = record_trace(loaded, prompts, cfg, kw["max_speculation"], budget, progress=False)
    profile = HardwareProfile({"1": {"1": 2.0, "5": 3.0}, "4": {"1": 4.0, "5": 8.0}}, {"1": 0.5, "4": 0.7},
                              prefill_ms={"4": 1.0, "64": 5.0}, draft_prefill_ms={"4": 0.2}, overhead_ms={"1": 0.1})
    return SimEngine(trace, profile, **kw)


def _requests() -> list[list[Request]]:
    """Arrivals per step: a burst beyond the batch, a lull, a late pair; budgets of 1 finish at prefill."""
    burst = [Request(f"a{i}", [(3 * i + j) % 96 for j in range(2 + i)], [1, 9, 5, 12, 3][i]) for i in range(5)]
    late = [Request(f"b{i}", [40 + i, 41, 42], 6) for i in range(2)]
    return [burst, [], [], late]


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_step_stats_fields_mean_the_same_for_every_engine(tiny_target, name):
    engine = ENGINES[name](tiny_target, max_batch_size=3, max_seq_len=64, max_speculation=4)
    arrivals, ks = _requests(), [3, 0, 4, 2, 1]
    produced: dict[str, int] = {}  # request id -> output tokens seen so far
    left: set[str] = set()
    try:
        for step in range(200):
            for r in arrivals.pop(0) if arrivals else []:
                engine.submit(r)
            if not engine.has_work and not arrivals:
                break
            before = [s.request_id for s in engine.running]
            waiting_before = [r.request_id for r in engine.waiting]
            k = ks[step % len(ks)]
            s = engine.step(k)
            assert s.step == step and s.k == k
            # rows decoded = the rows running before the step (what the observation's batch_size shows)
            assert s.batch_size == len(before) == len(s.request_ids)
            assert sorted(s.request_ids) == sorted(before)
            assert len(s.drafted) == len(s.accepted) == len(s.emitted) == s.batch_size
            assert all(0 <= a <= d <= k and 1 <= e <= a + 1 for d, a, e in zip(s.drafted, s.accepted, s.emitted))
            assert s.verify_tokens == (1 + max(s.drafted) if s.batch_size else 0)
            assert s.draft_failures == 0 and not s.aborted_ids and not s.failed_ids
            assert s.verify_layout == engine.verify_layout  # what scored_tokens / prefill_padded_tokens count
            # admission: FIFO from the queue, each admitted request prefilled once with one first token
            admitted = waiting_before[: s.num_prefilled]
            assert s.first_token_ids == admitted or sorted(s.first_token_ids) == sorted(admitted)
            assert s.prefill_emitted == len(s.first_token_ids) == s.num_prefilled
            assert s.num_waiting == len(engine.waiting) == len(waiting_before) - s.num_prefilled
            # finished ids are exactly what pop_finished returns; tokens_out is what the outputs grew by
            done = engine.pop_finished()
            assert sorted(s.finished_ids) == sorted(seq.request_id for seq in done)
            now_len = {seq.request_id: len(seq.output_ids) for seq in [*engine.running, *done]}
            grown = sum(n - produced.get(rid, 0) for rid, n in now_len.items())
            assert s.tokens_out == grown
            produced.update(now_len)
            left |= set(s.finished_ids)
            # times: measured, non-negative, nested as documented
            times = (s.prefill_time, s.draft_time, s.catchup_time, s.verify_time, s.model_time)
            assert all(t >= 0 for t in times) and s.wall_time > 0
            if s.batch_size or s.num_prefilled:
                assert s.model_time > 0
            assert s.model_time <= s.prefill_time + s.verify_time + s.draft_time + s.catchup_time + EPS
            assert s.prefill_time + s.verify_time <= s.wall_time + EPS
            assert s.draft_time + s.catchup_time <= s.wall_time + EPS
            if name not in MEASURED_OVERLAP:
                assert s.prefill_time + s.verify_time + s.draft_time + s.catchup_time <= s.wall_time + EPS
            assert s.overhead_time == pytest.approx(max(0.0, s.wall_time - s.model_time))
            row = s.as_row()
            assert row["num_finished"] == len(s.finished_ids) and row["tokens_out"] == s.tokens_out
    finally:
        engine.close()
    assert left == {r.request_id for group in _requests() for r in group}


def test_step_stats_provide_what_the_contracts_read():
    """The observation and the rewards read a `StepRecord`: every engine's `StepStats` is one."""
    assert isinstance(StepStats(step=0, k=0, batch_size=0, num_waiting=0, num_prefilled=0), StepRecord)
    assert set(StepRecord.__annotations__) <= set(StepStats.__dataclass_fields__)
