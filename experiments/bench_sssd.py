"""Benchmark SSSD against prompt lookup on the bundled model: tokens/s, accepted length, acceptance.

Methods, run side by side on the same prompts in one process (family by family, interleaved):
  plain        k = 0 (no speculation)
  ngram        prompt lookup (NgramDrafter), linear drafts
  sssd         SSSD token trees from the request's own text only
  sssd+ds      SSSD with a datastore built from nightjar_rl/data/corpus.jsonl
All speculative methods use the same hardware-aware k = budget(batch) - 1 (SSSDBudget from a
hardware profile measured once and cached under the output folder). At batch 1 Hugging Face's
`generate(prompt_lookup_num_tokens=...)` and plain `generate` are timed as a reference.

Run (always under the shared lock; each run stays within a few minutes):
    flock /tmp/nightjar-bench.lock env PYTHONPATH=. python experiments/bench_sssd.py --batch 1
    flock /tmp/nightjar-bench.lock env PYTHONPATH=. python experiments/bench_sssd.py --batch 8
    python experiments/bench_sssd.py --quick --out-dir /tmp/bench_sssd     # seconds: tiny random model
Outputs: runs/bench_sssd/<run name>/results.csv (one row per family x method) and the printed table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
import quickmode  # same folder
import torch

from nightjar_rl.decoding.datastore import Datastore, tokenizer_fingerprint
from nightjar_rl.decoding.datastore_cli import build_datastore
from nightjar_rl.decoding.drafters.ngram import NgramDrafter
from nightjar_rl.decoding.drafters.sssd import SSSDDrafter
from nightjar_rl.decoding.engine import SpeculativeEngine
from nightjar_rl.decoding.profiler import profile_hardware
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.env.recorder import write_table
from nightjar_rl.io import atomic_write_json
from nightjar_rl.models import load_model
from nightjar_rl.policy import Policy, make_policy
from nightjar_rl.policy.sssd import SSSDBudget
from nightjar_rl.runtime import serve
from nightjar_rl.serving.workload import load_prompts
from nightjar_rl.text import encode_prompt


@dataclass
class BenchConfig:
    model: str = "smollm2-135m"
    batch: int = 1  # decode batch size (engine max_batch_size)
    prompts: int | None = None  # prompts per family, all arriving at t = 0 (default: batch)
    families: list[str] = field(default_factory=lambda: ["grounded", "code", "chat"])
    max_new_tokens: int = 64
    cap: int = 32  # largest per-row budget (tokens verified per row)
    threads: int = 2
    out: str = "runs/bench_sssd"
    profile: str | None = None  # hardware profile JSON; default: measure once, cache in `out`
    hf_lookup_tokens: int = 10  # prompt_lookup_num_tokens for the HF reference (its default)
    hf_reference: bool = True


def get_profile(cfg: BenchConfig, model) -> dict:
    path = Path(cfg.profile) if cfg.profile else Path(cfg.out) / f"profile_{cfg.model}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    data = profile_hardware(model, cfg.model, batch_sizes=[1, 8], tokens_per_row=[1, 2, 4, 8, 16, 32],
                            context=128, repeats=3, progress=False)
    atomic_write_json(path, data)
    return data


def run_engine(model, eos, drafter, requests, k: int | Policy, max_spec, batch) -> dict:
    """Serve `requests` on a fresh engine at a fixed k or under a k policy (`nightjar_rl.policy`)."""
    engine = SpeculativeEngine(model, drafter, max_batch_size=batch, max_seq_len=1024,
                               max_speculation=max_spec, eos_token_ids=eos)
    res = serve(engine, requests, k=k, progress=False)
    steps = [s for s in res.steps if s.batch_size > 0]
    drafted = sum(sum(s.drafted) for s in steps)
    accepted = sum(sum(s.accepted) for s in steps)
    row_steps = sum(s.batch_size for s in steps)
    spec_rows = sum(s.batch_size for s in steps if s.k > 0)
    out_tokens = int(res.requests["output_tokens"].sum())
    return dict(
        tokens_per_s=out_tokens / res.duration,
        output_tokens=out_tokens,
        duration_s=res.duration,
        mean_accepted=accepted / row_steps,  # accepted draft tokens per row per step (bonus excluded)
        tokens_per_row_step=(accepted + row_steps) / row_steps,
        acceptance_rate=accepted / drafted if drafted else float("nan"),
        drafted_per_row_step=drafted / row_steps,
        mean_k=statistics.mean(s.k for s in steps),
        lookup_ms_per_row=1000 * sum(s.draft_time for s in steps) / spec_rows if spec_rows else 0.0,
        verify_ms_median=1000 * statistics.median(s.verify_time for s in steps),
        outputs=res.outputs,
    )


def hf_generate(model, prompts: list[list[int]], max_new: int, lookup: int | None, eos) -> tuple[float, list[list[int]]]:
    """Tokens/s of HF generate at batch 1 (prompt lookup when `lookup`), and the outputs."""
    total, elapsed, outs = 0, 0.0, []
    for p in prompts:
        ids = torch.tensor([p])
        kwargs = dict(max_new_tokens=max_new, do_sample=False, eos_token_id=list(eos) or None,
                      pad_token_id=(list(eos) or [0])[0])
        if lookup:
            kwargs["prompt_lookup_num_tokens"] = lookup
        t0 = time.perf_counter()
        with torch.inference_mode():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        elapsed += time.perf_counter() - t0
        new = gen[0, len(p):].tolist()
        total += len(new)
        outs.append(new)
    return total / elapsed, outs


def main(cfg: BenchConfig) -> pd.DataFrame:
    torch.set_num_threads(cfg.threads)
    run_name = f"{cfg.model}__sssd__b{cfg.batch}__{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(cfg.out) / run_name
    target = load_model(cfg.model)
    model, tok, eos = target.model, target.tokenizer, target.eos_token_ids
    vocab = model.config.vocab_size

    profile = get_profile(cfg, model)
    budget = SSSDBudget.from_profile(profile, cap=cfg.cap)
    max_spec = budget.k(1)
    print(f"knee ~ {budget.knee:.0f} tokens/pass; budget table {budget.as_table([1, 2, 4, 8, 16, 32, 64])}")

    corpus = Path(str(resources.files("nightjar_rl") / "data" / "corpus.jsonl"))
    ds_path = Path(cfg.out) / f"corpus_{cfg.model}.npz"
    t0 = time.perf_counter()
    build_datastore(corpus, cfg.model, ds_path)
    build_s = time.perf_counter() - t0
    store = Datastore.load(ds_path, vocab, tokenizer_fingerprint(tok, vocab))
    print(f"datastore: {store.header['num_tokens']} tokens from {store.header['num_docs']} docs, built in {build_s:.1f} s")

    # k = budget(batch) - 1 for every speculative method: the `sssd` baseline policy with the measured knee
    sssd_k = make_policy({"type": "sssd", "knee": budget.knee, "cap": cfg.cap}, max_spec)
    methods = {
        "plain": (lambda: None, 0),
        "ngram": (lambda: NgramDrafter(), sssd_k),
        "sssd": (lambda: SSSDDrafter(), sssd_k),
        "sssd+ds": (lambda: SSSDDrafter(store), sssd_k),
    }
    rows = []
    for family in cfg.families:
        recs = load_prompts(families=[family])[: cfg.prompts or cfg.batch]
        prompts = [encode_prompt(tok, r.prompt, vocab) for r in recs]
        def requests(recs=recs, prompts=prompts) -> list[Request]:
            return [Request(f"{r.id}", p, cfg.max_new_tokens) for r, p in zip(recs, prompts)]
        run_engine(model, eos, None, requests()[:1], 0, 0, 1)  # warm-up
        ref = None
        for name, (make, k_policy) in methods.items():
            res = run_engine(model, eos, make(), requests(), k_policy, max_spec, cfg.batch)
            outputs = res.pop("outputs")
            ref = ref or outputs
            rows.append(dict(family=family, method=name, batch=cfg.batch, identical=outputs == ref, **res))
            print(f"{family:9s} {name:8s} {res['tokens_per_s']:7.2f} tok/s  acc_len {res['mean_accepted']:.2f}  "
                  f"acc_rate {res['acceptance_rate']:.2f}  lookup {res['lookup_ms_per_row']:.3f} ms/row", flush=True)
        if cfg.batch == 1 and cfg.hf_reference:
            for name, lookup in (("hf-plain", None), ("hf-prompt-lookup", cfg.hf_lookup_tokens)):
                tps, outs = hf_generate(model, prompts, cfg.max_new_tokens, lookup, eos)
                same = outs == [ref[r.request_id] for r in requests()]
                rows.append(dict(family=family, method=name, batch=1, identical=same, tokens_per_s=tps))
                print(f"{family:9s} {name:16s} {tps:7.2f} tok/s (identical to engine: {same})", flush=True)
    df = pd.DataFrame(rows)
    base = df[df.method == "ngram"].set_index("family")["tokens_per_s"]
    plain = df[df.method == "plain"].set_index("family")["tokens_per_s"]
    df["speedup_vs_ngram"] = df.tokens_per_s / df.family.map(base)
    df["speedup_vs_plain"] = df.tokens_per_s / df.family.map(plain)
    write_table(df, out_dir / "results.csv")
    atomic_write_json(out_dir / "config.json", {**asdict(cfg), "knee": budget.knee,
                                                 "budget": budget.as_table([1, 2, 4, 8, 16, 32, 64])})
    cols = ["family", "method", "tokens_per_s", "speedup_vs_ngram", "speedup_vs_plain", "mean_accepted",
            "tokens_per_row_step", "acceptance_rate", "mean_k", "lookup_ms_per_row", "verify_ms_median", "identical"]
    print(df[[c for c in cols if c in df]].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"results: {out_dir / 'results.csv'}")
    return df


# --quick: end to end in seconds on the tiny random model (for the tests; numbers mean nothing)
QUICK = {"model": "tiny-random", "families": ["grounded", "code"], "max_new_tokens": 8, "cap": 8,
         "threads": 1}


def parse_args() -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompts", type=int, default=None, help="prompts per family (default: --batch)")
    p.add_argument("--families", nargs="+", default=["grounded", "code", "chat"])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--cap", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--profile", default=None)
    p.add_argument("--out", "--out-dir", dest="out", default="runs/bench_sssd")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face generate reference")
    a = quickmode.parse_args(p, QUICK)
    if a.batch < 1 or a.max_new_tokens < 1:
        raise SystemExit("--batch and --max-new-tokens must be >= 1")
    return BenchConfig(model=a.model, batch=a.batch, prompts=a.prompts, families=a.families,
                       max_new_tokens=a.max_new_tokens, cap=a.cap, threads=a.threads, out=a.out,
                       profile=a.profile, hf_reference=not a.no_hf)


if __name__ == "__main__":
    main(parse_args())
