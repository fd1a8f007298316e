"""The slot KV cache's two layouts (decoding/kv_cache.py): keys as values are, or paged in blocks as vLLM's
CPU kernels read them (`key_block`). Addresses by hand; writes, reads, compaction and token-tree repair
leave the paged cache's rows as they leave the plain one's. Pure torch: vLLM's kernels are tested over
the same cache in tests/test_paged_attention.py."""

from __future__ import annotations

import pytest
import torch

from nightjar_rl.decoding.kv_cache import SlotKVCache
from nightjar_rl.models import tiny_config

CONFIG = tiny_config()  # 4 heads, 2 KV heads of 16 dims, 4 layers (the tiny test model's)


def _cache(key_block: int, slots: int = 3, capacity: int = 64) -> SlotKVCache:
    return SlotKVCache(CONFIG, slots, capacity, torch.float32, "cpu", key_block=key_block)


def test_paged_addresses_by_hand():
    """Slots of 64 entries in blocks of 32, 2 KV heads of 16 dims: slot s's blocks are s * 2 * 2 + (0, 1);
    entry p of slot s is cache slot s * 2 * 64 + p; block j of head h starts (j * 32 + h * 64) * 16 elements
    into a layer's storage, and holds its keys head_dim-major."""
    cache = _cache(32)
    assert (cache.kv_heads, cache.keys[0].shape) == (2, (3, 2, 2, 32, 16))
    assert cache.block_table(1, 2).tolist() == [[4, 5], [8, 9]]
    cache.set_window(1, torch.tensor([0, 0, 1, 1, 1]), torch.tensor([5, 31, 30, 31, 32]), 33, 2)
    assert cache.slot_mapping.tolist() == [128 + 5, 128 + 31, 256 + 30, 256 + 31, 256 + 32]
    assert cache.slot_mapping.dtype == torch.int64
    keys, values = cache.paged_layer(0)
    assert keys.shape == values.shape == (3 * 2 * 2 - 2, 2, 32, 16)  # the last slot's last head ends the storage
    assert keys.stride() == values.stride() == (32 * 16, 64 * 16, 16, 1)
    cache.keys[0][2, 1, 1, 3, 7] = 1.0  # slot 2, head 1, entry 32 + 3, dim 7
    storage = cache.keys[0].transpose(3, 4).reshape(-1)
    assert storage.nonzero().view(-1).tolist() == [(2 * 2 * 2 + 1) * 32 * 16 + 1 * 64 * 16 + 7 * 32 + 3]
    assert keys[9, 1].reshape(-1)[7 * 32 + 3] == 1.0  # block 2 * 2 * 2 + 1 as the kernels read it
    with pytest.raises(ValueError, match="must divide the capacity"):
        _cache(48)
    with pytest.raises(RuntimeError, match="needs a paged cache"):
        _cache(0).paged_layer(0)


@pytest.mark.parametrize("key_block", [16, 32, 64])
def test_paged_rows_read_what_the_plain_cache_reads(key_block):
    """Writes (ragged rows across block boundaries, then one row's consecutive entries), compaction
    (`move_slot`, a partial last block) and token-tree repair (`copy_within`) leave the rows that
    `rows_kv` reads, and what `write` returns, as the plain layout's."""
    plain, paged = _cache(0), _cache(key_block)
    gen = torch.Generator().manual_seed(1)
    key, value = torch.randn(3 * 50, 2, 16, generator=gen), torch.randn(3 * 50, 2, 16, generator=gen)
    one_key, one_value = torch.randn(7, 2, 16, generator=gen), torch.randn(7, 2, 16, generator=gen)
    results = []
    for cache in (plain, paged):
        cache.set_window(0, torch.arange(3).repeat_interleave(50), torch.arange(50).repeat(3), 50, 3)
        written = [t.clone() for t in cache.write(0, key, value)]
        cache.move_slot(2, 0, 40)
        cache.copy_within([1, 1, 0], [33, 34, 2], [30, 31, 35])
        cache.set_window(1, torch.zeros(7, dtype=torch.long), torch.arange(50, 57), 57, 1)
        results.append([*written, *(t.clone() for t in cache.write(0, one_key, one_value))])
        cache.set_window(0, torch.arange(3), torch.full((3,), 56), 57, 3)
        results[-1] += cache.rows_kv(0)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
