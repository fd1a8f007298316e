"""The `nightjar-rl` command: generate, bench, profile, experiment, datastore."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from nightjar_rl.decoding.datastore_cli import add_datastore_parser
from nightjar_rl.experiments.cli import add_experiment_parser
from nightjar_rl.stack import DECODERS, DRAFTERS, EngineConfig

DEFAULT_PROFILE_DIR = Path("envs") / "profiles"


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", default="smollm2-135m", help="target: smollm2-135m (bundled), tiny-random[-N], HF name or path")
    g.add_argument("--drafter", default="ngram", choices=DRAFTERS, help="drafter (default: ngram)")
    g.add_argument("--draft", default=None, help="draft model for --drafter draft (name/path, or early-exit:LAYERS)")
    g.add_argument("--decoder", default="standard", choices=DECODERS, help="decoding loop")
    g.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="float32 (default) keeps speculation bit-exact; bfloat16 is faster on CPU but may flip near-ties",
    )
    g.add_argument("--device", default=None, help="cuda/cpu (default: cuda when available)")
    g.add_argument("--max-batch-size", type=int, default=16)
    g.add_argument("--max-seq-len", type=int, default=1024, help="context per request (prompt + new tokens)")
    g.add_argument("--max-kv-tokens", type=int, default=None, help="KV token budget; requests queue beyond it")
    g.add_argument(
        "--max-waiting", type=int, default=None,
        help="bound on the waiting queue; requests arriving beyond it are rejected (default: no bound)",
    )
    g.add_argument("--max-speculation", type=int, default=8, help="largest k the engine accepts")
    g.add_argument("--datastore", default=None, help="sssd: datastore built by `nightjar-rl datastore build`")
    g.add_argument("--ngram-max", type=int, default=3)
    g.add_argument("--ngram-min", type=int, default=1)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that serve prompts: k, prompt set, token budget, progress."""
    p.add_argument("--k", type=int, default=4, help="speculation length (0 = off)")
    p.add_argument("--prompts", default=None, help="JSONL with a 'prompt' field (default: bundled set)")
    p.add_argument("--families", default=None, help="comma-separated prompt families to keep")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--quiet", action="store_true")


def _engine_config(a: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=a.model, drafter=a.drafter, draft=a.draft, dtype=a.dtype, device=a.device, decoder=a.decoder,
        max_batch_size=a.max_batch_size, max_seq_len=a.max_seq_len, max_kv_tokens=a.max_kv_tokens,
        max_waiting=a.max_waiting, max_speculation=a.max_speculation, ngram_max=a.ngram_max, ngram_min=a.ngram_min,
        temperature=a.temperature, top_p=a.top_p, seed=a.seed, threads=a.threads, datastore=a.datastore,
    )


def _check_k(k: int, cfg: EngineConfig) -> None:
    if k < 0:
        raise CLIError(f"--k must be >= 0, got {k}")
    if k > cfg.max_speculation:
        raise CLIError(f"--k {k} exceeds --max-speculation {cfg.max_speculation}")


def _load_workload(a, stack, rate: float | None, count: int | None):
    import numpy as np

    from nightjar_rl.serving import build_requests, load_prompts, poisson_arrivals
    from nightjar_rl.serving.workload import encode_prompt

    records = load_prompts(a.prompts, a.families.split(",") if getattr(a, "families", None) else None)
    if count is not None:
        if count < 1:
            raise CLIError(f"--num-requests must be >= 1, got {count}")
        records = [records[i % len(records)] for i in range(count)]
    ids = [encode_prompt(stack.tokenizer, r.prompt, stack.vocab_size) for r in records]
    rng = np.random.default_rng(a.seed)
    return records, build_requests(ids, [r.id for r in records], poisson_arrivals(len(ids), rate, rng), a.max_new_tokens)


