"""OpenAI-compatible request bodies (pydantic). Unknown fields are accepted and ignored, as
OpenAI clients send many; fields that would change the output in ways this engine cannot honour
are refused by `unsupported`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    return_token_ids: bool = False  # vLLM extension: token ids in each choice


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


def unsupported(req: _Common, temperature: float, top_p: float) -> str | None:
    """Why this server cannot serve `req` as asked (None when it can)."""
    if req.n != 1:
        return "n > 1 is not supported"
    if req.stop:
        return "stop sequences are not supported"
    if req.logprobs not in (None, False, 0):
        return "logprobs are not supported"
    if getattr(req, "echo", False):
        return "echo is not supported"
    for name, value, fixed in (("temperature", req.temperature, temperature), ("top_p", req.top_p, top_p)):
        if value is not None and abs(value - fixed) > 1e-9:
            return (f"per-request {name} is not supported: this server samples with {name}={fixed:g} "
                    f"(set at launch with --{name.replace('_', '-')})")
    return None
