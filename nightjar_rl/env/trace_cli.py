"""`nightjar-rl trace record`: serve a live scenario's prompts (or any workload's, `--workload SPEC`,
no scenario file needed) and record the trace its simulator twin replays (`nightjar_rl.sim.record`;
a `backend: vllm` scenario records vLLM's outputs and proposer, `nightjar_rl.integrations.vllm.trace`).
Resumable: a partial trace is checkpointed beside the output (OUT.partial.npz) after every chunk of
prompts and read back when the same command runs again. `--reuse-outputs TRACE` takes the greedy
outputs of an earlier trace of the same model (a new drafter over the same outputs)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from nightjar_rl.env.backend import LiveBackend
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.sim.trace import Trace, TraceError, merge_traces


def default_trace_path(scenario) -> Path:
    return Path("envs") / "traces" / f"{scenario.name}-{scenario.engine.drafter}.npz"


def _workload_name(spec: str) -> str:
    """A file-name-safe name of a workload spec (sharegpt, humaneval, prompts for jsonl:prompts.jsonl)."""
    name, _, arg = spec.partition(":")
    if name in ("jsonl", "sharegpt", "humaneval") and arg:
        return f"{name}-{Path(arg).stem}" if name != "jsonl" else Path(arg).stem
    if spec.endswith(".jsonl"):
        return Path(spec).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", spec).strip("-") or "workload"


def record_scenario(a: argparse.Namespace):
    """The live scenario to record: the named one (its prompts replaced by --workload, if given), or
    one made from the flags."""
    if a.scenario:
        scenario = load_scenario(a.scenario)
        if scenario.backend == "sim":
            raise ValueError(f"scenario {scenario.name!r} is a sim scenario: record from the live scenario it twins")
        if a.workload:
            scenario = scenario.replace(name=f"{scenario.name}-{_workload_name(a.workload)}",
                                        prompts={"path": a.workload, "sample": a.num_requests, "seed": a.seed})
        return scenario
    if not a.workload:
        raise ValueError("give --scenario or --workload")
    max_new = a.max_new_tokens if a.max_new_tokens is not None else 128
    model_name = Path(a.model).name.removeprefix("random:")
    return load_scenario({
        "name": f"{model_name}-{_workload_name(a.workload)}", "model": a.model, "drafter": a.drafter, "dtype": a.dtype,
        "threads": a.threads, "max_batch_size": a.max_batch_size, "max_speculation": a.max_k or 8,
        "max_seq_len": a.max_seq_len, "max_new_tokens": max_new, "max_prompt_tokens": a.max_prompt_tokens,
        "prompts": {"path": a.workload, "sample": a.num_requests, "seed": a.seed},
        **({"datastore": a.datastore} if a.datastore else {}),
    })


def cmd_trace_record(a: argparse.Namespace) -> int:
    scenario = record_scenario(a)
    max_k = a.max_k if a.max_k is not None else scenario.max_k
    max_new = a.max_new_tokens if a.max_new_tokens is not None else scenario.max_new_tokens
    if max_k < 1 or max_new < 1 or a.chunk < 1:
        raise ValueError("--max-k, --max-new-tokens and --chunk must be >= 1")
    if scenario.backend == "vllm":
        return _record_vllm(a, scenario, max_k, max_new)
    from nightjar_rl.sim.record import record_trace  # the live engine: torch, when recording only

    backend = LiveBackend(scenario)
    pool = backend.prompt_pool
    config = scenario.engine_config()
    config.max_speculation = max_k
    out = Path(a.out) if a.out else default_trace_path(scenario)
    reuse = Trace.load(a.reuse_outputs) if a.reuse_outputs else None
    if reuse is not None and reuse.meta.get("model") != backend.target.name:
        raise TraceError(f"--reuse-outputs {a.reuse_outputs}: recorded with model {reuse.meta.get('model')!r}, "
                         f"not {backend.target.name!r}")
    budgets = [b or max_new for b in (pool.max_tokens or [None] * len(pool))]
    checkpoint = out.with_name(out.name.removesuffix(".npz") + ".partial.npz")
    trace = record_trace(backend.target, list(zip(pool.ids, pool.token_ids)), config, max_k, max_new,
                         progress=not a.quiet, budgets=budgets, reuse=reuse, checkpoint=checkpoint, chunk=a.chunk,
                         families=pool.family_of(), scenario=scenario.name, prompt_set=scenario.prompts,
                         max_prompt_tokens=scenario.max_prompt_tokens)
    trace.save(out)
    checkpoint.unlink(missing_ok=True)
    tokens = sum(len(r) for r in trace.records)
    print(f"wrote trace {out} ({len(trace.records)} prompts, {tokens} output tokens, max_k {max_k})")
    return 0


def _record_vllm(a: argparse.Namespace, scenario, max_k: int, max_new: int) -> int:
    """A `backend: vllm` scenario: vLLM's greedy outputs and vLLM's n-gram proposer tables
    (`nightjar_rl.integrations.vllm.trace`; no checkpoints: one short vLLM run)."""
    from nightjar_rl.env.backend import VLLMBackend
    from nightjar_rl.integrations.vllm.trace import record_vllm_trace

    reuse = Trace.load(a.reuse_outputs) if a.reuse_outputs else None
    if reuse is not None and reuse.meta.get("model") != scenario.engine.model:
        raise TraceError(f"--reuse-outputs {a.reuse_outputs}: recorded with model {reuse.meta.get('model')!r}, "
                         f"not {scenario.engine.model!r}")
    trace = record_vllm_trace(VLLMBackend(scenario), max_k, max_new, progress=not a.quiet, reuse=reuse)
    out = Path(a.out) if a.out else default_trace_path(scenario)
    trace.save(out)
    tokens = sum(len(r) for r in trace.records)
    print(f"wrote trace {out} ({len(trace.records)} prompts, {tokens} output tokens, max_k {max_k}, vLLM's proposer)")
    return 0


def cmd_trace_merge(a: argparse.Namespace) -> int:
    parts = []
    for item in a.parts:
        name, sep, rest = item.partition("=")
        path, _, count = rest.partition("@")
        if not sep or not name or not path:
            raise ValueError(f"trace merge: {item!r} must be NAME=TRACE.npz[@COUNT]")
        try:
            n = int(count) if count else None
        except ValueError:
            raise ValueError(f"trace merge: {item!r}: COUNT must be an integer") from None
        parts.append((name, Trace.load(path), n))
    trace = merge_traces(parts, a.seed)
    trace.save(a.out)
    print(f"wrote trace {a.out} ({len(trace.records)} prompts from {', '.join(n for n, _, _ in parts)})")
    return 0


def add_trace_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("trace", help="simulator traces: record greedy outputs and acceptance")
    sub = parser.add_subparsers(dest="trace_command", required=True)
    rec = sub.add_parser("record", help="record a trace of a live scenario's (or any workload's) prompts for a drafter",
                         description="Serve every prompt of the scenario (or --workload) greedily on the live engine, "
                                     "then record what the drafter would get accepted at every output position for "
                                     "k = 0..max_k. Rerun the same command after a kill to resume.")
    rec.add_argument("--scenario", default=None, help="live scenario name in envs/ or a YAML path")
    rec.add_argument("--workload", default=None, metavar="SPEC",
                     help="prompts to trace (sharegpt, humaneval, mix:..., a .jsonl file): no scenario file needed, "
                          "or replaces the --scenario's prompts")
    rec.add_argument("--num-requests", type=int, default=None, help="how many a sampling workload draws (sharegpt "
                                                                     "default 1000; humaneval default all 164)")
    rec.add_argument("--seed", type=int, default=0, help="the workload sample's seed")
    rec.add_argument("--model", default="smollm2-135m", help="without --scenario: the target model")
    rec.add_argument("--drafter", default="ngram", help="without --scenario: the drafter to trace")
    rec.add_argument("--datastore", default=None, help="without --scenario: the sssd drafter's datastore")
    rec.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    rec.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    rec.add_argument("--max-batch-size", type=int, default=16)
    rec.add_argument("--max-seq-len", type=int, default=2048, help="without --scenario: context per request")
    rec.add_argument("--max-prompt-tokens", type=int, default=None, help="keep only the last N prompt tokens")
    rec.add_argument("--max-k", type=int, default=None, help="largest k to record (default: the scenario's, or 8)")
    rec.add_argument("--max-new-tokens", type=int, default=None,
                     help="output budget cap (default: the scenario's, or 128); a request's own budget is kept below it")
    rec.add_argument("--reuse-outputs", default=None, metavar="TRACE",
                     help="take greedy outputs from this trace (same model); generate only the prompts it lacks")
    rec.add_argument("--chunk", type=int, default=64, help="prompts generated between checkpoints")
    rec.add_argument("--out", default=None, help="output .npz (default: envs/traces/<scenario>-<drafter>.npz)")
    rec.add_argument("--quiet", action="store_true")
    rec.set_defaults(func=cmd_trace_record)
    mrg = sub.add_parser("merge", help="one trace of several (a mixed workload for one sim scenario)",
                         description="Merge traces of the same model, drafter and max_k: a seeded sample of COUNT "
                                     "records of each (all without @COUNT), ids prefixed NAME/, families kept.")
    mrg.add_argument("parts", nargs="+", metavar="NAME=TRACE.npz[@COUNT]")
    mrg.add_argument("--seed", type=int, default=0)
    mrg.add_argument("--out", required=True)
    mrg.set_defaults(func=cmd_trace_merge)
    return parser
