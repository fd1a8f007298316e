"""Drafters propose up to k tokens per row behind one interface.

The names below load on first use: the registry (`nightjar_rl.decoding.drafters.registry`) is
torch-free, and importing it must not load the drafters."""

from nightjar_rl.entry_points import lazy_exports

_EXPORTS = {
    "Drafter": "nightjar_rl.decoding.drafters.base", "DraftProposal": "nightjar_rl.decoding.drafters.base",
    "DraftModelDrafter": "nightjar_rl.decoding.drafters.draft_model", "NgramDrafter": "nightjar_rl.decoding.drafters.ngram",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
