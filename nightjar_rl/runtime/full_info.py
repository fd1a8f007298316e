"""Full information for the live engine's n-gram drafter: acceptance that keeps flowing while k = 0.

An n-gram proposal costs a lookup and no model call, so it can be made for every row at every step
and checked against the tokens the target then emits, whatever the row's plan entry. `NgramShadow`
keeps one pending proposal per row: the drafter's lookup at max_k on the row's tokens. After a step,
the tokens the row gained are compared with the proposal's next tokens; the proposal resolves at the
first mismatch (accepted = tokens matched so far) or when all of it matched, and is then a sample
(drafted = its length, accepted) for `StepStats.shadow_drafted/shadow_accepted`. A row with a
proposal still pending (at k = 0 it gains one token per step) reports no sample that step
(`shadow_drafted` = -1); a row whose lookup finds nothing reports (0, 0): no proposal; a request that
leaves with its proposal pending reports nothing. The resolved samples equal the trace's `accepted[p, max_k]` at the proposal's position p
(tests/test_per_row.py), the simulator's full information.

Engines that report full information themselves (the simulator) are left alone.
"""

from __future__ import annotations

import numpy as np

from nightjar_rl.decoding.drafters.ngram import NgramDrafter, lookup_continuation
from nightjar_rl.decoding.stats import StepStats

NO_SAMPLE = -1  # shadow_drafted of a row whose proposal is still pending


class NgramShadow:
    """Pending n-gram proposals per request; `before(running)` proposes, `after(stats, rows)` checks."""

    def __init__(self, drafter: NgramDrafter, max_k: int):
        self.drafter, self.max_k = drafter, max_k
        self.pending: dict[str, tuple[list[int], int, int]] = {}  # rid -> (proposal, matched, tokens seen)

    def reset(self) -> None:
        self.pending.clear()

    def before(self, running) -> dict[str, int]:
        """Propose for rows without a pending proposal; the proposal lengths by request id (what the
        drafter holds for each row's next step, capped by its budget)."""
        out = {}
        for seq in running:
            rid = seq.request_id
            if rid not in self.pending:
                proposal = lookup_continuation(np.asarray(seq.tokens, dtype=np.int64), self.max_k,
                                               self.drafter.max_ngram, self.drafter.min_ngram)
                self.pending[rid] = (proposal, 0, len(seq.tokens))
            proposal, matched, _ = self.pending[rid]
            out[rid] = min(len(proposal) - matched, max(0, seq.remaining - 1))
        return out

    def after(self, stats: StepStats, rows: dict) -> None:
        """Fill `stats.shadow_drafted/shadow_accepted` for the decoded rows (`rows`: request id ->
        Sequence of the rows still running after the step; a request that left reports no sample)."""
        drafted, accepted = [], []
        for rid in stats.request_ids:
            entry, seq = self.pending.get(rid), rows.get(rid)
            if entry is None or seq is None:
                drafted.append(NO_SAMPLE)
                accepted.append(0)
                self.pending.pop(rid, None)
                continue
            proposal, matched, seen = entry
            gained = seq.tokens[seen:]
            while matched < len(proposal) and gained and gained[0] == proposal[matched]:
                matched, gained = matched + 1, gained[1:]
            if matched == len(proposal) or gained:  # all of it matched, or a token disagreed: resolved
                drafted.append(len(proposal))
                accepted.append(matched)
                del self.pending[rid]
            else:
                drafted.append(NO_SAMPLE)
                accepted.append(0)
                self.pending[rid] = (proposal, matched, len(seq.tokens))
        stats.shadow_drafted, stats.shadow_accepted = drafted, accepted


def shadow_for(engine, max_k: int) -> NgramShadow | None:
    """An `NgramShadow` for a live engine whose drafter is n-gram (None otherwise, or when the engine
    reports full information itself)."""
    if hasattr(engine, "proposal_lengths"):
        return None
    drafter = getattr(engine, "drafter", None)
    return NgramShadow(drafter, max_k) if isinstance(drafter, NgramDrafter) else None
