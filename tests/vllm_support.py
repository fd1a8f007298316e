"""Shared by the vLLM tests: skip without vLLM, one in-process engine on SmolLM2, bundled prompts."""

from __future__ import annotations

import pytest

from nightjar_rl.integrations.vllm import vllm_available
from nightjar_rl.integrations.vllm.config import _import_error

SKIP_REASON = f"vLLM is not importable here ({_import_error()}); install it with bash install.sh --vllm"
MAX_K = 4


def skip_without_vllm() -> None:
    if not vllm_available():
        pytest.skip(SKIP_REASON, allow_module_level=True)


def engine_config(**changes):
    """The test engine: bundled SmolLM2 in float32, n-gram drafter up to MAX_K, 4 slots, 512 context."""
    from nightjar_rl.stack import EngineConfig

    return EngineConfig(**{"model": "smollm2-135m", "dtype": "float32", "max_batch_size": 4, "max_seq_len": 512,
                           "max_speculation": MAX_K, **changes})


def bundled_prompts(count: int, max_tokens: int = 200) -> list[list[int]]:
    """Chat-templated token ids of the first `count` bundled prompts (each at most `max_tokens`)."""
    from transformers import AutoTokenizer

    from nightjar_rl.integrations.vllm.config import model_path
    from nightjar_rl.serving.workload import encode_record, load_workload

    tok = AutoTokenizer.from_pretrained(model_path("smollm2-135m"))
    records = load_workload("bundled")[:count]
    return [encode_record(tok, r, len(tok))[-max_tokens:] for r in records]
