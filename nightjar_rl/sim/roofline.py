"""Analytic (roofline) hardware profiles for GPUs we cannot run on.

A forward pass of `b` rows x `n` new tokens over `c` cached tokens per row costs

    time = max(bytes moved / bandwidth, FLOPs / peak) + launch overhead

with (dense decoder, weights read once per pass, KV cache read once per row):

    bytes = P x s  +  b x c x KV  +  b x n x KV
    FLOPs = 2 x P x b x n  +  4 x L x H_q x d x b x n x (c + n)

where P = parameters touched per token (embedding lookup excluded, LM head included), s = bytes
per parameter (2 for bf16), KV = bytes of K and V per token (2 x L x H_kv x d x s), L = layers,
H_q/H_kv = query/KV heads, d = head size. `bandwidth` and `peak` are the achievable figures:
spec sheet x efficiency. This is the model of Vidur-style and SmartSpec-style analyses; it ignores
kernel-level effects (tile quantisation, attention kernels' own efficiency) and is meant for
"what if" questions, not for fidelity claims.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields

from nightjar_rl.hardware import PROFILE_FORMAT, PROFILE_VERSION, HardwareProfile, ProfileError


@dataclass(frozen=True)
class GPUSpec:
    """Spec-sheet figures plus the fraction of them real kernels reach."""

    name: str
    memory_bandwidth_gbps: float  # GB/s (1e9 bytes)
    peak_tflops: float  # dense bf16 TFLOP/s (1e12)
    launch_overhead_ms: float = 0.0  # fixed cost per forward pass (kernel launches; ~0 with CUDA graphs)
    memory_efficiency: float = 1.0
    compute_efficiency: float = 1.0

    @property
    def bandwidth(self) -> float:
        """Achievable bytes per second."""
        return self.memory_bandwidth_gbps * 1e9 * self.memory_efficiency

    @property
    def flops(self) -> float:
        """Achievable FLOP per second."""
        return self.peak_tflops * 1e12 * self.compute_efficiency


@dataclass(frozen=True)
class ModelShape:
    """A dense decoder-only transformer (Llama family)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    bytes_per_param: float = 2.0  # bf16

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def params_per_token(self) -> int:
        """Weights every token's forward touches: attention + MLP per layer, plus the LM head."""
        h, d = self.hidden_size, self.head_dim
        attn = h * (self.num_attention_heads * d) * 2 + h * (self.num_key_value_heads * d) * 2
        mlp = 3 * h * self.intermediate_size
        return self.num_hidden_layers * (attn + mlp) + h * self.vocab_size

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * self.bytes_per_param


# Achievable efficiencies of ~0.8 (memory) and ~0.6 (compute) are typical of well-tuned serving
# kernels; launch overhead is that of an eager (no CUDA graph) forward of a 32-layer model.
GPU_PRESETS = {
    "h100": GPUSpec("NVIDIA H100 SXM (roofline)", 3350.0, 989.0, 2.0, 0.8, 0.6),
    "h200": GPUSpec("NVIDIA H200 (roofline)", 4800.0, 989.0, 2.0, 0.8, 0.6),
    "a100": GPUSpec("NVIDIA A100 80GB (roofline)", 2039.0, 312.0, 2.0, 0.8, 0.6),
    "rtx4090": GPUSpec("NVIDIA RTX 4090 (roofline)", 1008.0, 165.0, 2.0, 0.8, 0.6),
}


def model_shape(name: str, bytes_per_param: float = 2.0) -> ModelShape:
    """A named shape from `nightjar_rl.models.SHAPES` (llama-3-8b, llama-3.2-1b, ...)."""
    from nightjar_rl.models import SHAPES

    if name not in SHAPES:
        raise ProfileError(f"unknown model shape {name!r}; choose one of {', '.join(SHAPES)} or give a JSON file")
    keep = {f.name for f in fields(ModelShape)}
    return ModelShape(name=name, bytes_per_param=bytes_per_param, **{k: v for k, v in SHAPES[name].items() if k in keep})


