"""Attention over the slot KV cache for one runner forward: what every layer needs to know about the
forward (`SlotStep`, built once) and the attention itself (`attend`, which the native forward's layer
loop calls with the step's fields; `slot_attend` unpacks a `SlotStep` into it for the attention
function the runner registers with transformers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SlotStep:
    """What attention needs to know about one runner forward (built once, read by every layer).

    Token t of the flattened batch belongs to row `row[t]` at fed index `col[t]`; `mask` is
    `[B, 1, groups * n, kv_len]`, additive (0 or -inf; query rows ordered group-major, as the grouped
    queries are)."""

    batch: int
    n: int
    groups: int
    row: torch.Tensor
    col: torch.Tensor
    mask: torch.Tensor
    packed: bool
    calls: int = 0


def slot_attend(step: SlotStep, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                scale: float | None) -> torch.Tensor:
    """Attention of a runner forward's T queries (`[T, H, d]`, in the model's token order) over the
    rows' cache views (`[B, kv_heads, kv_len, d]`); returns `[T, H, d]` (see `attend`)."""
    return attend(query, keys, values, scale, step.mask, step.row, step.col, step.batch, step.n, step.groups,
                  step.packed)


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float | None,
           mask: torch.Tensor, row: torch.Tensor, col: torch.Tensor, batch: int, n: int, groups: int,
           packed: bool) -> torch.Tensor:
    """`slot_attend` with the step's fields apart (TorchScript-compatible: the native forward's scripted
    layer loop calls it). Queries are grouped per KV head (head h uses KV head h // g) into
    `[B, kv_heads, g * n, d]`; a packed batch's are scattered to `[B, n]` first (positions no row feeds
    stay zero and are never read)."""
    heads, dim = query.shape[1], query.shape[2]
    if packed:
        padded = query.new_zeros((batch, n, heads, dim))
        padded[row, col] = query
        query = padded
    grouped = query.view(batch, n, heads, dim).permute(0, 2, 1, 3).reshape(batch, heads // groups, groups * n, dim)
    out = torch.nn.functional.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scale)
    out = out.view(batch, heads, n, dim).transpose(1, 2)  # [B, n, H, d]
    return out[row, col] if packed else out.reshape(batch * n, heads, dim)
