"""A slot-based KV cache that lets every row of a batch sit at its own length.

Each request owns one slot: a `[heads, capacity, head_dim]` stretch per layer. The engine keeps the
running rows in consecutive slots, so a forward pass attends over a view (no copy) of
`[slots, heads, :kv_len, head_dim]` (or, with keys paged in blocks for vLLM's kernels, over the
blocks in place, and SDPA over the rows' keys gathered out of them). A row's length lives in the engine, not here: rolling back
rejected draft tokens is just writing a smaller number, the stale entries are masked and later
overwritten. Plugs into Hugging Face models through the `Cache.update` hook.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers.cache_utils import Cache


class SlotWindow(NamedTuple):
    """One forward's view of the cache: rows `slot_start..slot_start+batch`, read up to `kv_len`; token t
    is written to row `rows[t]` at entry `positions[t]`, or, when `first >= 0` (one row), all tokens to
    the consecutive entries from `first`."""

    slot_start: int
    batch: int
    kv_len: int
    first: int
    rows: torch.Tensor
    positions: torch.Tensor


def write_window(layer_keys: torch.Tensor, layer_values: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 window: SlotWindow) -> tuple[torch.Tensor, torch.Tensor]:
    """Write a forward's keys and values (`[T, heads, dim]`) into one layer's cache where `window` says;
    return the rows' views `[batch, heads, kv_len, dim]`. TorchScript-compatible (the native forward's
    scripted layer loop calls it)."""
    keys = layer_keys[window.slot_start : window.slot_start + window.batch]
    values = layer_values[window.slot_start : window.slot_start + window.batch]
    first = window.first
    if first >= 0:
        tokens = key.shape[0]
        keys[0, :, first : first + tokens] = key.transpose(0, 1).to(keys.dtype)
        values[0, :, first : first + tokens] = value.transpose(0, 1).to(values.dtype)
    else:
        keys[window.rows, :, window.positions] = key.to(keys.dtype)
        values[window.rows, :, window.positions] = value.to(values.dtype)
    return keys[:, :, : window.kv_len], values[:, :, : window.kv_len]


class SlotKVCache(Cache):
    """`key_block`: store each slot's keys in blocks of `key_block` entries, each block head_dim-major
    (vLLM's CPU kernel layout, `paged_attention`), so that vLLM's kernels read a slot as `capacity /
    key_block` blocks of a paged cache (`paged_layer`, `block_table`) and its cache
    writer writes at `slot_mapping`. `keys[i]` is then `[slots, heads, blocks, key_block, dim]` (a view
    of the storage); `write`, `rows_kv`, `move_slot` and `copy_within` index either layout. 0: keys
    are stored like values, `[slots, heads, capacity, dim]`."""

    def __init__(self, config, num_slots: int, capacity: int, dtype: torch.dtype, device: torch.device | str,
                 key_block: int = 0):
        super().__init__(layers=[])
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        num_layers = text_config.num_hidden_layers
        kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        if key_block < 0 or (key_block and capacity % key_block):
            raise ValueError(f"key_block {key_block} must divide the capacity {capacity}")
        shape = (num_slots, kv_heads, capacity, head_dim)
        if key_block:
            stored = (num_slots, kv_heads, capacity // key_block, head_dim, key_block)
            self.keys = [torch.zeros(stored, dtype=dtype, device=device).transpose(3, 4) for _ in range(num_layers)]
        else:
            self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.kv_heads = kv_heads
        self.capacity = capacity
        self.key_block = key_block
        self._window: SlotWindow | None = None
        self._slot_mapping: torch.Tensor | None = None
        self._paged = ([self._blocks(k) for k in self.keys], [self._blocks(v) for v in self.values]) if key_block else None

    @property
    def bytes_per_token(self) -> int:
        k = self.keys[0]
        return 2 * len(self.keys) * k.shape[1] * k.shape[-1] * k.element_size()

    def set_window(self, slot_start: int, rows: torch.Tensor, positions: torch.Tensor, kv_len: int, batch: int) -> None:
        """Route the next forward over rows `slot_start..slot_start+batch`: its t-th token (in the order
        the model sees them, row after row) is written to row `rows[t]` at entry `positions[t]`."""
        first = int(positions[0]) if batch == 1 else -1  # one row feeds consecutive entries: a plain slice
        self._window = SlotWindow(slot_start, batch, kv_len, first, rows, positions)
        if self.key_block:
            self._slot_mapping = ((slot_start + rows) * self._slot_stride + positions).long()

    @property
    def window(self) -> SlotWindow:
        """Where the next forward writes and what it reads (see `set_window`)."""
        if self._window is None:
            raise RuntimeError("SlotKVCache.set_window must be called before a forward pass")
        return self._window

    # ---- the paged view (key_block set): a slot's blocks, as vLLM's CPU kernels address them --------------
    # Block j starts `j * key_block * dim` elements into a layer's storage and its heads `capacity * dim`
    # apart (`_blocks`), so slot s's c-th block is j = s * heads * blocks_per_slot + c (`block_table`), and
    # entry p of slot s is cache slot s * heads * capacity + p (`slot_mapping`: block p // key_block,
    # offset p % key_block); `_slot_stride` is that heads * capacity.
    @property
    def _slot_stride(self) -> int:
        return self.kv_heads * self.capacity

    @property
    def slot_mapping(self) -> torch.Tensor:
        """`[T]` int64: where the window's tokens go, as vLLM's cache writer addresses the paged view."""
        if self._slot_mapping is None:
            raise RuntimeError("slot_mapping needs a paged cache (key_block) and set_window")
        return self._slot_mapping

    def block_table(self, slot_start: int, batch: int) -> torch.Tensor:
        """`[batch, capacity / key_block]` int32: the blocks of slots `slot_start..slot_start+batch`."""
        blocks = self.capacity // self.key_block
        slots = torch.arange(slot_start, slot_start + batch, dtype=torch.int32).view(batch, 1)
        return slots * (self._slot_stride // self.key_block) + torch.arange(blocks, dtype=torch.int32)

    def paged_layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's keys and values as the kernels read them, `[blocks, heads, key_block, dim]` each
        (strided views of the storage; each key block's memory is `[dim, key_block]`)."""
        if self._paged is None:
            raise RuntimeError("paged_layer needs a paged cache (key_block)")
        return self._paged[0][layer_idx], self._paged[1][layer_idx]

    def _blocks(self, layer: torch.Tensor) -> torch.Tensor:
        slots, heads, dim, block = layer.shape[0], layer.shape[1], layer.shape[-1], self.key_block
        per_slot = self.capacity // block
        count = slots * heads * per_slot - (heads - 1) * per_slot  # the last slot's last head ends the storage
        return layer.as_strided((count, heads, block, dim), (block * dim, self.capacity * dim, dim, 1), 0)

    # ---- reads and writes through the row views --------------------------------------------------------
    def write(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's new keys and values (`[T, heads, dim]`: the forward's T tokens in the order
        the model sees them) into their slots; return the rows' keys and values `[batch, heads, kv_len,
        dim]` (`rows_kv`)."""
        if not self.key_block:
            return write_window(self.keys[layer_idx], self.values[layer_idx], key, value, self.window)
        w, dtype = self.window, self.values[0].dtype
        slots = w.slot_start + w.rows
        self.keys[layer_idx][(slots, slice(None), *self._entries(w.positions))] = key.to(dtype)
        self.values[layer_idx][slots, :, w.positions] = value.to(dtype)
        return self.rows_kv(layer_idx)

    def rows_kv(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's rows' keys and values `[batch, heads, kv_len, dim]`, as SDPA reads them (views;
        with `key_block`, the keys are gathered out of their blocks into a new tensor)."""
        w = self.window
        rows = slice(w.slot_start, w.slot_start + w.batch)
        values = self.values[layer_idx][rows, :, : w.kv_len]
        if not self.key_block:
            return self.keys[layer_idx][rows, :, : w.kv_len], values
        keys = self.keys[layer_idx][rows, :, : -(-w.kv_len // self.key_block)]
        return keys.reshape(w.batch, keys.shape[1], -1, keys.shape[-1])[:, :, : w.kv_len], values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """transformers' cache hook: `write` for `[b, heads, s, dim]` keys and values (b * s tokens, row
        after row)."""
        heads, dim = key_states.shape[1], key_states.shape[3]
        return self.write(layer_idx, key_states.transpose(1, 2).reshape(-1, heads, dim),
                          value_states.transpose(1, 2).reshape(-1, heads, dim))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self._window is None else self._window.kv_len

    def _entries(self, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The key index of cache entries at `positions`, in either layout."""
        block = self.key_block
        return (positions // block, positions % block) if block else (positions,)

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cache entries of slot `src` into slot `dst` (compaction)."""
        if src == dst or length <= 0:
            return
        for k, v in zip(self.keys, self.values):
            if self.key_block:  # whole blocks, then the first entries of the last one
                full, rest = divmod(length, self.key_block)
                k[dst, :, :full] = k[src, :, :full]
                if rest:
                    k[dst, :, full, :rest] = k[src, :, full, :rest]
            else:
                k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def copy_within(self, slots: list[int], src: list[int], dst: list[int]) -> None:
        """Copy entry `src[i]` of slot `slots[i]` to entry `dst[i]` of the same slot, in every layer
        (token-tree KV repair). All reads happen before any write, so moves may chain."""
        if not slots:
            return
        if not len(slots) == len(src) == len(dst):
            raise ValueError("slots, src and dst must have the same length")
        device = self.values[0].device
        s = torch.tensor(slots, dtype=torch.long, device=device)
        a = torch.tensor(src, dtype=torch.long, device=device)
        b = torch.tensor(dst, dtype=torch.long, device=device)
        for k, v in zip(self.keys, self.values):
            k[(s, slice(None), *self._entries(b))] = k[(s, slice(None), *self._entries(a))]
            v[s, :, b] = v[s, :, a]
