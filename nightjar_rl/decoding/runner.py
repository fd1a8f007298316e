"""Run a causal LM over a ragged batch: each row feeds its own new tokens at its own offset."""

from __future__ import annotations

import torch

from nightjar_rl.decoding.kv_cache import SlotKVCache


class ModelRunner:
    """One model plus its slot KV cache. Rows are the consecutive slots `slot_start..slot_start+B`."""

    def __init__(self, model: torch.nn.Module, num_slots: int, capacity: int):
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache = SlotKVCache(model.config, num_slots, capacity, self.dtype, self.device)
        self._decoder = model.get_decoder()
        self._lm_head = model.get_output_embeddings()
        self._neg = torch.finfo(self.dtype).min

    @torch.inference_mode()
    def forward(
        self,
        slot_start: int,
        token_rows: list[list[int]],
        past_lens: list[int],
        last_only: bool = False,
    ) -> torch.Tensor:
        """Append `token_rows[i]` to row i (which already caches `past_lens[i]` tokens).

        Returns float32 logits `[B, n, V]` for every fed position (padded positions are garbage),
        or `[B, V]` at each row's last real token when `last_only`.
        """
        batch = len(token_rows)
        # an empty row feeds one dummy token at its next free position: harmless, it is never
        # counted as cached and is overwritten by the row's next real token
        lengths = torch.tensor([max(1, len(r)) for r in token_rows], device=self.device)
        n = int(lengths.max())
        ids = torch.zeros((batch, n), dtype=torch.long, device=self.device)
        for i, row in enumerate(token_rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        past = torch.tensor(past_lens, device=self.device)
        positions = past.unsqueeze(1) + torch.arange(n, device=self.device).unsqueeze(0)
        kv_len = int(max(past_lens)) + n
        # query at position p sees keys 0..p of its own row; everything else is masked
        key_pos = torch.arange(kv_len, device=self.device).view(1, 1, 1, kv_len)
        allowed = key_pos <= positions.view(batch, 1, n, 1)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill_(~allowed, self._neg)
        self.cache.set_window(slot_start, positions, kv_len)
        hidden = self._decoder(
            input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=self.cache, use_cache=True
        ).last_hidden_state
        if last_only:
            hidden = hidden[torch.arange(batch, device=self.device), lengths - 1]
        return self._lm_head(hidden).float()
