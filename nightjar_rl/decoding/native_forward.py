"""transformers' Llama decoder forward over the slot KV cache, run by nightjar-rl's own loop.

The model's own forward spends a step's small-op time in its module machinery: per-layer keyword
plumbing, the attention-interface lookup, the cache hook, a rotate-half per projection.
`NativeForward` runs the same ops on the same weights in the same order, so its hidden states are
bitwise those of the model's forward through the runner's `slot_attention` (any dtype), with less
around them:

- the fused q/k/v and gate/up GEMMs of packed linears (`cpu_linears.SharedProjection`) are called
  once per layer directly, their outputs split by views;
- rotary embedding is applied to a layer's queries and keys together: `x*cos + rot(x)*sin'`, where
  `rot` swaps the two halves and `sin'` carries rotate-half's sign (negation is exact, so each element
  is the product and sum transformers computes);
- keys and values go straight to `SlotKVCache.write`, attention is `slot_attend` (both shared with
  the transformers path).

`native_forward(model)` returns None unless every module it reproduces is exactly transformers' Llama
class (subclasses and other architectures fall back to the model's own forward).
"""

from __future__ import annotations

import torch
from torch import nn

from nightjar_rl.cpu_linears import PackedLinear, SliceOf
from nightjar_rl.decoding.attention import SlotStep, slot_attend
from nightjar_rl.decoding.kv_cache import SlotKVCache


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaRMSNorm`'s forward: normalised in float32, cast back, then scaled (the casts are no-ops
    for a float32 model)."""
    normed = hidden.to(torch.float32)
    normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(hidden.dtype)


def _fused(*projections: nn.Module) -> PackedLinear | None:
    """The packed GEMM behind `projections` when they are, in order, the consecutive column slices
    that make up one `SharedProjection`; else None (each projection then runs on its own)."""
    if not all(isinstance(p, SliceOf) for p in projections):
        return None
    shared = projections[0].shared
    bounds = [(p.start, p.stop) for p in projections]
    whole = bounds[0][0] == 0 and bounds[-1][1] == shared.linear.out_features
    if not whole or any(p.shared is not shared for p in projections) or any(
            a[1] != b[0] for a, b in zip(bounds, bounds[1:])):
        return None
    return shared.linear


class NativeLayer:
    """One decoder layer's weights and modules, as the native forward reads them (taken when the
    runner is built: modules swapped in later are not seen)."""

    def __init__(self, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm_in, self.eps_in = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.norm_post = layer.post_attention_layernorm.weight
        self.eps_post = layer.post_attention_layernorm.variance_epsilon
        self.qkv = _fused(attn.q_proj, attn.k_proj, attn.v_proj)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.gate_up = _fused(mlp.gate_proj, mlp.up_proj)
        self.gate_width = mlp.gate_proj.out_features
        self.gate_proj, self.up_proj, self.down_proj, self.act = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn
        self.scaling = attn.scaling


class NativeForward:
    """`__call__(ids, positions, shape, step, cache)` -> the final-normed hidden states `[T, hidden]` of
    the T fed tokens (`shape`: how the model's forward would lay them out, `[1, T]` packed or `[B, n]`)."""

    def __init__(self, model: nn.Module):
        decoder = model.get_decoder()
        config = decoder.config
        self.embed, self.rotary = decoder.embed_tokens, decoder.rotary_emb
        self.norm, self.eps = decoder.norm.weight, decoder.norm.variance_epsilon
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = [NativeLayer(layer) for layer in decoder.layers[: config.num_hidden_layers]]

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, shape: tuple[int, int], step: SlotStep,
                 cache: SlotKVCache) -> torch.Tensor:
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        half, qk_heads = dim // 2, heads + kv_heads
        hidden = self.embed(ids)  # [T, hidden]
        tokens = hidden.shape[0]
        cos, sin = self.rotary(hidden.view(*shape, -1), positions.view(shape))  # as the model's forward calls it
        cos = cos.reshape(tokens, 1, dim)
        sin = sin.reshape(tokens, 1, dim)
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)  # rotate-half's sign, carried by sin
        for i, layer in enumerate(self.layers):
            x = rms_norm(hidden, layer.norm_in, layer.eps_in)
            if layer.qkv is not None:
                qkv = layer.qkv(x)
                qk = qkv[:, : qk_heads * dim].view(tokens, qk_heads, dim)
                value = qkv[:, qk_heads * dim:].view(tokens, kv_heads, dim)
            else:
                qk = torch.cat((layer.q_proj(x).view(tokens, heads, dim), layer.k_proj(x).view(tokens, kv_heads, dim)), 1)
                value = layer.v_proj(x).view(tokens, kv_heads, dim)
            qk = qk * cos + torch.cat((qk[..., half:], qk[..., :half]), -1) * sin
            keys, values = cache.write(i, qk[:, heads:], value)
            out = slot_attend(step, qk[:, :heads], keys, values, layer.scaling)
            hidden = hidden + layer.o_proj(out.reshape(tokens, heads * dim))
            x = rms_norm(hidden, layer.norm_post, layer.eps_post)
            if layer.gate_up is not None:
                gate_up = layer.gate_up(x)
                gated = layer.act(gate_up[:, : layer.gate_width]) * gate_up[:, layer.gate_width:]
            else:
                gated = layer.act(layer.gate_proj(x)) * layer.up_proj(x)
            hidden = hidden + layer.down_proj(gated)
        return rms_norm(hidden, self.norm, self.eps)


def native_forward(model: nn.Module) -> NativeForward | None:
    """The native forward for `model`, or None unless its decoder, layers, attention, MLP, norms and
    rotary embedding are exactly transformers' Llama classes."""
    from transformers.models.llama import modeling_llama as llama

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if type(decoder) is not llama.LlamaModel or type(decoder.rotary_emb) is not llama.LlamaRotaryEmbedding:
        return None
    norms = [decoder.norm] + [n for layer in decoder.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    if any(type(n) is not llama.LlamaRMSNorm for n in norms):
        return None
    if any(type(layer) is not llama.LlamaDecoderLayer or type(layer.self_attn) is not llama.LlamaAttention
           or type(layer.mlp) is not llama.LlamaMLP for layer in decoder.layers):
        return None
    return NativeForward(model)
