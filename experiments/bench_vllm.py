"""Peer benchmark: nightjar-rl's engine vs vLLM on the same model, dtype, prompts and greedy settings.

Both engines serve the bundled prompts (chat-templated token ids), greedy, `--max-new-tokens` each,
through the same `ServingSession` (same clock: each step's measured wall time; all requests arrive
at t=0 and at most `batch` are in flight, so batch 1 is sequential requests: the first `--single`
prompts; batched cells serve all `--prompts`), for every batch size
in `--batches` and speculation off / n-gram at every k in `--ks` (`ngram_max`/`ngram_min` the same
on both sides). vLLM's engine is stepped in-process (`nightjar_rl.integrations.vllm.VLLMEngine`,
its scheduler with a fixed plan: the drafts vLLM proposes are all verified); each vLLM configuration
(no speculative config for k = 0, `num_speculative_tokens = k` otherwise) lives in its own child
process, started once (its start-up time is reported separately; compiled as vLLM runs by default,
`--eager 1` for enforce_eager), so runs interleave: for each
repeat, every (batch, k) cell runs on our engine then on vLLM. Reported per cell: median tokens/s,
TTFT p50, TPOT p50 over repeats, ours / vLLM (the median of the per-repeat ratios; one column per
`--layouts` x `--forwards` entry: our engine's verify_layout, e.g. `packed mixed`, and decoder forward,
e.g. `native native-vllm`, served in an order rotated per repeat; each forward on the linear layers
it runs fastest on, `nightjar_rl.model_names.linears_for`), the outputs compared token by token
(requests identical to our engine's greedy output, and to vLLM's own k = 0), and the median time
`NightjarScheduler` adds to a vLLM step (`plugin_us_per_step`).

Both sides get `--threads` torch threads (vLLM's CPU build would otherwise drop to 1).

    python experiments/bench_vllm.py --repeats 3                          # the real run (minutes)
    python experiments/bench_vllm.py --quick --out-dir /tmp/bench_vllm    # smoke run
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import quickmode  # same folder

from nightjar_rl.model_names import linears_for


@dataclass
class Args:
    model: str = "smollm2-135m"
    dtype: str = "float32"
    repeats: int = 3
    prompts: int = 64
    single: int = 8
    max_new_tokens: int = 64
    batches: list[int] = field(default_factory=lambda: [1, 16, 64])
    ks: list[int] = field(default_factory=lambda: [0, 2, 4])
    ngram_max: int = 3
    ngram_min: int = 1
    max_seq_len: int = 1024
    threads: int = 2
    eager: int = 0
    layouts: list[str] = field(default_factory=lambda: ["packed"])  # our engine's verify_layout(s), each a column
    forwards: list[str] = field(default_factory=lambda: ["native"])  # our engine's model_forward(s), each a column
    out: str = "runs/bench_vllm"


QUICK = {"repeats": 1, "prompts": 3, "single": 2, "eager": 1, "max_new_tokens": 8, "batches": [1, 3], "ks": [2],
         "max_seq_len": 512, "layouts": ["packed", "mixed"], "forwards": ["native", "native-vllm"]}


def engine_config(a: Args, k: int, slots: int, layout: str = "packed", forward: str = "native"):
    from nightjar_rl.stack import EngineConfig

    return EngineConfig(model=a.model, dtype=a.dtype, max_batch_size=slots, max_seq_len=a.max_seq_len,
                        max_speculation=k, ngram_max=a.ngram_max, ngram_min=a.ngram_min, threads=a.threads,
                        verify_layout=layout, model_forward=forward, linears=linears_for(forward))


def ours_name(layout: str, forward: str = "native") -> str:
    """Our engine's name in the tables: `nightjar`, plus `-mixed` for another verify_layout and
    `-native-vllm` for another model_forward."""
    return "nightjar" + ("" if layout == "packed" else f"-{layout}") + ("" if forward == "native" else f"-{forward}")


def prompt_ids(a: Args) -> list[list[int]]:
    """Chat-templated token ids of the first `a.prompts` bundled prompts (cycled if more are asked)."""
    from nightjar_rl.integrations.vllm.engine import vllm_tokenizer
    from nightjar_rl.serving.workload import encode_record, load_workload

    tok = vllm_tokenizer(a.model)
    records = load_workload("bundled")
    keep = a.max_seq_len - a.max_new_tokens
    return [encode_record(tok, records[i % len(records)], len(tok))[-keep:] for i in range(a.prompts)]


def serve_once(engine, prompts: list[list[int]], max_new: int, batch: int, k: int) -> dict:
    """One run: every prompt, at most `batch` in flight, uniform k; metrics and the outputs."""
    from nightjar_rl.policy.baselines import FixedK
    from nightjar_rl.runtime import PolicyDriver
    from nightjar_rl.serving import ServingSession, build_requests, summarize

    requests = build_requests(prompts, [f"p{i}" for i in range(len(prompts))], np.zeros(len(prompts)), max_new)
    session = ServingSession(engine, requests, max_concurrency=batch)
    result = PolicyDriver(session, engine.max_speculation, FixedK(k, engine.max_speculation)).run()
    s = summarize(result)
    return {"tokens_s": s["throughput_tok_s"], "ttft_p50_s": s["ttft_p50_s"], "tpot_p50_s": s["tpot_p50_s"],
            "acceptance": s["acceptance_rate"], "output_tokens": int(result.requests["output_tokens"].sum()),
            "outputs": [result.outputs[r.request_id] for r in requests]}


def vllm_worker(conn, a: Args, k: int, slots: int) -> None:
    """Child process: start vLLM for (k, slots) once, then serve the runs the parent asks for."""
    from nightjar_rl.integrations.vllm.engine import VLLMEngine, start_llm_engine

    cfg = engine_config(a, k, slots)
    t0 = time.perf_counter()
    llm = start_llm_engine(cfg, enforce_eager=bool(a.eager))
    conn.send({"startup_s": time.perf_counter() - t0})
    while (job := conn.recv()) is not None:
        prompts, max_new, batch = job
        with VLLMEngine(llm, cfg) as engine:
            seen = len(engine.scheduler.decision_times)
            result = serve_once(engine, prompts, max_new, batch, k)
            # what NightjarScheduler adds per vLLM step (plan, trimming, StepStats): the plugin's cost
            result["plugin_us_per_step"] = float(np.median(engine.scheduler.decision_times[seen:])) * 1e6
            conn.send(result)


def main(a: Args) -> pd.DataFrame:
    from tqdm.auto import tqdm

    from nightjar_rl.integrations.vllm import require_vllm
    from nightjar_rl.stack import build_stack

    require_vllm()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = prompt_ids(a)
    slots = max(a.batches)
    ctx = mp.get_context("spawn")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by the vLLM children (else vLLM uses 1 thread)
    workers = {}
    for k in a.ks:  # started one after the other: start-up times measured alone
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=vllm_worker, args=(child, a, k, slots), daemon=True)
        proc.start()
        workers[k] = (proc, parent, parent.recv()["startup_s"])
    stacks = {ours_name(layout, forward): build_stack(engine_config(a, max(a.ks), slots, layout, forward))
              for layout in a.layouts for forward in a.forwards}
    rows, outputs = [], {}
    cells = [(r, b, k) for r in range(a.repeats) for b in a.batches for k in a.ks]
    try:
        for rep, batch, k in tqdm(cells, desc="bench_vllm", unit="cell"):
            served = prompts[:a.single] if batch == 1 else prompts
            order = list(stacks)[rep % len(stacks):] + list(stacks)[: rep % len(stacks)]  # rotated per repeat
            ours = {name: serve_once(stacks[name].engine, served, a.max_new_tokens, batch, k) for name in order}
            _, conn, _ = workers[k]
            conn.send((served, a.max_new_tokens, batch))
            theirs = conn.recv()
            for engine, res in (*ours.items(), ("vllm", theirs)):
                outputs[(engine, batch, k)] = res.pop("outputs")
                rows.append({"engine": engine, "repeat": rep, "batch": batch, "k": k, **res})
    finally:
        for proc, conn, _ in workers.values():
            conn.send(None)
            proc.join(timeout=60)
    df = pd.DataFrame(rows)
    med = df.groupby(["batch", "k", "engine"])[["tokens_s", "ttft_p50_s", "tpot_p50_s", "acceptance",
                                                 "plugin_us_per_step"]].median()
    table = med.unstack("engine")
    pairs = df.pivot_table(index=["batch", "k", "repeat"], columns="engine", values="tokens_s")
    for name in stacks:  # per-repeat ratios, their median: the interleaved pairs
        table[("ratio", f"{name}/vllm tokens_s")] = (pairs[name] / pairs["vllm"]).groupby(["batch", "k"]).median()
    same = []
    for batch, k, name in ((b, k, name) for b in a.batches for k in a.ks for name in stacks):
        ours, theirs = outputs[(name, batch, k)], outputs[("vllm", batch, k)]
        base, packed = outputs.get(("vllm", batch, 0)), outputs.get((ours_name("packed"), batch, k))
        same.append({"batch": batch, "k": k, "ours": name, "requests": len(ours),
                     "identical_to_ours_packed": None if packed is None else sum(x == y for x, y in zip(ours, packed)),
                     "vllm_identical_to_ours": sum(x == y for x, y in zip(ours, theirs)),
                     "vllm_identical_to_vllm_k0": None if base is None else sum(x == y for x, y in zip(base, theirs)),
                     "first_divergence": next((min(j for j, (u, v) in enumerate(zip(x + [-1], y + [-2])) if u != v)
                                               for x, y in zip(ours, theirs) if x != y), None)})
    same_df = pd.DataFrame(same)
    startup = {f"k={k}": round(s, 2) for k, (_, _, s) in workers.items()}
    mode = "eager" if a.eager else "compiled"
    text = (f"vLLM start-up (s, {mode}, per configuration): {startup}\n\nmedians over {a.repeats} repeats\n"
            f"{table.to_string(float_format=lambda v: f'{v:.4g}')}\n\noutputs token by token\n{same_df.to_string(index=False)}\n")
    quickmode.write_report(out, {"runs.csv": df, "outputs.csv": same_df},
                           {"vllm_startup_s": startup, "cells": len(cells), "repeats": a.repeats, "threads": a.threads,
                            "vllm_mode": mode, "batch1_requests": a.single, "batched_requests": a.prompts,
                            "machine_cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()}, text)
    return df


if __name__ == "__main__":
    main(quickmode.parse_dataclass_args(Args, __doc__, QUICK))
