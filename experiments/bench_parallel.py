"""Standard SD vs batch-parallel SD (PSD, MineDraft) on the same workload, in the same run.

For each arrival rate ("inf" = offline: every request at t=0, as in the paper) three decoders serve
the same requests at the same k:
  standard  SpeculativeEngine: draft, then verify, the whole batch
  psd-seq   ParallelBatchDecoder(overlap=False): the same two-half schedule, run back to back
  psd       ParallelBatchDecoder: drafting of one half overlaps verification of the other

Overlap efficiency = (T_sequential - T_parallel) / (T_sequential - T_ideal), on decode time (step
wall time minus prefill), two ways:
  eff_vs_standard  T_sequential = standard SD, T_ideal = sum over its steps of max(V, t)   (paper's view)
  eff_mechanism    T_sequential = psd-seq, T_ideal = psd-seq minus its hideable time, i.e. each phase
                   costing max(V_half, t_half) as measured alone                    (the overlap itself)

Examples:
  flock /tmp/nightjar-bench.lock python experiments/bench_parallel.py --drafter draft --draft early-exit:8
  python experiments/bench_parallel.py --device cuda --target-config llama-3-8b --draft-config llama-3.2-1b \
      --max-batch-size 32 --num-requests 64 --rates inf,8,16
  python experiments/bench_parallel.py --quick --out-dir /tmp/bench_parallel    # seconds: tiny random model
Outputs: a table on stdout and runs/bench_parallel/<run name>.csv (one row per rate x decoder).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import quickmode  # same folder
import torch

from nightjar_rl.decoding import DraftModelDrafter, NgramDrafter, ParallelBatchDecoder, SpeculativeEngine
from nightjar_rl.decoding.layouts import DEFAULT_VERIFY_LAYOUT
from nightjar_rl.decoding.psd_model import overlap_efficiency
from nightjar_rl.env.recorder import write_table
from nightjar_rl.models import DTYPES, SHAPES, early_exit_draft, load_model, pick_device
from nightjar_rl.models import random_shaped_model as random_model
from nightjar_rl.runtime import serve
from nightjar_rl.serving import build_requests, load_prompts, poisson_arrivals, summarize
from nightjar_rl.text import encode_prompt

DECODERS = ("standard", "psd-seq", "psd")
QUICK = {"model": "tiny-random", "draft": "early-exit:2", "k": 2, "num_requests": 4, "max_new_tokens": 8,
         "max_prompt_tokens": 32, "max_batch_size": 4, "threads": 1}


@dataclass
class BenchConfig:
    model: str = "smollm2-135m"  # target (ignored with --target-config)
    target_config: str | None = None  # random-weight shape for the target (nightjar_rl.models.SHAPES), e.g. llama-3-8b
    draft_config: str | None = None  # random-weight shape for a separate draft, e.g. llama-3.2-1b
    drafter: str = "draft"  # draft | ngram
    draft: str = "early-exit:8"  # early-exit:L or a model name (with --drafter draft)
    dtype: str = "float32"
    device: str | None = None
    k: int = 4
    num_requests: int = 8
    max_new_tokens: int = 32
    max_prompt_tokens: int = 96
    max_batch_size: int = 8
    rates: str = "inf"  # comma-separated requests/s; inf = offline
    families: str = "grounded,code,chat"
    threads: int | None = None  # torch intra-op threads of the main thread (CPU)
    draft_threads: int | None = None  # PSD worker's intra-op threads (CPU)
    verify_threads: int | None = None  # main thread's intra-op threads while a phase overlaps (CPU)
    seed: int = 0
    verify_layout: str = DEFAULT_VERIFY_LAYOUT  # padded | packed (the engine's target forward layout)
    out: str = "runs/bench_parallel"


def parse_args() -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(BenchConfig()).items():
        kind = type(default) if default is not None else (int if "threads" in name else str)
        flags = [f"--{name.replace('_', '-')}"] + (["--out-dir"] if name == "out" else [])
        parser.add_argument(*flags, dest=name, type=kind, default=default)
    args = vars(quickmode.parse_args(parser, QUICK))
    del args["quick"]
    cfg = BenchConfig(**args)
    if cfg.drafter not in ("draft", "ngram"):
        raise SystemExit("--drafter must be draft or ngram")
    for shape in (cfg.target_config, cfg.draft_config):
        if shape is not None and shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    return cfg


def build_target(cfg: BenchConfig):
    """(target model, tokenizer or None, eos ids)."""
    if cfg.target_config:
        dev = pick_device(cfg.device)
        return random_model(cfg.target_config, DTYPES[cfg.dtype], dev, cfg.seed), None, ()
    loaded = load_model(cfg.model, cfg.dtype, cfg.device)
    return loaded.model, loaded.tokenizer, loaded.eos_token_ids


def drafter_factory(cfg: BenchConfig, target: torch.nn.Module):
    """A function returning a fresh drafter (draft weights are built once and shared)."""
    if cfg.drafter == "ngram":
        return NgramDrafter
    if cfg.draft_config:
        model = random_model(
            cfg.draft_config, DTYPES[cfg.dtype], next(target.parameters()).device, cfg.seed + 1
        )
    elif cfg.draft.startswith("early-exit:"):
        model = early_exit_draft(target, int(cfg.draft.split(":", 1)[1]))
    else:
        model = load_model(cfg.draft, cfg.dtype, cfg.device).model
    return lambda: DraftModelDrafter(model)


def workload(cfg: BenchConfig, tokenizer, vocab: int, rate: float | None):
    prompts = load_prompts(families=cfg.families.split(","))
    rng = np.random.default_rng(cfg.seed)
    picks = [
        prompts[i % len(prompts)]
        for i in rng.permutation(max(cfg.num_requests, len(prompts)))[: cfg.num_requests]
    ]
    ids = [encode_prompt(tokenizer, p.prompt, vocab)[-cfg.max_prompt_tokens :] for p in picks]
    arrivals = poisson_arrivals(len(ids), rate, np.random.default_rng(cfg.seed + 1))
    return build_requests(ids, [p.id for p in picks], arrivals, cfg.max_new_tokens)


def make_decoder(kind: str, cfg: BenchConfig, target, drafter, eos):
    common = {
        "max_batch_size": cfg.max_batch_size,
        "max_seq_len": 2
        * (cfg.max_prompt_tokens + cfg.max_new_tokens + cfg.k + 1),  # headroom: see report (padded catch-up)
        "max_speculation": max(cfg.k, 1),
        "eos_token_ids": eos,
        "seed": cfg.seed,
        "verify_layout": cfg.verify_layout,
    }
    if kind == "standard":
        return SpeculativeEngine(target, drafter, **common)
    return ParallelBatchDecoder(
        target,
        drafter,
        overlap=kind == "psd",
        draft_threads=cfg.draft_threads,
        verify_threads=cfg.verify_threads,
        **common,
    )


def decode_times(steps) -> dict:
    """Decode time (wall minus prefill) and its sequential / ideal counterparts."""
    decode = sum(s.wall_time - s.prefill_time for s in steps)
    if steps and "psd_mode" in steps[0].extra:
        hideable = sum(s.extra["psd_sequential_s"] - s.extra["psd_ideal_s"] for s in steps)
        hidden = sum(s.extra["psd_overlap_s"] for s in steps)
        modes = pd.Series([s.extra["psd_mode"] for s in steps]).value_counts().to_dict()
        return {"decode_s": decode, "ideal_s": decode - hideable, "hidden_s": hidden, "modes": str(modes)}
    ideal = sum(
        s.wall_time
        - s.prefill_time
        - (s.verify_time + s.draft_time + s.catchup_time)
        + max(s.verify_time, s.draft_time + s.catchup_time)
        for s in steps
    )
    return {"decode_s": decode, "ideal_s": ideal, "hidden_s": 0.0, "modes": ""}


def run_rate(cfg: BenchConfig, target, new_drafter, tokenizer, eos, rate: float | None) -> list[dict]:
    vocab = target.config.vocab_size
    requests = workload(cfg, tokenizer, vocab, rate)
    rows, outputs = [], {}
    for kind in DECODERS:
        with make_decoder(kind, cfg, target, new_drafter(), eos) as engine:
            warm = [replace(r, request_id=f"warm-{r.request_id}", arrival_time=0.0) for r in requests[:2]]
            serve(engine, warm, k=cfg.k, progress=False)  # warm-up (allocator, threads, kernels)
            result = serve(engine, requests, k=cfg.k, progress=False, desc=kind)
        outputs[kind] = result.outputs
        summary = summarize(result)
        rows.append(
            dict(
                rate="inf" if rate is None else rate,
                decoder=kind,
                k=cfg.k,
                throughput_tok_s=summary["throughput_tok_s"],
                e2e_p50_s=summary["e2e_p50_s"],
                e2e_p95_s=summary["e2e_p95_s"],
                duration_s=summary["duration_s"],
                steps=summary["steps"],
                mean_batch=summary["mean_batch"],
                acceptance=summary["acceptance_rate"],
                verify_s=summary["verify_s"],
                draft_s=summary["draft_s"] + summary["catchup_s"],
                **decode_times(result.steps),
                same_output=result.outputs == outputs["standard"],
            )
        )
    by = {r["decoder"]: r for r in rows}
    std, seq, par = by["standard"], by["psd-seq"], by["psd"]
    for r in rows:
        r["eff_vs_standard"] = np.nan
        r["eff_mechanism"] = np.nan
    par["eff_vs_standard"] = _eff(std["decode_s"], par["decode_s"], std["ideal_s"])
    par["eff_mechanism"] = _eff(seq["decode_s"], par["decode_s"], seq["ideal_s"])
    par["speedup_vs_standard"] = std["decode_s"] / par["decode_s"]
    return rows


def _eff(sequential: float, parallel: float, ideal: float) -> float:
    try:
        return overlap_efficiency(sequential, parallel, min(ideal, sequential))
    except ValueError:
        return math.nan


def main() -> None:
    cfg = parse_args()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    target, tokenizer, eos = build_target(cfg)
    new_drafter = drafter_factory(cfg, target)
    rates = [None if r.strip() in ("inf", "offline") else float(r) for r in cfg.rates.split(",")]
    rows = []
    for rate in rates:
        rows += run_rate(cfg, target, new_drafter, tokenizer, eos, rate)
    df = pd.DataFrame(rows)
    device = next(target.parameters()).device
    df.insert(0, "device", str(device) if device.type != "cpu" else f"cpu x{torch.get_num_threads()}")
    df.insert(1, "target", cfg.target_config or cfg.model)
    df.insert(2, "drafter", cfg.drafter if cfg.drafter == "ngram" else cfg.draft_config or cfg.draft)
    df["draft_threads"], df["verify_threads"] = cfg.draft_threads, cfg.verify_threads
    out = Path(cfg.out)
    name = (
        f"{df.loc[0, 'target']}__{df.loc[0, 'drafter']}__k{cfg.k}__{time.strftime('%Y%m%d-%H%M%S')}".replace(
            ":", ""
        )
    )
    write_table(df, out / f"{name}.csv")
    cols = [
        "rate",
        "decoder",
        "throughput_tok_s",
        "e2e_p50_s",
        "e2e_p95_s",
        "decode_s",
        "ideal_s",
        "hidden_s",
        "verify_s",
        "draft_s",
        "acceptance",
        "eff_vs_standard",
        "eff_mechanism",
        "same_output",
        "modes",
    ]
    with pd.option_context(
        "display.width", 250, "display.max_columns", 30, "display.float_format", "{:.3f}".format
    ):
        print(df[cols].to_string(index=False))
    print(f"wrote {out / name}.csv")


if __name__ == "__main__":
    main()
