"""Engine vs Hugging Face `generate`, and the n-gram drafter vs plain decoding.

Measured side by side in one run, interleaved, median of `--repeats` runs:
  A. batch 1: engine k=0 vs HF greedy `generate`;
  B. 64 requests with mixed output lengths, at most 16 running: engine k=0 (continuous batching)
     vs HF `generate` on padded batches of 16 (each batch runs until its longest request is done);
  C. batch 1, input-grounded prompts: engine + n-gram drafter vs engine k=0 vs HF
     `prompt_lookup_num_tokens` (same k and n-gram size);
  D. per-step engine overhead (time outside model forwards) at batch 1.
Every engine output is also checked token for token against HF greedy (float32: must match).

    python experiments/bench_engine.py --repeats 3
    python experiments/bench_engine.py --quick --out-dir /tmp/bench_engine   # seconds: tiny random model
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import quickmode  # same folder
import torch

from nightjar_rl.io import atomic_write_text
from nightjar_rl.models import load_model
from nightjar_rl.runtime import serve
from nightjar_rl.serving import build_requests, load_prompts, summarize
from nightjar_rl.stack import EngineConfig, build_stack
from nightjar_rl.text import encode_prompt


@dataclass
class Args:
    model: str = "smollm2-135m"
    dtype: str = "float32"
    repeats: int = 3
    k: int = 6
    ngram_max: int = 3
    single_prompts: int = 6
    max_new_tokens: int = 64
    batch_requests: int = 64
    batch_size: int = 16
    threads: int | None = None
    out: str = "runs/bench_engine"


QUICK = {"model": "tiny-random", "repeats": 1, "single_prompts": 2, "max_new_tokens": 8, "batch_requests": 8,
         "batch_size": 4, "threads": 1}


def vocab_size(loaded) -> int:
    """The id range prompts are encoded into: the tokenizer's size (tiny random models have none)."""
    return len(loaded.tokenizer) if loaded.tokenizer is not None else loaded.model.config.vocab_size


def hf_generate(model, tokenizer, prompts: list[list[int]], max_new: int, **kwargs) -> tuple[list[list[int]], float]:
    """Left-padded batch `generate`, greedy. Returns generated ids (up to EOS) and wall seconds."""
    if tokenizer is None:  # tiny random model
        pad = 0
    else:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             pad_token_id=pad, **kwargs)
    elapsed = time.perf_counter() - t0
    eos = set(np.atleast_1d(model.generation_config.eos_token_id).tolist())
    results = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        results.append(row[:cut])
    return results, elapsed


def engine_run(stack_cfg: EngineConfig, target, prompts, budgets, k: int):
    stack = build_stack(stack_cfg, target=target)
    reqs = build_requests(prompts, [str(i) for i in range(len(prompts))], np.zeros(len(prompts)), budgets)
    result = serve(stack.engine, reqs, k=k, progress=False)
    outputs = [result.outputs[r.request_id] for r in reqs]
    return outputs, summarize(result)


