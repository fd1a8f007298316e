"""Serve a whole workload: a `ServingSession` run to the end with a fixed or chosen k."""

from __future__ import annotations

from collections.abc import Callable

from tqdm.auto import tqdm

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.serving.session import ServeResult, ServingSession

KPolicy = int | Callable[[StepStats | None], int]

__all__ = ["KPolicy", "ServeResult", "serve"]


def serve(engine, requests: list[Request], k: KPolicy = 0, progress: bool = True, desc: str = "serving") -> ServeResult:
    """Serve `requests` to completion. `k` is a fixed speculation length or a callable choosing it
    from the previous step's StepStats (None before the first step)."""
    choose = (lambda _: k) if isinstance(k, int) else k
    session = ServingSession(engine, requests)
    last = None
    with tqdm(total=len(session.pending), desc=desc, unit="req", disable=not progress, leave=False) as bar:
        while not session.done:
            session.advance()
            last = session.step(int(choose(last)))
            bar.update(session.num_finished - bar.n)
    missing = {r.request_id for r in requests} - set(session.outputs)
    if missing:
        raise RuntimeError(f"{len(missing)} requests were never served")
    return session.result()
