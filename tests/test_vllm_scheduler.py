"""NightjarScheduler inside a real vLLM (offline `LLM`, engine core in this process): the policy sets
k step by step, per-row budgets trim each row's drafts exactly, greedy outputs never change, a
bandit learns online and saves its artifact; and a table exported with `nightjar-rl export --to
vllm` loads in vLLM's own validator and, run by vLLM itself, picks the k the live policy picks at
every step. One engine for the module (eager, 4 slots, the exported table in its speculative config)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.vllm_support import MAX_K, bundled_prompts, engine_config, skip_without_vllm

skip_without_vllm()

from nightjar_rl.contracts import SpecPlan  # noqa: E402
from nightjar_rl.policy.base import Policy  # noqa: E402
from nightjar_rl.runtime.policy_spec import runtime_policy  # noqa: E402

NEW_TOKENS = 48
TABLE = {"1": 4, "2-3": 2, "4+": 1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """`nightjar-rl export --to vllm` of the TABLE policy, as vLLM's speculative config."""
    from nightjar_rl.cli import main
    from nightjar_rl.integrations.vllm.config import speculative_config

    path = tmp_path_factory.mktemp("export") / "vllm.json"
    policy = json.dumps({"type": "table", "table": TABLE})
    assert main(["export", policy, "--to", "vllm", "--max-batch-size", "4", "--max-k", str(MAX_K),
                 "--out", str(path)]) == 0
    return {**speculative_config(engine_config()), **json.loads(path.read_text())}


@pytest.fixture(scope="module")
def llm(exported):
    from vllm import LLM

    from nightjar_rl.integrations.vllm.config import engine_kwargs, ensure_inprocess

    ensure_inprocess()
    engine = LLM(**engine_kwargs(engine_config(), scheduler={}, kv_tokens=4 * 512, speculation=exported))
    yield engine
    del engine


@pytest.fixture(scope="module")
def prompts():
    return bundled_prompts(6)


def scheduler_of(llm):
    return llm.llm_engine.engine_core.engine_core.scheduler


def generate(llm, prompts, **scheduler_attrs) -> tuple[list[list[int]], list]:
    """Greedy outputs of `prompts` with the scheduler's attributes set; returns (tokens, step stats)."""
    from vllm import SamplingParams

    sched = scheduler_of(llm)
    defaults = dict(mode="propose", runtime=None, plan=None, _row_plan={}, _credit=[], _finished=False, decisions=[])
    for name, value in {**defaults, **scheduler_attrs}.items():
        setattr(sched, name, value)
    steps = []
    original = type(sched)._observe

    def record(stats):
        steps.append(stats)
        original(sched, stats)

    sched._observe = record
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS), use_tqdm=False)
    finally:
        del sched._observe
    return [list(o.outputs[0].token_ids) for o in outs], steps


@pytest.fixture(scope="module")
def plain(llm, prompts):
    """Every step at k = 0: no draft is proposed or verified (plain greedy decoding)."""
    return generate(llm, prompts, runtime=runtime_policy(MAX_K, 0))[0]


class Cycle(Policy):
    """k = 4, 0, 2, 0, ... by decision (a policy that changes k every step)."""

    type_name = "test_cycle"

    def __init__(self, max_k: int):
        super().__init__(max_k)
        self.n = 0

    def predict(self, obs, deterministic: bool = True) -> int:
        self.n += 1
        return (4, 0, 2, 0)[(self.n - 1) % 4]


def test_k_zero_is_plain_vllm(llm, prompts, plain):
    """k = 0 every step matches vLLM with its own scheduler and no speculation in the step stats."""
    _, steps = generate(llm, prompts, runtime=runtime_policy(MAX_K, 0))
    assert all(sum(s.drafted) == 0 for s in steps)
    assert all(s.extra["num_spec_tokens_to_schedule"] == 0 for s in steps)
    assert sum(s.tokens_out for s in steps) == sum(len(t) for t in plain)


def test_policy_changes_k_every_step_and_outputs_stay_greedy(llm, prompts, plain):
    rp = runtime_policy(MAX_K, policy=json.dumps({"type": "fixed", "k": 0}))
    rp.policy = Cycle(MAX_K)
    tokens, steps = generate(llm, prompts, runtime=rp)
    assert tokens == plain
    proposed = [s.extra["num_spec_tokens_to_schedule"] for s in steps]
    assert proposed == [(4, 0, 2, 0)[i % 4] for i in range(len(steps))]
    # the drafts a step verifies were proposed at the previous step, at most its k
    for prev, step in zip(steps, steps[1:]):
        assert all(d <= prev.extra["num_spec_tokens_to_schedule"] for d in step.drafted)
    assert sum(sum(s.accepted) for s in steps) > 0  # speculation really ran


