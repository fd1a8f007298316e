"""The native decoder forwards (TorchScript, Python, vLLM's kernels) against the model's own forward.

Four engines, one per `model_forward` (`native`: the layer loop through TorchScript, `native-eager`:
the same loop as Python, `transformers`: the model's own forward, on one loaded target with packed
linears; `native-vllm`: the loop on vLLM's CPU kernels, on its own copy with vLLM's GEMM,
`nightjar_rl.model_names.FORWARD_LINEARS`; skipped without the [vllm] extra), serve the peer benchmark's workload (`bench_vllm.py`: the
bundled prompts chat-templated, greedy, `--max-new-tokens` each; batch 1 = the first `--single` prompts
one after the other, batched cells all `--prompts` with at most `batch` in flight) at every k in
`--ks`, interleaved per repeat (the order rotates). Reported per cell: median tokens/s, TTFT and TPOT
p50, each native kind's per-repeat ratio to `transformers`, and how many requests' outputs it decodes
identically to `transformers` token by token in every repeat. Then one forward timed alone per (rows,
fed tokens) shape, the runner only (`--forward-shapes`).

    python experiments/bench_model_forward.py --repeats 5 --threads 2
    python experiments/bench_model_forward.py --quick --out-dir /tmp/bench_model_forward   # seconds
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import quickmode  # same folder
import torch
from bench_vllm import Args as PeerArgs
from bench_vllm import prompt_ids, serve_once  # same folder: the peer benchmark's workload

from nightjar_rl.model_names import FORWARD_LINEARS, MODEL_FORWARDS, linears_for

BASELINE = "transformers"  # the model's own forward
NATIVE_KINDS = tuple(f for f in MODEL_FORWARDS if f != BASELINE)  # each set against it


def _order(repeat: int, forwards: tuple[str, ...]) -> tuple[str, ...]:
    """The forwards in the order a repeat runs them: rotated, and reversed every other round of
    rotations, so over 2 x len(forwards) repeats each goes first, last and after each other one equally."""
    shift = repeat % len(forwards)
    order = forwards[shift:] + forwards[:shift]
    return order if (repeat // len(forwards)) % 2 == 0 else order[::-1]


def _stacks(a: Args, target, slots: int, max_seq_len: int) -> dict:
    """One engine per forward; native-vllm dropped (said why) where vLLM's kernels cannot serve the model."""
    from nightjar_rl.stack import EngineConfig, build_stack

    stacks = {}
    for f in (*NATIVE_KINDS, BASELINE):
        config = EngineConfig(model=a.model, max_batch_size=slots, max_seq_len=max_seq_len, max_speculation=max(a.ks),
                              threads=a.threads, model_forward=f, linears=linears_for(f))
        try:
            stacks[f] = build_stack(config, target=None if f in FORWARD_LINEARS else target)
        except ValueError as exc:  # VllmKernelError: no [vllm] extra, or no kernel for this head size
            if f not in FORWARD_LINEARS:
                raise
            print(f"skipping {f}: {exc}")
    return stacks


@dataclass
class Args:
    model: str = "smollm2-135m"
    repeats: int = 5
    prompts: int = 64
    single: int = 8
    max_new_tokens: int = 64
    batches: list[int] = field(default_factory=lambda: [1, 16])
    ks: list[int] = field(default_factory=lambda: [0, 4])
    forward_shapes: list[int] = field(default_factory=lambda: [1, 1, 1, 5, 16, 1, 16, 5])  # (rows, fed) pairs
    context: int = 256
    threads: int = 2
    out: str = "runs/bench_model_forward"


QUICK = {"model": "tiny-random", "repeats": 1, "prompts": 4, "single": 2, "max_new_tokens": 8, "batches": [1, 4],
         "ks": [0, 2], "forward_shapes": [1, 1, 4, 3], "context": 16}


def _time_forwards(runner, shapes: list[tuple[int, int]], context: int, steps: int = 15) -> dict:
    """Median ms of one runner forward per (rows, fed) shape, each row already caching `context` tokens."""
    out = {}
    for rows, fed in shapes:
        runner.forward(0, [[5] * context for _ in range(rows)], [0] * rows, last_only=True)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            runner.forward(0, [[7] * fed for _ in range(rows)], [context] * rows, last_only=fed == 1)
            times.append(time.perf_counter() - t0)
        out[(rows, fed)] = statistics.median(times) * 1e3
    return out


