"""Field checks shared by experiment configs (`config.py`) and their sb3 policy specs
(`sb3_config.py`): the error both raise and the parsers of rate and concurrency lists."""

from __future__ import annotations

import math


class ExperimentError(ValueError):
    """A bad experiment config (message names the field)."""


def is_number(v) -> bool:
    """An int or a float (infinite included), not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_int(v) -> bool:
    """An int, not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def rate_value(v) -> float | None:
    """A rate as a float (`inf`, `.inf` or float infinity: every request at t=0), None if not a number."""
    if isinstance(v, str) and v.strip().lower() in ("inf", ".inf", "infinity"):
        return math.inf
    return float(v) if is_number(v) else None


def parse_rates(value, closed_loop: bool, fail) -> list[float]:
    """A non-empty list of rates > 0; infinite ones only in a closed loop (`fail(msg)` makes the error)."""
    rates = [rate_value(r) for r in value] if isinstance(value, list) else []
    if not rates or not all(r is not None and r > 0 for r in rates):
        raise fail(f"must be a non-empty list of rates > 0 (requests/s), got {value!r}")
    if not closed_loop and not all(math.isfinite(r) for r in rates):
        raise fail(f"has rate inf (every request at t=0), which needs a 'concurrency' list (closed loop), got {value!r}")
    return rates


def parse_concurrency(value, fail) -> list[int]:
    """A non-empty list of distinct integers >= 1 (max requests in flight)."""
    if not isinstance(value, list) or not value or not all(is_int(c) and c >= 1 for c in value) or len(set(value)) != len(value):
        raise fail(f"must be a non-empty list of distinct integers >= 1 (max requests in flight), got {value!r}")
    return list(value)
