"""Our engine on the four cases of issue 23's vLLM-CPU table, in both verify layouts.

The bundled prompts, chat-templated (the first `--prompts` records, cycled), greedy, `--max-new-tokens`
new tokens each, all submitted at once:

  batch 1, off          the first `--single` prompts one after another (max_batch_size 1), k = 0
  batch 1, ngram k      the same with the n-gram drafter at k = `--k`
  16 running, off       all `--prompts` prompts, at most `--batch` running, k = 0
  16 running, ngram k   the same with the n-gram drafter at k = `--k`

For each of `--repeats` rounds every case runs in every layout (interleaved; the layout order
alternates by round). Reported: median tokens/s per case and layout, packed / padded, output tokens,
and whether every run of a case emitted the same tokens (greedy float32: speculation and layout
must not change them). vLLM's side is experiments/bench_vllm.py.

    python experiments/bench_cases.py --threads 2 --repeats 3     # SmolLM2-135M float32 (run it alone)
    python experiments/bench_cases.py --quick --out-dir /tmp/bench_cases
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import pandas as pd
import quickmode  # same folder
import torch
from tqdm.auto import tqdm

from nightjar_rl.runtime import serve
from nightjar_rl.serving import build_requests, load_prompts, summarize
from nightjar_rl.serving.workload import encode_record
from nightjar_rl.stack import EngineConfig, build_stack

LAYOUTS = ("padded", "packed")
QUICK = {"model": "tiny-random", "prompts": 6, "single": 2, "batch": 3, "max_new_tokens": 8, "repeats": 1,
         "threads": 1}


def prompt_ids(loaded, count: int) -> list[list[int]]:
    """The first `count` bundled prompts (cycled), chat-templated; tiny random models get random ids."""
    records = load_prompts()
    vocab = loaded.model.config.vocab_size
    if loaded.tokenizer is None:
        rng = np.random.default_rng(0)
        return [rng.integers(0, vocab, size=int(rng.integers(8, 40))).tolist() for _ in range(count)]
    return [encode_record(loaded.tokenizer, records[i % len(records)], len(loaded.tokenizer)) for i in range(count)]


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--single", type=int, default=8, help="requests of the batch-1 cases")
    parser.add_argument("--batch", type=int, default=16, help="most rows running in the batched cases")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", default="runs/bench_cases")
    args = quickmode.parse_args(parser, QUICK, argv)
    loaded = quickmode.float32_cpu_model(args.model, args.threads)
    prompts = prompt_ids(loaded, args.prompts)
    longest = max(map(len, prompts)) + args.max_new_tokens + 1
    cases = [("batch 1, off", 1, 0), (f"batch 1, ngram k={args.k}", 1, args.k),
             (f"{args.batch} running, off", args.batch, 0), (f"{args.batch} running, ngram k={args.k}", args.batch, args.k)]
    layouts = args.layouts.split(",")
    rows, outputs = [], {}
    for rep in tqdm(range(args.repeats), desc="rounds"):
        for case, batch, k in cases:
            for layout in (layouts if rep % 2 == 0 else layouts[::-1]):
                cfg = EngineConfig(model=args.model, drafter="ngram" if k else "none", max_batch_size=batch,
                                   max_seq_len=longest, max_speculation=k, verify_layout=layout)
                engine = build_stack(cfg, target=loaded).engine
                chosen = prompts[: args.single] if batch == 1 else prompts
                reqs = build_requests(chosen, [str(i) for i in range(len(chosen))], np.zeros(len(chosen)),
                                      args.max_new_tokens)
                result = serve(engine, reqs, k=k, progress=False)
                summary = summarize(result)
                outputs.setdefault(case.split(",")[0], []).append([result.outputs[r.request_id] for r in reqs])
                rows.append(dict(rep=rep, case=case, layout=layout, tok_s=summary["throughput_tok_s"],
                                 output_tokens=summary["output_tokens"], duration_s=result.duration,
                                 acceptance=summary.get("acceptance_rate", float("nan"))))
    df = pd.DataFrame(rows)
    same = {group: all(o == runs[0] for o in runs) for group, runs in outputs.items()}
    table = []
    for case, _, _ in cases:
        part = df[df["case"] == case]
        entry = {"case": case, "output_tokens": int(part["output_tokens"].iloc[0])}
        for layout in layouts:
            entry[f"{layout}_tok_s"] = round(statistics.median(part.loc[part["layout"] == layout, "tok_s"]), 3)
        if len(layouts) == 2:
            entry["packed/padded"] = round(entry["packed_tok_s"] / entry["padded_tok_s"], 4)
        entry["same_outputs"] = same[case.split(",")[0]]
        table.append(entry)
    text = (f"# Issue 23 cases, our engine: {args.model} float32, threads {torch.get_num_threads()}, "
            f"median tok/s of {args.repeats} interleaved rounds\n\n```\n{pd.DataFrame(table).to_string(index=False)}\n```\n")
    quickmode.write_report(args.out_dir, {"runs.csv": df}, {"model": args.model, "threads": torch.get_num_threads(),
                                                            "max_new_tokens": args.max_new_tokens, "cases": table}, text)
    return df


if __name__ == "__main__":
    main()
