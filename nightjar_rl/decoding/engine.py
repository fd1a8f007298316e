"""The speculative decoding engine: `step(k)` is the unit of work.

A step (1) admits queued requests that fit and prefills them, then (2) runs one decoding round for
the rows that were already running: the drafter proposes up to k tokens per row, the target scores
[last token, *drafts] in one forward pass, each row keeps its agreeing prefix plus the bonus token,
and rejected positions are rolled back by lowering the row's length (nothing is recomputed).
Finished rows leave and the rest are compacted into consecutive KV slots.
"""

from __future__ import annotations

from collections import deque

import torch

from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.runner import ModelRunner
from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.decoding.timing import now
from nightjar_rl.decoding.tree import TokenTree, batch_tree_inputs, repair_moves, tree_greedy_accept
from nightjar_rl.decoding.verify import SamplingParams, greedy_accept, sample_accept, sample_tokens


def prefill_groups(lengths: list[int], waste: float = 1.25) -> list[list[int]]:
    """Split admitted rows (in slot order) into consecutive groups whose padded size stays within
    `waste` x their real tokens, so one long prompt does not pad a batch of short ones."""
    groups: list[list[int]] = []
    for i, n in enumerate(lengths):
        if groups:
            cand = groups[-1] + [i]
            if max(lengths[j] for j in cand) * len(cand) <= waste * sum(lengths[j] for j in cand):
                groups[-1] = cand
                continue
        groups.append([i])
    return groups


