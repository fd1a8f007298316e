"""The vLLM twin (issue 19 part 5) as shipped: `smollm2-ngram-vllm-sim` replays vLLM's trace (its
greedy outputs and n-gram proposer) at vLLM's clock (one pass per step, `verify_layout: mixed`, a
profile fitted to vLLM's wall times). No vLLM needed: the trace and the profile are files."""

from __future__ import annotations

import pytest

from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.experiments.drift import SpeedDrift
from nightjar_rl.experiments.evaluate import evaluate_cell
from nightjar_rl.policy import make_policy


def test_vllm_twin_scenario_replays_at_vllm_clock():
    scenario = load_scenario("smollm2-ngram-vllm-sim")
    backend = make_backend(scenario)
    assert scenario.engine.verify_layout == "mixed" and scenario.max_k == 4
    assert backend.trace.meta["settings"]["proposer"] == "vllm" and backend.trace.meta["drafter"] == "ngram"
    assert backend.profile.meta["calibration"]["fit"] == "wall" and backend.profile.lookup_time_ms(4) == 0
    cell = evaluate_cell(make_policy("fixed-2", scenario.max_k), scenario, backend, 4.0, 0, 8,
                         scenario.max_new_tokens, {"tpot_s": 1.0})
    result = cell.serve_result
    assert len(result.requests) == 8 and set(result.requests["finish_reason"]) <= {"eos", "length"}
    p = backend.profile
    for s in result.steps:
        assert s.prefill_padded_tokens == s.prefill_tokens  # packed
        # one pass: overhead(max(1, B)) + verify + prefill(T), its prefill_ms(1) = 0 not paid twice
        want = p.overhead_time_ms(max(1, s.batch_size)) + p.prefill_time_ms(s.prefill_tokens)
        if s.batch_size:
            want += p.verify_step_ms(s.batch_size, s.scored_tokens, s.context) - p.prefill_time_ms(min(1, s.prefill_tokens))
        assert s.wall_time * 1000 == pytest.approx(want)
    assert any(s.batch_size and s.prefill_tokens for s in result.steps)
    assert sum(map(sum, (s.accepted for s in result.steps))) > 0


def test_the_shipped_vllm_twin_can_be_rescaled_to_another_day():
    """Its profile carries a speed anchor timed on vLLM's own kernels (what `--rescale` and a confirmation's
    `rescale_twin` time again), with the one-token shapes the host-kept rescale needs: no caveat, nothing
    refused. Made without timing anything, so no vLLM is needed."""
    drift = SpeedDrift(load_scenario("smollm2-ngram-vllm"), load_scenario("smollm2-ngram-vllm-sim"))
    anchor = drift.to_dict()["profiled"]
    assert drift.caveat is None and (anchor["model_forward"], anchor["linears"]) == ("native-vllm", "vllm")
    assert [1, 1, 256] in anchor["shapes"] and len(anchor["ms"]) == len(anchor["shapes"])
