"""The HTTP server under load vs `bench` at the same concurrency.

Starts `nightjar-rl serve` as a subprocess, sends `--num-requests` streaming chat completions (each
prompt as one user message: the tokenizer's chat template, exactly what `generate` and `bench` feed
the model) from `--concurrency` clients (each client takes the next request when its last one
ends), then stops it and runs the same requests through `nightjar-rl bench` (offline, engine batch =
concurrency). The server's per-step log is kept (`server_steps.csv`) to compare its batches with
bench's.

Checks and numbers:
- completed exactly once: every request got exactly one final chunk and one [DONE], and its
  tokens equal bench's (greedy: identical outputs);
- throughput ratio: server output tokens/s (first request sent .. last token) / bench's;
- p50 time between tokens (streamed token arrival gaps) vs bench's TPOT p50.

    python experiments/bench_server.py                                     # SmolLM2-135M, 32 clients
    python experiments/bench_server.py --quick --out-dir /tmp/bench_server   # smoke: tiny random model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import quickmode  # same folder

from nightjar_rl.io import atomic_write_json, atomic_write_jsonl
from nightjar_rl.runtime.server import free_port, wait_until_healthy
from nightjar_rl.serving import load_prompts


@dataclass
class Args:
    model: str = "smollm2-135m"
    drafter: str = "ngram"
    policy: str = "table-mlc_llm"
    concurrency: int = 32
    num_requests: int = 64
    max_new_tokens: int = 64
    threads: int | None = None
    out: str = "runs/bench_server"


QUICK = {"model": "tiny-random", "num_requests": 8, "concurrency": 4, "max_new_tokens": 8, "threads": 1}


def _engine_flags(a: Args) -> list[str]:
    flags = ["--model", a.model, "--drafter", a.drafter, "--policy", a.policy, "--max-batch-size", str(a.concurrency),
             "--max-seq-len", "1024"]
    return flags + (["--threads", str(a.threads)] if a.threads else [])


async def _clients(url: str, prompts: list[str], a: Args) -> tuple[list[dict], float]:
    todo = list(enumerate(prompts))
    results: list[dict] = []

    async def client(http: httpx.AsyncClient) -> None:
        while todo:
            i, prompt = todo.pop(0)
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": a.max_new_tokens, "stream": True,
                    "return_token_ids": True}
            ids, times, finals, done = [], [], 0, 0
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done += 1
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    if choice.get("token_ids"):
                        ids += choice["token_ids"]
                        times += [time.perf_counter()] * len(choice["token_ids"])
                    finals += choice["finish_reason"] is not None
            results.append(dict(index=i, token_ids=ids, times=times, finals=finals, done=done))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=None) as http:
        await asyncio.gather(*(client(http) for _ in range(a.concurrency)))
    return results, t0


def run_server(a: Args, prompts: list[str], steps_log: Path) -> tuple[list[dict], float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nightjar_rl.cli", "serve", *_engine_flags(a), "--port", str(port),
                             "--quiet", "--default-max-tokens", str(a.max_new_tokens), "--log-steps", str(steps_log)],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, timeout=300, poll=0.5)
        httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": prompts[0]}],
                                                        "max_tokens": 4}, timeout=300)  # warm-up
        return asyncio.run(_clients(url, prompts, a))
    finally:
        proc.terminate()
        proc.wait(60)


def run_bench(a: Args, prompts_file: Path, out: Path) -> tuple[dict, list[list[int]]]:
    from nightjar_rl.cli import main as cli

    gen = out / "bench_generations.jsonl"
    if cli(["generate", *_engine_flags(a), "--prompts", str(prompts_file), "--max-new-tokens", str(a.max_new_tokens),
            "--out", str(gen), "--quiet"]) != 0:
        raise RuntimeError("generate failed")
    if cli(["bench", *_engine_flags(a), "--prompts", str(prompts_file), "--max-new-tokens", str(a.max_new_tokens),
            "--out", str(out / "bench.json"), "--log-steps", str(out / "bench_steps.csv"), "--quiet"]) != 0:
        raise RuntimeError("bench failed")
    ids = [json.loads(line)["token_ids"] for line in gen.read_text().splitlines()]
    return json.loads((out / "bench.json").read_text()), ids


def main(a: Args) -> dict:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_prompts(None)
    prompts = [records[i % len(records)].prompt for i in range(a.num_requests)]
    prompts_file = out / "prompts.jsonl"
    atomic_write_jsonl(prompts_file, ({"id": f"r{i}", "prompt": p} for i, p in enumerate(prompts)))
    results, t0 = run_server(a, prompts, out / "server_steps.csv")
    bench, bench_ids = run_bench(a, prompts_file, out)  # generate runs first in this process: bench is warm
    by_index = {r["index"]: r for r in results}
    exactly_once = (len(results) == len(prompts) and set(by_index) == set(range(len(prompts)))
                    and all(r["finals"] == 1 and r["done"] == 1 for r in results))
    identical = all(by_index[i]["token_ids"] == bench_ids[i] for i in by_index)
    end = max(max(r["times"]) for r in results if r["times"])
    tokens = sum(len(r["token_ids"]) for r in results)
    gaps = np.concatenate([np.diff(r["times"]) for r in results if len(r["times"]) > 1])
    gaps = gaps[gaps > 0] if (gaps > 0).any() else gaps  # tokens of one chunk share an arrival time
    summary = dict(
        requests=len(prompts), concurrency=a.concurrency, completed_exactly_once=exactly_once,
        outputs_identical_to_bench=identical, server_tok_s=tokens / (end - t0),
        bench_tok_s=bench["throughput_tok_s"], throughput_ratio=tokens / (end - t0) / bench["throughput_tok_s"],
        server_itl_p50_s=float(np.percentile(gaps, 50)), bench_tpot_p50_s=bench["tpot_p50_s"],
    )
    atomic_write_json(out / "summary.json", summary)
    for key, value in summary.items():
        print(f"{key:<28} {value:.4g}" if isinstance(value, float) else f"{key:<28} {value}")
    return summary


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field, default in Args.__dataclass_fields__.items():
        kind = int if field in ("concurrency", "num_requests", "max_new_tokens", "threads") else str
        flags = [f"--{field.replace('_', '-')}"] + (["--out-dir"] if field == "out" else [])
        p.add_argument(*flags, dest=field, type=kind, default=default.default)
    args = vars(quickmode.parse_args(p, QUICK))
    del args["quick"]
    main(Args(**args))
