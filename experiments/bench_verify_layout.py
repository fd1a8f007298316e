"""Packed vs padded verify: the step time of the same plan in both layouts (issue 23's goals).

Two engines (one per layout) over the same model each hold `--rows` rows of `--context` cached
tokens; every timed step runs the same plan on both, interleaved (padded first on even repeats,
packed first on odd). Drafts come from a fixed-length drafter (each row drafts exactly its plan
length), so the verify pass has the plan's shape. Plans:

  half-8     half the rows draft 8 tokens, half none  (goal: packed <= 60% of padded)
  uniform-4  every row drafts 4                       (goal: packed no more than 2% slower)
  uniform-0  plain decoding                           (same goal)

Reported per plan: median step time (StepStats.wall_time) and verify time of each layout over
`--repeats` x `--steps` steps, their ratio packed / padded, scored positions, and whether both
layouts emitted the same tokens.

    python experiments/bench_verify_layout.py --threads 2          # SmolLM2-135M float32 (run it alone)
    python experiments/bench_verify_layout.py --threads 2 --model-forward native-vllm   # on vLLM's kernels
    python experiments/bench_verify_layout.py --quick --out-dir /tmp/bench_verify_layout
"""

from __future__ import annotations

import argparse
import statistics

import pandas as pd
import quickmode  # same folder
import torch
from profile_step import RepeatDrafter  # same folder
from tqdm.auto import tqdm

from nightjar_rl.contracts.plan import SpecPlan
from nightjar_rl.decoding import SpeculativeEngine
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.model_names import DEFAULT_MODEL_FORWARD, MODEL_FORWARDS, linears_for

LAYOUTS = ("padded", "packed")
GOALS = {"half-8": 0.60, "uniform-4": 1.02, "uniform-0": 1.02}  # packed / padded at most
QUICK = {"model": "tiny-random", "rows": 4, "context": 16, "repeats": 2, "steps": 2, "threads": 1}


def plan_for(name: str, ids: list[str]) -> SpecPlan:
    if name == "half-8":
        return SpecPlan.per_row({rid: 8 if i % 2 == 0 else 0 for i, rid in enumerate(ids)})
    return SpecPlan.uniform(int(name.split("-")[1]))


def make_engine(model, layout: str, rows: int, context: int, tokens: int, vocab: int,
                model_forward: str = DEFAULT_MODEL_FORWARD) -> SpeculativeEngine:
    """`rows` rows prefilled with the same `context` random tokens in both layouts."""
    gen = torch.Generator().manual_seed(rows * 1000 + context)
    engine = SpeculativeEngine(model, RepeatDrafter(), max_batch_size=rows, max_seq_len=context + tokens + 2,
                               max_speculation=8, verify_layout=layout, model_forward=model_forward)
    for i in range(rows):
        engine.submit(Request(f"r{i}", torch.randint(0, vocab, (context,), generator=gen).tolist(), tokens))
    engine.step(0)
    return engine


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--context", type=int, default=256, help="cached tokens per row")
    parser.add_argument("--plans", default=",".join(GOALS))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median over all steps)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per layout per round")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model-forward", default=DEFAULT_MODEL_FORWARD, choices=MODEL_FORWARDS,
                        help="the engines' decoder forward (native-vllm: on vLLM's CPU kernels and GEMM, the "
                             "[vllm] extra)")
    parser.add_argument("--out-dir", default="runs/bench_verify_layout")
    args = quickmode.parse_args(parser, QUICK, argv)
    loaded = quickmode.float32_cpu_model(args.model, args.threads, linears_for(args.model_forward))
    vocab = loaded.model.config.vocab_size
    plans = args.plans.split(",")
    tokens = 9 * (args.repeats * args.steps + 2) + 2
    samples = []
    for name in tqdm(plans, desc="plans"):
        engines = {layout: make_engine(loaded.model, layout, args.rows, args.context, tokens, vocab, args.model_forward)
                   for layout in LAYOUTS}
        for layout, engine in engines.items():  # warm-up
            engine.step(plan_for(name, [s.request_id for s in engine.running]))
        for rep in range(args.repeats):
            for layout in (LAYOUTS if rep % 2 == 0 else LAYOUTS[::-1]):
                engine = engines[layout]
                for _ in range(args.steps):
                    st = engine.step(plan_for(name, [s.request_id for s in engine.running]))
                    samples.append(dict(plan=name, layout=layout, rep=rep, wall_ms=st.wall_time * 1000,
                                        verify_ms=st.verify_time * 1000, scored_tokens=st.scored_tokens,
                                        rows=st.batch_size, drafted=sum(st.drafted)))
        same = all(a.tokens == b.tokens for a, b in zip(engines["padded"].running, engines["packed"].running))
        samples.append(dict(plan=name, layout="check", same_tokens=same))
    df = pd.DataFrame(samples)
    summary = []
    for name in plans:
        part = df[df["plan"] == name]
        med = {layout: {col: statistics.median(part.loc[part["layout"] == layout, col])
                        for col in ("wall_ms", "verify_ms", "scored_tokens")} for layout in LAYOUTS}
        ratio = med["packed"]["wall_ms"] / med["padded"]["wall_ms"]
        summary.append(dict(
            plan=name, rows=args.rows, context=args.context,
            padded_step_ms=round(med["padded"]["wall_ms"], 3), packed_step_ms=round(med["packed"]["wall_ms"], 3),
            ratio_step=round(ratio, 4),
            ratio_verify=round(med["packed"]["verify_ms"] / med["padded"]["verify_ms"], 4),
            padded_scored=med["padded"]["scored_tokens"], packed_scored=med["packed"]["scored_tokens"],
            goal=GOALS.get(name), meets_goal=bool(ratio <= GOALS[name]) if name in GOALS else None,
            same_tokens=bool(part.loc[part["layout"] == "check", "same_tokens"].all()),
        ))
    table = pd.DataFrame(summary)
    text = (f"# Packed vs padded verify: {args.model} float32 ({args.model_forward} forward), {args.rows} rows, "
            f"context {args.context}, "
            f"threads {torch.get_num_threads()}, median of {args.repeats} x {args.steps} interleaved steps\n\n"
            f"```\n{table.to_string(index=False)}\n```\n")
    quickmode.write_report(args.out_dir, {"steps.csv": df},
                           {"model": args.model, "model_forward": args.model_forward, "threads": torch.get_num_threads(),
                            "results": summary}, text)
    return table


if __name__ == "__main__":
    main()