class SpeculativeEngine:
    """Continuous-batching speculative decoder over one target model and an optional drafter.

    Capacity is enforced by queueing: a request is admitted only when a slot is free and its worst
    case (prompt + max_new_tokens + max_speculation) fits the KV token budget.
    """

    def __init__(
        self,
        target: torch.nn.Module,
        drafter: Drafter | None = None,
        *,
        max_batch_size: int = 16,
        max_seq_len: int = 1024,
        max_kv_tokens: int | None = None,
        max_speculation: int = 16,
        eos_token_ids: tuple[int, ...] | list[int] = (),
        sampling: SamplingParams | None = None,
        seed: int = 0,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_speculation < 0:
            raise ValueError(f"max_speculation must be >= 0, got {max_speculation}")
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.max_speculation = max_speculation
        self.max_kv_tokens = max_kv_tokens
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.sampling = sampling or SamplingParams()
        capacity = max_seq_len + max_speculation + 1
        self.runner = ModelRunner(target, max_batch_size, capacity)
        self.device = self.runner.device
        self.drafter = drafter
        if drafter is not None:
            drafter.setup(max_batch_size, capacity)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.waiting: deque[Request] = deque()
        self.running: list[Sequence] = []  # row i lives in KV slot i
        self.finished: list[Sequence] = []
        self._known_ids: set[str] = set()
        self._reserved = 0
        self.step_count = 0

    # ---- requests -------------------------------------------------------------------------
    def _reservation(self, req: Request) -> int:
        return len(req.prompt_ids) + req.max_new_tokens + self.max_speculation

    def submit(self, request: Request) -> None:
        """Queue a request. Raises ValueError for requests that could never be served."""
        if request.request_id in self._known_ids:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if not request.prompt_ids:
            raise ValueError(f"request {request.request_id!r} has an empty prompt")
        if request.max_new_tokens < 1:
            raise ValueError(f"request {request.request_id!r}: max_new_tokens must be >= 1")
        total = len(request.prompt_ids) + request.max_new_tokens
        if total > self.max_seq_len:
            raise ValueError(
                f"request {request.request_id!r}: prompt of {len(request.prompt_ids)} tokens + "
                f"{request.max_new_tokens} new tokens exceeds the context of {self.max_seq_len} tokens"
            )
        if self.max_kv_tokens is not None and self._reservation(request) > self.max_kv_tokens:
            raise ValueError(
                f"request {request.request_id!r} needs {self._reservation(request)} KV tokens, "
                f"more than max_kv_tokens={self.max_kv_tokens}"
            )
        self._known_ids.add(request.request_id)
        self.waiting.append(request)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def pop_finished(self) -> list[Sequence]:
        """Sequences finished since the last call (each returned exactly once)."""
        done, self.finished = self.finished, []
        return done

    def close(self) -> None:
        """Release background resources (none here; decoders with worker threads stop them)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the step ---------------------------------------------------------------------------
    def step(self, k: int) -> StepStats:
        if not isinstance(k, (int,)) or isinstance(k, bool) or not 0 <= k <= self.max_speculation:
            raise ValueError(f"k must be an int in [0, {self.max_speculation}], got {k!r}")
        if k > 0 and self.drafter is None:
            k = 0  # no drafter: plain decoding
        t_start = now(self.device)
        model_time_start = self._model_time()
        decode_rows = list(self.running)
        stats = StepStats(step=self.step_count, k=k, batch_size=len(decode_rows), num_waiting=0, num_prefilled=0)
        self._admit_and_prefill(stats)
        if decode_rows:
            self._decode_round(decode_rows, k, stats)
        stats.finished_ids = self._retire()
        stats.num_waiting = len(self.waiting)
        stats.wall_time = now(self.device) - t_start
        stats.model_time = self._model_time() - model_time_start
        self.step_count += 1
        return stats

    def _model_time(self) -> float:
        return self.runner.model_time + (self.drafter.model_time if self.drafter is not None else 0.0)

    def _admit_and_prefill(self, stats: StepStats) -> None:
        admitted: list[Sequence] = []
        while self.waiting and len(self.running) < self.max_batch_size:
            req = self.waiting[0]
            need = self._reservation(req)
            if self.max_kv_tokens is not None and self._reserved + need > self.max_kv_tokens:
                break  # FIFO: wait for capacity rather than skipping ahead
            self.waiting.popleft()
            self._reserved += need
            seq = Sequence(request=req, tokens=list(req.prompt_ids), slot=len(self.running))
            self.running.append(seq)
            admitted.append(seq)
        if not admitted:
            return
        t0 = now(self.device)
        for group in prefill_groups([len(s.tokens) for s in admitted]):
            rows = [admitted[i] for i in group]
            logits = self.runner.forward(rows[0].slot, [s.tokens for s in rows], [0] * len(rows), last_only=True)
            for seq, token in zip(rows, sample_tokens(logits, self.sampling, self.generator)):
                self._append(seq, [token])
                stats.first_token_ids.append(seq.request_id)
        stats.prefill_time = now(self.device) - t0
        stats.num_prefilled = len(admitted)
        stats.prefill_tokens = sum(s.num_prompt for s in admitted)
        stats.prefill_emitted = len(admitted)

    def _decode_round(self, rows: list[Sequence], k: int, stats: StepStats) -> None:
        proposal = self._propose(rows, k)
        self._verify_and_commit(rows, k, proposal, stats)

    def _propose(self, rows: list[Sequence], k: int, slot_start: int = 0) -> DraftProposal:
        """Drafting phase of a round (no target work): up to k tokens per row."""
        if k > 0:
            return self.drafter.propose(rows, k, slot_start, self.sampling, self.generator)
        return DraftProposal(tokens=[[] for _ in rows], probs=[None] * len(rows))

    def _verify_and_commit(
        self, rows: list[Sequence], k: int, proposal: DraftProposal, stats: StepStats, slot_start: int = 0
    ) -> None:
        """Verification phase: one target pass over [last token, *drafts] per row, accept, append."""
        # never verify past a row's token budget
        drafts = [d[: max(0, s.remaining - 1)] for d, s in zip(proposal.tokens, rows)]
        t0 = now(self.device)
        trees = proposal.extra.pop("tree", None)  # token trees (greedy only; sampling verifies `tokens`)
        if trees is not None and self.sampling.greedy:
            drafts, kept_tokens = self._verify_tree(rows, trees, slot_start)
        else:
            fed = [[s.tokens[-1]] + d for s, d in zip(rows, drafts)]
            logits = self.runner.forward(slot_start, fed, [s.cached_len for s in rows])
            if self.sampling.greedy:
                kept_tokens = greedy_accept(logits, drafts)
            else:
                probs = [p if p is None else p[: len(d)] for p, d in zip(proposal.probs, drafts)]
                kept_tokens = sample_accept(logits, drafts, probs, self.sampling, self.generator)
        stats.verify_time += now(self.device) - t0
        kept_drafts = [len(t) - 1 for t in kept_tokens]
        if k > 0:
            self.drafter.on_commit(rows, proposal, kept_drafts)
        for seq, d, tokens, a in zip(rows, drafts, kept_tokens, kept_drafts):
            emitted = self._append(seq, tokens)
            a = min(a, emitted)  # drafts accepted past an EOS are discarded, not counted
            seq.drafted += len(d)
            seq.accepted += a
            seq.steps += 1
            stats.request_ids.append(seq.request_id)
            stats.drafted.append(len(d))
            stats.accepted.append(a)
            stats.emitted.append(emitted)
        stats.draft_time += proposal.draft_time
        stats.catchup_time += proposal.catchup_time
        stats.verify_tokens = max(stats.verify_tokens, 1 + max(len(d) for d in drafts))
        stats.extra.update(proposal.extra)

    def _verify_tree(
        self, rows: list[Sequence], trees: list[TokenTree], slot_start: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Greedy token-tree verification: one target pass over [last token, *tree nodes] per row with a
        tree mask, keep the longest agreeing path plus the bonus, then copy the accepted path's KV
        entries into place. Returns (the tree tokens verified per row, the tokens each row keeps)."""
        trees = [t.prune_depth(max(0, s.remaining - 1)) for t, s in zip(trees, rows)]
        past = [s.cached_len for s in rows]
        fed = [[s.tokens[-1], *t.tokens] for s, t in zip(rows, trees)]
        logits = self.runner.forward(slot_start, fed, past, tree=batch_tree_inputs(trees, self.device))
        choice = logits.argmax(-1).tolist()
        kept_tokens, slots, src, dst = [], [], [], []
        for i, (tree, row_choice) in enumerate(zip(trees, choice)):
            path, kept = tree_greedy_accept(tree, row_choice)
            kept_tokens.append(kept)
            for a, b in repair_moves(path, tree):
                slots.append(slot_start + i)
                src.append(past[i] + a)
                dst.append(past[i] + b)
        self.runner.cache.copy_within(slots, src, dst)
        return [list(t.tokens) for t in trees], kept_tokens

    def _append(self, seq: Sequence, tokens: list[int]) -> int:
        """Append accepted tokens, stopping at EOS or the token budget. Returns how many were kept."""
        kept = 0
        for t in tokens:
            if seq.remaining <= 0:
                break
            seq.tokens.append(t)
            kept += 1
            if t in self.eos_token_ids:
                seq.finish_reason = "eos"
                return kept
        if seq.remaining <= 0:
            seq.finish_reason = "length"
        return kept

    def _retire(self) -> list[str]:
        """Remove finished rows and compact the survivors into slots 0..n-1. Returns their ids."""
        if not any(s.finished for s in self.running):
            return []
        survivors = [s for s in self.running if not s.finished]
        leaving = [s for s in self.running if s.finished]
        for seq in leaving:
            self._reserved -= self._reservation(seq.request)
            if self.drafter is not None:
                self.drafter.on_finish(seq)
        self.finished += leaving
        n = len(survivors)
        free = sorted({*range(n)} - {s.slot for s in survivors})
        for seq in survivors:
            if seq.slot >= n:
                dst = free.pop(0)
                self.runner.cache.move_slot(seq.slot, dst, seq.cached_len)
                if self.drafter is not None:
                    self.drafter.on_move(seq, seq.slot, dst)
                seq.slot = dst
        self.running = sorted(survivors, key=lambda s: s.slot)
        return [s.request_id for s in leaving]
