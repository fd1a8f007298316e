"""Batch-size table: k looked up from the range the batch size falls in.

This is the shape of vLLM's `num_speculative_tokens_per_batch_size`, TensorRT-LLM's
`draft_len_schedule` and MLC-LLM's rule. A table is written as ranges of batch sizes:

    {"1-9": 4, "10-19": 3, "20-29": 2, "30+": 0}     # "a-b" inclusive, "a+" open-ended, "a" single

Ranges must start at 1, be contiguous and non-overlapping, and end with an open range, so every
batch size has exactly one k (batch size 0, nothing running, uses the first range). k values
above the policy's max_k are clamped to max_k.

Presets (`PRESETS`):
- `mlc_llm`: MLC-LLM's rule batch < 10 -> 4, < 20 -> 3, < 30 -> 2, else 0.
- `vllm_example`: vLLM's documented example 1-16: 3, 64-128: 2, 256+: 0 leaves 17-63 and
  129-255 unspecified; this preset extends the k = 2 range over both gaps: 1-16: 3, 17-255: 2,
  256+: 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from nightjar_rl.policy.base import Policy, batch_of, check_int

PRESETS: dict[str, dict[str, int]] = {
    "mlc_llm": {"1-9": 4, "10-19": 3, "20-29": 2, "30+": 0},
    "vllm_example": {"1-16": 3, "17-255": 2, "256+": 0},
}

_RANGE = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d+)|(\+))?\s*$")


def parse_range(text: str) -> tuple[int, int | None]:
    """'a-b' -> (a, b); 'a+' -> (a, None); 'a' -> (a, a)."""
    m = _RANGE.match(str(text))
    if not m:
        raise ValueError(f"batch-size range {text!r} is not of the form 'a-b', 'a+' or 'a'")
    lo = int(m.group(1))
    hi = None if m.group(4) else int(m.group(3)) if m.group(2) else lo
    if lo < 1 or (hi is not None and hi < lo):
        raise ValueError(f"batch-size range {text!r} is empty or starts below 1")
    return lo, hi


def format_range(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else str(lo) if hi == lo else f"{lo}-{hi}"


def parse_table(table: Mapping | Sequence) -> list[tuple[int, int | None, int]]:
    """Validate a table (mapping of range strings, or [lo, hi|None, k] triples) into sorted triples."""
    if isinstance(table, Mapping):
        rows = [(*parse_range(r), check_int(f"table[{r!r}]", k, 0)) for r, k in table.items()]
    elif isinstance(table, Sequence) and not isinstance(table, str):
        rows = []
        for i, row in enumerate(table):
            if not isinstance(row, Sequence) or len(row) != 3:
                raise ValueError(f"table[{i}] must be [lo, hi or null, k], got {row!r}")
            lo, hi, k = row
            rng = format_range(
                check_int(f"table[{i}] lo", lo, 1), None if hi is None else check_int(f"table[{i}] hi", hi, 1)
            )
            rows.append((*parse_range(rng), check_int(f"table[{i}] k", k, 0)))
    else:
        raise ValueError(f"table must be a mapping of batch-size ranges to k, got {type(table).__name__}")
    if not rows:
        raise ValueError("table is empty")
    rows.sort()
    expect = 1
    for lo, hi, _ in rows:
        if expect is None:
            raise ValueError(f"table: range {format_range(lo, hi)!r} comes after an open-ended range")
        if lo != expect:
            what = (
                "overlaps the previous range"
                if lo < expect
                else f"leaves batch sizes {expect}-{lo - 1} uncovered"
            )
            raise ValueError(f"table: range {format_range(lo, hi)!r} {what}")
        expect = None if hi is None else hi + 1
    if expect is not None:
        raise ValueError(f"table must end with an open range such as '{expect}+'")
    return rows


class BatchSizeTable(Policy):
    """k from the batch-size range the next step's batch falls in (see module docstring)."""

    type_name = "table"

    def __init__(self, table: Mapping | Sequence | None = None, *, max_k: int, preset: str | None = None):
        super().__init__(max_k)
        if (table is None) == (preset is None):
            raise ValueError("give exactly one of table or preset")
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown table preset {preset!r}; choose one of {', '.join(PRESETS)}")
            table = PRESETS[preset]
        self.preset = preset
        self.rows = parse_table(table)
        self._starts = np.array([lo for lo, _, _ in self.rows])
        self._ks = [self.clamp(k) for _, _, k in self.rows]

    def k_for_batch(self, batch: int) -> int:
        idx = int(np.searchsorted(self._starts, max(batch, 1), side="right")) - 1
        return self._ks[idx]

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        return self.k_for_batch(batch_of(obs))

    def table(self) -> dict[str, int]:
        return {format_range(lo, hi): k for lo, hi, k in self.rows}

    def params(self) -> dict:
        return {"preset": self.preset} if self.preset else {"table": self.table()}

    @property
    def name(self) -> str:
        return f"table({self.preset or ','.join(f'{r}:{k}' for r, k in self.table().items())})"
