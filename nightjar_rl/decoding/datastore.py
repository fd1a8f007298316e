"""An n-gram datastore of earlier text for SSSD drafting: a suffix array over token ids.

Documents are concatenated into one int32 array with a separator (-1) between them, and the
suffix array lists every start position in lexicographic order of the suffix, so all occurrences
of a query n-gram form one contiguous range (two binary searches). A live part (`NgramIndex`, the
incremental hash index SSSD also keeps per request) takes finished requests' outputs without rebuilding the array;
`save` folds it into a new suffix array.

File format (`.npz`, written atomically): `tokens` int32, `sa` int64, `header` (a JSON string:
format, version, vocab_size, fingerprint of the tokenizer, num_docs, num_tokens).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nightjar_rl.io import atomic_writer

FORMAT = "nightjar-rl/sssd-datastore"
VERSION = 1
SEP = -1


class NgramIndex:
    """Incremental n-gram index over a growing token list: every n-gram (n = 1..max_ngram) maps to the
    positions right after its occurrences. Appending a token costs max_ngram dict updates."""

    def __init__(self, max_ngram: int = 4):
        if max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {max_ngram}")
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self._ends: dict[tuple[int, ...], list[int]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, ids: Iterable[int]) -> None:
        toks, ends = self.tokens, self._ends
        for t in ids:
            toks.append(t)
            p = len(toks)
            for n in range(1, min(self.max_ngram, p) + 1):
                key = tuple(toks[p - n : p])
                hit = ends.get(key)
                if hit is None:
                    ends[key] = [p]
                else:
                    hit.append(p)

    def count(self, query: list[int]) -> int:
        """Occurrences of `query` whose continuation has started (the trailing suffix excluded)."""
        ends = self._ends.get(tuple(query), ())
        return sum(1 for p in ends if p < len(self.tokens))

    def continuations(self, query: list[int], depth: int, max_matches: int = 32) -> list[list[int]]:
        """Up to `max_matches` continuations (up to `depth` tokens, cut at separators) of earlier
        occurrences of `query`, most recent first."""
        ends = self._ends.get(tuple(query))
        if not ends:
            return []
        out, size = [], len(self.tokens)
        for p in reversed(ends):
            if p >= size:  # the query is the current suffix: nothing follows yet
                continue
            cont = _cut(self.tokens[p : p + depth])
            if cont:
                out.append(cont)
                if len(out) >= max_matches:
                    break
        return out


def tokenizer_fingerprint(tokenizer, vocab_size: int) -> str:
    """Short hash of the vocabulary (token string -> id), so a datastore is only used with the
    tokenizer that built it. Models without a tokenizer (tiny random ones) hash the vocab size."""
    if tokenizer is None:
        payload = f"bytes-mod-{vocab_size}"
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Suffix array by prefix doubling (O(N log^2 N) in numpy). A suffix that runs out of tokens
    sorts before its extensions."""
    n = len(tokens)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    _, rank = np.unique(tokens, return_inverse=True)
    rank = rank.astype(np.int64) + 1  # 0 is reserved for "past the end"
    sa = np.argsort(rank, kind="stable")
    step = 1
    while step < n:
        second = np.zeros(n, dtype=np.int64)
        second[: n - step] = rank[step:]
        sa = np.lexsort((second, rank))
        key_first, key_second = rank[sa], second[sa]
        changed = np.ones(n, dtype=bool)
        changed[1:] = (key_first[1:] != key_first[:-1]) | (key_second[1:] != key_second[:-1])
        new_rank = np.empty(n, dtype=np.int64)
        new_rank[sa] = np.cumsum(changed)
        rank = new_rank
        if rank.max() == n:
            break
        step *= 2
    return sa.astype(np.int64)