def main(a: Args) -> pd.DataFrame:
    if a.threads:
        torch.set_num_threads(a.threads)
    target = load_model(a.model, a.dtype)
    tok = target.tokenizer
    grounded = load_prompts(families=["grounded"])[: a.single_prompts]
    vocab = vocab_size(target)
    single = [encode_prompt(tok, r.prompt, vocab) for r in grounded]
    mixed_records = load_prompts()
    rng = np.random.default_rng(0)
    mixed = [encode_prompt(tok, mixed_records[i % len(mixed_records)].prompt, vocab) for i in range(a.batch_requests)]
    budgets = rng.integers(a.max_new_tokens // 4, 2 * a.max_new_tokens - a.max_new_tokens // 4, size=a.batch_requests).tolist()
    cfg1 = EngineConfig(model=a.model, dtype=a.dtype, drafter="ngram", max_batch_size=1, ngram_max=a.ngram_max,
                        max_speculation=max(8, a.k))
    cfg16 = EngineConfig(model=a.model, dtype=a.dtype, drafter="none", max_batch_size=a.batch_size)
    n_single = None
    rows = []
    for rep in range(a.repeats):
        # A + C + D: batch 1
        hf_out, hf_s, pld_out, pld_s = [], 0.0, [], 0.0
        for p in single:
            o, s = hf_generate(target.model, tok, [p], a.max_new_tokens)
            hf_out += o
            hf_s += s
            o, s = hf_generate(target.model, tok, [p], a.max_new_tokens, prompt_lookup_num_tokens=a.k,
                               max_matching_ngram_size=a.ngram_max)
            pld_out += o
            pld_s += s
        n_single = sum(len(o) for o in hf_out)
        e0_out, e0 = engine_run(cfg1, target, single, a.max_new_tokens, 0)
        ng_out, ng = engine_run(cfg1, target, single, a.max_new_tokens, a.k)
        rows += [
            dict(rep=rep, case="B=1", system="hf generate", tok_s=n_single / hf_s, match=1.0),
            dict(rep=rep, case="B=1", system="engine k=0", tok_s=e0["throughput_tok_s"], overhead=e0["overhead_frac"],
                 match=np.mean([x == y for x, y in zip(e0_out, hf_out)])),
            dict(rep=rep, case="B=1 grounded", system="hf prompt lookup", tok_s=sum(map(len, pld_out)) / pld_s,
                 match=np.mean([x == y for x, y in zip(pld_out, hf_out)])),
            dict(rep=rep, case="B=1 grounded", system=f"engine ngram k={a.k}", tok_s=ng["throughput_tok_s"],
                 overhead=ng["overhead_frac"], accepted=ng["mean_accepted_length"],
                 match=np.mean([x == y for x, y in zip(ng_out, hf_out)])),
        ]
        # B: 64 mixed requests, at most 16 at once
        hf_tokens, hf_time, hf_outs = 0, 0.0, []
        for i in range(0, a.batch_requests, a.batch_size):
            chunk, chunk_budgets = mixed[i : i + a.batch_size], budgets[i : i + a.batch_size]
            outs, s = hf_generate(target.model, tok, chunk, max(chunk_budgets))
            outs = [o[:b] for o, b in zip(outs, chunk_budgets)]  # each request's own budget
            hf_outs += outs
            hf_tokens += sum(map(len, outs))
            hf_time += s
        eb_out, eb = engine_run(cfg16, target, mixed, budgets, 0)
        rows += [
            dict(rep=rep, case="64 req, B<=16", system="hf generate (padded 16)", tok_s=hf_tokens / hf_time, match=1.0),
            dict(rep=rep, case="64 req, B<=16", system="engine k=0", tok_s=eb["throughput_tok_s"],
                 overhead=eb["overhead_frac"], match=np.mean([x == y for x, y in zip(eb_out, hf_outs)])),
        ]
        print(pd.DataFrame(rows[-6:]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    table = df.groupby(["case", "system"], sort=False).median(numeric_only=True).drop(columns="rep").reset_index()
    ratios = []
    for rep, g in df.groupby("rep"):
        t = g.set_index(["case", "system"])["tok_s"]
        ngram = t[("B=1 grounded", f"engine ngram k={a.k}")]
        ratios.append({
            "engine k=0 / hf (B=1)": t[("B=1", "engine k=0")] / t[("B=1", "hf generate")],
            f"ngram k={a.k} / engine k=0 (B=1)": ngram / t[("B=1", "engine k=0")],
            f"ngram k={a.k} / hf prompt lookup": ngram / t[("B=1 grounded", "hf prompt lookup")],
            "engine / hf padded (64 req)": t[("64 req, B<=16", "engine k=0")]
            / t[("64 req, B<=16", "hf generate (padded 16)")],
        })
    ratio = pd.DataFrame(ratios).median().rename("median ratio").to_frame()
    out = Path(a.out)
    atomic_write_text(out / "runs.csv", df.to_csv(index=False))
    atomic_write_text(out / "summary.md", table.to_string(index=False) + "\n\n" + ratio.to_string() + "\n")
    print(table.to_string(index=False))
    print(ratio.to_string())
    print(f"threads={torch.get_num_threads()} model={a.model} dtype={a.dtype} single prompts={len(single)} "
          f"x {a.max_new_tokens} tokens; mixed: {a.batch_requests} requests, budgets {a.max_new_tokens // 4}..{2 * a.max_new_tokens - a.max_new_tokens // 4}")
    return df


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in Args().__dict__.items():
        flags = [f"--{name.replace('_', '-')}"] + (["--out-dir"] if name == "out" else [])
        parser.add_argument(*flags, dest=name, type=type(default) if default is not None else int, default=default)
    args = vars(quickmode.parse_args(parser, QUICK))
    del args["quick"]
    main(Args(**args))
