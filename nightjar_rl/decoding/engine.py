"""The speculative decoding engine: `step(plan)` is the unit of work: schedule -> run -> postprocess.

Schedule: apply aborts, admit queued requests that fit (`Scheduler`, model-free). Run: prefill the
admitted rows, then one decoding round for the rows that were already running: the drafter
proposes up to the plan's length for each row (`SpecPlan`; an int k means k for every row), the
target scores [last token, *drafts] in one forward pass, each row keeps its agreeing prefix plus
the bonus token, and rejected positions are rolled back by lowering the row's length (nothing is
recomputed). Postprocess: finished rows leave and the rest are compacted into consecutive KV slots.

Unified step (`verify_layout: mixed`, vLLM's): the admitted rows' prompts ride in the decoding round's
verify forward, packed after the decoding rows' tokens, so one pass reads the weights for both;
attention runs per part (the decoding rows, then each group of prompts), so a one-token row is never
padded to a prompt. Greedy outputs are those of the packed layout.

Faults: a drafter that raises leaves its rows undrafted for that round (length 0, counted in
`StepStats.draft_failures`); a target forward that raises is retried row by row, and only the rows
whose own forward fails leave with finish_reason "error" (the message on `Sequence.error`).
"""

from __future__ import annotations

import logging

import torch

from nightjar_rl.contracts.plan import SpecPlan
from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.layouts import MIXED_LAYOUT, VERIFY_LAYOUTS, forward_layout
from nightjar_rl.decoding.runner import DEFAULT_VERIFY_LAYOUT, ModelRunner, split_rows
from nightjar_rl.decoding.scheduler import ERROR, Retired, ScheduledEngine, Scheduler, prefill_groups
from nightjar_rl.decoding.sequence import Sequence
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.decoding.timing import now
from nightjar_rl.decoding.tree import TokenTree, batch_tree_inputs, repair_moves, tree_greedy_accept
from nightjar_rl.decoding.verify import SamplingParams, greedy_accept, greedy_choices, sample_accept, sample_tokens
from nightjar_rl.model_names import DEFAULT_MODEL_FORWARD

__all__ = ["SpeculativeEngine", "prefill_groups"]
log = logging.getLogger(__name__)


