"""Workload sources are registry entries: JSONL with prompts or conversations and per-request budgets,
a new source by one entry, and entry points, the same from the CLI and from a scenario."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from nightjar_rl.cli import main
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.env.workload import PromptPool, sample_requests
from nightjar_rl.serving.arrivals import PoissonArrivals
from nightjar_rl.serving.workload import (
    WORKLOAD_SOURCES,
    PromptRecord,
    WorkloadError,
    WorkloadSource,
    budgets,
    encode_record,
    load_workload,
)


def test_jsonl_prompts_conversations_ids_and_budgets(tmp_path):
    path = tmp_path / "w.jsonl"
    rows = [{"id": "q1", "prompt": "hi", "max_tokens": 5, "family": "chat"},
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for spec in (str(path), f"jsonl:{path}"):
        first, second = load_workload(spec)
        assert (first.id, first.prompt, first.max_tokens, first.family) == ("q1", "hi", 5, "chat")
        assert (second.id, second.prompt, len(second.messages)) == ("p2", "why?", 2)
    assert budgets([first, second], 8) == [5, 8] and budgets([first], 3) == [3]
    # no tokenizer (tiny models): one turn is its text, a conversation its `role: content` lines
    assert encode_record(None, first, 96) == [b % 96 for b in b"hi"]
    assert encode_record(None, second, 96) == [b % 96 for b in b"system: be brief\nuser: why?"]
    assert len(load_workload("bundled")) == 70 and load_workload(None)[0].id == load_workload("bundled")[0].id


@pytest.mark.parametrize("line, message", [
    ('{"prompt": ""}', "non-empty string field 'prompt' (or 'messages')"),
    ('{"messages": [{"role": "user"}]}', "'messages' must be a non-empty list"),
    ('{"prompt": "x", "max_tokens": 0}', "'max_tokens' must be an integer >= 1"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(WorkloadError) as info:
        load_workload(str(path))
    assert message in str(info.value)
    assert f"{path}:2" in str(info.value)


def test_unknown_workloads_are_one_line():
    with pytest.raises(WorkloadError, match="unknown workload 'nope'; sources: bundled, jsonl"):
        load_workload("nope")
    with pytest.raises(WorkloadError, match="cannot import module 'no_such_mod_nj'"):
        load_workload("no_such_mod_nj:SOURCE")


@pytest.fixture
def repeat_source(monkeypatch):
    """A new source is one registry entry (its loader is its own module's)."""
    source = WorkloadSource("repeat", "n copies of a repetitive prompt",
                            lambda arg: [PromptRecord(f"r{i}", "a b " * 4, max_tokens=3) for i in range(int(arg or 2))])
    monkeypatch.setitem(WORKLOAD_SOURCES, "repeat", source)
    return source


def test_a_new_source_serves_from_the_cli_and_a_scenario(repeat_source, tmp_path):
    out = tmp_path / "o.jsonl"
    assert main(["generate", "--model", "tiny-random", "--workload", "repeat:3", "--max-new-tokens", "8",
                 "--max-seq-len", "64", "--quiet", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"] and all(len(r["token_ids"]) == 3 for r in rows)
    scenario = load_scenario({"name": "x", "model": "tiny-random", "prompts": {"path": "repeat:4"},
                              "max_new_tokens": 8, "max_seq_len": 64})
    pool = PromptPool.build(scenario.prompts, None, 96)
    requests = sample_requests(pool, PoissonArrivals(10.0), 4, scenario.max_new_tokens, np.random.default_rng(0))
    assert sorted(r.request_id.split(":")[1] for r in requests) == ["r0", "r1", "r2", "r3"]
    assert all(r.max_new_tokens == 3 for r in requests)


def test_entry_point_sources(tmp_path, monkeypatch):
    (tmp_path / "nj_user_workloads.py").write_text(textwrap.dedent('''
        from nightjar_rl.serving.workload import PromptRecord, WorkloadSource

        SOURCE = WorkloadSource("mine", "two prompts", lambda arg: [PromptRecord("m1", "x y"), PromptRecord("m2", "z")])
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [r.id for r in load_workload("nj_user_workloads:SOURCE")] == ["m1", "m2"]


def test_a_sim_scenario_serves_its_own_workload_and_names_a_foreign_one(tmp_path, capsys):
    """`bench --scenario SIM --workload W`: W is what the sim's trace was recorded from (served from
    the trace), or a one-line error naming what the scenario replays."""
    out = tmp_path / "s.json"
    assert main(["bench", "--scenario", "tiny-sim", "--workload", "bundled", "--num-requests", "3", "--quiet",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["requests"] == 3
    assert main(["bench", "--scenario", "tiny-sim", "--workload", "humaneval", "--num-requests", "3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "replays the prompts its trace was recorded from (bundled), not 'humaneval'" in err[0]
