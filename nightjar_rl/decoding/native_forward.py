"""A Llama-family decoder forward over the slot KV cache, run by nightjar-rl's own loop.

The model's own forward (transformers) spends a step's small-op time in its module machinery:
per-layer keyword plumbing, the attention interface lookup, the cache hook, a rotate-half per
projection. `NativeForward` runs the same ops on the same weights in the same order (so its hidden
states are bitwise those of the model's forward through `slot_attention`), with less around them:

- the fused q/k/v and gate/up GEMMs of packed linears (`cpu_linears.SharedProjection`) are called
  once per layer directly, their outputs split by views;
- rotary embedding is applied to the queries and keys of a layer together: `x*cos + rot(x)*sin'`,
  where `rot` swaps the two halves and `sin'` carries rotate-half's sign (negation is exact, so each
  element is the product and sum transformers computes);
- keys and values are written straight into the slot cache; attention is `slot_attention`'s.

`native_forward(model)` returns None for models whose layers it does not know; the runner then uses
the model's own forward.
"""

from __future__ import annotations

import torch
from torch import nn

from nightjar_rl.cpu_linears import SliceOf

SUPPORTED_LAYERS = ("LlamaDecoderLayer",)  # decoder layer classes whose forward this reproduces


class NativeLayer:
    """One decoder layer's weights and modules, as the native forward reads them."""

    def __init__(self, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm_in, self.eps_in = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.norm_post, self.eps_post = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
        self.qkv = _shared(attn.q_proj, attn.k_proj, attn.v_proj)  # one GEMM, or None: three linears
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.gate_up = _shared(mlp.gate_proj, mlp.up_proj)
        self.gate_proj, self.up_proj, self.down_proj, self.act = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn
        self.scaling = attn.scaling


def _shared(*projections: nn.Module) -> nn.Module | None:
    """The packed GEMM behind `projections` when they are consecutive column slices of one
    `SharedProjection`, in order and covering it; else None."""
    if not all(isinstance(p, SliceOf) for p in projections):
        return None
    shared = projections[0].shared
    bounds = [(p.start, p.stop) for p in projections]
    if any(p.shared is not shared for p in projections) or bounds[0][0] != 0 or bounds[-1][1] != shared.linear.out_features:
        return None
    if any(a[1] != b[0] for a, b in zip(bounds, bounds[1:])):
        return None
    return shared.linear


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm in transformers' op order (float32 models: its dtype casts are no-ops)."""
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return weight * (hidden * torch.rsqrt(variance + eps))


class NativeForward:
    """`__call__(ids, positions, shape, step, cache)` -> the final-normed hidden states `[T, hidden]` of
    the T fed tokens (flattened in the order `shape` lays them out: `[1, T]` packed or `[B, n]`)."""

    def __init__(self, model: nn.Module):
        decoder = model.get_decoder()
        config = decoder.config
        self.embed, self.rotary = decoder.embed_tokens, decoder.rotary_emb
        self.norm, self.eps = decoder.norm.weight, decoder.norm.variance_epsilon
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = [NativeLayer(layer) for layer in decoder.layers[: config.num_hidden_layers]]

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, shape: tuple[int, int], step, cache) -> torch.Tensor:
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        half, qk_heads = dim // 2, heads + kv_heads
        hidden = self.embed(ids)  # [T, hidden]
        tokens = hidden.shape[0]
        cos, sin = self.rotary(hidden.view(*shape, -1), positions.view(shape))  # as the model's forward calls it
        cos = cos.reshape(tokens, 1, dim)
        sin = sin.reshape(tokens, 1, dim)
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)  # rotate-half's sign, carried by sin
        b, n, g = step.batch, step.n, step.groups
        start, batch, index, kv_len = cache.window
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
            query, key = qk[:, :heads], qk[:, heads:]
            keys = cache.keys[i][start: start + batch]
            values = cache.values[i][start: start + batch]
            if isinstance(index, slice):  # one row: consecutive entries
                keys[0, :, index] = key.transpose(0, 1)
                values[0, :, index] = value.transpose(0, 1)
            else:
                keys[index] = key
                values[index] = value
            if step.packed:  # [T, H, d] -> [B, n, H, d] (positions no row feeds stay zero, never read)
                padded = query.new_zeros((b, n, heads, dim))
                padded[step.row, step.col] = query
                query = padded
            grouped = query.view(b, n, heads, dim).permute(0, 2, 1, 3).reshape(b, kv_heads, g * n, dim)
            out = torch.nn.functional.scaled_dot_product_attention(
                grouped, keys[:, :, :kv_len], values[:, :, :kv_len], attn_mask=step.mask, scale=layer.scaling)
            out = out.view(b, heads, n, dim).transpose(1, 2)  # [B, n, H, d]
            out = out[step.row, step.col] if step.packed else out
            hidden = hidden + layer.o_proj(out.reshape(tokens, heads * dim))
            x = rms_norm(hidden, layer.norm_post, layer.eps_post)
            if layer.gate_up is not None:
                gate_up = layer.gate_up(x)
                width = gate_up.shape[-1] // 2
                gated = layer.act(gate_up[:, :width]) * gate_up[:, width:]
            else:
                gated = layer.act(layer.gate_proj(x)) * layer.up_proj(x)
            hidden = hidden + layer.down_proj(gated)
        return rms_norm(hidden, self.norm, self.eps)


def native_forward(model: nn.Module) -> NativeForward | None:
    """The native forward for `model`, or None when its decoder layers are not ones it reproduces."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if decoder is None or not layers or not hasattr(decoder, "rotary_emb"):
        return None
    if any(type(layer).__name__ not in SUPPORTED_LAYERS for layer in layers):
        return None
    if type(decoder.norm).__name__ != "LlamaRMSNorm" or any(
            type(layer.input_layernorm).__name__ != "LlamaRMSNorm" for layer in layers):
        return None
    return NativeForward(model)
