"""Runtime per-step overhead over the bare engine at batch 1 (goal: < 2% of the step time).

Bare: `engine.step(k)` in a loop. Runtime: `PolicyDriver` over a `ServingSession` (observation
building, policy.predict, observe/update, and optionally the step log), with several policies.
Overhead per step = (whole run wall time - sum of the engine's own step wall times) / steps, so
the engine's work cancels out; runs are interleaved and repeated, medians reported.

    python experiments/bench_runtime_overhead.py                      # SmolLM2-135M, 3 repeats
    python experiments/bench_runtime_overhead.py --quick --out-dir /tmp/bench_runtime   # smoke: tiny-random
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import quickmode  # same folder

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.env.recorder import write_table
from nightjar_rl.io import atomic_write_text
from nightjar_rl.policy import make_policy
from nightjar_rl.runtime.driver import PolicyDriver
from nightjar_rl.runtime.steplog import StepLog
from nightjar_rl.serving import ServingSession, load_prompts
from nightjar_rl.stack import EngineConfig, build_stack
from nightjar_rl.text import encode_prompt

POLICIES = {"fixed-4": "fixed-4", "table-mlc_llm": "table-mlc_llm", "nightjar (learning)": "nightjar",
            "fixed-4 + step log": "fixed-4"}
QUICK = {"model": "tiny-random", "max_new_tokens": 8, "prompts": 2, "repeats": 1, "threads": 1}


@dataclass
class Args:
    model: str = "smollm2-135m"
    drafter: str = "ngram"
    max_new_tokens: int = 128
    prompts: int = 4
    repeats: int = 3
    threads: int | None = None
    out: str = "runs/bench_runtime_overhead"


def bare(engine, requests: list[Request], k: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    busy, steps = 0.0, 0
    for req in requests:  # the engine runs one row at a time (max_batch_size=1); the rest queue
        engine.submit(req)
    while engine.has_work:
        busy += engine.step(k).wall_time
        steps += 1
        engine.pop_finished()
    return time.perf_counter() - t0, busy, steps


def driven(engine, requests: list[Request], name: str, tmp: Path) -> tuple[float, float, int]:
    from nightjar_rl.contracts.rewards import make_reward

    learn = "learning" in name
    policy = make_policy(POLICIES[name], engine.max_speculation)
    log = StepLog(tmp / "steps.parquet") if "log" in name else None
    driver = PolicyDriver(ServingSession(engine, requests), engine.max_speculation, policy,
                          reward=make_reward("decode_throughput") if learn else None, learn=learn)
    t0 = time.perf_counter()
    result = driver.run(on_step=log.record if log else None)  # includes one per-run result table
    wall = time.perf_counter() - t0
    if log is not None:
        log.write()  # once at exit, not per step
    return wall, sum(s.wall_time for s in result.steps), len(result.steps)


def main(a: Args) -> pd.DataFrame:
    stack = build_stack(EngineConfig(model=a.model, drafter=a.drafter, max_batch_size=1, max_seq_len=1024,
                                     max_speculation=8, threads=a.threads))
    records = load_prompts(None)[: a.prompts]
    ids = [encode_prompt(stack.tokenizer, r.prompt, stack.vocab_size) for r in records]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    for rep in range(a.repeats):
        for name in ("bare engine", *POLICIES):
            n += 1
            reqs = [Request(f"{n}:{i}", p, a.max_new_tokens) for i, p in enumerate(ids)]
            wall, busy, steps = bare(stack.engine, reqs, 4) if name == "bare engine" else driven(stack.engine, reqs, name, out)
            rows.append(dict(repeat=rep, runtime=name, steps=steps, step_ms=1e3 * busy / steps,
                             overhead_us_per_step=1e6 * (wall - busy) / steps,
                             overhead_pct=100 * (wall - busy) / busy))
    df = pd.DataFrame(rows)
    summary = df.groupby("runtime", sort=False)[["steps", "step_ms", "overhead_us_per_step", "overhead_pct"]].median()
    bare_us = summary.loc["bare engine", "overhead_us_per_step"]
    summary["runtime_over_bare_pct"] = 100 * (summary["overhead_us_per_step"] - bare_us) / (1e3 * summary["step_ms"])
    summary["goal_lt_2pct"] = summary["runtime_over_bare_pct"] < 2.0
    write_table(df, out / "runs.csv")
    atomic_write_text(out / "summary.md", summary.to_markdown() if _has_tabulate() else summary.to_string())
    print(summary.to_string())
    return summary


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field, default in Args.__dataclass_fields__.items():
        kind = int if field in ("max_new_tokens", "prompts", "repeats", "threads") else str
        flags = [f"--{field.replace('_', '-')}"] + (["--out-dir"] if field == "out" else [])
        p.add_argument(*flags, dest=field, type=kind, default=default.default)
    args = vars(quickmode.parse_args(p, QUICK))
    del args["quick"]
    main(Args(**args))
