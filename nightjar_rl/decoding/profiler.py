"""Profile the hardware once: time a verify pass over batch sizes x tokens per row, and a draft step.

The result is a hardware profile (JSON, see `nightjar_rl.policy.profile` for the format) that the
oracle policy, the SSSD budget and the simulator read instead of timing the model again.
"""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from nightjar_rl.decoding.drafters.ngram import lookup_continuation
from nightjar_rl.decoding.runner import ModelRunner
from nightjar_rl.decoding.timing import now


def _time_forward(runner: ModelRunner, batch: int, tokens: int, context: int, repeats: int, vocab: int, rng) -> float:
    rows = [rng.integers(0, vocab, size=tokens).tolist() for _ in range(batch)]
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
) -> dict:
    """Median milliseconds of one verify forward per (batch, tokens per row) at `context` cached tokens,
    plus one draft-model step (1 token per row) per batch size, and the n-gram lookup per row."""
    if not batch_sizes or not tokens_per_row or min(batch_sizes) < 1 or min(tokens_per_row) < 1:
        raise ValueError("batch sizes and tokens per row must be non-empty lists of positive integers")
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    capacity = context + max(tokens_per_row) + 1
    runner = ModelRunner(model, max(batch_sizes), capacity)
    _fill_context(runner, max(batch_sizes), context, vocab, rng)
    draft_runner = None
    if draft_model is not None:
        draft_runner = ModelRunner(draft_model, max(batch_sizes), capacity)
        _fill_context(draft_runner, max(batch_sizes), context, vocab, rng)
    verify_ms: dict[str, dict[str, float]] = {}
    draft_ms: dict[str, float] = {}
    cells = [(b, n) for b in sorted(batch_sizes) for n in sorted(tokens_per_row)]
    for b, n in tqdm(cells, desc="profiling", disable=not progress, leave=False):
        verify_ms.setdefault(str(b), {})[str(n)] = round(_time_forward(runner, b, n, context, repeats, vocab, rng), 4)
    if draft_runner is not None:
        for b in sorted(batch_sizes):
            draft_ms[str(b)] = round(_time_forward(draft_runner, b, 1, context, repeats, vocab, rng), 4)
    history = rng.integers(0, vocab, size=context)
    t0 = time.perf_counter()
    for _ in range(100):
        lookup_continuation(history, 8, 3, 1)
    ngram_ms = (time.perf_counter() - t0) * 1000.0 / 100
    param = next(model.parameters())
    return {
        "format": "nightjar-rl/hardware-profile",
        "version": 1,
        "device": torch.cuda.get_device_name(param.device) if param.device.type == "cuda" else platform.processor()
        or platform.machine(),
        "device_type": param.device.type,
        "threads": torch.get_num_threads(),
        "model": model_name,
        "dtype": str(param.dtype).replace("torch.", ""),
        "context": context,
        "repeats": repeats,
        "verify_ms": verify_ms,
        "draft_ms": draft_ms,
        "ngram_lookup_ms_per_row": round(ngram_ms, 5),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
