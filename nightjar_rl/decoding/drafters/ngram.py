"""Prompt lookup: propose what followed the latest earlier occurrence of the last n tokens."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.sequence import Sequence

if TYPE_CHECKING:
    from nightjar_rl.decoding.verify import SamplingParams


def lookup_continuation(tokens: np.ndarray, k: int, max_ngram: int, min_ngram: int) -> list[int]:
    """Longest n (max_ngram..min_ngram) whose last-n suffix occurred earlier; return up to k tokens after
    its most recent earlier occurrence."""
    size = len(tokens)
    for n in range(min(max_ngram, size - 1), min_ngram - 1, -1):
        windows = sliding_window_view(tokens[: size - 1], n)  # earlier windows, the suffix itself excluded
        hits = np.flatnonzero((windows == tokens[size - n :]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return tokens[start : start + k].tolist()
    return []


class NgramDrafter(Drafter):
    """No model call: drafts come from the row's own prompt and generated text."""

    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, rows: list[Sequence], lengths: list[int], slot_start: int, params: SamplingParams,
                generator=None):
        start = time.perf_counter()
        tokens = [
            lookup_continuation(np.asarray(seq.tokens, dtype=np.int64), k, self.max_ngram, self.min_ngram) if k else []
            for seq, k in zip(rows, lengths)
        ]
        return DraftProposal(tokens=tokens, probs=[None] * len(rows), draft_time=time.perf_counter() - start)
