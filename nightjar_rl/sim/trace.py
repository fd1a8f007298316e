"""Traces: what a drafter would get accepted at every output position, recorded once per (model,
drafter, prompt set, max_k), so the simulator replays acceptance exactly for any k schedule.

Why this is exact: with greedy decoding a request's output does not depend on k, and a drafter's
proposal at output position p depends only on the tokens before p. So for every position p (the
row holds prompt + output[:p]; the next token is output[p]) and every k in 0..max_k the trace
stores the tokens the engine drafts, `drafted[p, k]`, and how many of them agree with the true
continuation, `accepted[p, k]`. A decode step at k then accepts min(accepted[p, k], remaining - 1)
and emits that plus the bonus token. For linear drafters (n-gram, draft model) accepted[p, k] =
min(k, L(p)) with L(p) the agreement length of the longest proposal; token-tree drafters (SSSD)
need the whole table because a tree of k nodes is not a prefix of a tree of k + 1 nodes.

File (`.npz`, written atomically): `meta` (JSON: format, version, model, drafter and its settings,
prompts, max_k, max_new_tokens, dtype), `request_ids`, `prompt_tokens`/`prompt_offsets`,
`output_tokens`/`output_offsets`, `finish_eos` (1 = the output ends with EOS), and
`drafted`/`accepted` (int16, one row per output position, aligned with `output_tokens`, columns
k = 0..max_k). Row 0 of each request (the prefill's token) is all zeros.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nightjar_rl.io import atomic_writer

TRACE_FORMAT = "nightjar-rl/trace"
TRACE_VERSION = 1
_ARRAYS = ("request_ids", "prompt_tokens", "prompt_offsets", "output_tokens", "output_offsets", "finish_eos",
           "drafted", "accepted")


class TraceError(ValueError):
    """A trace file that cannot be used (message names the problem)."""


@dataclass
class TraceRecord:
    request_id: str
    prompt_ids: tuple[int, ...]
    output_ids: np.ndarray  # greedy output, ending with EOS when `eos`
    eos: bool
    drafted: np.ndarray  # [len(output_ids), max_k + 1]
    accepted: np.ndarray  # [len(output_ids), max_k + 1]

    def __len__(self) -> int:
        return len(self.output_ids)

    def replay_tables(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(output, `replay_table(drafted, accepted)`) as tuples of ints, converted once (the
        simulator's hot loop). Tuples, not lists: tuples of ints leave the garbage collector's
        tracking, so a loaded trace (hundreds of thousands of positions) costs no collection time."""
        cached = self.__dict__.get("_replay")
        if cached is None:
            cached = self.__dict__["_replay"] = (tuple(self.output_ids.tolist()),
                                                 replay_table(self.drafted, self.accepted))
        return cached


def replay_table(drafted, accepted) -> tuple[int, ...]:
    """The [positions, max_k + 1] drafted and accepted tables as one flat tuple, position by position:
    with w = max_k + 1, drafted[p, k] at p * 2w + k and accepted[p, k] at p * 2w + w + k. One
    position's entries sit together, so a replayed row reads one place in memory per step, not two
    tuples elsewhere."""
    return tuple(np.concatenate([np.asarray(drafted), np.asarray(accepted)], axis=1).ravel().tolist())


