"""How often, and how early, does speculation change greedy output in bfloat16 (vs float32)?

For each dtype and prompt: plain greedy (engine k=0 and HF `generate`) vs the engine with the n-gram
drafter at several k. In float32 every run must match exactly; in bf16, verify passes of different
shapes round differently and can flip near-ties. Reports diverged runs and the first diverging
token index.

    python experiments/bf16_divergence.py --prompts-per-family 4 --max-new-tokens 96
    python experiments/bf16_divergence.py --quick --out-dir /tmp/bf16_divergence   # seconds: tiny random model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import quickmode  # same folder
from bench_engine import hf_generate, vocab_size  # same folder

from nightjar_rl.io import atomic_write_text
from nightjar_rl.models import load_model
from nightjar_rl.runtime import serve
from nightjar_rl.serving import build_requests, load_prompts
from nightjar_rl.stack import EngineConfig, build_stack
from nightjar_rl.text import encode_prompt

QUICK = {"model": "tiny-random", "prompts_per_family": 1, "max_new_tokens": 8, "ks": [2]}


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main(args) -> pd.DataFrame:
    records = [r for fam in ("grounded", "code", "chat") for r in load_prompts(families=[fam])[: args.prompts_per_family]]
    rows = []
    for dtype in ("float32", "bfloat16"):
        target = load_model(args.model, dtype)
        prompts = [encode_prompt(target.tokenizer, r.prompt, vocab_size(target)) for r in records]
        hf = [hf_generate(target.model, target.tokenizer, [p], args.max_new_tokens)[0][0] for p in prompts]
        outputs = {}
        for k in [0, *args.ks]:
            stack = build_stack(EngineConfig(model=args.model, dtype=dtype, drafter="ngram", max_batch_size=4), target)
            reqs = build_requests(prompts, [r.id for r in records], np.zeros(len(prompts)), args.max_new_tokens)
            res = serve(stack.engine, reqs, k=k, progress=False)
            outputs[k] = [res.outputs[r.request_id] for r in reqs]
        for k, outs in outputs.items():
            for rec, out, plain, ref in zip(records, outs, outputs[0], hf):
                rows.append(dict(dtype=dtype, k=k, prompt=rec.id, family=rec.family,
                                 diverge_vs_engine_k0=first_divergence(out, plain),
                                 diverge_vs_hf=first_divergence(out, ref)))
    df = pd.DataFrame(rows)
    summary = df.groupby(["dtype", "k"]).agg(
        runs=("prompt", "size"),
        diverged_vs_k0=("diverge_vs_engine_k0", lambda s: int(s.notna().sum())),
        first_token_vs_k0=("diverge_vs_engine_k0", lambda s: "-" if s.isna().all() else f"{int(s.min())}-{int(s.max())}"),
        diverged_vs_hf=("diverge_vs_hf", lambda s: int(s.notna().sum())),
        first_token_vs_hf=("diverge_vs_hf", lambda s: "-" if s.isna().all() else f"{int(s.min())}-{int(s.max())}"),
    ).reset_index()
    out = Path(args.out)
    atomic_write_text(out / "runs.csv", df.to_csv(index=False))
    atomic_write_text(out / "summary.txt", summary.to_string(index=False) + "\n")
    print(summary.to_string(index=False))
    print(f"model={args.model}, max_new_tokens={args.max_new_tokens}, batch<=4, n-gram drafter; "
          "k=0 rows compare engine k=0 with itself (vs_k0) and with HF generate (vs_hf)")
    return df


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts-per-family", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--out", "--out-dir", dest="out", default="runs/bf16_divergence")
    main(quickmode.parse_args(p, QUICK))
