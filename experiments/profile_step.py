"""Where one engine step's time goes: batch 1 and 16, k = 0 and 4, padded and packed verify.

Each configuration prefills `--batch` rows of `--context` tokens, then times `--steps` decode steps
(median) of the real engine with a fixed-length drafter (every row drafts exactly k tokens: the
row's last token repeated, so the verify pass has a known shape). Timers wrap the engine's parts
from outside (nothing in the library is changed), so the engine runs the model's own forward
(`model_forward: transformers`, whose modules and attention function they hook); the native forward
runs the same ops with less around them (`bench_model_forward.py` times the two whole):

  linear        the model's linear layers (q/k/v/o projections, MLP; LM head apart), nn.Linear or
                packed (`--linears`, nightjar_rl.cpu_linears)
  attention     the attention function (query grouping, SDPA, output)
  kv_write      SlotKVCache.update (writing each layer's new keys/values into the slots)
  other_layers  the rest of the decoder forward (embedding, norms, RoPE, activations, residuals)
  lm_head       the output projection
  inputs_mask   ModelRunner.forward outside the decoder and head (ids, positions, mask, KV routing)
  accept        verification outside the target forward (argmax, accept, append)
  draft         drafting
  step_other    the rest of the step (scheduling, bookkeeping, retiring: Python)

`--torch-profiler` also writes torch.profiler's table of the top operators per configuration.

    python experiments/profile_step.py                       # SmolLM2-135M float32 (run it alone)
    python experiments/profile_step.py --quick --out-dir /tmp/profile_step
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import quickmode  # same folder
import torch
from tqdm.auto import tqdm
from transformers import AttentionInterface

from nightjar_rl.cpu_linears import PackedLinear
from nightjar_rl.decoding import SpeculativeEngine
from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.runner import SLOT_ATTENTION, slot_attention
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.io import atomic_write_text
from nightjar_rl.model_names import LINEARS

PARTS = ("linear", "attention", "kv_write", "other_layers", "lm_head", "inputs_mask", "accept", "draft", "step_other")
QUICK = {"model": "tiny-random", "batches": "1,4", "ks": "0,2", "steps": 2, "context": 16, "threads": 1,
         "linears": "eager,packed"}


class RepeatDrafter(Drafter):
    """Drafts exactly lengths[i] tokens per row (its last token repeated): a fixed verify shape."""

    name = "repeat"

    def propose(self, rows, lengths, slot_start, params, generator=None) -> DraftProposal:
        return DraftProposal(tokens=[[s.tokens[-1]] * n for s, n in zip(rows, lengths)], probs=[None] * len(rows))


class Timers:
    """Cumulative seconds per part, filled by wrappers around the engine's pieces."""

    def __init__(self):
        self.total: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] += time.perf_counter() - t0

        return timed

    def hook_linears(self, decoder: torch.nn.Module) -> list:
        """Time every linear layer of `decoder` (a fused group once); returns the hook handles."""
        starts: dict[int, float] = {}
        handles = []

        def pre(module, _inputs):
            starts[id(module)] = time.perf_counter()

        def post(module, _inputs, _output):
            self.total["linear"] += time.perf_counter() - starts.pop(id(module))

        for module in decoder.modules():
            if isinstance(module, (torch.nn.Linear, PackedLinear)):
                handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return handles


def instrument(engine: SpeculativeEngine, timers: Timers):
    """Wrap the engine's parts in timers; returns a function that takes the wrappers off again (the
    model is shared by every configuration)."""
    runner = engine.runner
    runner.forward = timers.wrap("runner_forward", runner.forward)
    runner._decoder.forward = timers.wrap("decoder", runner._decoder.forward)
    runner._lm_head.forward = timers.wrap("lm_head", runner._lm_head.forward)
    runner.cache.update = timers.wrap("kv_write", runner.cache.update)
    handles = timers.hook_linears(runner._decoder)
    AttentionInterface.register(SLOT_ATTENTION, timers.wrap("attention", slot_attention))

    def undo() -> None:
        for obj in (runner, runner._decoder, runner._lm_head, runner.cache):
            vars(obj).pop("forward", None)
            vars(obj).pop("update", None)
        for handle in handles:
            handle.remove()
        AttentionInterface.register(SLOT_ATTENTION, slot_attention)

    return undo


