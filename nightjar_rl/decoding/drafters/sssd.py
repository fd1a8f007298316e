"""SSSD drafting: training-free n-gram speculation from the request's own text and a datastore.

Each row keeps an incremental n-gram index of its prompt + generated text (extended with the new
tokens at the start of every round, i.e. after each verification; never rebuilt). The last n
tokens (n = max_ngram down to min_ngram; per source the longest n with a hit, or every n when
`longest_only` is off) are looked up in
that index and, when given, in a suffix-array datastore of earlier text (optionally live: finished
requests' outputs are added). The continuations are merged into a counting trie and the `k` most
frequent nodes form a token tree, verified in one target pass (decoding/tree.py).

Weights: each source contributes a total mass of `weight x n` (longer matches count more; the
request's own text weighs `request_weight`), spread over its matches (request matches decay with
age by `recency`, so the most recent occurrence wins ties). Sampling mode (temperature > 0) falls
back to a single path, the most frequent one, verified by standard speculative sampling.
"""

from __future__ import annotations

import time

from nightjar_rl.decoding.datastore import Datastore, NgramIndex
from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.sequence import Sequence
from nightjar_rl.decoding.tree import build_tree
from nightjar_rl.decoding.verify import SamplingParams

INDEX = "sssd_index"  # per-row NgramIndex in Sequence.state


class SSSDDrafter(Drafter):
    """Token-tree n-gram drafter; `k` is the tree's node budget per row (k + 1 tokens verified)."""

    name = "sssd"

    def __init__(
        self,
        datastore: Datastore | None = None,
        *,
        max_ngram: int = 4,
        min_ngram: int = 1,
        max_matches: int = 8,
        request_weight: float = 2.0,
        recency: float = 0.8,
        max_depth: int | None = None,
        live: bool = False,
        longest_only: bool = True,
        datastore_min_ngram: int | None = None,
    ):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        if max_matches < 1:
            raise ValueError(f"max_matches must be >= 1, got {max_matches}")
        if request_weight < 0 or not 0 < recency <= 1:
            raise ValueError("request_weight must be >= 0 and recency in (0, 1]")
        if max_depth is not None and max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.datastore = datastore
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.max_matches = max_matches
        self.request_weight, self.recency = request_weight, recency
        self.max_depth = max_depth
        self.live = live
        self.longest_only = longest_only
        self.datastore_min_ngram = min_ngram if datastore_min_ngram is None else datastore_min_ngram
        if live and datastore is None:
            self.datastore = Datastore.build([], vocab_size=1, fingerprint="live", max_ngram=max_ngram)

    # ---- candidates ------------------------------------------------------------------------------
    def _index(self, seq: Sequence) -> NgramIndex:
        index = seq.state.get(INDEX)
        if index is None:
            index = seq.state[INDEX] = NgramIndex(self.max_ngram)
        index.extend(seq.tokens[len(index) :])  # incremental: only the tokens committed since last time
        return index

    def candidates(self, seq: Sequence, depth: int) -> tuple[list[list[int]], list[float]]:
        """Candidate continuations of `seq` (up to `depth` tokens) with their weights."""
        tokens = self._index(seq).tokens
        cands: list[list[int]] = []
        weights: list[float] = []
        sources = [(seq.state[INDEX], self.request_weight, self.recency, self.min_ngram)]
        if self.datastore is not None:
            sources.append((self.datastore, 1.0, 1.0, self.datastore_min_ngram))
        for source, weight, decay, min_n in sources:
            if weight <= 0:
                continue
            for n in range(min(self.max_ngram, len(tokens)), min_n - 1, -1):
                found = source.continuations(tokens[-n:], depth, self.max_matches)
                if found:
                    shares = [decay**j for j in range(len(found))]
                    total = sum(shares)
                    cands.extend(found)
                    weights.extend(weight * n * s / total for s in shares)
                    if self.longest_only:
                        break
        return cands, weights

    # ---- drafter interface -------------------------------------------------------------------------
    def propose(self, rows: list[Sequence], lengths: list[int], slot_start: int, params: SamplingParams,
                generator=None):
        """Row i gets a tree of at most lengths[i] nodes (greedy) or a path of at most lengths[i] tokens."""
        start = time.perf_counter()
        trees, paths = [], []
        for seq, k in zip(rows, lengths):
            depth = k if self.max_depth is None else min(k, self.max_depth)
            cands, weights = self.candidates(seq, depth) if k else ([], [])
            if params.greedy:
                tree = build_tree(cands, k, weights)
                trees.append(tree)
                paths.append(tree.first_path())
            else:  # single path: the most frequent continuation, followed to depth k
                paths.append(build_tree(cands, len(cands) * depth, weights).first_path()[:k])
        extra = {"tree": trees} if params.greedy else {}
        return DraftProposal(tokens=paths, probs=[None] * len(rows), draft_time=time.perf_counter() - start, extra=extra)

    def on_finish(self, seq: Sequence) -> None:
        if self.live and self.datastore is not None:
            self.datastore.add(seq.output_ids)
