"""OpenAI-compatible request bodies (pydantic). Unknown fields are accepted and ignored, as
OpenAI clients send many; fields that would change the output in ways this engine cannot honour
are refused by `unsupported`.

Extensions (documented in the README): `return_token_ids` (vLLM's), `speculation` (a per-request
cap on the speculation length: `{"max_tokens": N}`, 0 = no speculation for this request) and
`return_speculation_metrics` (the request's drafted/accepted counts in the response).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]  # a chat message's role: anything else is a 400


class SpeculationOptions(BaseModel):
    """Per-request speculation control: the step's plan gives this request at most `max_tokens`
    draft tokens per step (the minimum of the policy's length and this cap; 0 = off)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=0)


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    logprobs: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    best_of: int | None = None
    seed: int | None = None
    return_token_ids: bool = False  # vLLM extension: token ids in each choice
    speculation: SpeculationOptions | None = None  # extension: per-request speculation cap
    return_speculation_metrics: bool = False  # extension: the request's speculation counts

    @property
    def speculation_cap(self) -> int | None:
        """The request's cap on its speculation length (None: the policy decides alone)."""
        return None if self.speculation is None else self.speculation.max_tokens


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


# (field, value that means "not set") for OpenAI options this engine does not implement
_IGNORED_DEFAULTS = (("presence_penalty", (None, 0)), ("frequency_penalty", (None, 0)), ("logit_bias", (None, {})),
                     ("best_of", (None, 1)), ("seed", (None,)))


def unsupported(req: _Common, temperature: float, top_p: float) -> tuple[str, str] | None:
    """(field, why) when this server cannot serve `req` as asked; None when it can."""
    if req.n != 1:
        return "n", "n > 1 is not supported"
    if req.stop:
        return "stop", "stop sequences are not supported"
    if req.logprobs not in (None, False, 0):
        return "logprobs", "logprobs are not supported"
    if getattr(req, "echo", False):
        return "echo", "echo is not supported"
    for name, unset in _IGNORED_DEFAULTS:
        if getattr(req, name) not in unset:
            return name, f"{name} is not supported by this server"
    for name, value, fixed in (("temperature", req.temperature, temperature), ("top_p", req.top_p, top_p)):
        if value is not None and abs(value - fixed) > 1e-9:
            return name, (f"per-request {name} is not supported: this server samples with {name}={fixed:g} "
                          f"(set at launch with --{name.replace('_', '-')})")
    return None