def profile_config(model, batch: int, k: int, layout: str, context: int, steps: int, vocab: int,
                   use_torch_profiler: bool) -> tuple[dict, str]:
    gen = torch.Generator().manual_seed(batch * 100 + k)
    engine = SpeculativeEngine(model, RepeatDrafter(), max_batch_size=batch, max_seq_len=context + (k + 1) * (steps + 3) + 2,
                               max_speculation=max(k, 1), verify_layout=layout, model_forward="transformers")
    for i in range(batch):
        prompt = torch.randint(0, vocab, (context,), generator=gen).tolist()
        engine.submit(Request(f"p{i}", prompt, (k + 1) * (steps + 2) + 1))
    engine.step(0)  # prefill
    engine.step(k)  # warm-up
    timers = Timers()
    undo = instrument(engine, timers)
    samples: list[dict[str, float]] = []
    for _ in range(steps):
        timers.total.clear()
        t0 = time.perf_counter()
        st = engine.step(k)
        wall = time.perf_counter() - t0
        t = timers.total
        decoder_rest = t["decoder"] - t["linear"] - t["kv_write"] - t["attention"]
        samples.append({
            "linear": t["linear"], "attention": t["attention"], "kv_write": t["kv_write"],
            "other_layers": max(0.0, decoder_rest), "lm_head": t["lm_head"],
            "inputs_mask": t["runner_forward"] - t["decoder"] - t["lm_head"],
            "accept": st.verify_time - t["runner_forward"], "draft": st.draft_time,
            "step_other": wall - st.verify_time - st.draft_time,
            "step": wall, "scored_tokens": st.scored_tokens,
        })
    table = ""
    if use_torch_profiler:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.step(k)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    undo()
    row = {"batch": batch, "k": k, "layout": layout, "context": context}
    for key in (*PARTS, "step"):
        row[f"{key}_ms"] = round(statistics.median(s[key] for s in samples) * 1000, 3)
    row["scored_tokens"] = samples[-1]["scored_tokens"]
    row["forward_share"] = round(sum(row[f"{p}_ms"] for p in PARTS[:5]) / row["step_ms"], 3) if row["step_ms"] else 0.0
    return row, table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--ks", default="0,4", help="comma-separated speculation lengths")
    parser.add_argument("--layouts", default="padded,packed")
    parser.add_argument("--context", type=int, default=256, help="cached tokens per row")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per configuration (median)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--linears", default="packed", help=f"comma-separated: {', '.join(LINEARS)}")
    parser.add_argument("--torch-profiler", action="store_true", help="also write torch.profiler's top-op tables")
    parser.add_argument("--out-dir", default="runs/profile_step")
    args = quickmode.parse_args(parser, QUICK, argv)
    kinds = args.linears.split(",")
    if unknown := [k for k in kinds if k not in LINEARS]:
        raise SystemExit(f"--linears takes {', '.join(LINEARS)}, got {', '.join(unknown)}")
    configs = [(int(b), int(k), layout) for b in args.batches.split(",") for k in args.ks.split(",")
               for layout in args.layouts.split(",")]
    rows, tables = [], []
    for linears in kinds:
        model = quickmode.float32_cpu_model(args.model, args.threads, linears).model
        for batch, k, layout in tqdm(configs, desc=f"profile_step ({linears} linears)"):
            row, table = profile_config(model, batch, k, layout, args.context, args.steps,
                                        model.config.vocab_size, args.torch_profiler)
            rows.append({"linears": linears, **row})
            if table:
                tables.append(f"## {linears} linears, batch {batch}, k {k}, {layout}\n\n```\n{table}\n```\n")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    atomic_write_text(out / "profile.csv", df.to_csv(index=False))
    md = [f"# One engine step, {args.model} float32, context {args.context}, threads {torch.get_num_threads()}",
          "", "Median ms per part of a step (see experiments/profile_step.py for what each part covers).", "",
          "```", df.to_string(index=False), "```", ""]
    atomic_write_text(out / "summary.md", "\n".join(md + tables))
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
