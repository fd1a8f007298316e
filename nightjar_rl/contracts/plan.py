"""`SpecPlan`: what one engine step takes, a speculation length per running row.

A plan maps request ids to speculation lengths (0 = that row is not drafted this step); rows it
does not name get its `default`. `SpecPlan.uniform(k)` is the old scalar k (every row drafts up to
k), and every `step(...)` also accepts a plain int, so scalar-k policies run unchanged.

A plan may also say how many of the drafts to verify once they are drafted (`verify_costs`, adaptive
verification's order: draft, then choose by the drafter's own confidences, then verify). Its entry B is
the predicted time of the step when B draft tokens are verified in all; the engine ranks the drafted
slots by survival, the product of the row's stated confidences up to the slot (`slot_order`), and
verifies the B* best, where

    B* = argmax_B (rows + sum of the B largest survivals) / verify_costs[B]     (ties to the smaller B)

(`SpecPlan.verified_lengths`). T(B) is the whole step's time, drafting all of the plan's lengths
included; B never exceeds len(verify_costs) - 1. Only an engine whose drafter states confidences runs
such a plan (greedy decoding only: under sampling the choice would depend on the tokens drawn).

Validation happens where the plan meets the batch (`resolve`): every length is an int in
[0, max_speculation] and every named request is running; anything else is a `PlanError` (a
`ValueError`) with one line saying what is wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

import numpy as np


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


def _costs(value) -> tuple[float, ...] | None:
    """`verify_costs` as a tuple of positive finite floats (None stays None)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise PlanError(f"verify_costs must be a list of step times, got {value!r}")
    costs = []
    for c in value:
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c) or c <= 0:
            raise PlanError(f"verify_costs must be positive finite numbers, got {c!r}")
        costs.append(float(c))
    if not costs:
        raise PlanError("verify_costs must give the cost of at least B = 0")
    return tuple(costs)


def slot_order(survival: np.ndarray) -> np.ndarray:
    """Flat indices (row x depth + slot) of the draft slots of a [rows, depth] survival matrix, highest
    survival first; ties to the shallower slot, then the earlier row. Survivals fall with depth, so every
    prefix of the order gives each row a prefix of its slots."""
    rows, depth = survival.shape
    return np.lexsort((np.repeat(np.arange(rows), depth), np.tile(np.arange(depth), rows), -survival.ravel()))


def ranked_slots(survival: np.ndarray, most: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The usable draft slots (survival > 0) of a [rows, depth] survival matrix in `slot_order`, at most
    `most` of them: (their flat indices, their survivals)."""
    order = slot_order(survival)
    ranked = survival.ravel()[order]
    top = int((ranked > 0).sum()) if most is None else min(int((ranked > 0).sum()), most)
    return order[:top], ranked[:top]


def expected_tokens(rows: int, ranked: np.ndarray) -> np.ndarray:
    """E(B) for B = 0..len(ranked): each row's own token plus the survivals of the first B ranked slots."""
    return rows + np.concatenate([[0.0], np.cumsum(ranked)])


def slot_lengths(order: np.ndarray, count: int, shape: tuple[int, int]) -> np.ndarray:
    """Draft lengths per row when the first `count` slots of `order` (flat indices into a [rows, depth]
    matrix of that `shape`) are handed out."""
    rows, depth = shape
    return np.bincount(order[:count] // depth, minlength=rows)


def survival_of(confidences: list[list[float]]) -> np.ndarray:
    """[rows, longest] survival of ragged per-row token confidences: the running product along each row
    (each confidence clipped to [0, 1]), 0 past a row's drafts."""
    depth = max((len(c) for c in confidences), default=0)
    survival = np.zeros((len(confidences), depth))
    for i, c in enumerate(confidences):
        if len(c):
            survival[i, : len(c)] = np.cumprod(np.clip(np.asarray(c, dtype=float), 0.0, 1.0))
    return survival


@dataclass(frozen=True, eq=True)
class SpecPlan:
    """Speculation length per running row for one step (rows not named get `default`); optionally the
    step's cost by verified drafts, to choose the verified drafts by confidence (module docs)."""

    default: int = 0
    lengths: Mapping[str, int] = field(default_factory=dict)
    verify_costs: tuple[float, ...] | None = None

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
        object.__setattr__(self, "verify_costs", _costs(self.verify_costs))

    __hash__ = None  # a mapping field: plans compare by value, they are not dict keys

    # ---- constructors --------------------------------------------------------------------------
    @classmethod
    def uniform(cls, k: int) -> SpecPlan:
        """Every row drafts up to k tokens: the classic scalar speculation length (one shared plan per
        k: plans are immutable, and a step coerces an int k to one)."""
        return _uniform_plan(_length(k, "plan default")) if cls is SpecPlan else cls(default=k)

    @classmethod
    def per_row(cls, lengths: Mapping[str, int], default: int = 0,
                verify_costs: Iterable[float] | None = None) -> SpecPlan:
        """Lengths by request id; rows not named get `default` (0: not drafted); `verify_costs`: see
        the module docs."""
        return cls(default=default, lengths=dict(lengths), verify_costs=verify_costs)

    @classmethod
    def coerce(cls, plan: SpecPlan | int) -> SpecPlan:
        """A plan from what a policy or caller hands a step: a `SpecPlan`, or an int k (uniform)."""
        if isinstance(plan, SpecPlan):
            return plan
        return cls.uniform(_length(plan, "k"))

    @classmethod
    def from_dict(cls, data: Mapping) -> SpecPlan:
        """Inverse of `to_dict` (JSON step logs, the server)."""
        if not isinstance(data, Mapping) or set(data) - {"default", "lengths", "verify_costs"}:
            raise PlanError("a plan is {default: int, lengths: {request_id: int}, verify_costs: [ms, ...] (optional)}, "
                            f"got {data!r}")
        return cls(default=data.get("default", 0), lengths=dict(data.get("lengths") or {}),
                   verify_costs=data.get("verify_costs"))

    # ---- reading -----------------------------------------------------------------------------------
    @property
    def is_uniform(self) -> bool:
        """True when no row is named and nothing is chosen after drafting: every row gets `default`."""
        return not self.lengths and self.verify_costs is None

    def verified_lengths(self, confidences: list[list[float]]) -> list[int]:
        """Draft tokens to verify per row, given each row's drafted tokens' stated confidences (module
        docs); without `verify_costs`, all of them."""
        if self.verify_costs is None:
            return [len(c) for c in confidences]
        survival = survival_of(confidences)
        rows, depth = survival.shape
        if depth == 0:
            return [0] * rows
        order, ranked = ranked_slots(survival, len(self.verify_costs) - 1)
        ratios = expected_tokens(rows, ranked) / np.asarray(self.verify_costs[: len(ranked) + 1])
        return slot_lengths(order, int(np.argmax(ratios)), survival.shape).tolist()  # first maximum: the smaller B

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
        return SpecPlan(self.default, lengths, self.verify_costs)

    def to_dict(self) -> dict:
        data = {"default": self.default, "lengths": dict(self.lengths)}
        if self.verify_costs is not None:
            data["verify_costs"] = list(self.verify_costs)
        return data

    def __repr__(self) -> str:
        if self.is_uniform:
            return f"SpecPlan.uniform({self.default})"
        costs = "" if self.verify_costs is None else f", verify_costs=<{len(self.verify_costs)} costs>"
        return f"SpecPlan.per_row({dict(self.lengths)!r}, default={self.default}{costs})"


@lru_cache(maxsize=256)
def _uniform_plan(k: int) -> SpecPlan:
    return SpecPlan(default=k)
