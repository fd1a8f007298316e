"""`SpecDecodeEnv`: choose the speculation length of every engine step of a live serving workload.

- Observation: `nightjar_rl.env.observation` (Box, float32, documented fields; size 8 + max_k).
- Action: Discrete(max_k + 1); 0 = speculation off, k = draft up to k tokens per row.
- Reward: the scenario's named reward (`nightjar_rl.env.rewards`) of the step just taken.
- Episode: one seeded workload; terminated when every request is served, truncated at the horizon.
- info: `stats` (the raw StepStats), `row` (its as_row() plus clock and reward), `clock`.

Version history of the registered ids: v0 = this observation, these rewards and dynamics.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces

from nightjar_rl.env.backend import Backend, LiveBackend
from nightjar_rl.env.observation import obs_size
from nightjar_rl.env.observe import ObservationBuilder
from nightjar_rl.env.recorder import write_table
from nightjar_rl.env.rewards import make_reward
from nightjar_rl.env.scenario import Scenario, load_scenario
from nightjar_rl.env.workload import PromptPool, sample_requests
from nightjar_rl.models import LoadedModel, load_model
from nightjar_rl.serving.arrivals import PoissonArrivals, arrivals_from_dict

RESET_OPTIONS = ("rate", "arrivals", "num_requests")


class SpecDecodeEnv(gym.Env):
    """Gymnasium env over a backend (the live engine by default). The target model is loaded once per
    instance, or passed in as `target` to share it between envs; the engine is rebuilt on reset."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(
        self,
        scenario: str | dict | Scenario = "tiny",
        target: LoadedModel | None = None,
        backend: Backend | None = None,
        render_mode: str | None = None,
    ):
        if render_mode is not None:
            raise ValueError(f"SpecDecodeEnv has no render modes, got render_mode={render_mode!r}")
        self.scenario = load_scenario(scenario)
        s = self.scenario
        self.max_k = s.max_k
        self.action_space = spaces.Discrete(s.max_k + 1)
        self.observation_space = spaces.Box(0.0, np.inf, shape=(obs_size(s.max_k),), dtype=np.float32)
        self.target = target or load_model(s.model, s.dtype, s.device)
        self.reward_fn = make_reward(s.reward, **s.reward_kwargs)
        self.backend: Backend = backend or LiveBackend(s.engine_config(), self.target)
        self.prompt_pool = self.prompt_pool_for(s, self.target)
        self.arrivals = s.arrival_process()
        self.builder = ObservationBuilder(s.max_k)
        self.episode_log: list[dict] = []
        self.episode = -1
        self._steps = 0

    @staticmethod
    def prompt_pool_for(scenario: Scenario, target: LoadedModel) -> PromptPool:
        """The scenario's prompts encoded with the target's tokenizer."""
        return PromptPool.build(
            scenario.prompts, target.tokenizer, target.model.config.vocab_size, scenario.max_prompt_tokens
        )

    # ---- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Options (all optional): `rate` (Poisson at this rate), `arrivals` (an arrivals mapping),
        `num_requests` (override the scenario's count) for this episode."""
        super().reset(seed=seed)
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
        self.backend.reset(requests, seed=int(self.np_random.integers(2**31 - 1)))
        self.builder.reset()
        self.episode += 1
        self.episode_log = []
        self._steps = 0
        decision = self.backend.advance()
        self.builder.update(None, decision.new_arrivals, decision.clock)
        obs = self.builder.vector(decision.batch_size, decision.queue_len)
        return obs, {"clock": decision.clock, "num_requests": len(requests)}

    def step(self, action):
        k = int(action)
        if not self.action_space.contains(k):
            raise ValueError(f"action must be an int in [0, {self.max_k}], got {action!r}")
        stats = self.backend.step(k)
        reward = float(self.reward_fn(stats))
        self._steps += 1
        decision = self.backend.advance()
        self.builder.update(stats, decision.new_arrivals, decision.clock)
        obs = self.builder.vector(decision.batch_size, decision.queue_len)
        terminated = self.backend.done
        s = self.scenario
        truncated = not terminated and (
            (s.horizon_steps is not None and self._steps >= s.horizon_steps)
            or (s.horizon_seconds is not None and decision.clock >= s.horizon_seconds)
        )
        row = stats.as_row()
        row.update(episode=self.episode, time=decision.clock, reward=reward)
        self.episode_log.append(row)
        return obs, reward, terminated, truncated, {"stats": stats, "row": row, "clock": decision.clock}

    # ---- recording ----------------------------------------------------------------------------
    def episode_frame(self) -> pd.DataFrame:
        """The current episode so far, one row per step (time, batch, k, accepted, durations, reward)."""
        return pd.DataFrame(self.episode_log)

    def save_episode(self, path: str) -> None:
        """Write the current episode's step log to a .csv or .parquet file (atomically)."""
        write_table(self.episode_frame(), path)
