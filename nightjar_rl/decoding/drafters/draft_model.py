"""A separate (smaller) model drafts tokens autoregressively, with its own KV cache.

It states a confidence for every token it proposes when asked (`wants_confidences`, set by the engine
for a round whose plan chooses what to verify by them): the draft model's probability of that token
(the top probability under greedy decoding).

Its cache is kept in step with accepted tokens. While speculation is off (k = 0) it is not run,
so it falls behind; the next time it drafts it catches up by feeding the missing tokens (`catchup`,
`layouts.DRAFT_CATCHUPS`): `separate`, in a pass of their own before drafting, timed as `catchup_time`
(the switching cost Nightjar models); `folded`, in the first drafting pass, whose last position of each
row drafts its first token (one pass fewer; the catch-up is then part of `draft_time`).
"""

from __future__ import annotations

import torch

from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.layouts import DEFAULT_DRAFT_CATCHUP, DEFAULT_VERIFY_LAYOUT, check_draft_catchup
from nightjar_rl.decoding.runner import ModelRunner
from nightjar_rl.decoding.sequence import Sequence
from nightjar_rl.decoding.timing import now
from nightjar_rl.decoding.verify import SamplingParams, probs_from_logits
from nightjar_rl.model_names import DEFAULT_MODEL_FORWARD

SYNCED = "draft_synced"  # tokens of the row held in the draft model's cache


class DraftModelDrafter(Drafter):
    name = "draft"
    states_confidences = True

    def __init__(self, model: torch.nn.Module, model_forward: str = DEFAULT_MODEL_FORWARD,
                 catchup: str = DEFAULT_DRAFT_CATCHUP, kv_block: int | None = None):
        self.model = model
        self.model_forward = model_forward
        self.kv_block = kv_block  # native-vllm: the draft cache's block size (the engine's)
        self.catchup = check_draft_catchup(catchup)
        self.runner: ModelRunner | None = None

    def setup(self, num_slots: int, capacity: int, layout: str = DEFAULT_VERIFY_LAYOUT) -> None:
        """The draft model's own runner, in the engine's layout (its catch-up forwards are ragged)."""
        self.runner = ModelRunner(self.model, num_slots, capacity, layout=layout, model_forward=self.model_forward,
                                  kv_block=self.kv_block)

    @property
    def model_time(self) -> float:
        return self.runner.model_time if self.runner is not None else 0.0

    def _next(self, logits: torch.Tensor, params: SamplingParams,
              generator) -> tuple[list[int], torch.Tensor | None, list[float] | None]:
        """(next token per row, q per row (None when greedy), the draft's probability of each token when
        `wants_confidences`, else None)."""
        if params.greedy:
            tokens = self.runner.argmax(logits).unsqueeze(-1)
            if not self.wants_confidences:
                return tokens.squeeze(1).tolist(), None, None
            logits = logits.float()
            return tokens.squeeze(1).tolist(), None, (logits.gather(1, tokens).squeeze(1)
                                                      - torch.logsumexp(logits, dim=-1)).exp().tolist()
        probs = probs_from_logits(logits, params)
        tokens = torch.multinomial(probs, 1, generator=generator)
        stated = probs.gather(1, tokens).squeeze(1).tolist() if self.wants_confidences else None
        return tokens.squeeze(1).tolist(), probs, stated

    def propose(self, rows: list[Sequence], lengths: list[int], slot_start: int, params: SamplingParams,
                generator=None):
        """The whole batch drafts max(lengths) tokens (one batched pass per token; rows at length 0
        are kept in sync this way too), then row i keeps its first lengths[i]."""
        k = max(lengths)
        runner = self.runner
        device = runner.device
        synced = [len(seq.tokens) - self.lag(seq) for seq in rows]
        lag = [seq.tokens[s:] for seq, s in zip(rows, synced)]
        # a normal round leaves a lag of 1 or 2 tokens; more means speculation was off (or a new row)
        t0 = t_catchup = now(device)
        if self.catchup == "separate" and max(len(x) for x in lag) > 2:
            runner.forward(slot_start, [x[:-1] for x in lag], synced, last_only=True)
            synced = [s + len(x) - 1 for s, x in zip(synced, lag)]
            lag = [x[-1:] for x in lag]
            t_catchup = now(device)
        logits = runner.forward(slot_start, lag, synced, last_only=True)
        tokens, probs, confident = self._next(logits, params, generator)
        drafts = [[t] for t in tokens]
        dists = [[p] for p in probs] if probs is not None else None
        confidences = [[c] for c in confident] if confident is not None else None
        base = [len(seq.tokens) for seq in rows]
        for j in range(1, k):
            logits = runner.forward(slot_start, [[d[-1]] for d in drafts], [b + j - 1 for b in base], last_only=True)
            tokens, probs, confident = self._next(logits, params, generator)
            for i, t in enumerate(tokens):
                drafts[i].append(t)
                if confidences is not None:
                    confidences[i].append(confident[i])
                if dists is not None:
                    dists[i].append(probs[i])
        t2 = now(device)
        for seq, b in zip(rows, base):
            seq.state[SYNCED] = b  # provisional: `on_commit` adds the kept drafts it has cached
        return DraftProposal(
            tokens=[d[:n] for d, n in zip(drafts, lengths)],
            probs=[torch.stack(d[:n]) if n else None for d, n in zip(dists, lengths)] if dists is not None
            else [None] * len(rows),
            confidences=[c[:n] for c, n in zip(confidences, lengths)] if confidences is not None else None,
            draft_time=t2 - t_catchup,
            catchup_time=t_catchup - t0,
            extra={"draft_k": k},
        )

    def lag(self, seq: Sequence) -> int:
        """At least 1: drafts dropped unverified leave the cache holding every token, and the last one must
        be fed again for its logits (rewriting its entry with the same values)."""
        return len(seq.tokens) - min(seq.state.get(SYNCED, 0), len(seq.tokens) - 1)

    def on_commit(self, rows: list[Sequence], proposal: DraftProposal, kept: list[int]) -> None:
        # the draft cache holds drafts[:k-1] (the last draft token is produced, never fed)
        cached_drafts = proposal.extra["draft_k"] - 1
        for seq, a in zip(rows, kept):
            seq.state[SYNCED] += min(a, cached_drafts)

    def on_move(self, seq: Sequence, src: int, dst: int) -> None:
        self.runner.cache.move_slot(src, dst, seq.state.get(SYNCED, 0))
