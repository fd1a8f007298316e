"""`SpecPlan`: what one engine step takes, a speculation length per running row.

A plan maps request ids to speculation lengths (0 = that row is not drafted this step); rows it
does not name get its `default`. `SpecPlan.uniform(k)` is the old scalar k (every row drafts up to
k), and every `step(...)` also accepts a plain int, so scalar-k policies run unchanged.

Validation happens where the plan meets the batch (`resolve`): every length is an int in
[0, max_speculation] and every named request is running; anything else is a `PlanError` (a
`ValueError`) with one line saying what is wrong.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType


class PlanError(ValueError):
    """A plan that cannot run on this batch (bad length, unknown request id)."""


def _length(value, where: str) -> int:
    """`value` as a non-negative int (numpy ints welcome, bools and floats not)."""
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise PlanError(f"{where} must be an int, got {value!r}")
    value = int(value)
    if value < 0:
        raise PlanError(f"{where} must be >= 0, got {value}")
    return value


@dataclass(frozen=True, eq=True)
class SpecPlan:
    """Speculation length per running row for one step (rows not named get `default`)."""

    default: int = 0
    lengths: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", _length(self.default, "plan default"))
        if not isinstance(self.lengths, Mapping):
            raise PlanError(f"plan lengths must be a mapping {{request_id: length}}, got {type(self.lengths).__name__}")
        checked = {}
        for rid, k in self.lengths.items():
            if not isinstance(rid, str):
                raise PlanError(f"plan keys are request ids (str), got {rid!r}")
            checked[rid] = _length(k, f"plan length of request {rid!r}")
        object.__setattr__(self, "lengths", MappingProxyType(checked))

    __hash__ = None  # a mapping field: plans compare by value, they are not dict keys

    # ---- constructors --------------------------------------------------------------------------
    @classmethod
    def uniform(cls, k: int) -> SpecPlan:
        """Every row drafts up to k tokens: the classic scalar speculation length (one shared plan per
        k: plans are immutable, and a step coerces an int k to one)."""
        return _uniform_plan(_length(k, "plan default")) if cls is SpecPlan else cls(default=k)

    @classmethod
    def per_row(cls, lengths: Mapping[str, int], default: int = 0) -> SpecPlan:
        """Lengths by request id; rows not named get `default` (0: not drafted)."""
        return cls(default=default, lengths=dict(lengths))

    @classmethod
    def coerce(cls, plan: SpecPlan | int) -> SpecPlan:
        """A plan from what a policy or caller hands a step: a `SpecPlan`, or an int k (uniform)."""
        if isinstance(plan, SpecPlan):
            return plan
        return cls.uniform(_length(plan, "k"))

    @classmethod
    def from_dict(cls, data: Mapping) -> SpecPlan:
        """Inverse of `to_dict` (JSON step logs, the server)."""
        if not isinstance(data, Mapping) or set(data) - {"default", "lengths"}:
            raise PlanError(f"a plan is {{default: int, lengths: {{request_id: int}}}}, got {data!r}")
        return cls(default=data.get("default", 0), lengths=dict(data.get("lengths") or {}))

    # ---- reading -----------------------------------------------------------------------------------
    @property
    def is_uniform(self) -> bool:
        """True when no row is named: every row gets `default`."""
        return not self.lengths

    @property
    def max_length(self) -> int:
        """The largest length the plan can give a row."""
        return max(self.default, *self.lengths.values()) if self.lengths else self.default

    def length_for(self, request_id: str) -> int:
        return self.lengths.get(request_id, self.default)

    def check(self, max_speculation: int, running: Iterable[str]) -> None:
        """Raise `PlanError` unless every length is <= max_speculation and every named request runs."""
        if self.max_length > max_speculation:
            if self.is_uniform:
                raise PlanError(f"k must be an int in [0, {max_speculation}], got {self.default}")
            worst = max(self.lengths, key=self.lengths.get) if self.max_length != self.default else None
            where = f"request {worst!r}" if worst is not None else "the plan default"
            raise PlanError(f"speculation length {self.max_length} for {where} is above max_speculation "
                            f"{max_speculation}")
        if self.lengths:
            unknown = set(self.lengths) - set(running)
            if unknown:
                names = ", ".join(repr(r) for r in sorted(unknown)[:3]) + (" ..." if len(unknown) > 3 else "")
                raise PlanError(f"plan names {len(unknown)} request(s) that are not running: {names}")

    def resolve(self, request_ids: Iterable[str]) -> list[int]:
        """The length of each of `request_ids`, in order."""
        if not self.lengths:
            ids = request_ids if isinstance(request_ids, Collection) else list(request_ids)
            return [self.default] * len(ids)
        return [self.length_for(rid) for rid in request_ids]

    def capped(self, caps: Mapping[str, int]) -> SpecPlan:
        """This plan with each named request given at most its cap (the minimum of the two); the
        caller names only running requests (e.g. per-request caps set by server clients)."""
        if not caps:
            return self
        lengths = dict(self.lengths)
        for rid, cap in caps.items():
            lengths[rid] = min(self.length_for(rid), _length(cap, f"cap of request {rid!r}"))
        return SpecPlan(self.default, lengths)

    def to_dict(self) -> dict:
        return {"default": self.default, "lengths": dict(self.lengths)}

    def __repr__(self) -> str:
        if self.is_uniform:
            return f"SpecPlan.uniform({self.default})"
        return f"SpecPlan.per_row({dict(self.lengths)!r}, default={self.default})"


@lru_cache(maxsize=256)
def _uniform_plan(k: int) -> SpecPlan:
    return SpecPlan(default=k)
