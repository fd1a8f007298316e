"""The engine: KV cache, drafters, verification, `step(plan)` (a `SpecPlan`, or an int k for every row).

The names below load on first use, so that torch-free parts (the scheduler, sequences, step stats:
what the simulator replays through) import without torch."""

from nightjar_rl.entry_points import lazy_exports

_EXPORTS = {
    "DraftModelDrafter": "nightjar_rl.decoding.drafters", "Drafter": "nightjar_rl.decoding.drafters",
    "DraftProposal": "nightjar_rl.decoding.drafters", "NgramDrafter": "nightjar_rl.decoding.drafters",
    "SpeculativeEngine": "nightjar_rl.decoding.engine", "ParallelBatchDecoder": "nightjar_rl.decoding.parallel",
    "QueueFullError": "nightjar_rl.decoding.scheduler", "Scheduler": "nightjar_rl.decoding.scheduler",
    "Request": "nightjar_rl.decoding.sequence", "Sequence": "nightjar_rl.decoding.sequence",
    "StepStats": "nightjar_rl.decoding.stats", "SamplingParams": "nightjar_rl.decoding.verify",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
