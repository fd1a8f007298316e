"""The engine: KV cache, drafters, verification, `step(plan)` (a `SpecPlan`, or an int k for every row)."""

from nightjar_rl.decoding.drafters import Drafter, DraftModelDrafter, DraftProposal, NgramDrafter
from nightjar_rl.decoding.engine import SpeculativeEngine
from nightjar_rl.decoding.parallel import ParallelBatchDecoder
from nightjar_rl.decoding.scheduler import QueueFullError, Scheduler
from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.decoding.verify import SamplingParams

__all__ = [
    "DraftModelDrafter", "Drafter", "DraftProposal", "NgramDrafter", "SpeculativeEngine",
    "Request", "Sequence", "StepStats", "SamplingParams", "ParallelBatchDecoder",
    "QueueFullError", "Scheduler",
]
