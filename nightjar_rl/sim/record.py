"""Record a trace: greedy outputs from the live engine, then each drafter's acceptance tables."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from nightjar_rl.decoding.drafters.registry import DRAFTER_KINDS, drafter_kind
from nightjar_rl.decoding.engine import SpeculativeEngine
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.models import LoadedModel
from nightjar_rl.sim.trace import Trace, TraceError, TraceRecord, make_meta
from nightjar_rl.stack import EngineConfig

TRACEABLE = tuple(name for name, kind in DRAFTER_KINDS.items() if kind.traceable)


def greedy_outputs(target: LoadedModel, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
                   progress: bool = True) -> list[tuple[list[int], bool]]:
    """Greedy outputs of the target (continuous batching, no speculation) and whether each ended in EOS."""
    from nightjar_rl.runtime.driver import serve

    longest = max(len(p) for p in prompts) + max_new_tokens
    engine = SpeculativeEngine(target.model, None, max_batch_size=batch_size, max_seq_len=longest + 1,
                               max_speculation=0, eos_token_ids=target.eos_token_ids)
    requests = [Request(f"r{i}", list(p), max_new_tokens) for i, p in enumerate(prompts)]
    result = serve(engine, requests, k=0, progress=progress, desc="greedy outputs")
    eos = set(target.eos_token_ids)
    outs = [result.outputs[r.request_id] for r in requests]
    return [(o, bool(o) and o[-1] in eos) for o in outs]


def record_trace(target: LoadedModel, prompts: list[tuple[str, list[int]]], config: EngineConfig, max_k: int,
                 max_new_tokens: int, progress: bool = True, **meta) -> Trace:
    """Trace of `prompts` (id, token ids) for the drafter in `config` (any kind with trace tables)."""
    kind = drafter_kind(config.drafter)
    if not kind.traceable:
        raise TraceError(f"cannot trace drafter {config.drafter!r}; traceable: {', '.join(TRACEABLE)}")
    if config.temperature > 0:
        raise TraceError("traces replay greedy decoding; temperature must be 0")
    if config.drafter == "sssd" and config.extra.get("datastore_live"):
        raise TraceError("a live SSSD datastore depends on the order requests finish in: trace a fixed one")
    ids = [p[1] for p in prompts]
    outputs = greedy_outputs(target, ids, max_new_tokens, config.max_batch_size, progress)
    drafter = kind.build(config, target)
    settings = kind.settings(config)
    records = []
    for (rid, prompt), (out, eos) in tqdm(list(zip(prompts, outputs)), desc=f"trace {config.drafter}",
                                          disable=not progress, leave=False):
        drafted, accepted = kind.tables(drafter, prompt, out, max_k, max_new_tokens)
        records.append(TraceRecord(rid, tuple(prompt), np.asarray(out, np.int64), eos, drafted, accepted))
    meta = make_meta(target.name, config.drafter, max_k, max_new_tokens, config.dtype, **settings, **meta)
    return Trace(meta, records)