def from_mapping(cls, data: Mapping, what: str):
    """Build GPUSpec/ModelShape from a mapping with one clear error for missing or unknown fields."""
    names = [f.name for f in fields(cls)]
    unknown = set(data) - set(names)
    if unknown:
        raise ProfileError(f"{what}: unknown field(s) {', '.join(sorted(unknown))}; fields: {', '.join(names)}")
    try:
        spec = cls(**data)
    except TypeError as exc:
        raise ProfileError(f"{what}: {exc}") from None
    for f in fields(cls):
        value = getattr(spec, f.name)
        if f.name != "name" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ProfileError(f"{what}: field '{f.name}' must be a number >= 0, got {value!r}")
    return spec


def pass_time_ms(gpu: GPUSpec, shape: ModelShape, batch: int, tokens: int, context: int) -> float:
    """Roofline time of one forward pass of `batch` rows x `tokens` new tokens per row (see the module
    docstring)."""
    return step_time_ms(gpu, shape, batch, batch * tokens, context)


def step_time_ms(gpu: GPUSpec, shape: ModelShape, rows: int, scored: int, context: int) -> float:
    """Roofline time of one packed forward pass: `rows` rows scoring `scored` new tokens in all over
    `context` cached tokens each (the module docstring's formula with b x n = scored; attention
    takes the mean tokens per row, n = scored / rows, exact for uniform rows)."""
    per_row = scored / rows
    moved = shape.params_per_token * shape.bytes_per_param + (rows * context + scored) * shape.kv_bytes_per_token
    attention = 4 * shape.num_hidden_layers * shape.num_attention_heads * shape.head_dim * scored * (context + per_row)
    work = 2 * shape.params_per_token * scored + attention
    return max(moved / gpu.bandwidth, work / gpu.flops) * 1000.0 + gpu.launch_overhead_ms


DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DEFAULT_TOKENS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
DEFAULT_CONTEXTS = (128, 512, 1024, 2048)
DEFAULT_PREFILL = (16, 64, 256, 1024, 4096, 16384)


def roofline_profile(
    gpu: GPUSpec,
    target: ModelShape,
    draft: ModelShape | None = None,
    *,
    batch_sizes: Iterable[int] = DEFAULT_BATCHES,
    tokens_per_row: Iterable[int] = DEFAULT_TOKENS,
    contexts: Iterable[int] = DEFAULT_CONTEXTS,
    prefill_tokens: Iterable[int] = DEFAULT_PREFILL,
    overhead_ms: float = 0.0,
) -> HardwareProfile:
    """A version-2 hardware profile tabulated from the roofline model (draft steps at the middle context)."""
    batch_sizes, tokens_per_row = sorted(set(batch_sizes)), sorted(set(tokens_per_row))
    contexts, prefill_tokens = sorted(set(contexts)), sorted(set(prefill_tokens))

    def table(ctx: int) -> dict:
        return {str(b): {str(n): round(pass_time_ms(gpu, target, b, n, ctx), 5) for n in tokens_per_row}
                for b in batch_sizes}

    mid = contexts[len(contexts) // 2]
    data = {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "device": gpu.name,
        "device_type": "roofline",
        "model": target.name,
        "dtype": "bfloat16" if target.bytes_per_param == 2 else f"{target.bytes_per_param} bytes/param",
        "context": mid,
        "verify_ms": table(mid),
        "verify_ms_by_context": {str(c): table(c) for c in contexts},
        "prefill_ms": {str(t): round(pass_time_ms(gpu, target, 1, t, 0), 5) for t in prefill_tokens},
        "overhead_ms": {str(b): overhead_ms for b in batch_sizes},
        "ngram_lookup_ms_per_row": 0.02,
        "roofline": {"gpu": asdict(gpu), "target": asdict(target), "draft": asdict(draft) if draft else None},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if draft is not None:
        data["draft_ms"] = {str(b): round(pass_time_ms(gpu, draft, b, 1, mid), 5) for b in batch_sizes}
        data["draft_prefill_ms"] = {str(t): round(pass_time_ms(gpu, draft, 1, t, 0), 5) for t in prefill_tokens}
    return HardwareProfile.from_dict(data, source=f"roofline {gpu.name} / {target.name}")
