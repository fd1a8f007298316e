"""Contextual bandits over k in 0..max_k, with a separate set of arms per batch-size bucket.

Shared machinery (`BucketedBandit`):
- Context: the bucket of the observation's batch_size (`BatchBuckets`, default 1, 2, 3-4, 5-8,
  9-16, 17-32, 33-64, 65+).
- Reward: `update(obs, k, reward)` with reward = the step's goodput in tokens/s. Raw sums are
  kept per (bucket, arm); the bucket's running mean and standard deviation of all its rewards
  normalise values at decision time, value = (mean_k - bucket_mean) / bucket_scale, so buckets
  whose goodput differs by orders of magnitude learn (and explore) on the same scale.
- Switching cost (Nightjar): re-enabling speculation after k = 0 makes the draft model catch up
  on the tokens it skipped. When the observation's last_k is 0, an arm k > 0 is charged
  C_switch / k seconds per token: its goodput g becomes 1 / (1/g + C_switch/k) before
  normalising. C_switch starts at `switch_cost` (seconds) and, when the caller feeds
  `observe(stats)`, is learned as an EMA of `stats.catchup_time` on steps that switched from
  k = 0 to k > 0.
- Deterministic predict (no exploration) takes the best tried arm of the bucket; a bucket with no
  data borrows the nearest bucket that has some, and with no data at all returns `default_k`.
- All randomness comes from the policy's own `np.random.Generator(seed)`.

Variants differ only in how they explore (deterministic=False):
- `NightjarBandit`: untried arms first, then epsilon-greedy with a per-bucket decaying rate
  eps = epsilon / (1 + n_bucket / decay_steps).
- `UCB1Bandit`: untried arms first, then argmax of value + c * sqrt(2 ln n_bucket / n_arm).
- `ThompsonBandit`: Gaussian posterior per arm on the normalised scale, N(n m / (n + tau),
  noise^2 / (n + tau)) with tau = prior_strength; the arm with the largest sample wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nightjar_rl.contracts.observation import obs_field
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.policy.base import Policy, batch_of, check_float, check_int
from nightjar_rl.policy.buckets import BatchBuckets


class BucketedBandit(Policy):
    """Arm statistics per batch-size bucket, normalised values, switching cost (see module docs)."""

    def __init__(
        self,
        max_k: int,
        *,
        buckets: Sequence[int] | None = None,
        switch_cost: float = 0.02,
        learn_switch_cost: bool = True,
        switch_ema: float = 0.2,
        default_k: int = 0,
        seed: int = 0,
    ):
        super().__init__(max_k)
        self.buckets = BatchBuckets(buckets)
        self.switch_cost = check_float("switch_cost", switch_cost, 0.0)
        if not isinstance(learn_switch_cost, bool):
            raise ValueError(f"learn_switch_cost must be true or false, got {learn_switch_cost!r}")
        self.learn_switch_cost = learn_switch_cost
        self.switch_ema = check_float("switch_ema", switch_ema, 0.0, 1.0)
        self.default_k = check_int("default_k", default_k, 0, self.max_k)
        self.seed = check_int("seed", seed, 0)
        self.learning = True
        shape = (len(self.buckets), self.max_k + 1)
        self.counts = np.zeros(shape, dtype=np.int64)
        self.sums = np.zeros(shape)
        self.bucket_n = np.zeros(len(self.buckets), dtype=np.int64)
        self.bucket_mean = np.zeros(len(self.buckets))
        self.bucket_m2 = np.zeros(len(self.buckets))
        self.switch_estimate = self.switch_cost
        self.switch_samples = 0
        self.rng = np.random.default_rng(self.seed)
        self._prev_k: int | None = None

    # ---- statistics ---------------------------------------------------------------------------
    def bucket_scale(self, b: int) -> float:
        n, mean = self.bucket_n[b], self.bucket_mean[b]
        if n >= 2:
            sd = math.sqrt(self.bucket_m2[b] / (n - 1))
            if sd > 1e-12 * max(1.0, abs(mean)):
                return sd
        return max(abs(mean), 1e-9) if n else 1.0

    def normalise(self, b: int, raw: np.ndarray | float) -> np.ndarray | float:
        return (raw - self.bucket_mean[b]) / self.bucket_scale(b)

    def raw_means(self, b: int) -> np.ndarray:
        """Mean raw reward per arm of bucket b (nan for untried arms)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts[b] > 0, self.sums[b] / np.maximum(self.counts[b], 1), np.nan)

    def values(self, b: int, last_k: int | None = None) -> np.ndarray:
        """Normalised value per arm (nan if untried), switch-penalised when last_k == 0."""
        raw = self.raw_means(b)
        if last_k == 0:
            raw = self.penalise(raw)
        return self.normalise(b, raw)

    def penalise(self, raw: np.ndarray) -> np.ndarray:
        """Charge arms k > 0 the switching cost: g -> 1 / (1/g + C_switch/k) for g > 0."""
        c = self.switch_estimate
        if c <= 0:
            return raw
        out = np.array(raw, dtype=float)
        for k in range(1, len(out)):
            g = out[k]
            if np.isfinite(g) and g > 0:
                out[k] = 1.0 / (1.0 / g + c / k)
        return out

    def _penalise_normalised(self, b: int, values: np.ndarray) -> np.ndarray:
        raw = self.bucket_mean[b] + values * self.bucket_scale(b)
        return self.normalise(b, self.penalise(raw))

    def _data_bucket(self, b: int) -> int | None:
        """b if it has data, else the nearest bucket that has (ties to the smaller batch)."""
        tried = np.flatnonzero(self.bucket_n > 0)
        if not len(tried):
            return None
        return int(tried[np.argmin(np.abs(tried - b) * 2 + (tried > b))])

    # ---- policy interface ---------------------------------------------------------------------------
    def greedy(self, b: int, last_k: int | None) -> int:
        src = self._data_bucket(b)
        if src is None:
            return self.default_k
        vals = self.values(src, last_k)
        return int(np.nanargmax(vals))

    def explore(self, b: int, last_k: int | None) -> int:
        raise NotImplementedError

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        b = self.buckets.index(batch_of(obs))
        last_k = round(obs_field(obs, "last_k"))
        k = self.greedy(b, last_k) if deterministic else self.explore(b, last_k)
        return self.clamp(k)

    def _untried(self, b: int) -> int | None:
        untried = np.flatnonzero(self.counts[b] == 0)
        return int(self.rng.choice(untried)) if len(untried) else None

    def update(self, obs: np.ndarray, k: int, reward: float) -> None:
        if not self.learning:
            return
        k = check_int("k", k, 0, self.max_k)
        if isinstance(reward, bool) or not np.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        reward = float(reward)
        b = self.buckets.index(batch_of(obs))
        self.counts[b, k] += 1
        self.sums[b, k] += reward
        self.bucket_n[b] += 1
        delta = reward - self.bucket_mean[b]
        self.bucket_mean[b] += delta / self.bucket_n[b]
        self.bucket_m2[b] += delta * (reward - self.bucket_mean[b])

    def observe(self, stats: StepStats) -> None:
        """Learn C_switch from the catch-up time of steps that re-enabled speculation."""
        switched = self._prev_k == 0 and stats.k > 0 and stats.batch_size > 0
        self._prev_k = stats.k
        if not (switched and self.learn_switch_cost and self.learning):
            return
        sample = float(stats.catchup_time)
        if self.switch_samples == 0:
            self.switch_estimate = sample
        else:
            self.switch_estimate += self.switch_ema * (sample - self.switch_estimate)
        self.switch_samples += 1

    def reset(self) -> None:
        self._prev_k = None

    def greedy_table(self) -> dict[str, int]:
        """The deterministic choice per bucket (speculation on), as a BatchSizeTable mapping."""
        return {self.buckets.label(b): self.greedy(b, None) for b in range(len(self.buckets))}

    # ---- serialisation ---------------------------------------------------------------------------------
    def params(self) -> dict:
        return {
            "buckets": list(self.buckets.upper_bounds),
            "switch_cost": self.switch_cost,
            "learn_switch_cost": self.learn_switch_cost,
            "switch_ema": self.switch_ema,
            "default_k": self.default_k,
            "seed": self.seed,
        }

    def state(self) -> dict:
        return {
            "counts": self.counts.tolist(),
            "sums": self.sums.tolist(),
            "bucket_n": self.bucket_n.tolist(),
            "bucket_mean": self.bucket_mean.tolist(),
            "bucket_m2": self.bucket_m2.tolist(),
            "switch_estimate": float(self.switch_estimate),
            "switch_samples": int(self.switch_samples),
            "rng": self.rng.bit_generator.state,
        }

    def load_state(self, state: dict) -> None:
        shape = self.counts.shape
        arrays = {}
        for key, dtype, want in (
            ("counts", np.int64, shape),
            ("sums", float, shape),
            ("bucket_n", np.int64, shape[:1]),
            ("bucket_mean", float, shape[:1]),
            ("bucket_m2", float, shape[:1]),
        ):
            if key not in state:
                raise ValueError(f"bandit state is missing {key!r}")
            try:
                arr = np.asarray(state[key], dtype=dtype)
            except (TypeError, ValueError):
                raise ValueError(f"bandit state {key!r} is not numeric") from None
            if arr.shape != want:
                raise ValueError(
                    f"bandit state {key!r} has shape {arr.shape}, expected {want} (buckets x arms)"
                )
            arrays[key] = arr
        if (arrays["counts"] < 0).any() or (arrays["counts"].sum(axis=1) != arrays["bucket_n"]).any():
            raise ValueError("bandit state: counts must be >= 0 and sum to bucket_n per bucket")
        for key, arr in arrays.items():
            setattr(self, key, arr)
        self.switch_estimate = check_float(
            "state.switch_estimate", state.get("switch_estimate", self.switch_cost)
        )
        self.switch_samples = check_int("state.switch_samples", state.get("switch_samples", 0))
        if "rng" in state:
            try:
                self.rng.bit_generator.state = state["rng"]
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"bandit state 'rng' is not a valid generator state ({exc})") from None


