"""Export a policy's k-by-batch-size schedule to serving engines' configs, and read them back.

A schedule is k for each batch size 1..max_batch, taken from `policy.predict` at a *typical
observation* per batch size (`TYPICAL`, overridable): no queue, no arrivals, per-token acceptance
0.7 with the matching accepted-length EMA and geometric acceptance histogram, speculation on in the
previous step (last_k = max_k, so no switching penalty), last time per token 0. Each policy is
asked from a fresh copy (stateful policies: their first decision). `sensitivity` then probes the
other observation fields and says what a batch-size-only schedule loses.

Formats (each engine's exact rules, checked by `validate`):
- vllm:   speculative-config fields {"num_speculative_tokens": K, "num_speculative_tokens_per_batch_size":
          [[bs_lo, bs_hi, k], ...]}: inclusive ranges, the first starting at 1, sorted, no overlaps,
          every k <= K (k is clamped to K).
- trtllm: {"max_draft_len": K, "draft_len_schedule": {"1": K, "bs": k, ...}}: each key covers
          batch sizes at and above it up to the next key; key 1 is required and equals max_draft_len,
          so no k exceeds the batch-1 k (larger ones are clamped to it).
- sglang: adaptive-speculative config with one slot per batch size, integer-string keys:
          {"1": {"candidate_steps": [k], "ema_alpha": ..., ...}, ...}. SGLang routes a batch to the
          closest slot, so each range gets a slot at both ends (then every routing rule, closest,
          at-or-below or at-or-above, gives the range's k). A single candidate fixes the step count.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from nightjar_rl.contracts.observation import OBS_INDEX
from nightjar_rl.policy.base import Policy, make_observation
from nightjar_rl.policy.table import BatchSizeTable, format_range

FORMATS = ("vllm", "trtllm", "sglang")
TYPICAL = {"queue_len": 0.0, "arrival_rate": 0.0, "acceptance": 0.7, "last_time_per_token": 0.0}
# SGLang's adaptive defaults; inert with a single candidate step, written so the file is complete
SGLANG_SLOT_DEFAULTS = {"ema_alpha": 0.2, "update_interval": 5, "warmup_batches": 10,
                        "down_hysteresis": 0.0, "up_hysteresis": -0.25}
# fields probed for sensitivity: (observation field, values tried)
PROBES = (("queue_len", (8.0, 64.0)), ("ema_acceptance", (0.2, 0.95)), ("last_k", (0.0,)),
          ("arrival_rate", (50.0,)), ("last_time_per_token", (0.05,)))


def typical_observation(max_k: int, batch: int, typical: Mapping | None = None) -> np.ndarray:
    t = {**TYPICAL, **(typical or {})}
    a = float(t["acceptance"])
    hist = np.array([a**j * (1 - a) for j in range(max_k)] + [a**max_k])
    return make_observation(
        max_k, hist=hist, batch_size=batch, queue_len=t["queue_len"], arrival_rate=t["arrival_rate"],
        ema_acceptance=a, ema_accepted_len=float(sum(a**j for j in range(1, max_k + 1))), last_k=max_k,
        last_time_per_token=t["last_time_per_token"],
    )


def _predict(policy: Policy, obs: np.ndarray) -> int:
    fresh = copy.deepcopy(policy)
    fresh.reset()
    return int(fresh.predict(obs, deterministic=True))


def schedule(policy: Policy, max_batch: int, typical: Mapping | None = None) -> list[int]:
    """k for batch sizes 1..max_batch at the typical observation."""
    if max_batch < 1:
        raise ValueError(f"max batch size must be >= 1, got {max_batch}")
    return [_predict(policy, typical_observation(policy.max_k, b, typical)) for b in range(1, max_batch + 1)]


def sensitivity(policy: Policy, max_batch: int, typical: Mapping | None = None) -> list[str]:
    """What the schedule loses: one line per observation field that changes k at some batch size."""
    notes = []
    batches = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch) if b <= max_batch})
    for name, values in PROBES:
        for b in batches:
            base = typical_observation(policy.max_k, b, typical)
            k0 = _predict(policy, base)
            hits = []
            for v in values:
                obs = base.copy()
                obs[OBS_INDEX[name]] = v
                k = _predict(policy, obs)
                if k != k0:
                    hits.append(f"k={k} at {name}={v:g}")
            if hits:
                notes.append(f"k also depends on {name}: at batch {b}, k={k0} at the typical "
                             f"{name}={base[OBS_INDEX[name]]:g} but {', '.join(hits)}; the export fixes it")
                break
    if policy.type_name in ("hf_heuristic", "hysteresis"):
        notes.append(f"{policy.type_name} decides from its history; the export is its first decision from a fresh state")
    return notes


def to_ranges(ks: list[int]) -> list[tuple[int, int, int]]:
    """[k for bs 1..n] -> inclusive (lo, hi, k) runs."""
    runs: list[tuple[int, int, int]] = []
    for bs, k in enumerate(ks, 1):
        if runs and runs[-1][2] == k:
            runs[-1] = (runs[-1][0], bs, k)
        else:
            runs.append((bs, bs, k))
    return runs


@dataclass
class Export:
    config: dict
    notes: list[str] = field(default_factory=list)


def export_schedule(ks: list[int], fmt: str, num_speculative_tokens: int | None = None) -> Export:
    """The engine config for schedule `ks` (k for bs 1..n), with notes on anything changed."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    notes: list[str] = []
    if fmt == "vllm":
        cap = max(ks) if num_speculative_tokens is None else num_speculative_tokens
        if cap < 1:
            notes.append("the policy never speculates here; num_speculative_tokens set to 1 with k=0 everywhere")
            cap = 1
        if max(ks) > cap:
            notes.append(f"k clamped to num_speculative_tokens={cap} (the policy asks up to {max(ks)})")
        runs = to_ranges([min(k, cap) for k in ks])
        notes.append(f"the last range ends at batch {len(ks)}; export with --max-batch-size >= vLLM's max_num_seqs")
        config = {"num_speculative_tokens": cap, "num_speculative_tokens_per_batch_size": [list(r) for r in runs]}
    elif fmt == "trtllm":
        k1 = ks[0]
        if max(ks) > k1:
            notes.append(f"TensorRT-LLM needs schedule[1] = max_draft_len = {k1}: larger k at bigger batches clamped to it")
        if k1 == 0:
            notes.append("k at batch 1 is 0, so max_draft_len is 0: speculation is off at every batch size")
        runs = to_ranges([min(k, k1) for k in ks])
        config = {"max_draft_len": k1, "draft_len_schedule": {str(lo): k for lo, _, k in runs}}
    else:
        slots = {}
        for lo, hi, k in to_ranges(ks):
            for bs in (lo, hi):
                slots[str(bs)] = {"candidate_steps": [k], **SGLANG_SLOT_DEFAULTS}
        config = slots
    validate(config, fmt)
    return Export(config, notes)


