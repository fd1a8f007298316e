"""Hardware profile: measured step times that cost-model policies (the goodput oracle) read as data.

Format (JSON, written by `nightjar-rl profile`, see `nightjar_rl.decoding.profiler`):

```
{
  "format": "nightjar-rl/hardware-profile",   # optional; checked when present
  "version": 1,                                # optional; checked when present
  "device": "NVIDIA H100" | "x86_64" | ...,    # free text
  "model": "smollm2-135m",                     # target model the times belong to
  "dtype": "float32",
  "verify_ms": {"<batch>": {"<tokens_per_row>": ms, ...}, ...},   # required, non-empty
  "draft_ms": {"<batch>": ms, ...},            # optional: one draft-model step (1 token per row)
  "ngram_lookup_ms_per_row": 0.01,             # optional: n-gram drafting cost per row
  ...                                          # any other keys are kept in `meta`
}
```

`verify_ms[b][n]` is one target forward scoring `n` positions per row for `b` rows (a decode step
with speculation length k scores n = k + 1). `draft_ms[b]` is the cost of one draft token for `b`
rows, so drafting k tokens costs about k x draft_ms[b]. When `draft_ms` is empty the drafter is
taken to be an n-gram lookup costing `ngram_lookup_ms_per_row` per row (0 when absent).

Lookups interpolate linearly over tokens per row within each measured batch size, then linearly
over batch size (bilinear on a full grid; rows may have different token grids). Outside the
measured range values are clamped to the nearest edge, so a profile should cover the batch sizes
and k + 1 values it will be asked about.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from nightjar_rl.io import read_json

PROFILE_FORMAT = "nightjar-rl/hardware-profile"
PROFILE_VERSION = 1
_KNOWN_KEYS = (
    "format",
    "version",
    "device",
    "model",
    "dtype",
    "verify_ms",
    "draft_ms",
    "ngram_lookup_ms_per_row",
)


class ProfileError(ValueError):
    """A hardware profile file or dict is malformed."""


def _positive_int_key(key, where: str) -> int:
    try:
        value = int(str(key))
    except ValueError:
        raise ProfileError(f"{where}: key {key!r} is not an integer") from None
    if value < 1 or str(value) != str(key).strip():
        raise ProfileError(f"{where}: key {key!r} must be a positive integer")
    return value


def _time_ms(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError(f"{where}: expected a number of milliseconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ProfileError(f"{where}: milliseconds must be finite and >= 0, got {value!r}")
    return float(value)


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Piecewise-linear interpolation, clamped at both ends (np.interp clamps)."""
    return float(np.interp(x, xs, ys))


