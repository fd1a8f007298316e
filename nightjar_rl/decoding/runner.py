"""Run a causal LM over a ragged batch: each row feeds its own new tokens at its own offset."""

from __future__ import annotations

import inspect

import torch

from nightjar_rl.decoding.kv_cache import SlotKVCache
from nightjar_rl.decoding.timing import now


class ModelRunner:
    """One model plus its slot KV cache. Rows are the consecutive slots `slot_start..slot_start+B`."""

    def __init__(self, model: torch.nn.Module, num_slots: int, capacity: int):
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache = SlotKVCache(model.config, num_slots, capacity, self.dtype, self.device)
        self._decoder = model.get_decoder()
        self._lm_head = model.get_output_embeddings()
        # transformers 5.x names the cache argument `cache` (`past_key_values` is deprecated and warns)
        params = inspect.signature(self._decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._neg = torch.finfo(self.dtype).min
        self.model_time = 0.0  # seconds spent inside model forwards (decoder + head), cumulative

    @torch.inference_mode()
    def forward(
        self,
        slot_start: int,
        token_rows: list[list[int]],
        past_lens: list[int],
        last_only: bool = False,
        tree: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Append `token_rows[i]` to row i (which already caches `past_lens[i]` tokens).

        Returns float32 logits `[B, n, V]` for every fed position (padded positions are garbage),
        or `[B, V]` at each row's last real token when `last_only`.

        `tree` = (position offsets `[B, n]`, local mask `[B, n, n]` bool) feeds token trees: fed
        position j is still written at `past + j`, but its position id is `past + offsets[:, j]`
        and, among the fed positions, it sees only those its local mask allows (see decoding/tree.py).
        """
        batch = len(token_rows)
        if max(p + max(1, len(r)) for p, r in zip(past_lens, token_rows)) >= self.cache.capacity:
            raise ValueError(f"a row would exceed the KV cache capacity of {self.cache.capacity} tokens")
        # an empty row feeds one dummy token at its next free position: harmless, it is never
        # counted as cached and is overwritten by the row's next real token
        lengths = torch.tensor([max(1, len(r)) for r in token_rows], device=self.device)
        n = int(lengths.max())
        ids = torch.zeros((batch, n), dtype=torch.long, device=self.device)
        for i, row in enumerate(token_rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        past = torch.tensor(past_lens, device=self.device)
        steps = torch.arange(n, device=self.device).unsqueeze(0)
        # padding positions write to the last cache entry, which no real token ever occupies (the
        # engine keeps a margin), so a short row padded to a long one never overflows its slot
        positions = torch.where(steps < lengths.unsqueeze(1), past.unsqueeze(1) + steps, self.cache.capacity - 1)
        kv_len = int((past + lengths).max())  # attend over each row's real extent only
        # query at position p sees keys 0..p of its own row; everything else is masked
        key_pos = torch.arange(kv_len, device=self.device).view(1, 1, 1, kv_len)
        allowed = key_pos <= positions.view(batch, 1, n, 1)
        position_ids = positions
        if tree is not None:
            offsets, local = tree
            rel = key_pos - past.view(batch, 1, 1, 1)  # key index relative to the first fed position
            seen = torch.gather(local.unsqueeze(1), 3, rel.clamp(0, n - 1).expand(batch, 1, n, kv_len))
            allowed = (rel < 0) | ((rel < n) & seen)
            position_ids = past.unsqueeze(1) + offsets
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill_(~allowed, self._neg)
        self.cache.set_window(slot_start, positions, kv_len)
        t0 = now(self.device)
        hidden = self._decoder(
            input_ids=ids, position_ids=position_ids, attention_mask=mask, use_cache=True, **{self._cache_arg: self.cache}
        ).last_hidden_state
        if last_only:
            hidden = hidden[torch.arange(batch, device=self.device), lengths - 1]
        logits = self._lm_head(hidden).float()
        self.model_time += now(self.device) - t0
        return logits