@dataclass
class Trace:
    meta: dict
    records: list[TraceRecord]
    _by_prompt: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_prompt = {r.prompt_ids: r for r in self.records}

    @property
    def max_k(self) -> int:
        return int(self.meta["max_k"])

    @property
    def drafter(self) -> str:
        return str(self.meta["drafter"])

    @property
    def max_new_tokens(self) -> int:
        return int(self.meta["max_new_tokens"])

    def lookup(self, prompt_ids) -> TraceRecord | None:
        return self._by_prompt.get(tuple(prompt_ids))

    # ---- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        recs = self.records
        arrays = {
            "request_ids": np.array([r.request_id for r in recs]),
            "prompt_tokens": np.concatenate([np.asarray(r.prompt_ids, np.int32) for r in recs]) if recs else np.zeros(0, np.int32),
            "prompt_offsets": np.cumsum([0] + [len(r.prompt_ids) for r in recs]).astype(np.int64),
            "output_tokens": np.concatenate([r.output_ids for r in recs]).astype(np.int32) if recs else np.zeros(0, np.int32),
            "output_offsets": np.cumsum([0] + [len(r) for r in recs]).astype(np.int64),
            "finish_eos": np.array([r.eos for r in recs], np.int8),
            "drafted": np.concatenate([r.drafted for r in recs]).astype(np.int16) if recs else np.zeros((0, self.max_k + 1), np.int16),
            "accepted": np.concatenate([r.accepted for r in recs]).astype(np.int16) if recs else np.zeros((0, self.max_k + 1), np.int16),
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(json.dumps(self.meta)), **arrays)
        path = Path(path)
        with atomic_writer(path, binary=True) as fh:
            fh.write(buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        if not path.is_file():
            raise TraceError(f"trace file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: data[name] for name in _ARRAYS}
        except KeyError as exc:
            raise TraceError(f"trace {path}: missing array {exc.args[0]!r}") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise TraceError(f"trace {path}: not a readable trace file ({type(exc).__name__})") from None
        if not isinstance(meta, dict) or meta.get("format") != TRACE_FORMAT:
            raise TraceError(f"trace {path}: format is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                             f"expected {TRACE_FORMAT!r}")
        if meta.get("version") != TRACE_VERSION:
            raise TraceError(f"trace {path}: version {meta.get('version')!r} is not supported (reads {TRACE_VERSION})")
        for key in ("max_k", "drafter", "max_new_tokens", "model"):
            if key not in meta:
                raise TraceError(f"trace {path}: meta lacks field {key!r}")
        return cls(meta, _records_from_arrays(arrays, int(meta["max_k"]), str(path)))


def _records_from_arrays(a: dict, max_k: int, where: str) -> list[TraceRecord]:
    n = len(a["request_ids"])
    po, oo = a["prompt_offsets"], a["output_offsets"]
    total = int(oo[-1]) if len(oo) else 0
    ok = (len(po) == n + 1 and len(oo) == n + 1 and len(a["finish_eos"]) == n and po[-1] == len(a["prompt_tokens"])
          and total == len(a["output_tokens"]) and a["drafted"].shape == (total, max_k + 1)
          and a["accepted"].shape == (total, max_k + 1) and np.all(np.diff(po) > 0) and np.all(np.diff(oo) > 0))
    if not ok:
        raise TraceError(f"trace {where}: arrays are inconsistent (offsets, lengths or max_k columns)")
    if np.any(a["accepted"] > a["drafted"]) or np.any(a["drafted"] > np.arange(max_k + 1)):
        raise TraceError(f"trace {where}: accepted must be <= drafted <= k at every position")
    records = []
    for i in range(n):
        p0, p1, o0, o1 = int(po[i]), int(po[i + 1]), int(oo[i]), int(oo[i + 1])
        records.append(TraceRecord(
            str(a["request_ids"][i]), tuple(int(t) for t in a["prompt_tokens"][p0:p1]),
            a["output_tokens"][o0:o1].astype(np.int64), bool(a["finish_eos"][i]),
            a["drafted"][o0:o1].astype(np.int64), a["accepted"][o0:o1].astype(np.int64),
        ))
    return records


def make_meta(model: str, drafter: str, max_k: int, max_new_tokens: int, dtype: str, **settings) -> dict:
    return {
        "format": TRACE_FORMAT, "version": TRACE_VERSION, "model": model, "drafter": drafter, "max_k": int(max_k),
        "max_new_tokens": int(max_new_tokens), "dtype": dtype, "settings": settings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def trace_families(trace: Trace) -> dict[str, str]:
    """Request id -> family: the trace's own (`meta["families"]`), else the bundled prompt set's when
    it was recorded from it, else {}."""
    fams = trace.meta.get("families")
    if fams:
        return dict(fams)
    prompt_set = (trace.meta.get("settings") or {}).get("prompt_set") or {}
    if prompt_set.get("path", "bundled") == "bundled":
        from nightjar_rl.serving.workload import load_workload

        return {r.id: r.family for r in load_workload("bundled")}
    return {}


def merge_traces(parts: list[tuple[str, Trace, int | None]], seed: int = 0) -> Trace:
    """One trace of several (name, trace, count): `count` records of each (a seeded sample; None: all),
    ids prefixed "NAME/", families kept. The traces must share model, drafter, max_k and dtype; the
    merged max_new_tokens is the largest (each record keeps its own length and EOS)."""
    if not parts:
        raise TraceError("merge: no traces")
    first = parts[0][1]
    for name, trace, _ in parts:
        for key in ("model", "drafter", "max_k", "dtype"):
            if trace.meta.get(key) != first.meta.get(key):
                raise TraceError(f"merge: trace {name!r} has {key} {trace.meta.get(key)!r}, "
                                 f"not {first.meta.get(key)!r} like {parts[0][0]!r}")
    rng = np.random.default_rng(seed)
    records, families, seen = [], {}, set()
    for name, trace, count in parts:
        fams = trace_families(trace)
        chosen = trace.records
        if count is not None:
            if not 1 <= count <= len(chosen):
                raise TraceError(f"merge: {name!r} has {len(chosen)} records, asked for {count}")
            chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), size=count, replace=False))]
        for r in chosen:
            if r.prompt_ids in seen:
                continue  # the simulator finds records by prompt
            seen.add(r.prompt_ids)
            rid = f"{name}/{r.request_id}"
            records.append(TraceRecord(rid, r.prompt_ids, r.output_ids, r.eos, r.drafted, r.accepted))
            families[rid] = fams.get(r.request_id, "")
    meta = dict(first.meta, max_new_tokens=max(t.max_new_tokens for _, t, _ in parts), families=families,
                merged={name: {"count": count, "created": t.meta.get("created")} for name, t, count in parts})
    meta["settings"] = dict(first.meta.get("settings") or {}, prompt_set=None, scenario=None)
    return Trace(meta, records)
