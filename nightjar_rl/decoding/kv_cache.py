"""A slot-based KV cache that lets every row of a batch sit at its own length.

Each request owns one slot: a `[heads, capacity, head_dim]` stretch per layer. The engine keeps the
running rows in consecutive slots, so a forward pass attends over a view (no copy) of
`[slots, heads, :kv_len, head_dim]`. A row's length lives in the engine, not here: rolling back
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
    """`keys_transposed`: store each slot's keys head_dim-major (vLLM's CPU kernel layout,
    `paged_attention`); `keys[i]` is then a transposed view with the same `[slots, heads, capacity, dim]`
    indexing, so nothing that reads or writes through it changes."""

    def __init__(self, config, num_slots: int, capacity: int, dtype: torch.dtype, device: torch.device | str,
                 keys_transposed: bool = False):
        super().__init__(layers=[])
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        num_layers = text_config.num_hidden_layers
        kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        shape = (num_slots, kv_heads, capacity, head_dim)
        if keys_transposed:
            stored = (num_slots, kv_heads, head_dim, capacity)
            self.keys = [torch.zeros(stored, dtype=dtype, device=device).transpose(2, 3) for _ in range(num_layers)]
        else:
            self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.capacity = capacity
        self._window: SlotWindow | None = None

    @property
    def bytes_per_token(self) -> int:
        k = self.keys[0]
        return 2 * len(self.keys) * k.shape[1] * k.shape[3] * k.element_size()

    def set_window(self, slot_start: int, rows: torch.Tensor, positions: torch.Tensor, kv_len: int, batch: int) -> None:
        """Route the next forward over rows `slot_start..slot_start+batch`: its t-th token (in the order
        the model sees them, row after row) is written to row `rows[t]` at entry `positions[t]`."""
        first = int(positions[0]) if batch == 1 else -1  # one row feeds consecutive entries: a plain slice
        self._window = SlotWindow(slot_start, batch, kv_len, first, rows, positions)

    @property
    def window(self) -> SlotWindow:
        """Where the next forward writes and what it reads (see `set_window`)."""
        if self._window is None:
            raise RuntimeError("SlotKVCache.set_window must be called before a forward pass")
        return self._window

    def write(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's new keys and values (`[T, heads, dim]`: the forward's T tokens in the order
        the model sees them) into their slots; return the rows' cache views `[batch, heads, kv_len, dim]`."""
        return write_window(self.keys[layer_idx], self.values[layer_idx], key, value, self.window)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """transformers' cache hook: `write` for `[b, heads, s, dim]` keys and values (b * s tokens, row
        after row)."""
        heads, dim = key_states.shape[1], key_states.shape[3]
        return self.write(layer_idx, key_states.transpose(1, 2).reshape(-1, heads, dim),
                          value_states.transpose(1, 2).reshape(-1, heads, dim))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self._window is None else self._window.kv_len

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cache entries of slot `src` into slot `dst` (compaction)."""
        if src == dst or length <= 0:
            return
        for k, v in zip(self.keys, self.values):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def copy_within(self, slots: list[int], src: list[int], dst: list[int]) -> None:
        """Copy entry `src[i]` of slot `slots[i]` to entry `dst[i]` of the same slot, in every layer
        (token-tree KV repair). All reads happen before any write, so moves may chain."""
        if not slots:
            return
        if not len(slots) == len(src) == len(dst):
            raise ValueError("slots, src and dst must have the same length")
        device = self.keys[0].device
        s = torch.tensor(slots, dtype=torch.long, device=device)
        a = torch.tensor(src, dtype=torch.long, device=device)
        b = torch.tensor(dst, dtype=torch.long, device=device)
        for k, v in zip(self.keys, self.values):
            k[s, :, b] = k[s, :, a]
            v[s, :, b] = v[s, :, a]
