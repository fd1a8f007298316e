"""transformers' Llama decoder forward over the slot KV cache, run by nightjar-rl's own loop.

The model's own forward spends a step's small-op time in its module machinery: per-layer keyword
plumbing, the attention-interface lookup, the cache hook, a rotate-half per projection, and one Python
call per op. `NativeForward` runs the same ops on the same weights in the same order, so its hidden
states are bitwise those of the model's forward through the runner's `slot_attention` (any dtype),
with less around them:

- the layer loop is one function, `decoder_layers`, over plain tensors (each layer's weights as a
  `LayerSpec` tuple), compiled once with TorchScript for CPU models: its interpreter calls the same
  ATen kernels as eager PyTorch, without a Python round trip per op (TorchScript fuses nothing on CPU
  by default). TorchScript is deprecated in favour of `torch.compile`, which fuses and reorders ops
  (not bitwise) and needs a C++ toolchain. On other devices (TorchScript's GPU fuser would fuse
  element-wise ops, which rounds differently), if scripting fails, or with `model_forward:
  native-eager`, the same function runs as plain Python;
- the fused q/k/v and gate/up GEMMs of packed linears (`cpu_linears.SharedProjection`) are called
  once per layer directly, their outputs split by views;
- rotary embedding is applied to a layer's queries and keys together: `x*cos + rot(x)*sin'`, where
  `rot` swaps the two halves and `sin'` carries rotate-half's sign (negation is exact, so each element
  is the product and sum transformers computes);
- keys and values go straight to `kv_cache.write_window`, attention is `attention.attend` (both shared
  with the transformers path).

`model_forward: native-vllm` runs the same layers on vLLM's CPU kernels instead (`vllm_forward`).

`native_forward(model)` returns None unless every module it reproduces is exactly transformers' Llama
class with SiLU and plain or packed linears (anything else falls back to the model's own forward).
The weights are taken when the runner is built (parameters reassigned later are not seen), and module
hooks on the layers do not run.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch
from torch import nn
from transformers.activations import SiLUActivation

from nightjar_rl.cpu_linears import PackedLinear, fused_gemm, packed_linear
from nightjar_rl.decoding.attention import AttentionPart, SlotStep, attend_parts
from nightjar_rl.decoding.kv_cache import SlotKVCache, SlotWindow, write_window

log = logging.getLogger(__name__)
SILU = (nn.SiLU, SiLUActivation)  # activation modules that compute exactly `F.silu`

# (weight, bias, packed): packed weights are oneDNN's (`PackedLinear`), others `nn.Linear`'s own
LinearSpec = tuple[torch.Tensor, torch.Tensor | None, bool]
# (input norm weight, eps, q/k/v: one fused or three, o, post-attention norm weight, eps,
#  gate/up: one fused or two, down, gate width, attention scaling)
LayerSpec = tuple[torch.Tensor, float, list[LinearSpec], LinearSpec, torch.Tensor, float, list[LinearSpec], LinearSpec, int,
                  float]


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaRMSNorm`'s forward: normalised in float32, cast back, then scaled (the casts are no-ops
    for a float32 model)."""
    normed = hidden.to(torch.float32)
    normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(hidden.dtype)