class Datastore:
    """Suffix-array datastore plus an optional live index of text added since it was built."""

    def __init__(self, tokens: np.ndarray, sa: np.ndarray, header: dict, max_ngram: int = 4):
        self.tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        self.sa = np.ascontiguousarray(sa, dtype=np.int64)
        self.header = dict(header)
        self._list = self.tokens.tolist()  # Python ints make the binary search cheap
        self._sa_list = self.sa.tolist()
        self.live = NgramIndex(max_ngram)
        self.live_docs: list[list[int]] = []

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Iterable[list[int]], vocab_size: int, fingerprint: str, max_ngram: int = 4) -> Datastore:
        """Index token-id documents (each a list of ids in [0, vocab_size))."""
        parts: list[int] = []
        num_docs = 0
        for doc in docs:
            ids = [int(t) for t in doc]
            if not ids:
                continue
            if min(ids) < 0 or max(ids) >= vocab_size:
                raise ValueError(f"document {num_docs} has token ids outside [0, {vocab_size})")
            parts.extend(ids)
            parts.append(SEP)
            num_docs += 1
        tokens = np.asarray(parts, dtype=np.int32)
        header = dict(
            format=FORMAT, version=VERSION, vocab_size=int(vocab_size), fingerprint=fingerprint,
            num_docs=num_docs, num_tokens=int(len(tokens) - num_docs),
        )
        return cls(tokens, suffix_array(tokens), header, max_ngram)

    def add(self, ids: list[int]) -> None:
        """Live mode: make a finished request's text available to later lookups (no rebuild)."""
        if ids:
            self.live.extend([int(t) for t in ids] + [SEP])
            self.live_docs.append([int(t) for t in ids])

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename); live text is folded into the suffix array."""
        store = self
        if self.live_docs:
            docs = _split_docs(self.tokens) + self.live_docs
            store = Datastore.build(docs, self.header["vocab_size"], self.header["fingerprint"])
        with atomic_writer(path, binary=True) as fh:
            np.savez(fh, tokens=store.tokens, sa=store.sa, header=np.array(json.dumps(store.header)))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, vocab_size: int | None = None, fingerprint: str | None = None,
             max_ngram: int = 4) -> Datastore:
        """Read and validate a datastore file; when given, the vocabulary must match the model's."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"datastore file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                tokens, sa = data["tokens"], data["sa"]
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, KeyError, AttributeError) as exc:
            first = (str(exc).splitlines() or [""])[0]
            raise ValueError(f"datastore {path} is unreadable or corrupt ({type(exc).__name__}: {first})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"{path} is not an SSSD datastore (format {header.get('format') if isinstance(header, dict) else None!r})")
        if header.get("version") != VERSION:
            raise ValueError(f"{path}: unsupported datastore version {header.get('version')!r} (this build reads {VERSION})")
        if tokens.ndim != 1 or sa.shape != tokens.shape or tokens.dtype.kind != "i" or sa.dtype.kind != "i":
            raise ValueError(f"datastore {path} is corrupt: token and suffix arrays do not match")
        if len(sa) and (sa.min() < 0 or sa.max() >= len(tokens) or len(np.unique(sa)) != len(sa)):
            raise ValueError(f"datastore {path} is corrupt: the suffix array is not a permutation")
        if vocab_size is not None and header.get("vocab_size") != vocab_size:
            raise ValueError(
                f"datastore {path} was built for a vocabulary of {header.get('vocab_size')} tokens, "
                f"the model has {vocab_size}: rebuild it with this model's tokenizer"
            )
        if fingerprint is not None and header.get("fingerprint") != fingerprint:
            raise ValueError(f"datastore {path} was built with a different tokenizer: rebuild it for this model")
        return cls(tokens, sa, header, max_ngram)

    # ---- lookup --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._list)

    def _bound(self, query: list[int], upper: bool) -> int:
        """First suffix-array index whose suffix prefix is > query (upper) or >= query (lower)."""
        toks, sa, n = self._list, self._sa_list, len(query)
        lo, hi = 0, len(sa)
        while lo < hi:
            mid = (lo + hi) // 2
            start = sa[mid]
            prefix = toks[start : start + n]
            if prefix < query or (upper and prefix == query):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def count(self, query: list[int]) -> int:
        """Occurrences of `query` in the suffix array part."""
        return self._bound(query, True) - self._bound(query, False)

    def continuations(self, query: list[int], depth: int, max_matches: int = 32) -> list[list[int]]:
        """Up to `max_matches` continuations (each up to `depth` tokens, cut at document ends) of
        occurrences of `query`, spread evenly over the matching range (so counts reflect frequency),
        plus matches in the live part."""
        out: list[list[int]] = []
        if self._list and query:
            lo = self._bound(query, False)
            hi = self._bound(query, True)
            if hi > lo:
                picks = range(lo, hi) if hi - lo <= max_matches else np.linspace(lo, hi - 1, max_matches).astype(int)
                n = len(query)
                for idx in picks:
                    start = self._sa_list[int(idx)] + n
                    out.append(_cut(self._list[start : start + depth]))
        if len(self.live):
            out.extend(self.live.continuations(query, depth, max_matches))
        return [c for c in out if c]


def _cut(seq: list[int]) -> list[int]:
    return seq[: seq.index(SEP)] if SEP in seq else seq


def _split_docs(tokens: np.ndarray) -> list[list[int]]:
    docs, cur = [], []
    for t in tokens.tolist():
        if t == SEP:
            docs.append(cur)
            cur = []
        else:
            cur.append(t)
    return docs