def main(a: Args) -> pd.DataFrame:
    from tqdm.auto import tqdm

    from nightjar_rl.models import load_model

    if len(a.forward_shapes) % 2:
        raise SystemExit(f"--forward-shapes takes (rows, fed) pairs, got {len(a.forward_shapes)} numbers")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    peer = PeerArgs(model=a.model, prompts=a.prompts, max_new_tokens=a.max_new_tokens)
    if a.model.startswith("tiny-random"):  # no tokenizer: random token prompts
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, 90, (int(n),), generator=g).tolist() for n in torch.randint(4, 24, (a.prompts,), generator=g)]
    else:
        prompts = prompt_ids(peer)
    target = load_model(a.model)
    slots = max(a.batches)
    stacks = _stacks(a, target, slots, peer.max_seq_len)
    forwards = tuple(stacks)
    natives = tuple(f for f in forwards if f != BASELINE)
    kinds = {f: s.engine.runner.forward_kind for f, s in stacks.items()}
    if kinds != {f: f for f in forwards}:
        raise SystemExit(f"{a.model}: not every forward runs as asked here ({kinds}; 'native-eager' for native: "
                         "TorchScript failed, see the log)")
    rows, outputs = [], {}
    cells = [(r, b, k, f) for r in range(a.repeats) for b in a.batches for k in a.ks for f in _order(r, forwards)]
    for rep, batch, k, forward in tqdm(cells, desc="bench_model_forward", unit="run"):
        served = prompts[:a.single] if batch == 1 else prompts
        res = serve_once(stacks[forward].engine, served, a.max_new_tokens, batch, k)
        outputs[(batch, k, forward, rep)] = res.pop("outputs")
        rows.append({"repeat": rep, "batch": batch, "k": k, "forward": forward, **res})
    df = pd.DataFrame(rows)
    wide = df.pivot_table(index=["batch", "k", "repeat"], columns="forward", values="tokens_s")
    table = df.groupby(["batch", "k", "forward"])[["tokens_s", "ttft_p50_s", "tpot_p50_s"]].median().unstack("forward")
    table[("served", "requests")] = [len(outputs[(b, k, BASELINE, 0)]) for b, k in table.index]
    for f in natives:  # each native kind against the model's own forward
        ratio = (wide[f] / wide[BASELINE]).groupby(["batch", "k"])
        table[(f"{f}/{BASELINE}", "median")] = ratio.median()
        table[(f"{f}/{BASELINE}", "min")] = ratio.min()
        table[(f"{f}/{BASELINE}", "max")] = ratio.max()
        table[(f"identical {f}", "requests")] = [  # in every repeat
            sum(all(outputs[(b, k, f, r)][i] == outputs[(b, k, BASELINE, r)][i] for r in range(a.repeats))
                for i in range(served)) for (b, k), served in zip(table.index, table[("served", "requests")])]
    pairs = list(zip(a.forward_shapes[::2], a.forward_shapes[1::2]))
    forward_ms = []
    for rep in range(a.repeats):
        for f in _order(rep, forwards):
            for (b, n), ms in _time_forwards(stacks[f].engine.runner, pairs, a.context).items():
                forward_ms.append({"repeat": rep, "rows": b, "fed": n, "forward": f, "ms": ms})
    fdf = pd.DataFrame(forward_ms)
    ftable = fdf.groupby(["rows", "fed", "forward"])["ms"].median().unstack("forward")
    for f in natives:
        ftable[f"{f}/{BASELINE}"] = ftable[f] / ftable[BASELINE]
    text = (f"{a.model}, {a.threads} threads, medians over {a.repeats} interleaved repeats\n\nserving\n"
            f"{table.to_string(float_format=lambda v: f'{v:.4g}')}\n\none forward (ms), {a.context} cached tokens per row\n"
            f"{ftable.to_string(float_format=lambda v: f'{v:.4g}')}\n")
    quickmode.write_report(out, {"runs.csv": df, "forwards.csv": fdf},
                           {"outputs_identical": all(bool((table[(f"identical {f}", "requests")]
                                                           == table[("served", "requests")]).all()) for f in natives),
                            "repeats": a.repeats, "threads": a.threads, "machine_cpus": os.cpu_count(),
                            "load_avg_at_end": os.getloadavg()}, text)
    return df


if __name__ == "__main__":
    main(quickmode.parse_dataclass_args(Args, __doc__, QUICK))
