"""A request and the running state of its sequence."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    arrival_time: float = 0.0


@dataclass
class Sequence:
    """A request being served. `tokens` = prompt + generated; the target caches all but the last."""

    request: Request
    tokens: list[int]
    slot: int = -1
    finish_reason: str | None = None  # "eos" | "length" | "abort" | "error"
    error: str | None = None  # why the request failed (finish_reason "error")
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    state: dict = field(default_factory=dict)  # per-drafter bookkeeping

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_prompt(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.num_prompt :]

    @property
    def remaining(self) -> int:
        return self.request.max_new_tokens - len(self.output_ids)

    @property
    def cached_len(self) -> int:
        """Entries of this row in the target KV cache."""
        return len(self.tokens) - 1

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
