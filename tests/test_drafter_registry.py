"""Drafters are registry entries: a new one (one entry plus its own class) is usable from a scenario,
the CLI, the live engine, trace recording and the simulator, and is priced as its kind declares."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from nightjar_rl.cli import main
from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.drafters.registry import DRAFTER_KINDS, DrafterKind, drafter_kind
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.env.scenario import ScenarioError, load_scenario
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.models import load_model
from nightjar_rl.sim.engine import SimEngine
from nightjar_rl.sim.record import record_trace
from nightjar_rl.sim.trace import TraceError
from nightjar_rl.stack import EngineConfig, build_stack

from .test_sim_exactness import FLAT_PROFILE, random_prompts, random_row_plans, run_schedule


class RepeatLast(Drafter):
    """Proposes the row's last token again, k times (model-free, deterministic)."""

    def propose(self, rows, lengths, slot_start, params, generator=None):
        return DraftProposal(tokens=[[s.tokens[-1]] * k for s, k in zip(rows, lengths)], probs=[None] * len(rows))


@pytest.fixture
def repeat_kind(monkeypatch):
    """The one registry entry a new drafter needs (its class above is its own module's)."""
    from nightjar_rl.decoding.drafters.acceptance import stateless_tables

    kind = DrafterKind("repeat", "repeat the last token", lambda config, target: RepeatLast(), tables=stateless_tables)
    monkeypatch.setitem(DRAFTER_KINDS, "repeat", kind)
    return kind


def test_a_new_drafter_runs_live_and_replays_exactly_in_the_sim(repeat_kind):
    tiny = load_model("tiny-random")
    cfg = EngineConfig(model="tiny-random", drafter="repeat", max_batch_size=3, max_seq_len=128, max_speculation=4)
    prompts = random_prompts(6, seed=9)
    trace = record_trace(tiny, prompts, cfg, 4, 12, progress=False)
    assert trace.drafter == "repeat"
    for schedule in ([3], [random_row_plans(4, seed=1)]):
        live_steps, live_out = run_schedule(build_stack(cfg, target=tiny).engine,
                                            [Request(r, ids, 12) for r, ids in prompts], schedule)
        sim = SimEngine(trace, FLAT_PROFILE, max_batch_size=3, max_seq_len=128, max_speculation=4)
        sim_steps, sim_out = run_schedule(sim, [Request(r, ids, 12) for r, ids in prompts], schedule)
        assert live_steps == sim_steps and live_out == sim_out
    assert load_scenario({"name": "x", "drafter": "repeat"}).engine.drafter == "repeat"


def test_drafters_by_entry_point_from_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "nj_user_drafters.py").write_text(textwrap.dedent('''
        from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal

        class RepeatLast(Drafter):
            def propose(self, rows, lengths, slot_start, params, generator=None):
                return DraftProposal(tokens=[[s.tokens[-1]] * k for s, k in zip(rows, lengths)], probs=[None] * len(rows))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert drafter_kind("nj_user_drafters:RepeatLast").traceable
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a a a a"}\n{"prompt": "b c b c"}\n')
    out = tmp_path / "o.jsonl"
    base = ["generate", "--model", "tiny-random", "--max-new-tokens", "8", "--max-seq-len", "64", "--quiet",
            "--prompts", str(prompts), "--k", "3"]
    assert main([*base, "--drafter", "nj_user_drafters:RepeatLast", "--out", str(out)]) == 0
    plain = tmp_path / "plain.jsonl"
    assert main([*base, "--drafter", "none", "--out", str(plain)]) == 0
    assert out.read_text() == plain.read_text()  # lossless
    capsys.readouterr()
    assert main([*base, "--drafter", "nj_user_drafters:Nope", "--out", str(out)]) == 2
    assert "'Nope' is neither a DrafterKind nor a Drafter subclass" in capsys.readouterr().err
    with pytest.raises(ScenarioError, match="unknown drafter 'magic'"):
        load_scenario({"name": "x", "drafter": "magic"})


def test_the_kind_decides_how_drafting_is_priced():
    from .test_sim_engine import toy_trace

    lookup_only = HardwareProfile({"1": {"1": 1.0}}, ngram_lookup_ms_per_row=0.5)
    with pytest.raises(TraceError, match="is a draft model but the profile .* has no draft_ms"):
        SimEngine(toy_trace("draft"), lookup_only, max_speculation=3)
    # an n-gram trace priced with a profile that also has a draft model: drafting is still a lookup
    both = HardwareProfile({"1": {"1": 1.0, "3": 1.0}, "2": {"1": 1.0, "3": 1.0}}, {"1": 7.0, "2": 9.0},
                           ngram_lookup_ms_per_row=0.5)
    engine = SimEngine(toy_trace("ngram"), both, max_batch_size=2, max_speculation=3)
    for rid, prompt in (("a", tuple(range(101, 111))), ("b", tuple(range(500, 510)))):
        engine.submit(Request(rid, list(prompt), 6))
    engine.step(0)
    stats = engine.step(2)
    assert stats.draft_time == pytest.approx(2 * 0.0005)  # 2 rows x 0.5 ms, not 2 x draft_ms(2)
    assert drafter_kind("draft").cost == "draft_model" and drafter_kind("sssd").cost == "lookup"
    assert np.isclose(both.draft_model_time_ms(2, 3), 27.0)
