"""Profile the hardware once: time a verify pass over batch sizes x tokens per row (x contexts), a
draft step, prefill passes and the engine's per-step overhead.

The result is a hardware profile (JSON, see `nightjar_rl.hardware` for the format) that the
oracle policy, the SSSD budget and the simulator's clock read instead of timing the model again.
"""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from nightjar_rl.decoding.drafters.ngram import lookup_continuation
from nightjar_rl.decoding.layouts import forward_layout
from nightjar_rl.decoding.runner import DEFAULT_MODEL_FORWARD, DEFAULT_VERIFY_LAYOUT, ModelRunner
from nightjar_rl.decoding.timing import now


def _time_forward(runner: ModelRunner, batch: int, tokens: int, context: int, repeats: int, vocab: int, rng,
                  half: bool = False) -> float:
    """Median ms of one forward: `batch` rows at `context` cached tokens scoring `tokens` positions
    each, or with `half`, the first half of the rows `tokens` and the rest 1 (a per-row plan)."""
    rows = [rng.integers(0, vocab, size=tokens if not half or i < (batch + 1) // 2 else 1).tolist()
            for i in range(batch)]
    past = [context] * batch
    runner.forward(0, rows, past)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = now(runner.device)
        runner.forward(0, rows, past)
        times.append(now(runner.device) - t0)
    return statistics.median(times) * 1000.0


def _fill_context(runner: ModelRunner, batch: int, context: int, vocab: int, rng) -> None:
    """Write `context` random tokens of KV into each of the first `batch` slots."""
    for slot in range(batch):  # one row at a time keeps peak memory small
        runner.forward(slot, [rng.integers(0, vocab, size=context).tolist()], [0], last_only=True)


def _time_prefill(runner: ModelRunner, tokens: int, repeats: int, vocab: int, rng) -> float:
    row = [rng.integers(0, vocab, size=tokens).tolist()]
    runner.forward(0, row, [0], last_only=True)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = now(runner.device)
        runner.forward(0, row, [0], last_only=True)
        times.append(now(runner.device) - t0)
    return statistics.median(times) * 1000.0


def measure_overhead_ms(model: torch.nn.Module, batch: int, context: int, steps: int, vocab: int, rng,
                        verify_layout: str = DEFAULT_VERIFY_LAYOUT, model_forward: str = DEFAULT_MODEL_FORWARD) -> float:
    """Median per-step time of the real engine outside its timed phases (prefill, draft, verify) at
    k = 0: admission, bookkeeping, appending, retiring. This is the simulator's per-step overhead."""
    from nightjar_rl.decoding.engine import SpeculativeEngine
    from nightjar_rl.decoding.sequence import Request

    engine = SpeculativeEngine(model, None, max_batch_size=batch, max_seq_len=context + steps + 4, max_speculation=0,
                               verify_layout=verify_layout, model_forward=model_forward)
    for i in range(batch):
        engine.submit(Request(f"o{i}", rng.integers(0, vocab, size=context).tolist(), steps + 2))
    engine.step(0)  # prefill
    samples = []
    for _ in range(steps):
        st = engine.step(0)
        samples.append(st.wall_time - st.prefill_time - st.draft_time - st.catchup_time - st.verify_time)
    return max(0.0, statistics.median(samples) * 1000.0)


ANCHOR_SHAPES = ((1, 1, 256), (4, 1, 256), (16, 1, 256), (16, 5, 256))  # (rows, tokens per row, context)


def measure_speed_anchor(model: torch.nn.Module, shapes=ANCHOR_SHAPES, rounds: int = 21, seed: int = 0,
                         verify_layout: str = DEFAULT_VERIFY_LAYOUT, model_forward: str = DEFAULT_MODEL_FORWARD,
                         progress: bool = False) -> dict:
    """Time a few fixed forwards (`shapes`: rows x tokens per row at a context), `rounds` times in
    interleaved order, median per shape: the machine's speed at this moment, recorded in a profile
    (`speed_anchor`) and timed again later to rescale it (`nightjar_rl.hardware.speed_ratio`). Seconds.
    Each round times one forward per shape (after a warm-up forward of the same shape): on the 2-core CPU
    one forward at 16 rows varies by up to 20-30% from the next, and medians of 10 rounds by about 5%,
    hence 21 rounds; the same procedure then and now, or the ratio compares two procedures."""
    if rounds < 1 or not shapes:
        raise ValueError("a speed anchor needs at least one shape and one round")
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    rows, longest = max(s[0] for s in shapes), max(s[2] for s in shapes)
    verify_layout = forward_layout(verify_layout)  # a unified step's forwards are packed
    runner = ModelRunner(model, rows, longest + max(s[1] for s in shapes) + 1, layout=verify_layout,
                         model_forward=model_forward)
    _fill_context(runner, rows, longest, vocab, rng)
    times: dict[int, list[float]] = {i: [] for i in range(len(shapes))}
    for _ in tqdm(range(rounds), desc="speed anchor", disable=not progress, leave=False):
        for i, (b, n, c) in enumerate(shapes):
            times[i].append(_time_forward(runner, b, n, c, 1, vocab, rng))
    return {"shapes": [list(s) for s in shapes], "ms": [round(statistics.median(times[i]), 4) for i in times],
            "rounds": rounds, "threads": torch.get_num_threads(), "verify_layout": verify_layout,
            "model_forward": model_forward,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}


def profile_hardware(
    model: torch.nn.Module,
    model_name: str,
    batch_sizes: list[int],
    tokens_per_row: list[int],
    context: int = 128,
    repeats: int = 3,
    draft_model: torch.nn.Module | None = None,
    seed: int = 0,
    progress: bool = True,
    contexts: list[int] | None = None,
    prefill_tokens: list[int] | None = None,
    overhead_steps: int = 0,
    verify_layout: str = DEFAULT_VERIFY_LAYOUT,
    model_forward: str = DEFAULT_MODEL_FORWARD,
) -> dict:
    """Median milliseconds of one verify forward per (batch, tokens per row) at `context` cached tokens,
    plus one draft-model step (1 token per row) per batch size, and the n-gram lookup per row.

    Version-2 tables (for the simulator's clock), each only when asked for: the verify table at every
    context in `contexts`, prefill passes (and draft-model catch-up passes) over `prefill_tokens`
    tokens, and the engine's per-step overhead per batch size from `overhead_steps` real k=0 steps.

    `verify_layout`: the runner layout timed (the engine's `verify_layout`, default the engine's
    default; `mixed` times its packed forwards and is recorded as packed, which prices a unified step:
    `layouts.prices_alike`), so the tables price what the engine computes. With packed, `verify_ms_half_drafted` also times per-row
    steps (half the rows scoring n positions, half 1) at `context`: the check that pricing a packed step
    by its rows and total scored tokens (`HardwareProfile.verify_step_ms`) holds on this machine.
    `model_forward`: the decoder forward timed, the target's and the draft model's as the engine runs them
    (the engine's `model_forward`), recorded."""
    if not batch_sizes or not tokens_per_row or min(batch_sizes) < 1 or min(tokens_per_row) < 1:
        raise ValueError("batch sizes and tokens per row must be non-empty lists of positive integers")
    contexts = sorted(set(contexts or []))
    if contexts and min(contexts) < 1:
        raise ValueError("contexts must be positive integers")
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    longest = max([context, *contexts])
    capacity = max(longest + max(tokens_per_row), *(prefill_tokens or [0])) + 1
    verify_layout = forward_layout(verify_layout)
    runner = ModelRunner(model, max(batch_sizes), capacity, layout=verify_layout, model_forward=model_forward)
    _fill_context(runner, max(batch_sizes), longest, vocab, rng)
    draft_runner = None
    if draft_model is not None:
        draft_runner = ModelRunner(draft_model, max(batch_sizes), capacity, layout=verify_layout,
                                   model_forward=model_forward)  # as the engine runs its draft model
        _fill_context(draft_runner, max(batch_sizes), longest, vocab, rng)

    def table(ctx: int, desc: str) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        cells = [(b, n) for b in sorted(batch_sizes) for n in sorted(tokens_per_row)]
        for b, n in tqdm(cells, desc=desc, disable=not progress, leave=False):
            out.setdefault(str(b), {})[str(n)] = round(_time_forward(runner, b, n, ctx, repeats, vocab, rng), 4)
        return out

    verify_ms = table(context, "profiling")
    draft_ms: dict[str, float] = {}
    if draft_runner is not None:
        for b in sorted(batch_sizes):
            draft_ms[str(b)] = round(_time_forward(draft_runner, b, 1, context, repeats, vocab, rng), 4)
    history = rng.integers(0, vocab, size=context)
    t0 = time.perf_counter()
    for _ in range(100):
        lookup_continuation(history, 8, 3, 1)
    ngram_ms = (time.perf_counter() - t0) * 1000.0 / 100
    param = next(model.parameters())
    out = {
        "format": "nightjar-rl/hardware-profile",
        "version": 2,
        "device": torch.cuda.get_device_name(param.device) if param.device.type == "cuda" else platform.processor()
        or platform.machine(),
        "device_type": param.device.type,
        "threads": torch.get_num_threads(),
        "model": model_name,
        "dtype": str(param.dtype).replace("torch.", ""),
        "context": context,
        "repeats": repeats,
        "verify_layout": verify_layout,
        "model_forward": model_forward,
        "verify_ms": verify_ms,
        "draft_ms": draft_ms,
        "ngram_lookup_ms_per_row": round(ngram_ms, 5),
    }
    if verify_layout == "packed":
        cells = [(b, n) for b in sorted(batch_sizes) if b > 1 for n in sorted(tokens_per_row) if n > 1]
        half: dict[str, dict[str, float]] = {}
        for b, n in tqdm(cells, desc="per-row steps", disable=not progress, leave=False):
            half.setdefault(str(b), {})[str(n)] = round(_time_forward(runner, b, n, context, repeats, vocab, rng, half=True), 4)
        out["verify_ms_half_drafted"] = half
    if contexts:
        out["verify_ms_by_context"] = {str(c): verify_ms if c == context else table(c, f"context {c}")
                                       for c in contexts}
    if prefill_tokens:
        out["prefill_ms"] = {str(t): round(_time_prefill(runner, t, repeats, vocab, rng), 4) for t in sorted(prefill_tokens)}
        if draft_runner is not None:
            out["draft_prefill_ms"] = {str(t): round(_time_prefill(draft_runner, t, repeats, vocab, rng), 4)
                                       for t in sorted(prefill_tokens)}
    if overhead_steps > 0:
        out["overhead_ms"] = {str(b): round(measure_overhead_ms(model, b, context, overhead_steps, vocab, rng,
                                                                verify_layout, model_forward), 4)
                              for b in tqdm(sorted(batch_sizes), desc="overhead", disable=not progress, leave=False)}
    out["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return out
