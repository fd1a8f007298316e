"""Arrival processes beyond a single Poisson rate: piecewise-constant rate schedules and trace files.

Every process answers `sample(n, rng)`: sorted arrival times (seconds from t=0) of at most `n`
requests, drawn from the numpy Generator passed in (the only source of randomness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nightjar_rl.serving.workload import WorkloadError, poisson_arrivals


@dataclass(frozen=True)
class PoissonArrivals:
    """Poisson arrivals at `rate` requests/s (inf: every request at t=0)."""

    rate: float

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise WorkloadError(f"arrivals.rate must be > 0, got {self.rate}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return poisson_arrivals(n, None if math.isinf(self.rate) else self.rate, rng)


@dataclass(frozen=True)
class PiecewiseArrivals:
    """Poisson arrivals whose rate is constant within segments: [(duration_s, rate), ...], e.g.
    low -> high -> low. Arrivals stop at the end of the schedule (so fewer than n may arrive)."""

    segments: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.segments:
            raise WorkloadError("arrivals.schedule needs at least one [duration_s, rate] segment")
        for i, seg in enumerate(self.segments):
            if len(seg) != 2:
                raise WorkloadError(f"arrivals.schedule[{i}] must be [duration_s, rate], got {seg!r}")
            duration, rate = seg
            if not (duration > 0 and math.isfinite(duration)):
                raise WorkloadError(f"arrivals.schedule[{i}]: duration must be a finite number > 0, got {duration}")
            if not (rate >= 0 and math.isfinite(rate)):
                raise WorkloadError(f"arrivals.schedule[{i}]: rate must be a finite number >= 0, got {rate}")

    @property
    def duration(self) -> float:
        return float(sum(d for d, _ in self.segments))

    def rate_at(self, t: float) -> float:
        """The scheduled rate at time t (0 after the schedule ends)."""
        start = 0.0
        for duration, rate in self.segments:
            if t < start + duration:
                return float(rate)
            start += duration
        return 0.0

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        times: list[float] = []
        start = 0.0
        for duration, rate in self.segments:
            t = start
            while rate > 0 and len(times) < n:
                t += rng.exponential(1.0 / rate)
                if t >= start + duration:
                    break
                times.append(t)
            start += duration
        return np.asarray(times, dtype=float)


@dataclass(frozen=True)
class TraceArrivals:
    """Arrival times read from a file: one number (seconds) per line, or a CSV with an
    `arrival_time` column. Times are shifted so the first arrival is at t=0 and sorted."""

    path: str

    def load(self) -> np.ndarray:
        path = Path(self.path)
        if not path.is_file():
            raise WorkloadError(f"arrivals.path: trace file not found: {path}")
        if path.suffix == ".csv":
            import pandas as pd

            df = pd.read_csv(path)
            if "arrival_time" not in df.columns:
                raise WorkloadError(f"arrivals.path: {path} has no 'arrival_time' column")
            values = df["arrival_time"].to_numpy(dtype=float)
        else:
            values = []
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                try:
                    values.append(float(line))
                except ValueError:
                    raise WorkloadError(f"arrivals.path: {path}:{lineno}: not a number: {line!r}") from None
            values = np.asarray(values, dtype=float)
        if values.size == 0:
            raise WorkloadError(f"arrivals.path: {path} holds no arrival times")
        if not np.isfinite(values).all():
            raise WorkloadError(f"arrivals.path: {path} holds non-finite arrival times")
        values = np.sort(values)
        return values - values[0]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.load()[:n]


ArrivalProcess = PoissonArrivals | PiecewiseArrivals | TraceArrivals
ARRIVAL_KINDS = ("poisson", "piecewise", "trace")


def arrivals_from_dict(spec: dict, base_dir: str | Path | None = None) -> ArrivalProcess:
    """Build an arrival process from a config mapping (`kind` plus its fields); errors name the field."""
    if not isinstance(spec, dict):
        raise WorkloadError(f"arrivals must be a mapping with a 'kind' field, got {spec!r}")
    kind = spec.get("kind")
    allowed = {"poisson": {"kind", "rate"}, "piecewise": {"kind", "schedule"}, "trace": {"kind", "path"}}
    if kind not in allowed:
        raise WorkloadError(f"arrivals.kind must be one of {', '.join(ARRIVAL_KINDS)}, got {kind!r}")
    unknown = set(spec) - allowed[kind]
    if unknown:
        raise WorkloadError(f"arrivals: unknown field(s) {', '.join(sorted(unknown))} for kind {kind!r}")
    if kind == "poisson":
        rate = spec.get("rate")
        if isinstance(rate, str) and rate.lower() in ("inf", "infinity"):
            rate = math.inf
        if not isinstance(rate, (int, float)) or isinstance(rate, bool):
            raise WorkloadError(f"arrivals.rate must be a number (requests/s) or 'inf', got {rate!r}")
        return PoissonArrivals(float(rate))
    if kind == "piecewise":
        schedule = spec.get("schedule")
        if not isinstance(schedule, list) or not all(
            isinstance(s, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in s)
            for s in schedule
        ):
            raise WorkloadError("arrivals.schedule must be a list of [duration_s, rate] pairs of numbers")
        return PiecewiseArrivals(tuple(tuple(float(v) for v in s) for s in schedule))
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise WorkloadError(f"arrivals.path must be a file path, got {path!r}")
    resolved = Path(path)
    if not resolved.is_absolute() and base_dir is not None and not resolved.exists():
        resolved = Path(base_dir) / resolved
    if not resolved.is_file():
        raise WorkloadError(f"arrivals.path: trace file not found: {path}")
    return TraceArrivals(str(resolved))
