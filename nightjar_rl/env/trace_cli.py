"""`nightjar-rl trace record --scenario S`: serve a live scenario's prompts and record the trace its
simulator twin replays (`nightjar_rl.sim.record`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nightjar_rl.env.backend import LiveBackend
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.sim.record import record_trace


def default_trace_path(scenario) -> Path:
    return Path("envs") / "traces" / f"{scenario.name}-{scenario.engine.drafter}.npz"


def cmd_trace_record(a: argparse.Namespace) -> int:
    scenario = load_scenario(a.scenario)
    if scenario.backend != "live":
        raise ValueError(f"scenario {scenario.name!r} is a sim scenario: record from the live scenario it twins")
    max_k = a.max_k if a.max_k is not None else scenario.max_k
    max_new = a.max_new_tokens if a.max_new_tokens is not None else scenario.max_new_tokens
    if max_k < 1 or max_new < 1:
        raise ValueError("--max-k and --max-new-tokens must be >= 1")
    backend = LiveBackend(scenario)
    pool = backend.prompt_pool
    config = scenario.engine_config()
    config.max_speculation = max_k
    trace = record_trace(backend.target, list(zip(pool.ids, pool.token_ids)), config, max_k, max_new,
                         progress=not a.quiet, scenario=scenario.name, prompt_set=scenario.prompts,
                         max_prompt_tokens=scenario.max_prompt_tokens)
    out = Path(a.out) if a.out else default_trace_path(scenario)
    trace.save(out)
    tokens = sum(len(r) for r in trace.records)
    print(f"wrote trace {out} ({len(trace.records)} prompts, {tokens} output tokens, max_k {max_k})")
    return 0


def add_trace_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("trace", help="simulator traces: record greedy outputs and acceptance")
    sub = parser.add_subparsers(dest="trace_command", required=True)
    rec = sub.add_parser("record", help="record a trace of a live scenario's prompts for its drafter",
                         description="Serve every prompt of the scenario greedily on the live engine, then record "
                                     "what the scenario's drafter would get accepted at every output position "
                                     "for k = 0..max_k.")
    rec.add_argument("--scenario", required=True, help="live scenario name in envs/ or a YAML path")
    rec.add_argument("--max-k", type=int, default=None, help="largest k to record (default: the scenario's)")
    rec.add_argument("--max-new-tokens", type=int, default=None, help="output budget (default: the scenario's)")
    rec.add_argument("--out", default=None, help="output .npz (default: envs/traces/<scenario>-<drafter>.npz)")
    rec.add_argument("--quiet", action="store_true")
    rec.set_defaults(func=cmd_trace_record)
    return parser
