"""Attention over the slot KV cache for one runner forward: what every layer needs to know about the
forward (`SlotStep`, built once) and the attention itself (`slot_attend`), shared by the native
forward and the attention function the runner registers with transformers."""

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
    rows' cache views (`[B, kv_heads, kv_len, d]`); returns `[T, H, d]`. Queries are grouped per KV head
    (head h uses KV head h // g) into `[B, kv_heads, g * n, d]`; a packed batch's are scattered to
    `[B, n]` first (positions no row feeds stay zero and are never read)."""
    b, n, g = step.batch, step.n, step.groups
    heads, dim = query.shape[1], query.shape[2]
    if step.packed:
        padded = query.new_zeros((b, n, heads, dim))
        padded[step.row, step.col] = query
        query = padded
    grouped = query.view(b, n, heads, dim).permute(0, 2, 1, 3).reshape(b, heads // g, g * n, dim)
    out = torch.nn.functional.scaled_dot_product_attention(grouped, keys, values, attn_mask=step.mask, scale=scale)
    out = out.view(b, heads, n, dim).transpose(1, 2)  # [B, n, H, d]
    return out[step.row, step.col] if step.packed else out.reshape(b * n, heads, dim)