# ---- validation against each engine's rules -----------------------------------------------------
def _int(value, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _int_key(key, what: str) -> int:
    if not (isinstance(key, str) and key.isdigit()) and not isinstance(key, int):
        raise ValueError(f"{what} keys must be integer strings, got {key!r}")
    return _int(int(key), f"{what} key", 1)


def validate(config: Mapping, fmt: str) -> None:
    """Raise ValueError naming the broken rule (see module docstring)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{fmt} config must be a JSON object")
    if fmt == "vllm":
        cap = _int(config.get("num_speculative_tokens"), "num_speculative_tokens", 1)
        table = config.get("num_speculative_tokens_per_batch_size")
        if not isinstance(table, list) or not table:
            raise ValueError("num_speculative_tokens_per_batch_size must be a non-empty list of [bs_lo, bs_hi, K]")
        prev_hi = 0
        for i, entry in enumerate(table):
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise ValueError(f"entry {i} must be [bs_lo, bs_hi, K], got {entry!r}")
            lo, hi = _int(entry[0], "bs_lo", 1), _int(entry[1], "bs_hi", 1)
            k = _int(entry[2], "K", 0)
            if i == 0 and lo != 1:
                raise ValueError("the first batch-size range must start at 1")
            if lo > hi or lo <= prev_hi:
                raise ValueError(f"range [{lo}, {hi}] is empty, overlaps or is out of order")
            if k > cap:
                raise ValueError(f"range [{lo}, {hi}]: K={k} exceeds num_speculative_tokens={cap}")
            prev_hi = hi
    elif fmt == "trtllm":
        top = _int(config.get("max_draft_len"), "max_draft_len", 0)
        sched = config.get("draft_len_schedule")
        if not isinstance(sched, Mapping) or not sched:
            raise ValueError("draft_len_schedule must be a non-empty {batch_size: draft_len} object")
        parsed = {_int_key(bs, "draft_len_schedule"): _int(k, "draft length", 0) for bs, k in sched.items()}
        if 1 not in parsed:
            raise ValueError("draft_len_schedule must include batch size 1")
        if parsed[1] != top:
            raise ValueError(f"draft_len_schedule[1]={parsed[1]} must equal max_draft_len={top}")
        if max(parsed.values()) > top:
            raise ValueError(f"draft lengths must not exceed max_draft_len={top}")
    elif fmt == "sglang":
        if not config:
            raise ValueError("the SGLang config has no batch-size slots")
        for key, slot in config.items():
            _int_key(key, "SGLang batch-size slot")
            steps = slot.get("candidate_steps") if isinstance(slot, Mapping) else None
            if not isinstance(steps, list) or not steps:
                raise ValueError(f"slot {key!r} needs a non-empty candidate_steps list")
            for s in steps:
                _int(s, f"slot {key!r} candidate step", 0)
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


# ---- reading an exported schedule back as a table policy ----------------------------------------
def detect_format(data) -> str:
    if isinstance(data, Mapping):
        if "num_speculative_tokens_per_batch_size" in data:
            return "vllm"
        if "draft_len_schedule" in data:
            return "trtllm"
        if data and all(isinstance(v, Mapping) and "candidate_steps" in v for v in data.values()):
            return "sglang"
    raise ValueError("not a policy artifact nor a vLLM / TensorRT-LLM / SGLang schedule")


def k_by_batch(config: Mapping, fmt: str, upto: int) -> list[int]:
    """k for batch sizes 1..upto under each engine's lookup rule."""
    validate(config, fmt)
    if fmt == "vllm":
        cap = config["num_speculative_tokens"]
        out, rows = [], sorted(config["num_speculative_tokens_per_batch_size"])
        for bs in range(1, upto + 1):
            k = next(min(k, cap) for lo, _, k in reversed(rows) if lo <= bs)  # gaps/tail inherit the previous K
            out.append(k)
        return out
    if fmt == "trtllm":
        sched = {int(bs): k for bs, k in config["draft_len_schedule"].items()}
        keys = sorted(sched)
        return [sched[max(key for key in keys if key <= bs)] for bs in range(1, upto + 1)]
    slots = {int(bs): slot["candidate_steps"] for bs, slot in config.items()}
    for bs, steps in slots.items():
        if len(set(steps)) > 1:
            raise ValueError(f"SGLang slot {bs} adapts between {steps}; a table needs one k per batch size")
    keys = sorted(slots)
    return [slots[min(keys, key=lambda s: (abs(s - bs), s))][0] for bs in range(1, upto + 1)]


def last_batch(config: Mapping, fmt: str) -> int:
    if fmt == "vllm":
        return max(hi for _, hi, _ in config["num_speculative_tokens_per_batch_size"])
    keys = config["draft_len_schedule"] if fmt == "trtllm" else config
    return max(int(k) for k in keys)


def table_from_export(data, max_k: int, source: str = "schedule") -> BatchSizeTable:
    """An exported schedule (any format, detected) as a `table` policy: the same k per batch size."""
    try:
        fmt = detect_format(data)
        ks = k_by_batch(data, fmt, last_batch(data, fmt))
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    runs = to_ranges(ks)
    table = {format_range(lo, hi): k for lo, hi, k in runs[:-1]}
    table[format_range(runs[-1][0], None)] = runs[-1][2]
    return BatchSizeTable(table, max_k=max_k)
