"""oneDNN-prepacked linear layers for float32 models on CPU (what vLLM's CPU build does).

torch's `F.linear` on CPU takes a matrix-vector path for one token and a GEMM path for more; at 2-3
tokens that path costs 1.6-2x the one-token time on SmolLM2's shapes, and every call re-reads a
row-major weight. `pack_linears` rewrites a loaded model in place (the ops are those torch.compile's
CPU freezing pass uses: `mkldnn._reorder_linear_weight` once, `mkldnn._linear_pointwise` per call):

- q/k/v projections become one prepacked GEMM over their concatenated weights, gate/up another
  (vLLM's QKVParallelLinear and MergedColumnParallelLinear): fewer, larger passes over memory;
- every other projection, and the LM head, is prepacked alone.

The model's own forward code is untouched: `q_proj`, `k_proj` and `v_proj` become `SliceOf` views of
one `SharedProjection`, which computes the fused GEMM once per input tensor and hands each view its
columns. Outputs agree with `F.linear` to float32 rounding (neither is batch-invariant: a row's
result depends on how many rows share the call, in both). Measured in `experiments/profile_step.py`.

`pack_linears(model, kind="vllm")` builds the same fused layout on vLLM's oneDNN GEMM instead
(`VllmLinear`, what vLLM's CPU build runs for these shapes; needs the `[vllm]` extra): a prepacked
matmul primitive per weight, called without torch's linear dispatch (measured faster per call here;
the native-vllm forward, `decoding.vllm_forward`, calls it directly).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from nightjar_rl.vllm_kernels import load_kernels

PACKED_FOR_ROWS = 16
MIN_PACKED_ELEMENTS = 1 << 16  # smaller weights (tiny test models) stay F.linear: oneDNN's per-call
# conversions cost more than they save there (2x slower steps on the 64-wide tiny-random model)
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
VLLM_PRIMITIVE_CACHE = 32  # oneDNN primitives a VllmLinear keeps per row count seen (vLLM's own setting)


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x W^T + b` for `[T, in]` inputs, W prepacked by `mkldnn._reorder_linear_weight` (TorchScript-compatible:
    the native forward's scripted layer loop calls it)."""
    scalars: list[int | float | complex | None] = []  # the op's `Scalar?[]`
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", scalars, "")


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W reordered once into oneDNN's blocked layout (inference only). The layout
    is chosen for PACKED_FOR_ROWS rows, which measured fastest here for every row count from 1 to 80."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous(), PACKED_FOR_ROWS)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32: `can_pack` packs no other model
        out = packed_linear(x.reshape(-1, self.in_features), self.packed_weight, self.bias)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class VllmLinear(nn.Module):
    """`y = x W^T + b` through vLLM's oneDNN GEMM (`onednn_mm`), W prepacked once into its matmul
    primitive (inference only; float32 CPU). `gemm` is the bare call on `[T, in]` inputs."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        load_kernels("linears 'vllm'")
        from vllm import _custom_ops

        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.handler = _custom_ops.create_onednn_mm(weight.detach().float().t(), VLLM_PRIMITIVE_CACHE)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous(), persistent=False)

    def gemm(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], self.out_features), dtype=x.dtype)
        torch.ops._C.onednn_mm(out, x, self.bias, self.handler.handler_tensor)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gemm(x.reshape(-1, self.in_features).contiguous())
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


GEMM_KINDS = {"packed": PackedLinear, "vllm": VllmLinear}  # pack_linears' `kind`: the module each linear becomes


class SharedProjection(nn.Module):
    """Several projections of the same input as one packed GEMM, computed once per input tensor: the
    output is kept until each of the `len(linears)` views has taken its columns, then dropped (a
    prefill's activations are not held between layers)."""

    def __init__(self, linears: list[nn.Linear], kind: str = "packed"):
        super().__init__()
        weight = torch.cat([lin.weight for lin in linears])
        biases = [lin.bias for lin in linears]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else torch.zeros(lin.out_features) for b, lin in zip(biases, linears)])
        self.linear = GEMM_KINDS[kind](weight, bias)
        self.views = len(linears)
        self._cache: tuple[torch.Tensor, torch.Tensor, int] | None = None  # (input, output, views served)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one tuple, read and written whole: two threads sharing the layers (an early-exit draft)
        # can only cost a recomputation, never hand one input's output to another
        cache = self._cache
        if cache is not None and cache[0] is x:  # the views of one forward take the same tensor
            out, served = cache[1], cache[2] + 1
        else:
            out, served = self.linear(x), 1
        self._cache = None if served >= self.views else (x, out, served)
        return out


class SliceOf(nn.Module):
    """Columns [start, stop) of a `SharedProjection`'s output: one of the fused projections."""

    def __init__(self, shared: SharedProjection, start: int, stop: int):
        super().__init__()
        self.shared, self.start, self.stop = shared, start, stop
        self.in_features, self.out_features = shared.linear.in_features, stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(x)[..., self.start:self.stop]


def fused_gemm(projections: tuple[nn.Module, ...]) -> nn.Module | None:
    """The one GEMM module behind `projections` when they are, in order, the consecutive column slices
    that make up one whole `SharedProjection` (so one call computes them all), else None."""
    if not projections or not all(isinstance(p, SliceOf) for p in projections):
        return None
    shared = projections[0].shared
    bounds = [(p.start, p.stop) for p in projections]
    whole = bounds[0][0] == 0 and bounds[-1][1] == shared.linear.out_features
    if whole and all(p.shared is shared for p in projections) and all(a[1] == b[0] for a, b in pairwise(bounds)):
        return shared.linear
    return None


def can_pack(model: nn.Module) -> bool:
    """Packing applies to float32 models on CPU with oneDNN available."""
    param = next(model.parameters(), None)
    return (param is not None and param.device.type == "cpu" and param.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack_linears(model: nn.Module, min_elements: int = MIN_PACKED_ELEMENTS, kind: str = "packed") -> int:
    """Rewrite `model`'s `nn.Linear`s of at least `min_elements` weights (a fused group: together) in
    place as described in the module docstring, as `GEMM_KINDS[kind]` modules; returns how many
    linears it replaced (0 when `can_pack` is false). A tied LM head keeps its embedding dense."""
    if kind not in GEMM_KINDS:
        raise ValueError(f"kind must be one of {', '.join(GEMM_KINDS)}, got {kind!r}")
    if not can_pack(model):
        return 0
    gemm = GEMM_KINDS[kind]
    replaced = 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        for group in FUSED_GROUPS:
            linears = [children.get(name) for name in group]
            if (all(type(lin) is nn.Linear for lin in linears) and len({lin.in_features for lin in linears}) == 1
                    and sum(lin.weight.numel() for lin in linears) >= min_elements):
                shared, start = SharedProjection(linears, kind), 0
                for name, lin in zip(group, linears):
                    setattr(parent, name, SliceOf(shared, start, start + lin.out_features))
                    start += lin.out_features
                replaced += len(group)
        for name, child in parent.named_children():
            if type(child) is nn.Linear and child.weight.numel() >= min_elements:
                setattr(parent, name, gemm(child.weight, child.bias))
                replaced += 1
    return replaced