def cmd_generate(a: argparse.Namespace) -> int:
    from nightjar_rl.io import atomic_write_jsonl
    from nightjar_rl.serving import serve
    from nightjar_rl.stack import build_stack

    cfg = _engine_config(a)
    _check_k(a.k, cfg)
    stack = build_stack(cfg)
    records, requests = _load_workload(a, stack, None, None)
    result = serve(stack.engine, requests, k=a.k, progress=not a.quiet, desc="generate")
    reasons = dict(zip(result.requests["request_id"], result.requests["finish_reason"]))
    rows = []
    for rec, req in zip(records, requests):
        tokens = result.outputs.get(req.request_id, [])  # none for a request rejected by --max-waiting
        text = stack.tokenizer.decode(tokens, skip_special_tokens=True) if stack.tokenizer else None
        rows.append({"id": rec.id, "token_ids": tokens, "text": text, "finish_reason": reasons[req.request_id]})
    atomic_write_jsonl(a.out, rows)
    print(f"wrote {len(rows)} generations to {a.out}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from nightjar_rl.io import atomic_write_json
    from nightjar_rl.serving import serve, summarize
    from nightjar_rl.stack import build_stack

    cfg = _engine_config(a)
    _check_k(a.k, cfg)
    rate = None if a.rate in (None, "inf", "offline") else _positive_float(a.rate, "--rate")
    stack = build_stack(cfg)
    _, requests = _load_workload(a, stack, rate, a.num_requests)
    result = serve(stack.engine, requests, k=a.k, progress=not a.quiet, desc="bench")
    summary = {"model": cfg.model, "drafter": cfg.drafter, "decoder": cfg.decoder, "dtype": cfg.dtype,
               "k": a.k, "rate": rate if rate is not None else "offline", **summarize(result)}
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if a.out:
        atomic_write_json(a.out, summary)
        print(f"wrote {a.out}")
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    from nightjar_rl.decoding.profiler import profile_hardware
    from nightjar_rl.io import atomic_write_json
    from nightjar_rl.models import load_model
    from nightjar_rl.stack import load_draft_model

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    target = load_model(a.model, a.dtype, a.device)
    draft = load_draft_model(a.draft, target, a.dtype, a.device) if a.draft else None
    profile = profile_hardware(
        target.model, a.model, _int_list(a.batch_sizes, "--batch-sizes"), _int_list(a.tokens, "--tokens"),
        context=a.context, repeats=a.repeats, draft_model=draft, progress=not a.quiet,
    )
    out = Path(a.out) if a.out else DEFAULT_PROFILE_DIR / f"{a.model.replace('/', '_')}-{profile['device_type']}-{a.dtype}.json"
    atomic_write_json(out, profile)
    print(f"wrote hardware profile {out}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise CLIError(f"{flag} needs positive integers, got {text!r}")
    return values


def _positive_float(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CLIError(f"{flag} takes a number, got {text!r}") from None
    if not value > 0 or math.isnan(value):
        raise CLIError(f"{flag} must be > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightjar-rl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate completions for a prompt file")
    _add_engine_args(g)
    _add_workload_args(g)
    g.add_argument("--out", required=True, help="output JSONL")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="serve a workload and report throughput/latency")
    _add_engine_args(b)
    _add_workload_args(b)
    b.add_argument("--num-requests", type=int, default=None, help="requests (cycling through the prompts)")
    b.add_argument("--rate", default=None, help="Poisson arrival rate in requests/s (default: offline, all at once)")
    b.add_argument("--out", default=None, help="write the summary JSON here")
    b.set_defaults(func=cmd_bench)

    pr = sub.add_parser("profile", help="time verify/draft steps over batch sizes; write a hardware profile")
    pr.add_argument("--model", default="smollm2-135m")
    pr.add_argument("--draft", default=None, help="draft model to time (name/path or early-exit:LAYERS)")
    pr.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    pr.add_argument("--device", default=None)
    pr.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    pr.add_argument("--tokens", default="1,2,3,5,9", help="tokens per row scored (k+1)")
    pr.add_argument("--context", type=int, default=128, help="cached tokens per row")
    pr.add_argument("--repeats", type=int, default=3)
    pr.add_argument("--threads", type=int, default=None)
    pr.add_argument("--out", default=None, help=f"output JSON (default: {DEFAULT_PROFILE_DIR}/<model>-<device>-<dtype>.json)")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_profile)

    add_experiment_parser(sub)
    add_datastore_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nightjar_rl.models import ModelLoadError
    from nightjar_rl.serving import WorkloadError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ModelLoadError, WorkloadError, ValueError, FileNotFoundError) as exc:
        print(f"nightjar-rl: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nightjar-rl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
