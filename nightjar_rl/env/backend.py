"""Backends: where a scenario's engines and prompts come from. The env, evaluation and the CLI ask a
backend for a fresh engine per episode and for the prompt pool; everything above the engine surface
(`ServingSession`, `PolicyDriver`) is the same for both.

- `LiveBackend`: the real engine (`build_stack`); loads the target model once, on first use.
- `SimBackend`: `SimEngine` over the scenario's trace and hardware profile; loads no model.
- `VLLMBackend`: vLLM's engine stepped in-process (`nightjar_rl.integrations.vllm`; needs vLLM).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Protocol

from nightjar_rl.env.workload import PromptPool
from nightjar_rl.serving.surface import EngineSurface


class Backend(Protocol):
    needs_model: bool

    @property
    def prompt_pool(self) -> PromptPool: ...

    def make_engine(self, seed: int) -> EngineSurface: ...


class LiveBackend:
    """The real engine. The target is loaded lazily (or passed in, to share it between envs)."""

    needs_model = True

    def __init__(self, scenario, target=None):
        self.scenario = scenario
        self._target = target

    @property
    def target(self):
        if self._target is None:
            from nightjar_rl.models import load_model

            s = self.scenario
            self._target = load_model(s.engine.model, s.engine.dtype, s.engine.device, s.engine.linears)
        return self._target

    @cached_property
    def prompt_pool(self) -> PromptPool:
        s, target = self.scenario, self.target
        room = None if s.max_prompt_tokens is not None else s.engine.max_seq_len - s.max_new_tokens
        return PromptPool.build(s.prompts, target.tokenizer, target.model.config.vocab_size, s.max_prompt_tokens, room)

    def make_engine(self, seed: int) -> EngineSurface:
        from nightjar_rl.stack import build_stack

        return build_stack(self.scenario.engine_config(seed), target=self.target).engine


def resolve_data_path(ref: str, base_dir: str | None) -> Path:
    """A scenario's data file: relative to the scenario file's folder, else to the working directory."""
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        return Path(base_dir) / path
    return path


class SimBackend:
    """`SimEngine` over the scenario's `trace` and `profile` (paths relative to the scenario file)."""

    needs_model = False

    def __init__(self, scenario):
        from nightjar_rl.env.scenario import ScenarioError
        from nightjar_rl.hardware import HardwareProfile, ProfileError
        from nightjar_rl.sim.engine import SyntheticAcceptance
        from nightjar_rl.sim.trace import Trace

        s = self.scenario = scenario
        self.trace = Trace.load(resolve_data_path(s.trace, s.base_dir))
        self.profile = HardwareProfile.load(resolve_data_path(s.profile, s.base_dir))
        if (s.profile_scale != 1.0 or s.profile_scale_by_rows) and s.profile_scale_keeps_host:
            try:
                self.profile = self.profile.scaled_forwards(s.profile_scale, s.profile_scale_by_rows)
            except ProfileError as exc:
                raise ScenarioError(f"scenario {s.name!r}: field 'profile_scale_keeps_host': {exc}") from None
        elif s.profile_scale != 1.0:
            self.profile = self.profile.scaled(s.profile_scale)
        self.synthetic = (SyntheticAcceptance.from_dict(s.synthetic_acceptance, s.engine.drafter)
                          if s.synthetic_acceptance else None)
        self._memo: dict = {}  # profile lookups, shared by every episode's engine
        if s.max_k > self.trace.max_k:
            raise ValueError(f"scenario {s.name!r}: max_k {s.max_k} exceeds the trace's max_k {self.trace.max_k}")
        if self.synthetic is None and s.engine.drafter != self.trace.drafter:
            raise ValueError(f"scenario {s.name!r}: drafter {s.engine.drafter!r} but the trace was recorded for "
                             f"{self.trace.drafter!r}")
        if s.max_new_tokens > self.trace.max_new_tokens and not all(r.eos or len(r) >= s.max_new_tokens
                                                                    for r in self.trace.records):
            longest = max(len(r) for r in self.trace.records)
            raise ValueError(f"scenario {s.name!r}: max_new_tokens {s.max_new_tokens} exceeds the trace's "
                             f"{self.trace.max_new_tokens} (longest recorded output {longest})")

    @cached_property
    def prompt_pool(self) -> PromptPool:
        """The trace's prompts (the scenario's `prompts` field is what the trace was recorded from); a
        record that stopped by length keeps its length as its budget (a per-request budget, e.g.
        ShareGPT's reference reply length), and the trace's families, when it has them."""
        records = self.trace.records
        families = self.trace.meta.get("families") or {}
        return PromptPool([r.request_id for r in records], [list(r.prompt_ids) for r in records],
                          [None if r.eos else len(r) for r in records], [families.get(r.request_id, "") for r in records] if families else None)

    def make_engine(self, seed: int) -> EngineSurface:
        from nightjar_rl.sim.engine import SimEngine

        e = self.scenario.engine
        return SimEngine(self.trace, self.profile, max_batch_size=e.max_batch_size, max_seq_len=e.max_seq_len,
                         max_kv_tokens=e.max_kv_tokens, max_waiting=e.max_waiting, max_speculation=e.max_speculation,
                         seed=seed, synthetic=self.synthetic, memo=self._memo, verify_layout=e.verify_layout,
                         draft_catchup=e.draft_catchup)


class VLLMBackend:
    """vLLM's engine, started once (on first use) and stepped in this process; a fresh engine surface
    (`VLLMEngine`) per episode over it. Prompts are tokenized with the model folder's tokenizer."""

    needs_model = False  # no nightjar-rl model is loaded

    def __init__(self, scenario):
        from nightjar_rl.integrations.vllm import require_vllm

        require_vllm()
        self.scenario = scenario
        self._llm = None
        self._engine = None  # the latest episode's engine surface

    @cached_property
    def tokenizer(self):
        from nightjar_rl.integrations.vllm.engine import vllm_tokenizer

        return vllm_tokenizer(self.scenario.engine.model)

    @cached_property
    def prompt_pool(self) -> PromptPool:
        s = self.scenario
        return PromptPool.build(s.prompts, self.tokenizer, len(self.tokenizer), s.max_prompt_tokens)

    def make_engine(self, seed: int) -> EngineSurface:
        from nightjar_rl.integrations.vllm.engine import VLLMEngine, start_llm_engine

        if self._llm is None:
            self._llm = start_llm_engine(self.scenario.engine_config())
        if self._engine is not None:
            self._engine.close()  # the previous episode's requests leave the shared engine
        self._engine = VLLMEngine(self._llm, self.scenario.engine_config(seed))
        return self._engine


def make_backend(scenario, target=None) -> Backend:
    """The backend a scenario names (`backend: live | sim | vllm`)."""
    if scenario.backend == "sim":
        return SimBackend(scenario)
    if scenario.backend == "vllm":
        return VLLMBackend(scenario)
    return LiveBackend(scenario, target)
