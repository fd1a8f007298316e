"""`SpecDecodeEnv`: choose the speculation length of every engine step of a serving workload, on the
live engine or on the simulator (the scenario's `backend`).

- Observation: `nightjar_rl.contracts.observation` (Box, float32, documented fields; layout version 2,
  size 16 + max_k), an `Observation` carrying the running rows' features in `obs.rows`.
- Action: Discrete(max_k + 1); 0 = speculation off, k = draft up to k tokens per row.
- Reward: the scenario's named reward (`nightjar_rl.contracts.rewards`) of the step just taken.
- Episode: one seeded workload; terminated when every request is served, truncated at the horizon.
- info: `stats` (the raw StepStats) and `clock`; `episode_frame()` tabulates the episode's steps.

Each episode is a `ServingSession` over a fresh engine from the backend, driven by the runtime's
`PolicyDriver` with the agent's actions (the same loop evaluation and the CLI use with a policy).

Version history of the registered ids: v0 = observation layout 1 (8 + max_k entries); v1 = layout 2
(the full-information acceptance and row summary appended; dynamics unchanged), rewards scaled by
`registration.REWARD_SCALE` (1e-3: thousands of tokens/s; `reward_scale` here, 1 when the class is used
directly), and Gymnasium's TimeLimit at the default scenario's horizon (400 steps; the env also
truncates at its own scenario's horizon, so with `scenario=` pass `max_episode_steps=` to change the
limit). The v0 ids are no longer registered: `gymnasium.make` of one raises DeprecatedEnv naming v1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.contracts.observation import obs_size
from nightjar_rl.contracts.rewards import make_reward
from nightjar_rl.env.backend import Backend, make_backend
from nightjar_rl.env.scenario import Scenario, load_scenario
from nightjar_rl.env.workload import sample_requests
from nightjar_rl.runtime.driver import PolicyDriver
from nightjar_rl.serving.arrivals import PoissonArrivals, arrivals_from_dict
from nightjar_rl.serving.session import ServeResult, ServingSession

if TYPE_CHECKING:
    import pandas as pd

RESET_OPTIONS = ("rate", "arrivals", "num_requests", "max_concurrency")


class SpecDecodeEnv(gym.Env):
    """Gymnasium env over a backend (from the scenario: the live engine or the simulator). A live
    target model is loaded on first use, or passed in as `target` to share it between envs; the
    engine is rebuilt on every reset. The sim backend loads no model. It renders nothing: its only
    render mode is None (`metadata["render_modes"]` is empty).

    Plain stable-baselines3 works on the registered ids: `make_vec_env("nightjar_rl/SpecDecodeSim-v1",
    n_envs=4)` then `PPO("MlpPolicy", venv, gamma=0.5)` (k barely moves the next states: a short
    horizon learns better than 0.99); on the sim, `torch.set_num_threads(1)` first (a small network
    gains nothing from more threads). `nightjar_rl.policy.sb3.export_sb3` turns the trained model into
    an `mlp` artifact that runs without SB3."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(
        self,
        scenario: str | dict | Scenario = "tiny",
        target=None,
        backend: Backend | None = None,
        render_mode: str | None = None,
        reward_scale: float = 1.0,
    ):
        if render_mode is not None:  # a TypeError: SB3's make_vec_env then retries without render_mode
            raise TypeError(f"SpecDecodeEnv renders nothing (render_modes: none), got render_mode={render_mode!r}")
        self.scenario = load_scenario(scenario)
        s = self.scenario
        self.max_k = s.max_k
        self.action_space = spaces.Discrete(s.max_k + 1)
        self.observation_space = spaces.Box(0.0, np.inf, shape=(obs_size(s.max_k),), dtype=np.float32)
        self.reward_fn = make_reward(s.reward, **s.reward_kwargs)
        if not (isinstance(reward_scale, (int, float)) and np.isfinite(reward_scale) and reward_scale > 0):
            raise ValueError(f"reward_scale must be a finite number > 0, got {reward_scale!r}")
        self.reward_scale = float(reward_scale)
        self.backend: Backend = backend or make_backend(s, target)
        self.prompt_pool = self.backend.prompt_pool
        self.arrivals = s.arrival_process()
        self.session: ServingSession | None = None
        self.driver: PolicyDriver | None = None
        self.episode_log: list[tuple] = []  # (stats, clock, reward) per step; rows built on demand
        self.episode = -1
        self._steps = 0
        self._ended: str | None = None

    # ---- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Options (all optional): `rate` (Poisson at this rate), `arrivals` (an arrivals mapping),
        `num_requests` (override the scenario's count), `max_concurrency` (closed loop: at most this
        many requests in flight; None: open loop; default: the scenario's) for this episode."""
        super().reset(seed=seed)
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"reset options must be a mapping (a dict) or None, got {type(options).__name__} {options!r}")
        options = dict(options or {})
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            raise ValueError(f"unknown reset option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(RESET_OPTIONS)}")
        arrivals = self.arrivals
        if "arrivals" in options:
            arrivals = arrivals_from_dict(options["arrivals"], self.scenario.base_dir)
        if "rate" in options:
            arrivals = PoissonArrivals(float(options["rate"]))
        n = int(options.get("num_requests", self.scenario.num_requests))
        requests = sample_requests(self.prompt_pool, arrivals, n, self.scenario.max_new_tokens, self.np_random)
        if not requests:
            raise ValueError(f"scenario {self.scenario.name!r}: the arrival process produced no requests")
        engine = self.backend.make_engine(int(self.np_random.integers(2**31 - 1)))
        self.session = ServingSession(engine, requests, options.get("max_concurrency", self.scenario.max_concurrency))
        self.driver = PolicyDriver(self.session, self.max_k, reward=self.reward_fn)
        self.episode += 1
        self.episode_log = []
        self._steps = 0
        self._ended: str | None = None
        obs = self.driver.start()
        return obs, {"clock": self.session.clock, "num_requests": len(requests)}

    def step(self, action):
        """`action`: a speculation length in the Discrete action space, or a `SpecPlan` (per-row
        lengths; outside the declared space, for per-row policies driving the env directly).
        RuntimeError before the first `reset()` and after the episode ended (terminated or truncated)."""
        if self.driver is None:
            raise RuntimeError("call reset() before step()")
        if self._ended is not None:
            raise RuntimeError(f"the episode has ended ({self._ended}); call reset() to start a new one")
        if not isinstance(action, SpecPlan):
            k = int(action)
            if not 0 <= k <= self.max_k or k != action:
                raise ValueError(f"action must be an int in [0, {self.max_k}], got {action!r}")
            action = k
        stats = self.driver.act(action)
        reward = self.driver.last_reward * self.reward_scale
        self._steps += 1
        clock = self.session.clock
        terminated = self.session.done
        s = self.scenario
        truncated = not terminated and (
            (s.horizon_steps is not None and self._steps >= s.horizon_steps)
            or (s.horizon_seconds is not None and clock >= s.horizon_seconds)
        )
        self.episode_log.append((stats, clock, reward))
        if terminated or truncated:
            self._ended = "terminated: every request served" if terminated else "truncated at the horizon"
        return self.driver.obs, reward, terminated, truncated, {"stats": stats, "clock": clock}

    # ---- recording ----------------------------------------------------------------------------
    @property
    def requests(self) -> list:
        """This episode's workload, in arrival order."""
        return self.session.pending

    def result(self) -> ServeResult:
        """Per-request timings and outputs of the requests finished so far this episode."""
        return self.session.result()

    def episode_frame(self) -> pd.DataFrame:
        """The current episode so far, one row per step (StepStats.as_row() plus episode, time, reward)."""
        import pandas as pd  # here: the env's step loop never needs it (`ServingSession.result`)

        return pd.DataFrame([{**stats.as_row(), "episode": self.episode, "time": clock, "reward": reward}
                             for stats, clock, reward in self.episode_log])

    def save_episode(self, path: str) -> None:
        """Write the current episode's step log to a .csv or .parquet file (atomically)."""
        from nightjar_rl.env.recorder import write_table

        write_table(self.episode_frame(), path)
