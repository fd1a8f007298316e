"""The serving loop: feed arrivals to the engine, step it, and time every request.

Time is the measured wall time of each step; when nothing is running or queued the clock jumps to
the next arrival. A request arriving during a step is submitted before the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
from tqdm.auto import tqdm

from nightjar_rl.decoding.sequence import Request
from nightjar_rl.decoding.stats import StepStats

KPolicy = int | Callable[[StepStats | None], int]


@dataclass
class ServeResult:
    requests: pd.DataFrame  # one row per request
    steps: list[StepStats] = field(default_factory=list)
    outputs: dict[str, list[int]] = field(default_factory=dict)  # request id -> generated token ids
    duration: float = 0.0  # clock at the end (seconds since t=0)


def serve(engine, requests: list[Request], k: KPolicy = 0, progress: bool = True, desc: str = "serving") -> ServeResult:
    """Serve `requests` to completion. `k` is a fixed speculation length or a callable choosing it
    from the previous step's StepStats (None before the first step)."""
    choose = (lambda _: k) if isinstance(k, int) else k
    pending = sorted(requests, key=lambda r: r.arrival_time)
    arrival = {r.request_id: r.arrival_time for r in pending}
    first_token: dict[str, float] = {}
    rows: list[dict] = []
    outputs: dict[str, list[int]] = {}
    steps: list[StepStats] = []
    clock, nxt, last = 0.0, 0, None
    bar = tqdm(total=len(pending), desc=desc, unit="req", disable=not progress, leave=False)
    while nxt < len(pending) or engine.has_work:
        while nxt < len(pending) and pending[nxt].arrival_time <= clock:
            engine.submit(pending[nxt])
            nxt += 1
        if not engine.has_work:
            clock = pending[nxt].arrival_time
            continue
        last = engine.step(int(choose(last)))
        steps.append(last)
        clock += last.wall_time
        for rid in last.first_token_ids:
            first_token[rid] = clock
        for seq in engine.pop_finished():
            rid = seq.request_id
            if rid in outputs:
                raise RuntimeError(f"request {rid} finished twice")
            outputs[rid] = seq.output_ids
            rows.append(
                dict(
                    request_id=rid,
                    arrival=arrival[rid],
                    first_token=first_token[rid],
                    finish=clock,
                    prompt_tokens=seq.num_prompt,
                    output_tokens=len(seq.output_ids),
                    drafted=seq.drafted,
                    accepted=seq.accepted,
                    decode_steps=seq.steps,
                    finish_reason=seq.finish_reason,
                )
            )
            bar.update(1)
    bar.close()
    missing = {r.request_id for r in pending} - set(outputs)
    if missing:
        raise RuntimeError(f"{len(missing)} requests were never served")
    df = pd.DataFrame(rows)
    if len(df):
        df["ttft"] = df["first_token"] - df["arrival"]
        df["e2e"] = df["finish"] - df["arrival"]
        df["tpot"] = (df["finish"] - df["first_token"]) / (df["output_tokens"] - 1).clip(lower=1)
    return ServeResult(requests=df, steps=steps, outputs=outputs, duration=clock)