class HardwareProfile:
    """Validated, interpolating view of a hardware profile (see the module docstring)."""

    def __init__(
        self,
        verify_ms: Mapping,
        draft_ms: Mapping | None = None,
        *,
        ngram_lookup_ms_per_row: float = 0.0,
        device: str = "unknown",
        model: str = "unknown",
        dtype: str = "unknown",
        meta: Mapping | None = None,
    ):
        if not isinstance(verify_ms, Mapping) or not verify_ms:
            raise ProfileError("verify_ms must be a non-empty mapping {batch: {tokens_per_row: ms}}")
        rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for bkey, cells in verify_ms.items():
            b = _positive_int_key(bkey, "verify_ms")
            if not isinstance(cells, Mapping) or not cells:
                raise ProfileError(f"verify_ms[{bkey!r}] must be a non-empty mapping {{tokens_per_row: ms}}")
            if b in rows:
                raise ProfileError(f"verify_ms: batch size {b} appears twice")
            pts = sorted(
                (_positive_int_key(n, f"verify_ms[{bkey!r}]"), _time_ms(ms, f"verify_ms[{bkey!r}][{n!r}]"))
                for n, ms in cells.items()
            )
            if len({n for n, _ in pts}) != len(pts):
                raise ProfileError(f"verify_ms[{bkey!r}]: a tokens-per-row value appears twice")
            rows[b] = (np.array([n for n, _ in pts], float), np.array([ms for _, ms in pts], float))
        self._verify = dict(sorted(rows.items()))
        self._verify_batches = np.array(list(self._verify), float)
        draft_ms = draft_ms or {}
        if not isinstance(draft_ms, Mapping):
            raise ProfileError("draft_ms must be a mapping {batch: ms per draft token}")
        dpts = sorted(
            (_positive_int_key(b, "draft_ms"), _time_ms(ms, f"draft_ms[{b!r}]")) for b, ms in draft_ms.items()
        )
        if len({b for b, _ in dpts}) != len(dpts):
            raise ProfileError("draft_ms: a batch size appears twice")
        self._draft_b = np.array([b for b, _ in dpts], float)
        self._draft_ms = np.array([ms for _, ms in dpts], float)
        self.ngram_lookup_ms_per_row = _time_ms(ngram_lookup_ms_per_row, "ngram_lookup_ms_per_row")
        for name, value in (("device", device), ("model", model), ("dtype", dtype)):
            if not isinstance(value, str):
                raise ProfileError(f"{name} must be a string, got {value!r}")
        self.device, self.model, self.dtype = device, model, dtype
        self.meta = dict(meta or {})

    # ---- lookups ----------------------------------------------------------------------------
    def verify_time_ms(self, batch: float, tokens_per_row: float) -> float:
        """Milliseconds of one verify forward over `tokens_per_row` positions for `batch` rows."""
        per_batch = np.array([_interp(ns, ms, tokens_per_row) for ns, ms in self._verify.values()])
        return _interp(self._verify_batches, per_batch, batch)

    @property
    def has_draft_model(self) -> bool:
        return len(self._draft_b) > 0

    def draft_time_ms(self, batch: float, k: int) -> float:
        """Milliseconds to draft `k` tokens per row for `batch` rows (0 when k = 0)."""
        if k <= 0:
            return 0.0
        if self.has_draft_model:
            return k * _interp(self._draft_b, self._draft_ms, batch)
        return batch * self.ngram_lookup_ms_per_row

    def step_time_ms(self, batch: float, k: int) -> float:
        """Predicted decode-step time with speculation length k: drafting plus verifying k + 1 positions."""
        return self.draft_time_ms(batch, k) + self.verify_time_ms(batch, k + 1)

    @property
    def batch_sizes(self) -> list[int]:
        return [int(b) for b in self._verify_batches]

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            **self.meta,
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "device": self.device,
            "model": self.model,
            "dtype": self.dtype,
            "verify_ms": {
                str(b): {str(int(n)): float(m) for n, m in zip(ns, ms)}
                for b, (ns, ms) in self._verify.items()
            },
            "draft_ms": {str(int(b)): float(m) for b, m in zip(self._draft_b, self._draft_ms)},
            "ngram_lookup_ms_per_row": self.ngram_lookup_ms_per_row,
        }

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "profile") -> HardwareProfile:
        """Validate and build from a parsed profile; errors name `source` and the bad field."""
        if not isinstance(data, Mapping):
            raise ProfileError(
                f"{source}: a hardware profile must be a JSON object, got {type(data).__name__}"
            )
        if "format" in data and data["format"] != PROFILE_FORMAT:
            raise ProfileError(f"{source}: format is {data['format']!r}, expected {PROFILE_FORMAT!r}")
        if "version" in data and data["version"] != PROFILE_VERSION:
            raise ProfileError(
                f"{source}: profile version {data['version']!r} is not supported (reads {PROFILE_VERSION})"
            )
        if "verify_ms" not in data:
            raise ProfileError(f"{source}: missing required field 'verify_ms'")
        try:
            return cls(
                data["verify_ms"],
                data.get("draft_ms") or {},
                ngram_lookup_ms_per_row=data.get("ngram_lookup_ms_per_row", 0.0),
                device=data.get("device", "unknown"),
                model=data.get("model", "unknown"),
                dtype=data.get("dtype", "unknown"),
                meta={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
            )
        except ProfileError as exc:
            raise ProfileError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> HardwareProfile:
        return cls.from_dict(read_json(path, "hardware profile", ProfileError), source=str(path))

    @classmethod
    def from_model_fn(
        cls,
        verify_fn: Callable[[int, int], float],
        batch_sizes: Iterable[int],
        tokens_per_row: Iterable[int],
        draft_fn: Callable[[int], float] | None = None,
        **kwargs,
    ) -> HardwareProfile:
        """Tabulate analytic cost functions (ms) on a grid: synthetic profiles for tests and studies."""
        batch_sizes, tokens_per_row = list(batch_sizes), list(tokens_per_row)
        verify = {str(b): {str(n): float(verify_fn(b, n)) for n in tokens_per_row} for b in batch_sizes}
        draft = {str(b): float(draft_fn(b)) for b in batch_sizes} if draft_fn is not None else {}
        kwargs.setdefault("device", "synthetic")
        return cls(verify, draft, **kwargs)

    def __repr__(self) -> str:
        return f"HardwareProfile(model={self.model!r}, device={self.device!r}, batches={self.batch_sizes})"
