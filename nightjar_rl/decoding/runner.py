"""Run a causal LM over a ragged batch: each row feeds its own new tokens at its own offset.

Two token layouts for one forward (`VERIFY_LAYOUTS`):

- padded: a `[B, n]` token batch, every row padded to the longest (padding is computed and thrown
  away), so a step costs B x n positions;
- packed (vLLM's layout): the rows' tokens back to back in one `[1, T]` batch, T = the rows' real
  tokens in all, so a step costs what it scores (rows that all feed the same number of tokens run
  as `[B, n]`: the same tokens in the same order, nothing padded, no scatter in attention).

Four ways to run the decoder (`MODEL_FORWARDS`): "native" (transformers' Llama models:
`native_forward.NativeForward`, the same ops with less around them, its layer loop compiled by
TorchScript), "native-vllm" (those layers on vLLM's CPU kernels, `vllm_forward`),
"native-eager" (that loop as Python) or "transformers" (the model's own forward, its attention routed
through `slot_attention`, registered with transformers' attention interface). Otherwise attention runs over the slot KV cache
(`SlotKVCache.write`) in `attention.attend`: queries are grouped per KV head (no `repeat_kv` copy
of the cache per layer), one additive mask `[B, 1, g*n, kv]` is built per forward, and a packed batch's
queries are scattered to `[B, n]` only inside attention (the projections, MLPs and the LM head see the
T real tokens).
"""

from __future__ import annotations

import inspect

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from nightjar_rl.decoding.attention import AttentionPart, SlotStep, slot_attend
from nightjar_rl.decoding.kv_cache import SlotKVCache
from nightjar_rl.decoding.layouts import DEFAULT_VERIFY_LAYOUT, MIXED_LAYOUT, VERIFY_LAYOUTS
from nightjar_rl.decoding.native_forward import native_forward
from nightjar_rl.decoding.paged_attention import default_kv_block, paged_step
from nightjar_rl.decoding.timing import now
from nightjar_rl.decoding.verify import Argmax, torch_argmax
from nightjar_rl.decoding.vllm_forward import vllm_argmax, vllm_forward
from nightjar_rl.model_names import DEFAULT_MODEL_FORWARD, KERNEL_TILE, MODEL_FORWARDS

SLOT_ATTENTION = "nightjar_slots"  # the attention implementation name the runner installs


def check_layout(layout: str) -> str:
    if layout not in VERIFY_LAYOUTS:
        hint = f" ({MIXED_LAYOUT!r} is an engine's step layout: its forwards are packed)" if layout == MIXED_LAYOUT else ""
        raise ValueError(f"verify_layout must be one of {', '.join(VERIFY_LAYOUTS)}, got {layout!r}{hint}")
    return layout


def slot_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                   slot_step: SlotStep | None = None, **kwargs):
    """transformers' attention interface: `slot_attend` for a runner forward (`[b, H, s, d]` queries,
    the cache views from `SlotKVCache.update`); anything else (e.g. `generate` on the same model) gets
    transformers' standard SDPA attention."""
    if slot_step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    slot_step.calls += 1
    b, heads, s, dim = query.shape
    out = slot_attend(slot_step, query.transpose(1, 2).reshape(-1, heads, dim), key, value, scaling)
    return out.view(b, s, heads, dim), None


AttentionInterface.register(SLOT_ATTENTION, slot_attention)
AttentionMaskInterface.register(SLOT_ATTENTION, sdpa_mask)  # for forwards outside the runner


