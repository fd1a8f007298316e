"""The simulator replays acceptance exactly: driven with the same schedule of plans (uniform k, or a
random speculation length per row, zeros included; and the same aborts) on the same offline
workload, every SimEngine step decodes the same rows, drafts, accepts and emits the same counts, and
finishes the same requests as the live engine, for every drafter."""

from __future__ import annotations

import numpy as np
import pytest

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.models import LoadedModel, load_model
from nightjar_rl.sim.engine import SimEngine
from nightjar_rl.sim.record import record_trace
from nightjar_rl.stack import EngineConfig, build_stack

FIELDS = ("k", "request_ids", "plan", "drafted", "accepted", "emitted", "first_token_ids", "finished_ids", "aborted_ids",
          "batch_size", "num_waiting", "num_prefilled", "prefill_tokens", "verify_tokens", "scored_tokens")
DRAFTERS = {
    "ngram": dict(drafter="ngram"),
    "draft-self": dict(drafter="draft", draft="tiny-random"),  # accepts everything
    "draft-early-exit": dict(drafter="draft", draft="early-exit:2"),
    "sssd": dict(drafter="sssd"),
}
FLAT_PROFILE = HardwareProfile({"1": {"1": 1.0}}, {"1": 1.0})  # draft_ms: the draft-model traces need one


def random_prompts(count: int, seed: int, vocab: int = 90) -> list[tuple[str, list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        base = rng.integers(3, vocab, size=int(rng.integers(3, 8))).tolist()
        out.append((f"p{i}", (base * 4)[: int(rng.integers(6, 28))]))  # repetitive: n-gram drafts hit
    return out


def random_row_plans(max_k: int, seed: int):
    """A plan schedule: at step i, a random length in [0, max_k] for each running row (by id) and a
    random default; the same for any engine whose running rows are the same."""

    def plan(i: int, running: list[str]) -> SpecPlan:
        rng = np.random.default_rng([seed, i])
        return SpecPlan.per_row({rid: int(rng.integers(0, max_k + 1)) for rid in running},
                                default=int(rng.integers(0, max_k + 1)))

    return plan


def run_schedule(engine, requests: list[Request], schedule: list, aborts: dict[int, str] | None = None):
    """Serve with plans from `schedule` (a k, a plan, or a function (step, running ids) -> plan);
    before step i, abort request `aborts[i]` (queued or running)."""
    for r in requests:
        engine.submit(r)
    steps, outputs, i = [], {}, 0
    while engine.has_work:
        if aborts and i in aborts:
            engine.abort(aborts[i])
        item = schedule[i % len(schedule)]
        stats = engine.step(item(i, [s.request_id for s in engine.running]) if callable(item) else item)
        steps.append({f: getattr(stats, f) for f in FIELDS})
        outputs.update({s.request_id: (s.output_ids, s.finish_reason, s.drafted, s.accepted)
                        for s in engine.pop_finished()})
        i += 1
    return steps, outputs


def check_replay(target: LoadedModel, config: EngineConfig, prompts, max_new: int, max_k: int, schedules):
    trace = record_trace(target, prompts, config, max_k, max_new, progress=False)
    aborts = {0: prompts[-1][0], 3: prompts[0][0]}  # one still queued, one running
    for n, schedule in enumerate(schedules):
        requests = [Request(rid, ids, max_new) for rid, ids in prompts]
        live = build_stack(config, target=target).engine
        live_steps, live_out = run_schedule(live, requests, schedule, aborts if n % 2 else None)
        sim = SimEngine(trace, FLAT_PROFILE, max_batch_size=config.max_batch_size, max_seq_len=config.max_seq_len,
                        max_speculation=config.max_speculation, verify_layout=config.verify_layout)
        sim_steps, sim_out = run_schedule(sim, [Request(r.request_id, r.prompt_ids, max_new) for r in requests],
                                          schedule, aborts if n % 2 else None)
        assert len(sim_steps) == len(live_steps)
        for i, (a, b) in enumerate(zip(live_steps, sim_steps)):
            assert a == b, f"step {i} differs (schedule {schedule})"
        assert sim_out == live_out
    return trace


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_sim_replays_live_engine_step_for_step(tiny, name):
    cfg = EngineConfig(model="tiny-random", max_batch_size=3, max_seq_len=128, max_speculation=5, **DRAFTERS[name])
    rng = np.random.default_rng(1)
    schedules = [[5], [0, 3, 3, 0, 0, 1, 5, 2], rng.integers(0, 6, size=37).tolist(), [random_row_plans(5, seed=3)],
                 [random_row_plans(5, seed=4), 0, 0, 0]]  # per-row plans, with aborts; with k = 0 runs between
    trace = check_replay(tiny, cfg, random_prompts(7, seed=2), max_new=14, max_k=5, schedules=schedules)
    if name != "sssd":  # linear drafters: accepted[p, k] = min(k, L(p))
        for rec in trace.records:
            longest = rec.accepted[:, -1]
            assert np.array_equal(rec.accepted, np.minimum(np.arange(6)[None, :], longest[:, None]))
    if name == "draft-self":
        assert all(rec.accepted[1:, 5].min() >= 1 for rec in trace.records if len(rec) > 2)


@pytest.mark.parametrize("layout", ["packed", "mixed"])
@pytest.mark.parametrize("name", ["ngram", "sssd"])
def test_sim_replays_the_packed_live_engine(tiny, name, layout):
    """Both in the packed layout, or both running the unified step: the same steps, scored_tokens
    included (rows + drafts)."""
    cfg = EngineConfig(model="tiny-random", max_batch_size=3, max_seq_len=128, max_speculation=5,
                       verify_layout=layout, **DRAFTERS[name])
    check_replay(tiny, cfg, random_prompts(6, seed=7), max_new=12, max_k=5,
                 schedules=[[random_row_plans(5, seed=8)], [0, 3, 5]])


def test_trace_caps_agreement_at_the_end_of_the_output(tiny):
    cfg = EngineConfig(model="tiny-random", drafter="draft", draft="tiny-random", max_speculation=4)
    trace = record_trace(tiny, random_prompts(3, seed=5), cfg, 4, 9, progress=False)
    for rec in trace.records:
        n = len(rec)
        for p in range(1, n):
            assert rec.accepted[p, 4] <= n - p