def describe(exc: BaseException) -> str:
    """One line for a failure: exception type and message."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


class SpeculativeEngine(ScheduledEngine):
    """Continuous-batching speculative decoder over one target model and an optional drafter.

    Capacity is enforced by queueing: a request is admitted only when a slot is free and its worst
    case (prompt + max_new_tokens + max_speculation) fits the KV token budget. `max_waiting` bounds
    the queue (`submit` raises `QueueFullError` beyond it). Row i of `running` lives in KV slot i.
    `verify_layout`: how the target's forwards lay rows out, "padded" (`[B, n]`), "packed" (one
    `[1, T]` token batch: a step computes only the positions it scores) or "mixed" (packed, with the
    step's prompts in the verify forward: the module docstring); `model_forward`: "native",
    "native-eager" or "transformers" (same outputs), or "native-vllm" with its cache in blocks of
    `kv_block`; see decoding/runner.py.
    """

    REGIONS = 1  # slot regions of the scheduler's layout (the batch-parallel decoder uses 2)

    def __init__(
        self,
        target: torch.nn.Module,
        drafter: Drafter | None = None,
        *,
        max_batch_size: int = 16,
        max_seq_len: int = 1024,
        max_kv_tokens: int | None = None,
        max_speculation: int = 16,
        max_waiting: int | None = None,
        eos_token_ids: tuple[int, ...] | list[int] = (),
        sampling: SamplingParams | None = None,
        seed: int = 0,
        verify_layout: str = DEFAULT_VERIFY_LAYOUT,
        model_forward: str = DEFAULT_MODEL_FORWARD,
        kv_block: int | None = None,
    ):
        self.scheduler = Scheduler(
            max_batch_size, max_seq_len, max_speculation, max_kv_tokens, max_waiting, regions=self.REGIONS
        )
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.max_speculation = max_speculation
        self.max_kv_tokens = max_kv_tokens
        self.max_waiting = max_waiting
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.sampling = sampling or SamplingParams()
        capacity = max_seq_len + max_speculation + 1
        if verify_layout == MIXED_LAYOUT and self.REGIONS != 1:
            raise ValueError(f"verify_layout {MIXED_LAYOUT!r} needs one slot region; {type(self).__name__} "
                             f"uses {self.REGIONS}: choose one of {', '.join(VERIFY_LAYOUTS)}")
        self.runner = ModelRunner(target, max_batch_size, capacity, layout=forward_layout(verify_layout),
                                  model_forward=model_forward, kv_block=kv_block)
        self.verify_layout = verify_layout if verify_layout == MIXED_LAYOUT else self.runner.layout
        self.device = self.runner.device
        self.drafter = drafter
        if drafter is not None:
            drafter.setup(max_batch_size, capacity, self.runner.layout)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.step_count = 0

    # ---- executor hooks of the step loop (`ScheduledEngine.step`) ----------------------------------
    @property
    def can_draft(self) -> bool:
        return self.drafter is not None  # no drafter: plain decoding, every row at length 0

    def _start_clock(self) -> tuple[float, float]:
        return now(self.device), self._model_time()

    def _stop_clock(self, clock: tuple[float, float], stats: StepStats) -> None:
        t_start, model_time_start = clock
        stats.wall_time = now(self.device) - t_start
        stats.model_time = self._model_time() - model_time_start

    def _model_time(self) -> float:
        return self.runner.model_time + (self.drafter.model_time if self.drafter is not None else 0.0)

    def _run(self, decode_rows: list[Sequence], lengths: list[int], admitted: list[Sequence], stats: StepStats,
             selecting: SpecPlan | None) -> None:
        if self.unified_step:  # one forward: the decoding round with the prompts after it
            self._decode(decode_rows, lengths, stats, selecting, admitted)
        else:
            super()._run(decode_rows, lengths, admitted, stats, selecting)

    def _prefill(self, admitted: list[Sequence], stats: StepStats) -> None:
        if not admitted:
            return
        if self.unified_step:
            self._verify_and_commit([], [], DraftProposal.empty(0), stats, admitted[0].slot, admitted=admitted)
            return
        t0 = now(self.device)
        for rows, _ in self._prefill_groups(admitted, stats):
            logits, ok, _ = self._forward(rows, rows[0].slot, [s.tokens for s in rows], [0] * len(rows), last_only=True)
            if not ok:
                continue
            self._first_tokens(rows, ok, logits if len(ok) == len(rows) else logits[ok], stats, counted=False)
        stats.prefill_time += now(self.device) - t0
        stats.num_prefilled += len(admitted)
        stats.prefill_tokens += sum(s.num_prompt for s in admitted)

    def _first_tokens(self, rows: list[Sequence], ok: list[int], last_logits: torch.Tensor | None, stats: StepStats,
                      counted: bool = True) -> None:
        """Sample and append the first token of each prefilled row `rows[i]`, i in `ok`, from its last
        prompt position's logits (`last_logits[j]` for `ok[j]`); `counted`: also count the rows as
        prefilled (the unified step's, whose time is the verify pass's)."""
        if counted:
            stats.num_prefilled += len(rows)
            stats.prefill_tokens += sum(s.num_prompt for s in rows)
            stats.prefill_padded_tokens += self.prefill_size(rows)  # packed: exactly the prompts
        if not ok:
            return
        for i, token in zip(ok, sample_tokens(last_logits, self.sampling, self.generator, self.runner.argmax)):
            self._append(rows[i], [token])
            stats.first_token_ids.append(rows[i].request_id)
            stats.prefill_emitted += 1

    def _forward(
        self, rows: list[Sequence], slot_start: int, fed: list[list[int]], past: list[int],
        last_only: bool = False, tree: tuple[torch.Tensor, torch.Tensor] | None = None,
        keep: list[int] | None = None, parts: list[int] | None = None,
    ) -> tuple[torch.Tensor | list[torch.Tensor | None] | None, list[int], torch.Tensor | None]:
        """The target forward over consecutive rows. If it raises, each row is retried alone: rows
        whose own forward fails are failed (finish_reason "error"), the others go on exactly.
        Returns (logits, indices of the rows that succeeded, whole). logits: `[B, V]` when `last_only`
        (failed rows' are zeros), else row i's `[len(fed[i]), V]`, or its last `keep[i]` positions' (None
        for a failed row). whole: `ModelRunner.forward`'s own result when the rows ran at once, else None.
        `keep`, `parts`: as `ModelRunner.forward`."""
        widths = [max(1, len(r)) for r in fed] if keep is None else keep
        try:
            logits = self.runner.forward(slot_start, fed, past, last_only=last_only, tree=tree, keep=keep, parts=parts)
            return (logits if last_only else split_rows(logits, widths)), list(range(len(rows))), logits
        except Exception as exc:  # noqa: BLE001 - a request-level fault, isolated below
            if len(rows) == 1:
                self._fail(rows[0], exc)
                return None, [], None
        per_row: list[torch.Tensor | None] = [None] * len(rows)
        ok = []
        for i, seq in enumerate(rows):
            n = widths[i]
            sub = None if tree is None else (tree[0][i : i + 1, :n], tree[1][i : i + 1, :n, :n])
            try:
                logits = self.runner.forward(slot_start + i, [fed[i]], [past[i]], last_only=last_only, tree=sub,
                                             keep=None if keep is None else [n])
            except Exception as exc:  # noqa: BLE001
                self._fail(seq, exc)
                continue
            per_row[i] = logits[0] if last_only else split_rows(logits, [n])[0]
            ok.append(i)
        if not last_only or not ok:
            return (per_row if ok else None), ok, None
        out = per_row[ok[0]].new_zeros((len(rows), per_row[ok[0]].shape[-1]))
        for i in ok:
            out[i] = per_row[i]
        return out, ok, None

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        seq.finish_reason, seq.error = ERROR, describe(exc)
        log.warning("request %s failed: %s", seq.request_id, seq.error)

    def draft_lags(self) -> dict[str, int] | None:
        """How many tokens of each running row the drafter's own cache lacks (a draft model's catch-up),
        by request id; None for a drafter without a cache."""
        if self.drafter is None or not self.running or self.drafter.lag(self.running[0]) is None:
            return None
        return {seq.request_id: self.drafter.lag(seq) for seq in self.running}

    @property
    def states_confidences(self) -> bool:
        """Greedy only: under sampling, choosing a draft by the probability of the token drawn for it
        would bias which tokens get verified, and speculative sampling would no longer be exact."""
        return self.drafter is not None and self.drafter.states_confidences and self.sampling.greedy

    def _decode(self, rows: list[Sequence], lengths: list[int], stats: StepStats,
                selecting: SpecPlan | None = None, admitted: tuple[Sequence, ...] | list[Sequence] = ()) -> None:
        """One decoding round for `rows` (consecutive slots from rows[0].slot); `admitted` (the unified
        step): rows in the slots after them whose prompts the verify forward also prefills."""
        if not rows:
            self._prefill(admitted, stats)
            return
        if self.drafter is not None:
            self.drafter.wants_confidences = selecting is not None  # only then worth a softmax per draft step
        proposal = self._propose(rows, lengths, stats)
        if selecting is not None and proposal is not None and proposal.confidences is not None:
            proposal = self._select(rows, proposal, selecting, stats)
        self._verify_and_commit(rows, lengths, proposal or DraftProposal.empty(len(rows)), stats, rows[0].slot,
                                drafted=proposal is not None and max(lengths) > 0, admitted=admitted)

    def _propose(self, rows: list[Sequence], lengths: list[int], stats: StepStats) -> DraftProposal | None:
        """Drafting phase of a round (no target work): up to lengths[i] tokens for row i; None if the
        drafter failed."""
        if max(lengths, default=0) == 0:
            return DraftProposal.empty(len(rows))
        try:
            return self.drafter.propose(rows, lengths, rows[0].slot, self.sampling, self.generator)
        except Exception as exc:  # noqa: BLE001 - the round goes on undrafted
            self._draft_failed(len(rows), exc, stats)
            return None

    @staticmethod
    def _select(rows: list[Sequence], proposal: DraftProposal, plan: SpecPlan, stats: StepStats) -> DraftProposal:
        """The drafts `plan` verifies, chosen by their stated confidences (`SpecPlan.verified_lengths`),
        each row's first capped at its token budget as verification would."""
        stated = [c[: max(0, s.remaining - 1)] for c, s in zip(proposal.confidences, rows)]
        verified = plan.verified_lengths(stated)
        stats.unverified += sum(map(len, stated)) - sum(verified)
        return proposal.trimmed(verified)

    def _draft_failed(self, rows: int, exc: BaseException, stats: StepStats) -> None:
        stats.draft_failures += rows
        stats.extra["draft_error"] = describe(exc)
        log.warning("drafter failed on %d rows (they run undrafted): %s", rows, describe(exc))

    def _verify_and_commit(
        self, rows: list[Sequence], lengths: list[int], proposal: DraftProposal, stats: StepStats,
        slot_start: int = 0, drafted: bool = False, admitted: tuple[Sequence, ...] | list[Sequence] = (),
    ) -> None:
        """Verification phase: one target pass over [last token, *drafts] per row, accept, append.
        Row i verifies at most lengths[i] drafts; `drafted`: the proposal is the drafter's (it is told
        what was kept). `admitted` (the unified step): rows after `rows` whose prompts the same pass
        prefills (attended apart: `ModelRunner.forward`'s parts), each sampling its first token; the
        pass's time is split between `prefill_time` and `verify_time` by their shares of its tokens (what
        the simulator's `mixed` layout prices as prefill: the prompts' cost beyond the pass's)."""
        # never verify past a row's plan length or its token budget
        drafts = [d[: max(0, min(n, s.remaining - 1))] for d, n, s in zip(proposal.tokens, lengths, rows)]
        t0 = now(self.device)
        trees = proposal.extra.pop("tree", None)  # token trees (greedy only; sampling verifies `tokens`)
        tree_pass = trees is not None and self.sampling.greedy
        if tree_pass:
            self._prefill(admitted, stats)  # a tree pass attends as one part: the prompts go first, apart
            t0 = now(self.device)
            drafts, kept_tokens = self._verify_tree(rows, trees, slot_start)
        else:
            fed = [[s.tokens[-1]] + d for s, d in zip(rows, drafts)]
            past = [s.cached_len for s in rows]
            keep = parts = None
            if admitted:  # in the slots right after `rows`, in slot order (the scheduler's single region)
                parts = [len(rows)] * bool(rows) + [len(g) for g in self.scheduler.prefill_batches(admitted)]
                keep = [len(f) for f in fed] + [1] * len(admitted)
                fed, past = fed + [s.tokens for s in admitted], past + [0] * len(admitted)
            logits, ok, whole = self._forward(rows + list(admitted), slot_start, fed, past, keep=keep, parts=parts)
            verified = sum(map(len, fed[: len(rows)]))  # the decoding rows' positions, before the prompts'
            if admitted:
                first = [i - len(rows) for i in ok if i >= len(rows)]
                chosen = (whole[verified:] if whole is not None
                          else torch.stack([logits[len(rows) + i][-1] for i in first]) if first else None)
                self._first_tokens(admitted, first, chosen, stats)
                ok = [i for i in ok if i < len(rows)]
            kept_tokens = [[] for _ in rows]
            if ok:
                sub = [logits[i] for i in ok]
                sub_drafts = [drafts[i] for i in ok]
                if self.sampling.greedy:  # rows run at once: one argmax over the forward's (packed or padded)
                    packed = None if whole is None else whole[:verified] if admitted else whole
                    kept = greedy_accept(sub if packed is None else packed, sub_drafts, self.runner.argmax)
                else:
                    probs = [proposal.probs[i] if proposal.probs[i] is None else proposal.probs[i][: len(drafts[i])]
                             for i in ok]
                    kept = sample_accept(sub, sub_drafts, probs, self.sampling, self.generator)
                for i, tokens in zip(ok, kept):
                    kept_tokens[i] = tokens
        elapsed = now(self.device) - t0
        if admitted and not tree_pass:  # the unified step's pass: its prompts' share of the tokens is prefill
            prompts = sum(s.num_prompt for s in admitted)
            share = elapsed * prompts / (prompts + len(rows) + sum(map(len, drafts)))
            stats.prefill_time += share
            elapsed -= share
        if not rows:  # nothing decoded: the pass was a prefill
            return
        stats.verify_time += elapsed
        kept_drafts = [max(0, len(t) - 1) for t in kept_tokens]
        if drafted:
            self.drafter.on_commit(rows, proposal, kept_drafts)
        for seq, n, d, tokens, a in zip(rows, lengths, drafts, kept_tokens, kept_drafts):
            if seq.finish_reason == ERROR:
                continue
            emitted = self._append(seq, tokens)
            a = min(a, emitted)  # drafts accepted past an EOS are discarded, not counted
            seq.drafted += len(d)
            seq.accepted += a
            seq.steps += 1
            stats.request_ids.append(seq.request_id)
            stats.plan.append(n)
            stats.drafted.append(len(d))
            stats.accepted.append(a)
            stats.emitted.append(emitted)
        stats.draft_time += proposal.draft_time
        stats.catchup_time += proposal.catchup_time
        width = 1 + max(len(d) for d in drafts)
        stats.verify_tokens = max(stats.verify_tokens, width)
        stats.scored_tokens += self.scored_size(len(rows), width - 1, sum(map(len, drafts)))
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
        logits, ok, whole = self._forward(rows, slot_start, fed, past, tree=batch_tree_inputs(trees, self.device))
        if not ok:
            choice = [None] * len(rows)
        elif whole is not None:  # rows run at once: one argmax
            choice = greedy_choices(whole, [len(f) for f in fed], self.runner.argmax)
        else:
            choice = [None if row is None else self.runner.argmax(row).tolist() for row in logits]
        ok = set(ok)
        kept_tokens, slots, src, dst = [], [], [], []
        for i, (tree, row_choice) in enumerate(zip(trees, choice)):
            if i not in ok:  # failed (finish_reason "error")
                kept_tokens.append([])
                continue
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

    def _apply_moves(self, retired: Retired) -> None:
        """Tell the drafter who left, move compacted rows' KV entries."""
        for seq in retired.leaving:
            if self.drafter is not None:
                self.drafter.on_finish(seq)
        for move in retired.moves:
            self.runner.cache.move_slot(move.src, move.dst, move.seq.cached_len)
            if self.drafter is not None:
                self.drafter.on_move(move.seq, move.src, move.dst)
