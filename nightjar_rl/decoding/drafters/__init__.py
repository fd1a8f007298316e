"""Drafters propose up to k tokens per row behind one interface."""

from nightjar_rl.decoding.drafters.base import Drafter, DraftProposal
from nightjar_rl.decoding.drafters.draft_model import DraftModelDrafter
from nightjar_rl.decoding.drafters.ngram import NgramDrafter

__all__ = ["Drafter", "DraftProposal", "DraftModelDrafter", "NgramDrafter"]
