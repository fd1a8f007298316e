"""Serve a whole workload: a `ServingSession` run to the end by the runtime's policy driver."""

from __future__ import annotations

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.serving.session import ServeResult, ServingSession

__all__ = ["ServeResult", "serve"]


def serve(engine, requests: list[Request], k=0, progress: bool = True, desc: str = "serving") -> ServeResult:
    """Serve `requests` to completion on `engine` (any `EngineSurface`). `k` is a fixed speculation
    length or a policy (`predict(obs) -> k`, see `nightjar_rl.policy`), driven by `PolicyDriver`."""
    from nightjar_rl.policy.baselines import FixedK  # local: policies import the env's observation layout
    from nightjar_rl.runtime.driver import PolicyDriver

    max_k = engine.max_speculation
    policy = FixedK(int(k), max_k) if isinstance(k, int) else k
    driver = PolicyDriver(ServingSession(engine, requests), max_k, policy)
    return driver.run(progress=progress, desc=desc)
