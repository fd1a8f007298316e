"""Traces of vLLM's own n-gram proposer, for the simulator's vLLM twin (`envs/smollm2-ngram-vllm-sim.yaml`).

vLLM's prompt lookup (`vllm.v1.spec_decode.ngram_proposer`) is not nightjar-rl's `NgramDrafter`:
it takes the longest suffix n-gram within [prompt_lookup_min, prompt_lookup_max] and the *earliest*
earlier occurrence of it, so at the same position the two propose different tokens (and accept at
different rates). A twin of vLLM must replay vLLM's proposals. They are deterministic in the row's
tokens, and a k-token proposal is the prefix of the max_k one, so the trace tables are those of a
linear drafter (`nightjar_rl.decoding.drafters.acceptance.linear_tables`): at output position p,
vLLM's proposer over prompt + output[:p] (vLLM's own compiled function) and its agreement with the
true continuation.

`record_vllm_trace` takes the greedy outputs from vLLM itself (every prompt served through the
backend at k = 0), so the trace holds vLLM's tokens even where float32 kernels would make another
engine's greedy choice differ. `nightjar-rl trace record --scenario smollm2-ngram-vllm` runs it.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from nightjar_rl.decoding.drafters.acceptance import agreement, linear_tables
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.integrations.vllm.config import require_vllm
from nightjar_rl.sim.trace import Trace, TraceError, TraceRecord, make_meta

PROPOSER = "vllm"  # trace meta settings["proposer"]: whose n-gram lookup the tables replay


def proposer_tables(prompt, output, max_k: int, ngram_min: int, ngram_max: int,
                    max_model_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(drafted, accepted) tables of vLLM's n-gram proposer along `output` (module docstring)."""
    require_vllm()
    from vllm.v1.spec_decode.ngram_proposer import _find_longest_matched_ngram_and_propose_tokens as propose

    tokens = np.asarray(list(prompt) + list(output), dtype=np.int32)
    output = list(output)
    lens, agree = [0], [0]
    for p in range(1, len(output)):
        proposal = propose(tokens[: len(prompt) + p], ngram_min, ngram_max, max_model_len, max_k).tolist()
        lens.append(len(proposal))
        agree.append(agreement(proposal, output[p:]))
    return linear_tables(lens, agree, max_k)


def vllm_outputs(engine, prompts: list[tuple[str, list[int]]], budgets: list[int],
                 progress: bool = True) -> dict[str, tuple[list[int], bool]]:
    """Greedy outputs (tokens, ended with EOS) of `prompts` served at k = 0 on a `VLLMEngine`."""
    from nightjar_rl.runtime.driver import serve

    requests = [Request(rid, list(ids), b) for (rid, ids), b in zip(prompts, budgets)]
    result = serve(engine, requests, k=0, progress=progress, desc="vLLM greedy outputs")
    reasons = dict(zip(result.requests["request_id"], result.requests["finish_reason"]))
    bad = {rid: r for rid, r in reasons.items() if r not in ("eos", "length")}
    if bad:
        raise TraceError(f"vLLM did not finish {len(bad)} request(s) normally: {dict(list(bad.items())[:3])}")
    return {r.request_id: (list(result.outputs[r.request_id]), reasons[r.request_id] == "eos") for r in requests}


def record_vllm_trace(backend, max_k: int, max_new_tokens: int, progress: bool = True,
                      reuse: Trace | None = None) -> Trace:
    """Trace of every prompt of a `VLLMBackend`'s scenario: vLLM's greedy outputs (or those of
    `reuse`, a trace of the same model, where it has the prompt with enough tokens) and vLLM's
    proposer tables up to `max_k`."""
    from nightjar_rl.sim.record import reusable_output

    scenario = backend.scenario
    cfg = scenario.engine_config()
    if cfg.temperature > 0:
        raise TraceError("traces replay greedy decoding; temperature must be 0")
    pool = backend.prompt_pool
    budgets = [min(b or max_new_tokens, max_new_tokens) for b in (pool.max_tokens or [None] * len(pool))]
    todo, seen = [], set()
    for rid, ids, budget in zip(pool.ids, pool.token_ids, budgets):
        if tuple(ids) not in seen:  # the simulator finds records by prompt
            seen.add(tuple(ids))
            todo.append((rid, list(ids), budget))
    outputs = {rid: reusable_output(reuse.lookup(ids) if reuse is not None else None, b) for rid, ids, b in todo}
    missing = [(rid, ids, b) for rid, ids, b in todo if outputs[rid] is None]
    if missing:
        with backend.make_engine(cfg.seed) as engine:
            outputs.update(vllm_outputs(engine, [(rid, ids) for rid, ids, _ in missing], [b for *_, b in missing],
                                        progress))
    meta = make_meta(scenario.engine.model, "ngram", max_k, max_new_tokens, cfg.dtype, ngram_max=cfg.ngram_max,
                     ngram_min=cfg.ngram_min, proposer=PROPOSER, scenario=scenario.name, prompt_set=scenario.prompts,
                     max_prompt_tokens=scenario.max_prompt_tokens,
                     outputs_from="vLLM" if reuse is None else f"vLLM ({len(missing)}) and a reused trace")
    families = pool.family_of()
    if families:
        meta["families"] = {rid: families[rid] for rid, _, _ in todo if rid in families}
    records = []
    for rid, ids, _ in tqdm(todo, desc="vLLM proposer tables", unit="prompt", disable=not progress):
        out, eos = outputs[rid]
        drafted, accepted = proposer_tables(ids, out, max_k, cfg.ngram_min, cfg.ngram_max, cfg.max_seq_len)
        records.append(TraceRecord(rid, tuple(ids), np.asarray(out, np.int64), eos, drafted, accepted))
    return Trace(meta, records)