def test_table_policy_sets_k_by_batch_size(llm, prompts, plain):
    rp = runtime_policy(MAX_K, policy=json.dumps({"type": "table", "table": TABLE}))
    tokens, steps = generate(llm, prompts, runtime=rp)
    assert tokens == plain
    sched = scheduler_of(llm)
    table = rp.policy
    assert {b for b, _ in sched.decisions} >= {1, 4}  # several batch sizes were seen
    assert all(k == table.k_for_batch(b) for b, k in sched.decisions)
    assert [s.extra["num_spec_tokens_to_schedule"] for s in steps] == [k for _, k in sched.decisions]


class IndexPlan(SpecPlan):
    """Prompt i's row gets length i mod (MAX_K + 1) (vLLM's ids are "i-<random suffix>")."""

    def length_for(self, request_id: str) -> int:
        return int(request_id.split("-")[0]) % (MAX_K + 1)


def test_per_row_budgets_trim_each_rows_drafts_exactly(llm, prompts, plain):
    """Mode trim: every row verifies min(its proposed drafts, its plan length, its remaining budget - 1)
    drafts, no more, no less (the last cap as on nightjar-rl's engine: no draft it could not emit)."""
    sched = scheduler_of(llm)
    proposed: dict[str, int] = {}
    seen: list[tuple[int, int, int, int]] = []
    original = type(sched).update_draft_token_ids

    def spy(draft_token_ids):
        for rid, ids in zip(draft_token_ids.req_ids, draft_token_ids.draft_token_ids):
            proposed[rid] = len(ids)
        original(sched, draft_token_ids)

    original_stats = type(sched)._step_stats

    def check(out, model_out, before):
        stats = original_stats(sched, out, model_out, before)
        for rid, k, d in zip(stats.request_ids, stats.plan, stats.drafted):
            req, had = before[rid]
            seen.append((proposed.get(rid, 0), k, d, req.max_tokens - had - 1))
        return stats

    sched.update_draft_token_ids, sched._step_stats = spy, check
    try:
        tokens, _ = generate(llm, prompts, mode="trim", plan=IndexPlan(default=0))
    finally:
        del sched.update_draft_token_ids, sched._step_stats
    assert tokens == plain
    assert seen and all(got == min(offered, k, cap) for offered, k, got, cap in seen)
    assert {k for _, k, _, _ in seen} == set(range(MAX_K + 1))  # rows with every budget in the same run
    assert any(offered > k > 0 for offered, k, _, cap in seen if cap >= k)  # some drafts were really cut to a budget
    assert any(offered > 0 and k == 0 for offered, k, _, _ in seen)  # ... and some to nothing
    assert any(min(offered, k) > cap for offered, k, _, cap in seen)  # ... and some to the row's remaining tokens


def test_bandit_learns_online_and_saves_its_artifact(llm, prompts, plain, tmp_path):
    from nightjar_rl.policy.artifact import load_policy

    path = tmp_path / "learned.json"
    rp = runtime_policy(MAX_K, policy="ucb1", learn=True, save_policy=str(path))
    tokens, steps = generate(llm, prompts, runtime=rp)
    assert tokens == plain
    sched = scheduler_of(llm)
    assert sched.finish() == [f"saved learned policy {path}"]
    learned = load_policy(path)
    counts = np.asarray(learned.state()["counts"])
    assert counts.sum() == sum(1 for s in steps[1:] if s.batch_size > 0)  # every decode step credited once
    assert len({k for _, k in sched.decisions}) > 1  # it explored


def test_decision_cost_is_measured(llm):
    cost = scheduler_of(llm).decision_cost()
    assert cost["steps"] > 0 and 0 < cost["median_us"] < 1e6


def test_export_loads_in_vllms_validator_and_matches_the_live_policy(llm, prompts, plain, exported):
    from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

    table = runtime_policy(MAX_K, policy=json.dumps({"type": "table", "table": TABLE})).policy
    lookup = build_dynamic_sd_schedule_lookup(exported["num_speculative_tokens_per_batch_size"], 4, MAX_K)
    assert lookup[1:] == [table.k_for_batch(b) for b in range(1, 5)]  # vLLM's own reading of the file
    config = scheduler_of(llm).vllm_config.speculative_config
    assert [list(e) for e in config.num_speculative_tokens_per_batch_size] == exported[
        "num_speculative_tokens_per_batch_size"]  # vLLM's SpeculativeConfig accepted the file as it is
    tokens, vllm_steps = generate(llm, prompts)  # no policy: vLLM's table decides
    _, live_steps = generate(llm, prompts, runtime=runtime_policy(MAX_K, policy=json.dumps({"type": "table",
                                                                                           "table": TABLE})))
    assert tokens == plain

    def ks(steps):
        return [(s.extra["scheduled_rows"], s.extra["num_spec_tokens_to_schedule"]) for s in steps]

    assert ks(vllm_steps) == ks(live_steps)
    assert {b for b, _ in ks(vllm_steps)} >= {1, 4}
    assert all(k == table.k_for_batch(b) for b, k in ks(vllm_steps))
