"""Attention over the slot KV cache for one runner forward: what every layer needs to know about the
forward (`SlotStep`: its attention parts, built once) and the attention itself (`attend_parts`, which the
native forward's layer loop calls with the step's parts; `slot_attend` unpacks a `SlotStep` into it for
the attention function the runner registers with transformers)."""

# no `from __future__ import annotations`: TorchScript reads AttentionPart's field types from the class
from dataclasses import dataclass
from typing import NamedTuple

import torch


class AttentionPart(NamedTuple):
    """Consecutive rows `row_start..row_start+batch` of a forward that attend in one call, and their tokens
    `token_start..token_start+tokens` of the flattened batch. Token t of the part belongs to part row
    `row[t]` at fed index `col[t]`; `n` is the part's widest row; the part reads its rows' cache views up
    to `kv_len`; `mask` is `[batch, 1, groups * n, kv_len]`, additive (0 or -inf; query rows ordered
    group-major, as the grouped queries are); `packed`: the part's rows have different widths, so its
    queries are scattered to `[batch, n]` for attention (else its tokens are exactly `[batch, n]`).
    TorchScript-compatible (a NamedTuple of plain fields)."""

    row_start: int
    batch: int
    token_start: int
    tokens: int
    n: int
    kv_len: int
    row: torch.Tensor
    col: torch.Tensor
    mask: torch.Tensor
    packed: bool


@dataclass
class SlotStep:
    """What attention needs to know about one runner forward (built once, read by every layer): its
    parts, in token order. One part is the whole batch (a decoding round, a prefill); a unified step
    (`verify_layout: mixed`) attends its decoding rows and each group of prompts apart, so a one-token
    row is not padded to a prompt's width while the projections and MLPs still see every token at once."""

    groups: int
    parts: list[AttentionPart]
    calls: int = 0


def slot_attend(step: SlotStep, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                scale: float | None) -> torch.Tensor:
    """Attention of a runner forward's T queries (`[T, H, d]`, in the model's token order) over the
    rows' cache views (`[B, kv_heads, kv_len, d]`); returns `[T, H, d]` (see `attend`)."""
    return attend_parts(query, keys, values, scale, step.parts, step.groups)


def attend_parts(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float | None,
                 parts: list[AttentionPart], groups: int) -> torch.Tensor:
    """`attend` for each part over its own rows' views, the outputs back in token order
    (TorchScript-compatible)."""
    if len(parts) == 1:
        p = parts[0]
        return attend(query, keys, values, scale, p.mask, p.row, p.col, p.batch, p.n, groups, p.packed)
    outs: list[torch.Tensor] = []
    for p in parts:
        first, last = p.row_start, p.row_start + p.batch
        outs.append(attend(query[p.token_start : p.token_start + p.tokens], keys[first:last, :, : p.kv_len],
                           values[first:last, :, : p.kv_len], scale, p.mask, p.row, p.col, p.batch, p.n, groups,
                           p.packed))
    return torch.cat(outs, 0)


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float | None,
           mask: torch.Tensor, row: torch.Tensor, col: torch.Tensor, batch: int, n: int, groups: int,
           packed: bool) -> torch.Tensor:
    """Attention of one part's queries (`[T, H, d]`) over its rows' views (`[B, kv_heads, kv_len, d]`),
    TorchScript-compatible. Queries are grouped per KV head (head h uses KV head h // g) into
    `[B, kv_heads, g * n, d]`; a packed part's are scattered to `[B, n]` first (positions no row feeds
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
