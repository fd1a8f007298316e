"""Arrival processes beyond a single Poisson rate: piecewise-constant rate schedules and trace files.

Every process answers `sample(n, rng)`: sorted arrival times (seconds from t=0) of at most `n`
requests, drawn from the numpy Generator passed in (the only source of randomness).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
class GammaArrivals:
    """Gamma-distributed inter-arrival times at `rate` requests/s with a `burstiness` factor (vLLM's
    `--burstiness`): shape = burstiness, scale = 1 / (rate * burstiness), so the mean interval is
    1/rate and its squared coefficient of variation is 1/burstiness; burstiness 1 is Poisson, below 1
    burstier, above 1 more regular."""

    rate: float
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise WorkloadError(f"arrivals.rate must be a finite number > 0, got {self.rate}")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise WorkloadError(f"arrivals.burstiness must be a finite number > 0, got {self.burstiness}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.cumsum(rng.gamma(self.burstiness, 1.0 / (self.rate * self.burstiness), size=n))

    def at_rate(self, rate: float) -> GammaArrivals:
        return GammaArrivals(rate, self.burstiness)


TIME_COLUMNS = ("arrival_time", "timestamp", "time")  # lower-case, spaces and underscores dropped when matched
PROMPT_COLUMNS = ("prompt_tokens", "input_tokens", "context_tokens", "request_tokens")
OUTPUT_COLUMNS = ("output_tokens", "generated_tokens", "completion_tokens", "response_tokens")


def _column(columns, names: tuple[str, ...]) -> str | None:
    """The first of `columns` whose name matches one of `names` (case, spaces and underscores ignored)."""
    norm = {str(c).lower().replace(" ", "").replace("_", ""): c for c in columns}
    for name in names:
        if name.replace("_", "") in norm:
            return norm[name.replace("_", "")]
    return None


@dataclass(frozen=True)
class TraceArrivals:
    """Arrival times read from a file: one number (seconds) per line, or a CSV with a time column
    (`arrival_time`, `timestamp` or `time`: seconds, or date-times as in public serving traces) and
    optional token counts (`prompt_tokens`/`ContextTokens`/`Request tokens`, `output_tokens`/
    `GeneratedTokens`/`Response tokens`). Times are sorted and shifted so the first arrival is at t=0.
    `rate`: replay time-scaled so the trace's mean rate, (N - 1) / (last - first), becomes `rate`
    requests/s. A trace's output token counts are its requests' budgets (`budgets`)."""

    path: str
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise WorkloadError(f"arrivals.rate must be a finite number > 0, got {self.rate}")

    def table(self) -> dict[str, np.ndarray]:
        """{"time": seconds from the first arrival, sorted, time-scaled; "prompt_tokens",
        "output_tokens" when the file has them}, rows in arrival order."""
        path = Path(self.path)
        if not path.is_file():
            raise WorkloadError(f"arrivals.path: trace file not found: {path}")
        extra: dict[str, np.ndarray] = {}
        if path.suffix == ".csv":
            values, extra = _read_csv(path)
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
        order = np.argsort(values, kind="stable")
        times = values[order] - values[order][0]
        if self.rate is not None:
            if times.size < 2 or times[-1] <= 0:
                raise WorkloadError(f"arrivals.path: {path}: time-scaling to a rate needs two or more distinct times")
            times = times * (((times.size - 1) / times[-1]) / self.rate)
        return {"time": times, **{k: v[order] for k, v in extra.items()}}

    def load(self) -> np.ndarray:
        return self.table()["time"]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.load()[:n]

    def budgets(self, n: int) -> np.ndarray | None:
        """The first `n` requests' output token counts (None when the file has none)."""
        out = self.table().get("output_tokens")
        return None if out is None else out[:n]

    def at_rate(self, rate: float) -> TraceArrivals:
        return TraceArrivals(self.path, rate)


