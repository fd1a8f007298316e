"""The drafter interface the engine talks to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nightjar_rl.decoding.layouts import DEFAULT_VERIFY_LAYOUT
from nightjar_rl.decoding.sequence import Sequence

if TYPE_CHECKING:  # annotations only: the interface imports without torch (the n-gram drafter needs none)
    import torch

    from nightjar_rl.decoding.verify import SamplingParams


@dataclass
class DraftProposal:
    tokens: list[list[int]]  # up to lengths[i] proposed tokens for row i (may be empty)
    probs: list[torch.Tensor | None]  # q per row `[len, V]`, or None for deterministic drafts
    confidences: list[list[float]] | None = None  # per row, the drafter's probability of each proposed token
    draft_time: float = 0.0
    catchup_time: float = 0.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, rows: int) -> DraftProposal:
        """No drafts for `rows` rows (k = 0, or a drafter that failed)."""
        return cls(tokens=[[] for _ in range(rows)], probs=[None] * rows)

    def trimmed(self, lengths: list[int]) -> DraftProposal:
        """The same proposal with row i cut to its first lengths[i] tokens (drafts left unverified)."""
        cut = [min(n, len(t)) for n, t in zip(lengths, self.tokens)]
        return DraftProposal(
            tokens=[t[:n] for t, n in zip(self.tokens, cut)],
            probs=[None if p is None or n == 0 else p[:n] for p, n in zip(self.probs, cut)],
            confidences=None if self.confidences is None else [c[:n] for c, n in zip(self.confidences, cut)],
            draft_time=self.draft_time, catchup_time=self.catchup_time, extra=dict(self.extra),
        )


class Drafter:
    """Base drafter. Subclasses implement `propose`; the rest are hooks with no-op defaults."""

    name = "base"
    states_confidences = False  # True: `propose` can fill `DraftProposal.confidences` (plans may select by them)
    wants_confidences = False  # set by the engine for a round whose plan selects by them (they cost a softmax)

    def propose(
        self, rows: list[Sequence], lengths: list[int], slot_start: int, params: SamplingParams, generator=None
    ) -> DraftProposal:
        """Up to `lengths[i]` draft tokens for row i (0: none for that row; at least one length is > 0).
        Rows are consecutive KV slots starting at `slot_start`."""
        raise NotImplementedError

    def on_commit(self, rows: list[Sequence], proposal: DraftProposal, kept: list[int]) -> None:
        """Called after verification with the number of draft tokens each row kept."""

    def on_move(self, seq: Sequence, src: int, dst: int) -> None:
        """The engine moved `seq` from slot `src` to `dst` (compaction)."""

    def on_finish(self, seq: Sequence) -> None:
        """`seq` left the batch."""

    def lag(self, seq: Sequence) -> int | None:
        """Tokens of `seq` the drafter's own cache lacks (a draft model catches up on all but the last
        before drafting); None for a drafter without a cache."""
        return None

    @property
    def model_time(self) -> float:
        """Cumulative seconds inside draft-model forwards (0 for model-free drafters)."""
        return 0.0

    def setup(self, num_slots: int, capacity: int, layout: str = DEFAULT_VERIFY_LAYOUT) -> None:
        """Called once by the engine with its slots and its forwards' token layout (`verify_layout`)."""
