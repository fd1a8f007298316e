"""Seeded workloads for a scenario: which prompts arrive, and when.

All randomness comes from the numpy Generator passed in (the env's `self.np_random`, or
`gymnasium.utils.seeding.np_random(seed)` in evaluation), so one seed gives one workload. Prompts are
drawn first, then arrival times: for a given seed every arrival rate sees the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.serving.arrivals import ArrivalProcess
from nightjar_rl.serving.workload import WorkloadQuery, build_requests, encode_record, load_workload


@dataclass
class PromptPool:
    """Prompt token ids encoded once per tokenizer (encoding is the slow part)."""

    ids: list[str]
    token_ids: list[list[int]]
    max_tokens: list[int | None] | None = None  # each prompt's own output budget (None: the scenario's)
    families: list[str] | None = None  # each prompt's family (None: unknown)

    @classmethod
    def build(cls, prompts: dict, tokenizer, vocab_size: int, max_prompt_tokens: int | None = None,
              room: int | None = None) -> PromptPool:
        """`prompts`: {path: a workload spec (bundled, a .jsonl file, jsonl:FILE, sharegpt, NAME[:ARG]),
        families: [...], sample: N, seed: S} (sample/seed: how many records a sampling source draws);
        `room`: the longest prompt the engine can take (a sampling source skips longer ones)."""
        query = WorkloadQuery(prompts.get("sample"), int(prompts.get("seed") or 0), tokenizer, vocab_size, room)
        records = load_workload(prompts.get("path", "bundled"), prompts.get("families"), query)
        encoded = [encode_record(tokenizer, r, vocab_size) for r in records]
        if max_prompt_tokens is not None:
            encoded = [e[-max_prompt_tokens:] for e in encoded]
        return cls([r.id for r in records], encoded, [r.max_tokens for r in records], [r.family for r in records])

    def family_of(self) -> dict[str, str]:
        """Prompt id -> family (empty when unknown)."""
        return dict(zip(self.ids, self.families)) if self.families else {}

    def __len__(self) -> int:
        return len(self.ids)


def sample_requests(
    pool: PromptPool,
    arrivals: ArrivalProcess,
    num_requests: int,
    max_new_tokens: int,
    rng: np.random.Generator,
) -> list[Request]:
    """`num_requests` prompts drawn from the pool (without replacement while it lasts), paired with
    arrival times from `arrivals` (which may return fewer, e.g. a finite schedule)."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    picks = rng.choice(len(pool), size=num_requests, replace=num_requests > len(pool))
    times = arrivals.sample(num_requests, rng)
    picks = picks[: len(times)]
    own = pool.max_tokens or [None] * len(pool)
    limits = [min(own[i], max_new_tokens) if own[i] else max_new_tokens for i in picks]
    traced = arrivals.budgets(len(times)) if hasattr(arrivals, "budgets") else None
    if traced is not None:  # an arrival trace's output token counts (at least 1) bound the budgets too
        limits = [min(lim, max(1, int(b))) for lim, b in zip(limits, traced)]
    return build_requests([pool.token_ids[i] for i in picks], [pool.ids[i] for i in picks], times, limits)