def linear(x: torch.Tensor, spec: LinearSpec) -> torch.Tensor:
    """What the module behind `spec` computes for `[T, in]` inputs (`PackedLinear` or `nn.Linear`)."""
    weight, bias, packed = spec
    if packed:
        return packed_linear(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def decoder_layers(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layers: list[LayerSpec],
                   norm: torch.Tensor, eps: float, layer_keys: list[torch.Tensor], layer_values: list[torch.Tensor],
                   window: SlotWindow, parts: list[AttentionPart], groups: int, heads: int, kv_heads: int,
                   dim: int) -> torch.Tensor:
    """Every decoder layer, then the final norm, for the T fed tokens' embeddings `[T, hidden]`
    (`cos`/`sin` `[T, 1, dim]`, `sin` carrying rotate-half's sign; the attention parts as in
    `SlotStep`). TorchScript-compatible: scripted by `NativeForward`."""
    tokens = hidden.shape[0]
    half = dim // 2
    qk_heads = heads + kv_heads
    for i, (norm_in, eps_in, qkv_specs, o_spec, norm_post, eps_post, gate_up_specs, down_spec, gate_width,
            scaling) in enumerate(layers):
        x = rms_norm(hidden, norm_in, eps_in)
        if len(qkv_specs) == 1:
            qkv = linear(x, qkv_specs[0])
            qk = qkv[:, : qk_heads * dim].view(tokens, qk_heads, dim)
            value = qkv[:, qk_heads * dim:].view(tokens, kv_heads, dim)
        else:
            qk = torch.cat((linear(x, qkv_specs[0]).view(tokens, heads, dim),
                            linear(x, qkv_specs[1]).view(tokens, kv_heads, dim)), 1)
            value = linear(x, qkv_specs[2]).view(tokens, kv_heads, dim)
        qk = qk * cos + torch.cat((qk[..., half:], qk[..., :half]), -1) * sin
        keys, values = write_window(layer_keys[i], layer_values[i], qk[:, heads:], value, window)
        out = attend_parts(qk[:, :heads], keys, values, scaling, parts, groups)
        hidden = hidden + linear(out.reshape(tokens, heads * dim), o_spec)
        x = rms_norm(hidden, norm_post, eps_post)
        if len(gate_up_specs) == 1:
            gate_up = linear(x, gate_up_specs[0])
            gated = torch.nn.functional.silu(gate_up[:, :gate_width]) * gate_up[:, gate_width:]
        else:
            gated = torch.nn.functional.silu(linear(x, gate_up_specs[0])) * linear(x, gate_up_specs[1])
        hidden = hidden + linear(gated, down_spec)
    return rms_norm(hidden, norm, eps)


@functools.cache
def scripted_decoder_layers():
    """`decoder_layers` compiled by TorchScript (once per process), or the plain function if scripting
    fails here (then logged once)."""
    try:
        with warnings.catch_warnings():  # the deprecation is known and chosen (module docstring)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=DeprecationWarning)
            return torch.jit.script(decoder_layers)
    except Exception as exc:  # noqa: BLE001 - the same function runs as Python
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        log.warning("TorchScript could not compile the native decoder loop (%s: %s); it runs as Python",
                    type(exc).__name__, first)
        return decoder_layers


def _linear_spec(module: nn.Module) -> LinearSpec | None:
    if type(module) is PackedLinear:
        return module.packed_weight, module.bias, True
    if type(module) is nn.Linear:
        return module.weight, module.bias, False
    return None


def _specs(*projections: nn.Module) -> list[LinearSpec] | None:
    """One spec for the packed GEMM behind `projections` when they are, in order, the consecutive
    column slices that make up one `SharedProjection`; else one per projection (None when one of them
    is neither a plain nor a packed linear)."""
    fused = fused_gemm(projections)
    if fused is not None:
        return [_linear_spec(fused)]
    specs = [_linear_spec(p) for p in projections]
    return None if any(s is None for s in specs) else specs


def layer_spec(layer: nn.Module) -> LayerSpec | None:
    """One decoder layer's weights as `decoder_layers` reads them (taken when the runner is built:
    modules or parameters swapped in later are not seen), or None when the loop cannot reproduce it."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = _specs(attn.q_proj, attn.k_proj, attn.v_proj)
    o_proj, down = _linear_spec(attn.o_proj), _linear_spec(mlp.down_proj)
    gate_up = _specs(mlp.gate_proj, mlp.up_proj)
    if qkv is None or gate_up is None or o_proj is None or down is None or type(mlp.act_fn) not in SILU:
        return None
    return (layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon), qkv, o_proj,
            layer.post_attention_layernorm.weight, float(layer.post_attention_layernorm.variance_epsilon), gate_up,
            down, int(mlp.gate_proj.out_features), float(attn.scaling))


class NativeForward:
    """`__call__(ids, positions, shape, step, cache)` -> the final-normed hidden states `[T, hidden]` of
    the T fed tokens (`shape`: how the model's forward would lay them out, `[1, T]` packed or `[B, n]`).
    `script`: run the layer loop through TorchScript (`scripted_decoder_layers`; CPU models only) or as
    Python; `scripted` says which runs."""

    def __init__(self, model: nn.Module, layers: list[LayerSpec], script: bool = True):
        decoder = model.get_decoder()
        config = decoder.config
        self.embed, self.rotary = decoder.embed_tokens, decoder.rotary_emb
        self.norm, self.eps = decoder.norm.weight, float(decoder.norm.variance_epsilon)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = layers
        on_cpu = decoder.embed_tokens.weight.device.type == "cpu"
        self.run_layers = scripted_decoder_layers() if script and on_cpu else decoder_layers
        self.scripted = self.run_layers is not decoder_layers

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, shape: tuple[int, int], step: SlotStep,
                 cache: SlotKVCache) -> torch.Tensor:
        dim = self.head_dim
        half = dim // 2
        hidden = self.embed(ids)  # [T, hidden]
        tokens = hidden.shape[0]
        cos, sin = self.rotary(hidden.view(*shape, -1), positions.view(shape))  # as the model's forward calls it
        cos = cos.reshape(tokens, 1, dim)
        sin = sin.reshape(tokens, 1, dim)
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)  # rotate-half's sign, carried by sin
        return self.run_layers(hidden, cos, sin, self.layers, self.norm, self.eps, cache.keys, cache.values,
                               cache.window, step.parts, step.groups, self.heads, self.kv_heads, dim)


def llama_decoder(model: nn.Module) -> nn.Module | None:
    """`model`'s decoder when it, its layers, attention, MLPs, norms and rotary embedding are exactly
    transformers' Llama classes (what the native loops reproduce), else None."""
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
    return decoder


def native_forward(model: nn.Module, script: bool = True) -> NativeForward | None:
    """The native forward for `model`, or None unless its decoder, layers, attention, MLP, norms and
    rotary embedding are exactly transformers' Llama classes, with SiLU and plain or packed linears."""
    decoder = llama_decoder(model)
    if decoder is None:
        return None
    specs = [layer_spec(layer) for layer in decoder.layers[: decoder.config.num_hidden_layers]]
    if any(s is None for s in specs):
        return None
    return NativeForward(model, specs, script=script)