def _read_csv(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import pandas as pd

    df = pd.read_csv(path)
    col = _column(df.columns, TIME_COLUMNS)
    if col is None:
        raise WorkloadError(f"arrivals.path: {path} has no time column ({', '.join(TIME_COLUMNS)})")
    raw = pd.to_numeric(df[col], errors="coerce")
    if raw.isna().any():  # date-times (Azure's "2023-11-16 18:15:46.68")
        try:
            stamps = pd.to_datetime(df[col])
        except (ValueError, TypeError):
            raise WorkloadError(f"arrivals.path: {path}: column {col!r} holds neither seconds nor date-times") from None
        raw = (stamps - stamps.min()).dt.total_seconds()
    extra = {}
    for key, names in (("prompt_tokens", PROMPT_COLUMNS), ("output_tokens", OUTPUT_COLUMNS)):
        c = _column(df.columns, names)
        if c is not None:
            counts = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
            if np.isnan(counts).any() or (counts < 0).any():
                raise WorkloadError(f"arrivals.path: {path}: column {c!r} must hold token counts >= 0")
            extra[key] = counts.astype(np.int64)
    return raw.to_numpy(dtype=float), extra


ArrivalProcess = PoissonArrivals | GammaArrivals | PiecewiseArrivals | TraceArrivals


def _number(spec: dict, key: str, what: str, allow_inf: bool = False) -> float:
    value = spec.get(key)
    if allow_inf and isinstance(value, str) and value.lower() in ("inf", "infinity"):
        return math.inf
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise WorkloadError(f"arrivals.{key} must be {what}, got {value!r}")
    return float(value)


def _poisson(spec: dict, base_dir) -> PoissonArrivals:
    return PoissonArrivals(_number(spec, "rate", "a number (requests/s) or 'inf'", allow_inf=True))


def _gamma(spec: dict, base_dir) -> GammaArrivals:
    burst = _number(spec, "burstiness", "a number > 0") if "burstiness" in spec else 1.0
    return GammaArrivals(_number(spec, "rate", "a number (requests/s)"), burst)


def _piecewise(spec: dict, base_dir) -> PiecewiseArrivals:
    schedule = spec.get("schedule")
    if not isinstance(schedule, list) or not all(
        isinstance(s, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in s)
        for s in schedule
    ):
        raise WorkloadError("arrivals.schedule must be a list of [duration_s, rate] pairs of numbers")
    return PiecewiseArrivals(tuple(tuple(float(v) for v in s) for s in schedule))


def _trace(spec: dict, base_dir) -> TraceArrivals:
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise WorkloadError(f"arrivals.path must be a file path, got {path!r}")
    resolved = Path(path)
    if not resolved.is_absolute() and base_dir is not None and not resolved.exists():
        resolved = Path(base_dir) / resolved
    if not resolved.is_file():
        raise WorkloadError(f"arrivals.path: trace file not found: {path}")
    rate = _number(spec, "rate", "a number (requests/s)") if spec.get("rate") is not None else None
    return TraceArrivals(str(resolved), rate)


@dataclass(frozen=True)
class ArrivalKind:
    """One registered arrival process: the fields its mapping takes and how it is built."""

    fields: frozenset[str]
    build: Callable[[dict, str | Path | None], ArrivalProcess]
    doc: str


ARRIVALS: dict[str, ArrivalKind] = {
    "poisson": ArrivalKind(frozenset({"rate"}), _poisson, "{kind: poisson, rate: R | inf}"),
    "gamma": ArrivalKind(frozenset({"rate", "burstiness"}), _gamma, "{kind: gamma, rate: R, burstiness: B}"),
    "piecewise": ArrivalKind(frozenset({"schedule"}), _piecewise, "{kind: piecewise, schedule: [[secs, rate], ...]}"),
    "trace": ArrivalKind(frozenset({"path", "rate"}), _trace, "{kind: trace, path: FILE, rate: R (optional scaling)}"),
}
ARRIVAL_KINDS = tuple(ARRIVALS)


def arrivals_from_dict(spec: dict, base_dir: str | Path | None = None) -> ArrivalProcess:
    """Build an arrival process from a config mapping (`kind` plus its fields); errors name the field."""
    if not isinstance(spec, dict):
        raise WorkloadError(f"arrivals must be a mapping with a 'kind' field, got {spec!r}")
    kind = ARRIVALS.get(spec.get("kind"))
    if kind is None:
        raise WorkloadError(f"arrivals.kind must be one of {', '.join(ARRIVAL_KINDS)}, got {spec.get('kind')!r}")
    unknown = set(spec) - kind.fields - {"kind"}
    if unknown:
        raise WorkloadError(f"arrivals: unknown field(s) {', '.join(sorted(unknown))} for kind {spec['kind']!r}")
    return kind.build(spec, base_dir)


def at_rate(process: ArrivalProcess, rate: float) -> ArrivalProcess:
    """The process driven at `rate` requests/s (a rate sweep): its own shape when it has one (gamma
    burstiness, a rate-scaled trace), else Poisson."""
    scaled = getattr(process, "at_rate", None)
    if scaled is not None and not (isinstance(process, TraceArrivals) and process.rate is None):
        return scaled(rate)
    return PoissonArrivals(rate)
