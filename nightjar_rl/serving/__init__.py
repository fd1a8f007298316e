"""Workloads, arrival processes, the serving loop and per-request metrics."""

from nightjar_rl.serving.loop import serve
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
    "ServeResult", "ServingSession", "serve", "summarize", "PromptRecord", "WorkloadError", "build_requests", "load_prompts",
    "poisson_arrivals",
]
