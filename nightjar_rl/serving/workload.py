"""Prompt sets and arrival processes: what requests arrive, and when."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.io import read_jsonl

BUNDLED = "bundled"


class WorkloadError(ValueError):
    """Bad prompt file or arrival settings (message is user-facing)."""


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str
    family: str = "custom"


def bundled_prompts_path() -> Path:
    return Path(str(resources.files("nightjar_rl") / "data" / "prompts.jsonl"))


def load_prompts(path: str | Path | None = None, families: list[str] | None = None) -> list[PromptRecord]:
    """Read a JSONL file whose objects carry a `prompt` string (optional `id`, `family`).
    `None` or "bundled" reads the prompt set shipped with the package."""
    path = bundled_prompts_path() if path in (None, BUNDLED) else Path(path)
    if not path.is_file():
        raise WorkloadError(f"prompt file not found: {path}")
    records = []
    for lineno, obj in read_jsonl(path, WorkloadError):
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
            raise WorkloadError(f"{path}:{lineno}: each line needs a non-empty string field 'prompt'")
        records.append(PromptRecord(str(obj.get("id", f"p{lineno}")), obj["prompt"], str(obj.get("family", "custom"))))
    if families:
        unknown = set(families) - {r.family for r in records}
        if unknown:
            raise WorkloadError(f"{path}: no prompts of family {', '.join(sorted(unknown))}")
        records = [r for r in records if r.family in families]
    if not records:
        raise WorkloadError(f"{path}: no prompts")
    return records


def encode_prompt(tokenizer, text: str, vocab_size: int, chat: bool = True) -> list[int]:
    """Token ids for a user message: the chat template when the tokenizer has one. Tiny random models
    have no tokenizer: their ids are the UTF-8 bytes folded into the vocabulary."""
    if tokenizer is None:
        return [b % vocab_size for b in text.encode("utf-8")]
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(text)["input_ids"]


def poisson_arrivals(n: int, rate: float | None, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of n requests: Poisson at `rate` requests/s, or all at t=0 when rate is None/inf."""
    if rate is None or np.isinf(rate):
        return np.zeros(n)
    if rate <= 0:
        raise WorkloadError(f"request rate must be > 0, got {rate}")
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def build_requests(
    prompts: list[list[int]],
    ids: list[str],
    arrivals: np.ndarray,
    max_new_tokens: int | list[int],
) -> list[Request]:
    """Pair prompt ids with arrival times and token budgets (ids made unique per request)."""
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    return [
        Request(f"{i}:{pid}", list(p), int(b), float(t))
        for i, (p, pid, t, b) in enumerate(zip(prompts, ids, arrivals, budgets))
    ]
