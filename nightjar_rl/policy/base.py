"""The policy protocol: one `predict(obs) -> k` interface for every speculation policy.

Lifecycle, as driven by the runtime's `PolicyDriver` (for the env, evaluation, the CLI and the server):

```
policy.reset()                       # start of an episode / serving run
loop:
    k = policy.predict(obs)          # obs: nightjar_rl.contracts.observation layout; k in [0, max_k], 0 = off
    stats = engine.step(k)
    policy.observe(stats)            # optional hook: the exact outcome of the step just run
    policy.update(obs, k, reward)    # learners only, and only while `policy.learning` is True
```

`observe(stats)` gives a policy the step's raw `StepStats` (accepted lengths, catch-up time) that
the observation only summarises. Callers should call it after every step when they have the stats;
every policy must still work from observations alone (documented per policy where that is an
approximation). Policies are serialisable: `params()` are constructor arguments (besides max_k),
`state()`/`load_state()` hold what was learned or tracked (see `nightjar_rl.policy.artifact`).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np

from nightjar_rl.contracts.observation import (
    HIST_START,
    OBS_INDEX,
    SUMMARY_FIELDS,
    obs_field,
    obs_size,
    obs_size_v1,
)
from nightjar_rl.decoding.stats import StepStats


def check_int(name: str, value: Any, low: int = 0, high: int | None = None) -> int:
    """Validate a user-supplied integer parameter (ValueError naming it, never assert)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_float(name: str, value: Any, low: float = 0.0, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def batch_of(obs: np.ndarray) -> int:
    """Rows the next step will decode, as an int >= 0."""
    return max(0, round(obs_field(obs, "batch_size")))


def make_observation(max_k: int, hist: Any = None, **fields: float) -> np.ndarray:
    """An observation with the named fields set (others 0: version-2 summary fields included) and an
    optional histogram."""
    obs = np.zeros(obs_size(max_k), dtype=np.float32)
    for name, value in fields.items():
        if name in OBS_INDEX:
            obs[OBS_INDEX[name]] = value
        elif name in SUMMARY_FIELDS:
            obs[obs_size_v1(max_k) + SUMMARY_FIELDS.index(name)] = value
        else:
            raise ValueError(f"unknown observation field {name!r}; fields: {', '.join((*OBS_INDEX, *SUMMARY_FIELDS))}")
    if hist is not None:
        hist = np.asarray(hist, dtype=np.float32)
        if hist.shape != (max_k + 1,):
            raise ValueError(f"hist must have max_k + 1 = {max_k + 1} entries, got shape {hist.shape}")
        obs[HIST_START:obs_size_v1(max_k)] = hist
    return obs


def _defaults(cls: type) -> dict:
    out: dict = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.default is not inspect.Parameter.empty:
                    out[p.name] = p.default
    return out


class Policy:
    """Base class: chooses the speculation length k in [0, max_k] from an observation."""

    type_name: ClassVar[str] = ""  # registry / artifact id, set by each concrete class
    learning: bool = False  # learners set True; update() is a no-op while False

    def __init__(self, max_k: int):
        self.max_k = check_int("max_k", max_k, 0)

    @property
    def name(self) -> str:
        """Short label for tables and plots: the type and the fields that differ from their defaults."""
        defaults = _defaults(type(self))
        args = ",".join(
            f"{k}={v}"
            for k, v in self.params().items()
            if not isinstance(v, (dict, list)) and (k not in defaults or defaults[k] != v)
        )
        return f"{self.type_name}({args})" if args else self.type_name

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget per-episode tracking (learned statistics of learners are kept)."""

    def observe(self, stats: StepStats) -> None:
        """Optional hook: the StepStats of the step that ran with the last predicted k."""

    def update(self, obs: np.ndarray, k: int, reward: float) -> None:
        """Learners: credit `reward` to choosing `k` on `obs`. A no-op for fixed rules."""

    def clamp(self, k: float) -> int:
        return int(min(max(int(k), 0), self.max_k))

    # ---- serialisation ----------------------------------------------------------------------------
    def params(self) -> dict:
        """Constructor arguments other than max_k (JSON-serialisable)."""
        return {}

    def state(self) -> dict:
        """Learned / tracked state (JSON-serialisable)."""
        return {}

    def load_state(self, state: dict) -> None:
        if state:
            raise ValueError(f"policy type {self.type_name!r} has no state, got fields {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_k={self.max_k}, {self.params()})"
