"""Record a trace: greedy outputs from the live engine, then each drafter's acceptance tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nightjar_rl.decoding.drafters.registry import DRAFTER_KINDS, drafter_kind
from nightjar_rl.decoding.engine import SpeculativeEngine
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.engine_config import EngineConfig
from nightjar_rl.models import LoadedModel
from nightjar_rl.sim.trace import Trace, TraceError, TraceRecord, make_meta

TRACEABLE = tuple(name for name, kind in DRAFTER_KINDS.items() if kind.traceable)


def greedy_outputs(target: LoadedModel, prompts: list[list[int]], max_new_tokens: int | list[int], batch_size: int = 16,
                   progress: bool = True) -> list[tuple[list[int], bool]]:
    """Greedy outputs of the target (continuous batching, no speculation) and whether each ended in EOS;
    `max_new_tokens`: one budget, or one per prompt."""
    from nightjar_rl.runtime.driver import serve

    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    longest = max(len(p) + b for p, b in zip(prompts, limits))
    engine = SpeculativeEngine(target.model, None, max_batch_size=batch_size, max_seq_len=longest + 1,
                               max_speculation=0, eos_token_ids=target.eos_token_ids)
    requests = [Request(f"r{i}", list(p), b) for i, (p, b) in enumerate(zip(prompts, limits))]
    result = serve(engine, requests, k=0, progress=progress, desc="greedy outputs")
    eos = set(target.eos_token_ids)
    outs = [result.outputs[r.request_id] for r in requests]
    return [(o, bool(o) and o[-1] in eos) for o in outs]


def reusable_output(rec: TraceRecord | None, budget: int) -> tuple[list[int], bool] | None:
    """A recorded greedy output cut to `budget` tokens, or None when the record cannot give it (it
    stopped by length before the budget)."""
    if rec is None or (not rec.eos and len(rec) < budget):
        return None
    out = rec.output_ids[:budget].tolist()
    return out, rec.eos and len(out) == len(rec)


def record_trace(target: LoadedModel, prompts: list[tuple[str, list[int]]], config: EngineConfig, max_k: int,
                 max_new_tokens: int, progress: bool = True, *, budgets: list[int] | None = None,
                 reuse: Trace | None = None, checkpoint: str | Path | None = None, chunk: int = 32,
                 families: dict[str, str] | None = None, **meta) -> Trace:
    """Trace of `prompts` (id, token ids) for the drafter in `config` (any kind with trace tables).

    `budgets`: each prompt's output budget (default `max_new_tokens` for all; capped by it). A prompt
    whose tokens repeat an earlier one's is skipped (the simulator finds records by prompt). `reuse`: a
    trace whose greedy outputs are taken instead of generating them again (the same model: a new
    drafter over the same outputs); only prompts it lacks are generated. `checkpoint`: a partial trace
    written atomically after every `chunk` prompts and read back on the next call, so a killed
    recording resumes where it stopped (delete it to start over). `families`: request id -> family,
    kept in the trace's meta."""
    kind = drafter_kind(config.drafter)
    if not kind.traceable:
        raise TraceError(f"cannot trace drafter {config.drafter!r}; traceable: {', '.join(TRACEABLE)}")
    if config.temperature > 0:
        raise TraceError("traces replay greedy decoding; temperature must be 0")
    if config.drafter == "sssd" and config.extra.get("datastore_live"):
        raise TraceError("a live SSSD datastore depends on the order requests finish in: trace a fixed one")
    limits = [min(b, max_new_tokens) for b in budgets] if budgets is not None else [max_new_tokens] * len(prompts)
    if len(limits) != len(prompts) or min(limits, default=1) < 1:
        raise TraceError("budgets: one output budget >= 1 per prompt")
    seen, todo = set(), []
    for (rid, ids), budget in zip(prompts, limits):
        if tuple(ids) not in seen:
            seen.add(tuple(ids))
            todo.append((rid, list(ids), budget))
    settings = kind.settings(config)
    meta = make_meta(target.name, config.drafter, max_k, max_new_tokens, config.dtype, **settings, **meta)
    if families:
        meta["families"] = {rid: families[rid] for rid, _, _ in todo if rid in families}
    done = _resume(checkpoint, meta) if checkpoint is not None else {}
    drafter = kind.build(config, target)
    pending = [t for t in todo if t[0] not in done]  # in the prompts' order: a partial trace is a prefix
    bar = tqdm(total=len(todo), initial=len(todo) - len(pending), desc=f"trace {config.drafter}", unit="prompt",
               disable=not progress)
    for start in range(0, len(pending), chunk):
        part = sorted(pending[start: start + chunk], key=lambda t: len(t[1]) + t[2])  # similar lengths pad less
        outputs = [reusable_output(reuse.lookup(ids) if reuse is not None else None, b) for _, ids, b in part]
        missing = [i for i, o in enumerate(outputs) if o is None]
        if missing:
            fresh = greedy_outputs(target, [part[i][1] for i in missing], [part[i][2] for i in missing],
                                   config.max_batch_size, progress=False)
            for i, o in zip(missing, fresh):
                outputs[i] = o
        for (rid, ids, budget), (out, eos) in zip(part, outputs):
            drafted, accepted = kind.tables(drafter, ids, out, max_k, budget)
            done[rid] = TraceRecord(rid, tuple(ids), np.asarray(out, np.int64), eos, drafted, accepted)
        if checkpoint is not None:
            Trace(meta, [done[rid] for rid, _, _ in todo if rid in done]).save(checkpoint)
        bar.update(len(part))
    bar.close()
    return Trace(meta, [done[rid] for rid, _, _ in todo])


def _resume(checkpoint: str | Path, meta: dict) -> dict[str, TraceRecord]:
    """Records of a partial trace at `checkpoint` (none if absent); TraceError when it was recorded
    with other settings."""
    path = Path(checkpoint)
    if not path.is_file():
        return {}
    part = Trace.load(path)
    keys = ("model", "drafter", "max_k", "max_new_tokens", "dtype", "settings")
    changed = [k for k in keys if part.meta.get(k) != meta.get(k)]
    if changed:
        raise TraceError(f"checkpoint {path} was recorded with other {', '.join(changed)}: delete it to start over")
    return {r.request_id: r for r in part.records}