class NightjarBandit(BucketedBandit):
    """Nightjar: epsilon-greedy per bucket with decaying exploration and a switching cost."""

    type_name = "nightjar"

    def __init__(self, max_k: int, epsilon: float = 0.1, decay_steps: float = 100.0, **kwargs):
        super().__init__(max_k, **kwargs)
        self.epsilon = check_float("epsilon", epsilon, 0.0, 1.0)
        self.decay_steps = check_float("decay_steps", decay_steps, 1e-9)

    def epsilon_for(self, b: int) -> float:
        return self.epsilon / (1.0 + self.bucket_n[b] / self.decay_steps)

    def explore(self, b: int, last_k: int | None) -> int:
        untried = self._untried(b)
        if untried is not None:
            return untried
        if self.rng.random() < self.epsilon_for(b):
            return int(self.rng.integers(0, self.max_k + 1))
        return self.greedy(b, last_k)

    def params(self) -> dict:
        return {"epsilon": self.epsilon, "decay_steps": self.decay_steps, **super().params()}


class UCB1Bandit(BucketedBandit):
    """UCB1 per bucket on normalised values (deterministic predict drops the bonus)."""

    type_name = "ucb1"

    def __init__(self, max_k: int, c: float = 1.0, **kwargs):
        super().__init__(max_k, **kwargs)
        self.c = check_float("c", c, 0.0)

    def explore(self, b: int, last_k: int | None) -> int:
        untried = self._untried(b)
        if untried is not None:
            return untried
        bonus = self.c * np.sqrt(2.0 * math.log(self.bucket_n[b]) / self.counts[b])
        return int(np.argmax(self.values(b, last_k) + bonus))

    def params(self) -> dict:
        return {"c": self.c, **super().params()}


class ThompsonBandit(BucketedBandit):
    """Gaussian Thompson sampling per bucket on normalised values."""

    type_name = "thompson"

    def __init__(self, max_k: int, prior_strength: float = 1.0, noise: float = 1.0, **kwargs):
        super().__init__(max_k, **kwargs)
        self.prior_strength = check_float("prior_strength", prior_strength, 1e-9)
        self.noise = check_float("noise", noise, 1e-9)

    def posterior(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation per arm (prior N(0, noise^2 / tau))."""
        n = self.counts[b].astype(float)
        means = np.nan_to_num(self.normalise(b, self.raw_means(b)), nan=0.0)
        denom = n + self.prior_strength
        return n * means / denom, self.noise / np.sqrt(denom)

    def explore(self, b: int, last_k: int | None) -> int:
        mean, sd = self.posterior(b)
        sample = self.rng.normal(mean, sd)
        if last_k == 0 and self.bucket_n[b] > 0:
            sample = self._penalise_normalised(b, sample)
        return int(np.argmax(sample))

    def params(self) -> dict:
        return {"prior_strength": self.prior_strength, "noise": self.noise, **super().params()}
