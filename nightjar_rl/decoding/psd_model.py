"""Analytic model of batch-parallel speculative decoding (PSD) against standard SD.

Standard SD runs a round as draft then verify: `V + t`. PSD splits the batch into two halves and,
in each of two phases, verifies one half while drafting the other, so a round (every row once)
costs `max(V_a, t_b) + max(V_b, t_a) + 2 s` (s: synchronisation per phase). When verify and draft
times scale linearly with the batch (V_a = V_b = V/2, t_a = t_b = t/2) this is `max(V, t) + 2 s`:
the saving is at most 50% (V = t). In the memory-bound regime a half costs nearly as much as the
whole batch (V_a ~ V), and PSD can be slower than standard SD: the model shows both.

Measured times feed `overlap_efficiency`, the share of the ideal gain a run achieved.
"""

from __future__ import annotations

from dataclasses import dataclass


def _check(**times: float) -> None:
    for name, value in times.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def standard_round(verify: float, draft: float) -> float:
    """Standard SD: draft, then verify the whole batch."""
    _check(verify=verify, draft=draft)
    return verify + draft


def psd_round(verify_a: float, draft_a: float, verify_b: float, draft_b: float, sync: float = 0.0) -> float:
    """PSD: phase 1 verifies half a while drafting half b, phase 2 the reverse."""
    _check(verify_a=verify_a, draft_a=draft_a, verify_b=verify_b, draft_b=draft_b, sync=sync)
    return max(verify_a, draft_b) + max(verify_b, draft_a) + 2 * sync


def overlap_efficiency(sequential: float, parallel: float, ideal: float) -> float:
    """(T_sequential - T_parallel) / (T_sequential - T_ideal): 1 = all of the possible overlap gained,
    0 = none, < 0 = slower than running the same work back to back. nan when no gain is possible."""
    _check(sequential=sequential, parallel=parallel, ideal=ideal)
    if ideal > sequential:
        raise ValueError(f"ideal time {ideal} exceeds the sequential time {sequential}")
    gain = sequential - ideal
    return (sequential - parallel) / gain if gain > 0 else float("nan")


@dataclass(frozen=True)
class PSDEstimate:
    standard_s: float  # V(B) + t(B)
    psd_s: float  # max(V(B/2), t(B/2)) x 2 phases + sync
    psd_ideal_s: float  # the same without sync overhead

    @property
    def speedup(self) -> float:
        """Standard time / PSD time (> 1: PSD is faster)."""
        return self.standard_s / self.psd_s if self.psd_s > 0 else float("nan")

    @property
    def saving(self) -> float:
        """Fraction of the standard round time PSD saves (negative: PSD is slower)."""
        return 1.0 - self.psd_s / self.standard_s if self.standard_s > 0 else float("nan")


def estimate(
    verify_full: float, draft_full: float, verify_half: float, draft_half: float, sync: float = 0.0
) -> PSDEstimate:
    """Expected round times for a batch of B rows from measured times at B (`*_full`) and at B/2
    (`*_half`), both halves assumed equal."""
    return PSDEstimate(
        standard_s=standard_round(verify_full, draft_full),
        psd_s=psd_round(verify_half, draft_half, verify_half, draft_half, sync),
        psd_ideal_s=psd_round(verify_half, draft_half, verify_half, draft_half),
    )


def estimate_linear(verify: float, draft: float, sync: float = 0.0) -> PSDEstimate:
    """The paper's view: times proportional to the batch, so each half costs half: max(V, t) + 2 s."""
    return estimate(verify, draft, verify / 2, draft / 2, sync)