class ModelRunner:
    """One model plus its slot KV cache. Rows are the consecutive slots `slot_start..slot_start+B`.

    `layout`: "padded" or "packed"; `model_forward`: one of `MODEL_FORWARDS` (see the module docstring).
    Outputs and cache contents are the same either way, only what is computed differs. `self.forward_kind`
    says which decoder forward runs ("transformers" when the model has no native one, "native-eager"
    when "native" could not be scripted: a model off the CPU, or TorchScript failing). `kv_block`
    ("native-vllm" only): the paged cache's block size (`paged_attention.default_kv_block` by default; the
    capacity is rounded up to whole blocks)."""

    def __init__(self, model: torch.nn.Module, num_slots: int, capacity: int,
                 layout: str = DEFAULT_VERIFY_LAYOUT, model_forward: str = DEFAULT_MODEL_FORWARD,
                 kv_block: int | None = None):
        if model_forward not in MODEL_FORWARDS:
            raise ValueError(f"model_forward must be one of {', '.join(MODEL_FORWARDS)}, got {model_forward!r}")
        self.model = model
        self.layout = check_layout(layout)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._paged_isa = None  # vLLM's CPU attention kernel (native-vllm: Llama models; others keep their forward)
        if kv_block is not None and model_forward != "native-vllm":
            raise ValueError(f"kv_block pages the cache for model_forward 'native-vllm', not {model_forward!r}")
        if model_forward == "native-vllm":
            if self.device.type != "cpu" or self.dtype != torch.float32:
                raise ValueError("model_forward 'native-vllm' runs vLLM's CPU kernels on float32 CPU models "
                                 f"only (the key layout is checked for that), got {self.dtype} on {self.device}")
            kv_block = kv_block or default_kv_block(capacity)
            if kv_block <= 0 or kv_block % KERNEL_TILE:
                raise ValueError(f"kv_block must be a positive multiple of {KERNEL_TILE} (the kernel's tile), got {kv_block}")
            capacity = -(-capacity // kv_block) * kv_block  # whole blocks
            self._native = vllm_forward(model, capacity, kv_block)
            if self._native is not None:
                self._paged_isa = self._native.isa
        else:
            self._native = None if model_forward == "transformers" else native_forward(
                model, script=model_forward != "native-eager")
        # what runs: "native" only when the loop is scripted (else its Python form, "native-eager")
        self.forward_kind = ("transformers" if self._native is None else "native-vllm" if self._paged_isa
                             else "native" if self._native.scripted else "native-eager")
        self.cache = SlotKVCache(model.config, num_slots, capacity, self.dtype, self.device,
                                 key_block=kv_block if self._paged_isa else 0)
        self.argmax: Argmax = vllm_argmax if self._paged_isa else torch_argmax  # greedy choice over the logits
        self._decoder = model.get_decoder()
        self._lm_head = model.get_output_embeddings()
        # transformers 5.x names the cache argument `cache` (`past_key_values` is deprecated and warns)
        params = inspect.signature(self._decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = text_config.num_attention_heads
        self._groups = heads // (getattr(text_config, "num_key_value_heads", None) or heads)
        self._layers = text_config.num_hidden_layers
        # every config the model's modules read (an early-exit draft's layers read the target's)
        configs = [model.config, text_config, *(getattr(m, "config", None) for m in model.modules())]
        for config in {id(c): c for c in configs if c is not None and hasattr(c, "_attn_implementation")}.values():
            config._attn_implementation = SLOT_ATTENTION
        self.model_time = 0.0  # seconds spent inside model forwards (decoder + head), cumulative

    @torch.inference_mode()
    def forward(
        self,
        slot_start: int,
        token_rows: list[list[int]],
        past_lens: list[int],
        last_only: bool = False,
        tree: tuple[torch.Tensor, torch.Tensor] | None = None,
        keep: list[int] | None = None,
        parts: list[int] | None = None,
    ) -> torch.Tensor:
        """Append `token_rows[i]` to row i (which already caches `past_lens[i]` tokens).

        Returns float32 logits for every fed position: padded `[B, n, V]` (positions past a row's
        length are garbage), packed `[T, V]` (row after row, each row's fed tokens in order; see
        `split_rows`); or `[B, V]` at each row's last token when `last_only` (both layouts); or, with
        `keep`, the last `keep[i]` fed positions of each row, row after row (`[sum(keep), V]`).
        An empty row feeds one dummy token at its next free position: harmless, it is never counted
        as cached and is overwritten by the row's next real token.

        `parts`: the sizes of consecutive groups of rows that attend apart (default: one group). With
        more than one the tokens are laid out flat (`[1, T]`) whatever the layout: a unified step's
        decoding rows and prompts share every projection and MLP, while attention pads each group only
        to its own widest row.

        `tree` = (position offsets `[B, n]`, local mask `[B, n, n]` bool) feeds token trees: fed
        position j is still written at `past + j`, but its position id is `past + offsets[:, j]`
        and, among the fed positions, it sees only those its local mask allows (see decoding/tree.py).
        """
        batch = len(token_rows)
        widths = [max(1, len(r)) for r in token_rows]
        if max(p + w for p, w in zip(past_lens, widths)) >= self.cache.capacity:
            raise ValueError(f"a row would exceed the KV cache capacity of {self.cache.capacity} tokens")
        parts = parts or [batch]
        if sum(parts) != batch or min(parts) < 1:
            raise ValueError(f"parts {parts} must be positive row counts adding up to the batch ({batch})")
        if tree is not None and len(parts) > 1:
            raise ValueError("token trees attend as one part")
        n = max(widths)
        # rows of one width need no packing: the [B, n] batch holds exactly their tokens, in order
        flat = len(parts) > 1 or (self.layout == "packed" and min(widths) < n)
        dev = self.device
        lengths = torch.tensor(widths, device=dev)
        past = torch.tensor(past_lens, device=dev)
        if flat:  # only real tokens
            ids = torch.tensor([t for r in token_rows for t in (r or [0])], dtype=torch.long, device=dev)
            row = torch.repeat_interleave(torch.arange(batch, device=dev), lengths)
            col = torch.arange(ids.numel(), device=dev) - (torch.cumsum(lengths, 0) - lengths)[row]
        else:  # every row padded to n
            ids = torch.tensor([(r or [0]) + [0] * (n - w) for r, w in zip(token_rows, widths)], dtype=torch.long,
                               device=dev).view(-1)
            row = torch.arange(batch, device=dev).repeat_interleave(n)
            col = torch.arange(n, device=dev).repeat(batch)
        real = col < lengths[row]
        # padding writes to the last cache entry, which no real token ever occupies (the engine keeps
        # a margin), so a short row padded to a long one never overflows its slot
        write = torch.where(real, past[row] + col, self.cache.capacity - 1)
        kv_len = max(p + w for p, w in zip(past_lens, widths))  # attend over each row's real extent only
        rope = past[row] + (col if tree is None else tree[0][row, col])
        # vLLM's kernel takes rows' tokens back to back, each row's last positions (no trees, no padding)
        paged = (paged_step(self.cache.block_table(slot_start, batch), widths, past_lens, self._native.heads,
                            self._native.kv_heads, self._native.head_dim, self.dtype, self._paged_isa)
                 if self._paged_isa and tree is None and (flat or min(widths) == n) else None)
        attention_parts, first, token = [], 0, 0
        for size in parts:
            rows = slice(first, first + size)
            part_n = max(widths[rows])
            tokens = sum(widths[rows]) if flat else size * n
            part_kv = kv_len if len(parts) == 1 else max(p + w for p, w in zip(past_lens[rows], widths[rows]))
            mask = (self._mask(past[rows], lengths[rows], part_n, part_kv, None if tree is None else tree[1])
                    if paged is None else torch.empty(0, dtype=self.dtype))
            attention_parts.append(AttentionPart(
                first, size, token, tokens, part_n, part_kv, row[token : token + tokens] - first,
                col[token : token + tokens], mask, flat and min(widths[rows]) < part_n))
            first, token = first + size, token + tokens
        step = SlotStep(self._groups, attention_parts)
        self.cache.set_window(slot_start, row, write, kv_len, batch)
        shape = (1, ids.numel()) if flat else (batch, n)
        t0 = now(dev)
        if self._native is not None:
            hidden = (self._native(ids, rope, shape, step, self.cache, paged) if self._paged_isa
                      else self._native(ids, rope, shape, step, self.cache))
        else:
            hidden = self._decoder(
                input_ids=ids.view(shape), position_ids=rope.view(shape), use_cache=True, slot_step=step,
                **{self._cache_arg: self.cache},
            ).last_hidden_state
            if step.calls != self._layers:
                raise RuntimeError(f"{type(self.model).__name__} does not route attention through transformers' "
                                   "attention interface; the slot KV cache cannot serve it")
            hidden = hidden.reshape(-1, hidden.shape[-1])  # [tokens, hidden]
        if last_only or keep is not None:
            hidden = hidden[self._kept_positions(widths, n, flat, [1] * batch if last_only else keep)]
        elif not flat and self.layout == "padded":
            hidden = hidden.view(batch, n, -1)
        logits = self._lm_head(hidden).float()
        self.model_time += now(dev) - t0
        return logits

    def _mask(self, past: torch.Tensor, lengths: torch.Tensor, n: int, kv_len: int,
              tree_mask: torch.Tensor | None) -> torch.Tensor:
        """The additive attention mask `[B, 1, g * n, kv_len]` of rows caching `past` tokens and feeding
        `lengths`: query j of a row sees the row's cache (keys < past) and, among its fed keys, those
        before it (or, in a tree, its ancestors by `tree_mask` `[B, n, n]`); key 0 always, so no query
        row is empty."""
        batch, dev = len(past), self.device
        key = torch.arange(kv_len, device=dev).view(1, 1, kv_len)
        rel = key - past.view(batch, 1, 1)  # key index relative to the row's first fed position
        fed_key = (rel >= 0) & (rel < lengths.view(batch, 1, 1))
        if tree_mask is None:
            local = rel <= torch.arange(n, device=dev).view(1, n, 1)
        else:
            local = torch.gather(tree_mask, 2, rel.clamp(0, n - 1).expand(batch, n, kv_len))
        allowed = (rel < 0) | (fed_key & local)
        allowed[:, :, 0] = True
        g = self._groups
        allowed = allowed.unsqueeze(1).expand(batch, g, n, kv_len).reshape(batch, 1, g * n, kv_len)
        # additive, in the model's dtype: what SDPA would otherwise convert a boolean mask to in every layer
        return torch.zeros(allowed.shape, dtype=self.dtype, device=dev).masked_fill_(~allowed, float("-inf"))

    def _kept_positions(self, widths: list[int], n: int, flat: bool, keep: list[int]) -> torch.Tensor:
        """Indices into the forward's token order of each row's last `keep[i]` fed positions."""
        if len(keep) != len(widths) or any(not 1 <= k <= w for k, w in zip(keep, widths)):
            raise ValueError(f"keep {keep} must give each row between 1 and its fed tokens {widths}")
        ends, end = [], -1
        for i, w in enumerate(widths):
            end = end + w if flat else i * n + w - 1
            ends.append(end)
        if all(k == 1 for k in keep):
            return torch.tensor(ends, device=self.device)
        return torch.tensor([p for e, k in zip(ends, keep) for p in range(e - k + 1, e + 1)], device=self.device)

    def forward_rows(
        self, slot_start: int, token_rows: list[list[int]], past_lens: list[int],
        tree: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """`forward` with each row's logits apart: row i gets `[len(token_rows[i]), V]` (views)."""
        return split_rows(self.forward(slot_start, token_rows, past_lens, tree=tree),
                          [max(1, len(r)) for r in token_rows])


def split_rows(logits: torch.Tensor, widths: list[int]) -> list[torch.Tensor]:
    """Per-row logits `[widths[i], V]` from a padded `[B, n, V]` or a packed `[sum(widths), V]` result."""
    if logits.dim() == 3:
        return [logits[i, :w] for i, w in enumerate(widths)]
    return list(logits.split(widths))
