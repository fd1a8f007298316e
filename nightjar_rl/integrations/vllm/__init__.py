"""vLLM as a peer, a backend and a runtime for nightjar-rl policies (optional: `pip install -e .[vllm]`,
see README "vLLM").

- `scheduler.NightjarScheduler`: a `scheduler_cls` for vLLM that asks a nightjar-rl policy for each
  step's speculation length and per-row draft budgets (`vllm serve --scheduler-cls ...`, `LLM(...)`).
- `engine.VLLMEngine`: vLLM's engine stepped in-process behind nightjar-rl's engine surface
  (`backend: vllm` scenarios, `--backend vllm`, the `SpecDecodeVLLM-v1` env).
- `config`: the engine arguments both use (model folder, dtype, n-gram drafter, budgets).

Nothing here imports vLLM at package import time: `vllm_available()` says whether it can.
"""

from __future__ import annotations

from nightjar_rl.integrations.vllm.config import SCHEDULER_CLS, VLLMUnavailable, require_vllm, vllm_available

__all__ = ["SCHEDULER_CLS", "VLLMUnavailable", "require_vllm", "vllm_available"]
