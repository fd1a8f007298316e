"""What a plan costs: the engine stepping with an int k, with the same lengths as a per-row
`SpecPlan`, and (run against an older checkout) the scalar-k engine before plans existed.

One workload, served to completion per run: bundled prompts, n-gram drafter, float32, at most
`--batch` rows. Modes, interleaved run by run in one process, medians of `--repeats`:
  int      engine.step(k)                                  (a uniform plan)
  per-row  engine.step(SpecPlan.per_row({row: k, ...}))    (every running row named)
Outputs must be identical across modes (checked). Decode tokens/s counts the steps' emitted tokens
over their wall time (prefill excluded).

    python experiments/bench_plan.py --repeats 5
    PYTHONPATH=/path/to/old/checkout python experiments/bench_plan.py --modes int   # before plans
    python experiments/bench_plan.py --quick --out-dir /tmp/bench_plan              # seconds: tiny model
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import quickmode  # same folder
import torch

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.io import atomic_write_text
from nightjar_rl.serving import load_prompts
from nightjar_rl.stack import EngineConfig, build_stack

try:
    from nightjar_rl.text import encode_prompt
except ImportError:  # a checkout from before nightjar_rl/text.py (the old-vs-new comparison)
    from nightjar_rl.serving.workload import encode_prompt

QUICK = {"model": "tiny-random", "requests": 6, "max_new_tokens": 12, "repeats": 1}


def serve_once(engine, prompts: list[list[int]], max_new: int, k: int, per_row: bool) -> tuple[float, dict]:
    """Serve every prompt to completion; (decode tokens/s, outputs by request id)."""
    plan_for = None
    if per_row:
        from nightjar_rl.contracts import SpecPlan  # not in checkouts from before plans

        def plan_for(rows):
            return SpecPlan.per_row({s.request_id: k for s in rows})

    for i, ids in enumerate(prompts):
        engine.submit(Request(f"r{i}", ids, max_new))
    decode_tokens, decode_time, outputs = 0, 0.0, {}
    while engine.has_work:
        stats = engine.step(plan_for(engine.running) if plan_for else k)
        if stats.batch_size:
            decode_tokens += sum(stats.emitted)
            decode_time += stats.wall_time - stats.prefill_time
        outputs.update({s.request_id: s.output_ids for s in engine.pop_finished()})
    return decode_tokens / decode_time, outputs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--modes", default="int,per-row")
    ap.add_argument("--ks", default="0,4")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", default=None, help="write result.json here")
    a = quickmode.parse_args(ap, QUICK, argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = EngineConfig(model=a.model, drafter="ngram", max_batch_size=a.batch, max_seq_len=1024, max_speculation=8)
    stack = build_stack(cfg)
    records = load_prompts()
    prompts = [encode_prompt(stack.tokenizer, records[i % len(records)].prompt, stack.vocab_size)
               for i in range(a.requests)]
    modes, ks = a.modes.split(","), [int(k) for k in a.ks.split(",")]
    rates: dict[str, list[float]] = {f"{m} k={k}": [] for k in ks for m in modes}
    reference: dict[int, dict] = {}
    serve_once(build_stack(cfg, target=stack.target).engine, prompts[:2], 8, ks[-1], False)  # warm-up
    for _ in range(a.repeats):
        for k in ks:
            for mode in modes:
                engine = build_stack(cfg, target=stack.target).engine
                rate, outputs = serve_once(engine, prompts, a.max_new_tokens, k, mode == "per-row")
                if reference.setdefault(k, outputs) != outputs:
                    raise SystemExit(f"outputs differ between modes at k={k}")
                rates[f"{mode} k={k}"].append(rate)
    result = {"model": a.model, "batch": a.batch, "requests": a.requests, "max_new_tokens": a.max_new_tokens,
              "repeats": a.repeats, "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "decode_tok_s_median": {name: statistics.median(v) for name, v in rates.items()},
              "decode_tok_s_runs": rates}
    for k in ks:
        if "int" in modes and "per-row" in modes:
            result[f"per_row_over_int_k{k}"] = statistics.median(
                p / i for p, i in zip(rates[f"per-row k={k}"], rates[f"int k={k}"]))
    print(json.dumps(result, indent=1))
    if a.out_dir:
        Path(a.out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(a.out_dir) / "result.json", json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
