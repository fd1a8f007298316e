"""`trace record` of any workload: per-request budgets, a checkpointed recording that resumes after a
kill and equals an uninterrupted one, `--reuse-outputs` (no generation for prompts the earlier trace
has), families kept for the simulator, and the CLI without scenario files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nightjar_rl.cli import main
from nightjar_rl.env.backend import SimBackend
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.models import load_model
from nightjar_rl.sim import record
from nightjar_rl.sim.trace import Trace, TraceError
from nightjar_rl.stack import EngineConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", "float32", "cpu")


def prompts(n: int) -> list[tuple[str, list[int]]]:
    rng = np.random.default_rng(4)
    return [(f"q{i}", (rng.integers(3, 60, size=4).tolist() * 3)[: 6 + i]) for i in range(n)]


def same(a: Trace, b: Trace) -> bool:
    return [r.request_id for r in a.records] == [r.request_id for r in b.records] and all(
        np.array_equal(x.output_ids, y.output_ids) and x.eos == y.eos and np.array_equal(x.accepted, y.accepted)
        and np.array_equal(x.drafted, y.drafted) for x, y in zip(a.records, b.records))


def test_budgets_duplicates_and_families(tiny):
    cfg = EngineConfig(model="tiny-random", max_seq_len=64)
    ps = prompts(3) + [("dup", prompts(1)[0][1])]  # the same tokens as q0: skipped
    trace = record.record_trace(tiny, ps, cfg, 4, 10, progress=False, budgets=[3, 20, 10, 5],
                                families={"q0": "chat", "q1": "code"})
    assert [r.request_id for r in trace.records] == ["q0", "q1", "q2"]
    assert [len(r) for r in trace.records] == [3, 10, 10]  # own budget, capped by max_new_tokens
    assert trace.meta["families"] == {"q0": "chat", "q1": "code"}


def test_a_killed_recording_resumes_to_the_same_trace(tiny, tmp_path, monkeypatch):
    cfg = EngineConfig(model="tiny-random", max_seq_len=64)
    ps = prompts(7)
    whole = record.record_trace(tiny, ps, cfg, 4, 9, progress=False)
    real = record.greedy_outputs
    calls = []

    def killed_on_third_chunk(target, ids, *args, **kw):
        calls.append(len(ids))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(target, ids, *args, **kw)

    ckpt = tmp_path / "t.partial.npz"
    monkeypatch.setattr(record, "greedy_outputs", killed_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        record.record_trace(tiny, ps, cfg, 4, 9, progress=False, checkpoint=ckpt, chunk=2)
    assert [r.request_id for r in Trace.load(ckpt).records] == ["q0", "q1", "q2", "q3"]
    calls.clear()
    monkeypatch.setattr(record, "greedy_outputs", lambda target, ids, *a, **kw: calls.append(len(ids)) or
                        real(target, ids, *a, **kw))
    resumed = record.record_trace(tiny, ps, cfg, 4, 9, progress=False, checkpoint=ckpt, chunk=2)
    assert calls == [2, 1]  # only q4..q6 were generated again
    assert same(resumed, whole)
    with pytest.raises(TraceError, match="recorded with other max_k"):
        record.record_trace(tiny, ps, cfg, 3, 9, progress=False, checkpoint=ckpt)


def test_reuse_outputs_generates_only_what_the_trace_lacks(tiny, monkeypatch):
    ngram = EngineConfig(model="tiny-random", max_seq_len=64)
    old = record.record_trace(tiny, prompts(4), ngram, 4, 9, progress=False)
    calls = []
    real = record.greedy_outputs
    monkeypatch.setattr(record, "greedy_outputs", lambda target, ids, *a, **kw: calls.append(len(ids)) or
                        real(target, ids, *a, **kw))
    sssd = EngineConfig(model="tiny-random", max_seq_len=64, drafter="sssd")
    fresh = record.record_trace(tiny, prompts(5), sssd, 4, 9, progress=False)
    calls.clear()
    reused = record.record_trace(tiny, prompts(5), sssd, 4, 9, progress=False, reuse=old)
    assert calls == [1]  # q4 is new
    assert same(reused, fresh)
    # a shorter budget is cut from a longer recorded output (not EOS unless it ended there)
    assert record.reusable_output(old.records[0], 4) == (old.records[0].output_ids[:4].tolist(), False)
    assert record.reusable_output(old.records[0], 10) is None  # stopped by length at 9


def test_cli_records_a_workload_without_scenario_files(tmp_path):
    wl = tmp_path / "w.jsonl"
    wl.write_text("\n".join(json.dumps({"id": f"x{i}", "prompt": "ab" * (3 + i), "max_tokens": 3 + i,
                                        "family": "code" if i % 2 else "chat"}) for i in range(4)) + "\n")
    out = tmp_path / "t.npz"
    args = ["trace", "record", "--model", "tiny-random", "--workload", f"jsonl:{wl}", "--max-new-tokens", "5",
            "--max-k", "4", "--max-seq-len", "64", "--chunk", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    trace = Trace.load(out)
    assert [r.request_id for r in trace.records] == ["x0", "x1", "x2", "x3"]
    assert [len(r) for r in trace.records] == [3, 4, 5, 5] and not (tmp_path / "t.partial.npz").exists()
    # the sim twin: budgets from the trace (length-stopped records), families from its meta
    profile = Path(__file__).resolve().parents[1] / "envs" / "profiles" / "tiny-random-cpu.json"
    scenario = load_scenario({"name": "t", "backend": "sim", "trace": str(out), "profile": str(profile),
                              "model": "tiny-random", "max_speculation": 4, "max_new_tokens": 5})
    pool = SimBackend(scenario).prompt_pool
    assert pool.max_tokens == [3, 4, 5, 5] and pool.families == ["chat", "code", "chat", "code"]


def test_tokens_per_step_walks_the_trace_by_hand():
    from nightjar_rl.analysis.acceptance import acceptance_summary, acceptance_table, decode_steps
    from nightjar_rl.sim.trace import TraceRecord, make_meta

    acc = np.zeros((6, 3), np.int64)
    acc[:, 2] = [0, 2, 0, 0, 1, 0]  # at k=2: p=1 accepts 2 -> p=4 accepts min(1, 6-4-1) -> p=6: 2 steps
    acc[:, 1] = np.minimum(acc[:, 2], 1)  # k=1: p=1 +1 -> p=3 +0 -> p=4 +1 -> p=6: 3 steps
    rec = TraceRecord("r", (1, 2), np.arange(6), True, np.minimum(np.arange(3), 2)[None].repeat(6, 0), acc)
    assert [decode_steps(rec, k) for k in (0, 1, 2)] == [5, 3, 2]
    trace = Trace(dict(make_meta("m", "ngram", 2, 8, "float32"), families={"r": "chat"}), [rec])
    table = acceptance_table(trace, [1, 2], "w")
    assert table["tokens_per_step"].tolist() == [5 / 3, 2.5] and set(table["family"]) == {"chat"}
    assert acceptance_summary(table)["pooled"].tolist() == [5 / 3, 2.5]
