"""Workloads, arrival processes, the serving session (clock, arrivals, per-request table) and
per-request metrics. `nightjar_rl.runtime.serve` serves a workload through the policy driver."""

from nightjar_rl.serving.metrics import summarize
from nightjar_rl.serving.session import ServeResult, ServingSession
from nightjar_rl.serving.workload import (
    PromptRecord,
    WorkloadError,
    build_requests,
    load_prompts,
    poisson_arrivals,
)

__all__ = [
    "ServeResult", "ServingSession", "summarize", "PromptRecord", "WorkloadError", "build_requests", "load_prompts",
    "poisson_arrivals",
]
