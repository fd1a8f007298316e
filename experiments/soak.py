"""Soak: serve at many times the saturation rate for minutes, with aborts and injected drafter faults,
and check that every request is accounted for exactly once while memory stays flat.

Per model (and decoder):
  1. calibrate: keep the batch full for `--calibrate-s` seconds; saturation rate = tokens/s / max_new_tokens
  2. soak: Poisson arrivals at `--overload` x that rate for `--minutes`, in real time. The waiting queue
     is bounded (`--max-waiting`): arrivals beyond it are rejected (QueueFullError). A fraction
     `--abort-frac` of the accepted requests is aborted after a random delay; the drafter raises on a
     fraction `--draft-fault-rate` of its calls (and the target on `--target-fault-rate` of its forwards)
  3. drain: no more arrivals; serve what was accepted to the end
`--through server` runs the same soak through the OpenAI-compatible server (in its own process, on a
free port): every arrival is a streamed `/v1/completions` request (at most `--client-max-rate` per
second: past that the clients, not the server, are what is measured), an abort is a client that hangs up,
the queue bound answers 503, and `/health` is polled once a second (its worst latency is reported).
Each request the server accepted must end exactly once: the server's finished count (by reason) is
checked against what the clients saw.
Reported: requests created / completed / aborted / rejected / failed / unaccounted / duplicates, draft
failures, peak RSS at the start and at the end of the soak, and per window: tokens/s, completions/s,
queue length, current RSS.

Examples:
  python experiments/soak.py --quick --out-dir /tmp/soak                          # seconds: tiny random model
  python experiments/soak.py --models tiny-random --minutes 0.33 --window-s 5     # quick check
  python experiments/soak.py                                                     # 10 min, tiny + smollm2
  python experiments/soak.py --through engine,server                             # both paths, 10 min each
Outputs: a table on stdout and runs/soak/<run name>/{windows.csv,summary.json}. Exit status 1 when a
request is lost or served twice.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import logging
import random
import resource
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import quickmode  # same folder

from nightjar_rl.decoding import QueueFullError, Request
from nightjar_rl.env.recorder import write_table
from nightjar_rl.io import atomic_write_json
from nightjar_rl.models import load_model
from nightjar_rl.serving import load_prompts
from nightjar_rl.stack import EngineConfig, build_stack
from nightjar_rl.text import encode_prompt

# request states, one byte per request created
NEW, QUEUED, REJECTED, COMPLETED, ABORTED, FAILED, UNSENT = range(7)  # UNSENT: the client could not send it
OUTCOME = {"eos": COMPLETED, "length": COMPLETED, "abort": ABORTED, "error": FAILED}


@dataclass
class SoakConfig:
    models: str = "tiny-random,smollm2-135m"  # comma-separated targets
    decoders: str = "standard"  # comma-separated: standard, parallel
    through: str = "engine"  # comma-separated: engine (stepped here), server (HTTP clients)
    drafter: str = "ngram"  # ngram | draft (with --draft) | sssd
    draft: str = ""  # draft model for --drafter draft, e.g. early-exit:8
    minutes: float = 10.0  # soak length per model and decoder
    overload: float = 10.0  # arrival rate, in multiples of the measured saturation rate
    calibrate_s: float = 20.0  # seconds of full-batch serving to measure the saturation rate
    window_s: float = 30.0  # throughput reporting window
    k: int = 3
    max_batch_size: int = 16
    max_waiting: int = 64
    max_new_tokens: int = 32
    max_seq_len: int = 512
    abort_frac: float = 0.05  # share of accepted requests aborted after a random delay
    abort_within_s: float = 5.0  # abort delays are uniform in [0, this]
    draft_fault_rate: float = 0.02  # share of drafter calls that raise
    target_fault_rate: float = 0.0  # share of target forwards that raise (their rows fail)
    drain_s: float = 300.0  # longest time to serve what was accepted after the soak
    max_connections: int = 256  # --through server: client connections; more arrivals wait in the client pool
    client_max_rate: float = 150.0  # --through server: arrivals/s at most; one Python process of httpx clients
    # on 2 cores falls behind near 200/s, and then it measures the client, not the server
    threads: int = 0  # torch CPU threads (0: torch's choice)
    seed: int = 0
    out: str = "runs/soak"


QUICK = {"models": "tiny-random", "through": "engine,server", "minutes": 0.1, "calibrate_s": 1.0, "window_s": 2.0, "max_batch_size": 4,
         "max_waiting": 16, "drain_s": 30.0, "threads": 1}


def parse_args() -> SoakConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in vars(SoakConfig()).items():
        flags = [f"--{name.replace('_', '-')}"] + (["--out-dir"] if name == "out" else [])
        parser.add_argument(*flags, dest=name, type=type(default), default=default)
    args = vars(quickmode.parse_args(parser, QUICK))
    del args["quick"]
    cfg = SoakConfig(**args)
    for name in ("minutes", "overload", "calibrate_s", "window_s", "client_max_rate"):
        if not getattr(cfg, name) > 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0")
    if not set(cfg.through.split(",")) <= {"engine", "server"}:
        raise SystemExit(f"--through takes engine and/or server (comma-separated), got {cfg.through!r}")
    for name in ("abort_frac", "draft_fault_rate", "target_fault_rate"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be in [0, 1]")
    return cfg


def rss_mb() -> float:
    """Current resident set size (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of the process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inject_faults(obj, name: str, rate: float, rng: random.Random, message: str) -> None:
    """Make `obj.name(...)` raise RuntimeError(message) on a random share `rate` of its calls."""
    if rate <= 0 or obj is None:
        return
    inner = getattr(obj, name)

    def flaky(*args, **kwargs):
        if rng.random() < rate:
            raise RuntimeError(message)
        return inner(*args, **kwargs)

    setattr(obj, name, flaky)


class Soak:
    """One engine under overload: arrivals, aborts, stepping, and exactly-once accounting."""

    def __init__(self, engine, prompts: list[list[int]], cfg: SoakConfig, rng: np.random.Generator):
        self.engine, self.prompts, self.cfg, self.rng = engine, prompts, cfg, rng
        self.state = bytearray()  # per request created
        self.duplicates = 0
        self.draft_failures = 0
        self.tokens = 0  # output tokens produced
        self.left = 0  # requests that left the engine (any finish reason)
        self._aborts: list[tuple[float, str]] = []  # (due time, request id)

    def count(self, state: int) -> int:
        return self.state.count(state)

    def arrive(self, t: float) -> None:
        i = len(self.state)
        self.state.append(NEW)
        req = Request(f"s{i}", self.prompts[i % len(self.prompts)], self.cfg.max_new_tokens, arrival_time=t)
        try:
            self.engine.submit(req)
        except QueueFullError:
            self.state[i] = REJECTED
            return
        self.state[i] = QUEUED
        if self.rng.random() < self.cfg.abort_frac:
            heapq.heappush(self._aborts, (t + self.rng.uniform(0, self.cfg.abort_within_s), req.request_id))

    def abort_due(self, t: float) -> None:
        while self._aborts and self._aborts[0][0] <= t:
            self.engine.abort(heapq.heappop(self._aborts)[1])  # False when it already left: fine

    def step(self) -> None:
        stats = self.engine.step(self.cfg.k)
        self.draft_failures += stats.draft_failures
        self.tokens += stats.tokens_out
        for seq in self.engine.pop_finished():
            i = int(seq.request_id[1:])
            if self.state[i] != QUEUED:
                self.duplicates += 1
            self.state[i] = OUTCOME[seq.finish_reason]
            self.left += 1


def calibrate(engine, prompts: list[list[int]], cfg: SoakConfig) -> float:
    """The saturation rate (requests/s): output tokens/s with the batch kept full (for `calibrate_s`
    and until one batch has turned over, prefill included), over the tokens a request asks for."""
    submitted = tokens = done = 0
    start = time.perf_counter()
    # at least one batch turned over (prefill included), at most 10 x calibrate_s
    while (elapsed := time.perf_counter() - start) < cfg.calibrate_s or (
        done < cfg.max_batch_size and elapsed < 10 * cfg.calibrate_s
    ):
        while len(engine.waiting) < min(cfg.max_batch_size, cfg.max_waiting):
            engine.submit(Request(f"c{submitted}", prompts[submitted % len(prompts)], cfg.max_new_tokens))
            submitted += 1
        tokens += engine.step(cfg.k).tokens_out
        done += len(engine.pop_finished())
    for rid in [s.request_id for s in engine.running] + [r.request_id for r in engine.waiting]:
        engine.abort(rid)
    while engine.has_work:
        engine.step(0)
        engine.pop_finished()
    return max(tokens, 1) / elapsed / cfg.max_new_tokens


def prompts_for(loaded, cfg: SoakConfig) -> list[list[int]]:
    """The bundled prompts as token ids, cut to leave room for the output."""
    vocab = loaded.model.config.vocab_size
    limit = cfg.max_seq_len - cfg.max_new_tokens
    return [encode_prompt(loaded.tokenizer, r.prompt, vocab)[-limit:] for r in load_prompts()]


def prepare(model_name: str, decoder: str, loaded, cfg: SoakConfig):
    """(stack, token prompts, saturation rate): a calibrated engine with the soak's faults injected."""
    engine_cfg = EngineConfig(
        model=model_name, drafter=cfg.drafter, draft=cfg.draft or None, decoder=decoder,
        max_batch_size=cfg.max_batch_size, max_seq_len=cfg.max_seq_len, max_speculation=max(cfg.k, 1),
        max_waiting=cfg.max_waiting, seed=cfg.seed,
    )
    stack = build_stack(engine_cfg, target=loaded)
    engine = stack.engine
    prompts = prompts_for(loaded, cfg)
    saturation = calibrate(engine, prompts, cfg)
    fault_rng = random.Random(cfg.seed)
    inject_faults(engine.drafter, "propose", cfg.draft_fault_rate, fault_rng, "injected drafter fault")
    inject_faults(engine.runner, "forward", cfg.target_fault_rate, fault_rng, "injected target fault")
    return stack, prompts, saturation


def soak_one(model_name: str, decoder: str, loaded, cfg: SoakConfig) -> tuple[dict, pd.DataFrame]:
    rng = np.random.default_rng(cfg.seed)
    stack, prompts, saturation = prepare(model_name, decoder, loaded, cfg)
    engine = stack.engine
    rate = cfg.overload * saturation
    soak = Soak(engine, prompts, cfg, rng)
    rss_start, peak_start = rss_mb(), peak_rss_mb()
    windows: list[dict] = []
    start = time.perf_counter()
    end = start + cfg.minutes * 60
    next_arrival = start + rng.exponential(1 / rate)
    win_start, win_tokens, win_left = start, 0, 0
    with engine:
        while (now := time.perf_counter()) < end:
            while next_arrival <= now:
                soak.arrive(next_arrival - start)
                next_arrival += rng.exponential(1 / rate)
            soak.abort_due(now - start)
            if engine.has_work:
                soak.step()
            else:
                time.sleep(max(0.0, min(next_arrival, end) - time.perf_counter()))
            if (t := time.perf_counter()) - win_start >= cfg.window_s:
                span = t - win_start
                windows.append(dict(
                    model=model_name, decoder=decoder, through="engine", t_s=round(t - start, 1),
                    tokens_per_s=round((soak.tokens - win_tokens) / span, 1),
                    left_per_s=round((soak.left - win_left) / span, 2), created=len(soak.state),
                    waiting=len(engine.waiting), running=len(engine.running), rss_mb=round(rss_mb(), 1),
                ))
                win_start, win_tokens, win_left = t, soak.tokens, soak.left
        rss_end, peak_end = rss_mb(), peak_rss_mb()
        drain_end = time.perf_counter() + cfg.drain_s
        while engine.has_work and time.perf_counter() < drain_end:
            soak.step()
    created = len(soak.state)
    summary = dict(
        model=model_name, decoder=decoder, through="engine", saturation_req_s=round(saturation, 2), arrival_rate_req_s=round(rate, 2),
        created=created, completed=soak.count(COMPLETED), aborted=soak.count(ABORTED), rejected=soak.count(REJECTED),
        failed=soak.count(FAILED), unaccounted=soak.count(QUEUED) + soak.count(NEW), duplicates=soak.duplicates,
        draft_failures=soak.draft_failures, rss_start_mb=round(rss_start, 1), rss_end_mb=round(rss_end, 1),
        peak_rss_start_mb=round(peak_start, 1), peak_rss_end_mb=round(peak_end, 1),
    )
    return summary, pd.DataFrame(windows)


async def _client(client, url: str, prompt: list[int], cfg: SoakConfig, abort_after: float | None,
                  accepted: list[bool]) -> int:
    """One streamed request; its outcome as seen by the client: REJECTED (503), COMPLETED, ABORTED (the
    client hung up after the server accepted it), FAILED (an error event or another status); QUEUED
    when an accepted stream ended without a terminal event (a lost request). Sets `accepted[0]` once
    the server answered 200."""
    body = {"prompt": prompt, "max_tokens": cfg.max_new_tokens, "stream": True, "temperature": 0}
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code == 503:
            return REJECTED
        if response.status_code != 200:
            return FAILED
        accepted[0] = True

        async def read() -> int:
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return FAILED
                if event["choices"][0].get("finish_reason"):
                    return COMPLETED
            return QUEUED

        if abort_after is None:
            return await read()
        try:
            return await asyncio.wait_for(read(), abort_after)
        except asyncio.TimeoutError:
            return ABORTED  # leaving the block closes the connection: the server aborts the request


async def _drive_server(url: str, pid: int, prompts: list[list[int]], cfg: SoakConfig, rate: float,
                        rng: np.random.Generator, model_name: str, decoder: str):
    """Clients at `rate` for `cfg.minutes`, `/health` polled every second, then the drain. Returns
    (per-request outcomes, windows, /health latencies in ms, the server's RSS at the end of the soak)."""
    import httpx

    state = bytearray()
    tasks: list[asyncio.Task] = []
    windows: list[dict] = []
    health_ms: list[float] = []
    client_errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_connections)
    async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.drain_s + 60), limits=limits) as client:

        async def request(i: int) -> None:
            abort_after = rng.uniform(0, cfg.abort_within_s) if rng.random() < cfg.abort_frac else None
            accepted = [False]
            try:
                state[i] = await _client(client, url, prompts[i % len(prompts)], cfg, abort_after, accepted)
            except httpx.HTTPError as exc:  # after a 200 the server sees a hang-up: an abort
                state[i] = ABORTED if accepted[0] else UNSENT
                client_errors[type(exc).__name__] += 1

        stop_polling = threading.Event()

        def poll_health() -> None:  # its own thread and connection: the clients' queueing is not counted
            with httpx.Client(timeout=60) as poller:
                while not stop_polling.wait(1.0):
                    t = time.perf_counter()
                    poller.get(f"{url}/health")
                    health_ms.append((time.perf_counter() - t) * 1000)

        async def tokens_out() -> float:
            return (await asyncio.to_thread(_server_metrics, url)).get("tokens", 0.0)

        poller = threading.Thread(target=poll_health, daemon=True)
        poller.start()
        start = time.perf_counter()
        end = start + cfg.minutes * 60
        next_arrival = start + rng.exponential(1 / rate)
        win_start, win_tokens, win_done = start, await tokens_out(), 0
        while (now := time.perf_counter()) < end:
            while next_arrival <= now:
                state.append(NEW)
                tasks.append(asyncio.ensure_future(request(len(state) - 1)))
                next_arrival += rng.exponential(1 / rate)
            await asyncio.sleep(max(0.0, min(next_arrival, end) - time.perf_counter()))
            if (t := time.perf_counter()) - win_start >= cfg.window_s:
                span, done, tokens = t - win_start, sum(task.done() for task in tasks), await tokens_out()
                windows.append(dict(
                    model=model_name, decoder=decoder, through="server", t_s=round(t - start, 1),
                    tokens_per_s=round((tokens - win_tokens) / span, 1), left_per_s=round((done - win_done) / span, 2),
                    created=len(state), in_flight=len(tasks) - done, rss_mb=round(_process_rss_mb(pid), 1),
                ))
                win_start, win_tokens, win_done = t, tokens, done
        rss_end = _process_rss_mb(pid)
        if tasks:
            await asyncio.wait(tasks, timeout=cfg.drain_s)
        stop_polling.set()
        poller.join()
    return state, windows, health_ms, rss_end, client_errors


def _serve_child(cfg: SoakConfig, model_name: str, decoder: str, port_queue, stop_event) -> None:
    """The server process: a calibrated engine with faults injected, served on a free port until
    `stop_event`; sends (port, saturation rate) once it listens."""
    from nightjar_rl.runtime.policy_spec import runtime_policy
    from nightjar_rl.runtime.server import build_server, start_in_thread

    logging.getLogger("nightjar_rl.decoding").setLevel(logging.ERROR)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    stack, _, saturation = prepare(model_name, decoder, load_model(model_name), cfg)
    app, loop = build_server(stack, runtime_policy(max(cfg.k, 1), k=cfg.k))
    http, thread, url = start_in_thread(app, engine_loop=loop)
    port_queue.put((url, saturation))
    stop_event.wait()
    http.should_exit = True
    thread.join(30)
    loop.stop()


def _server_metrics(url: str) -> dict[str, float]:
    """The server's Prometheus counters we account with: finished requests by reason, tokens out."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("vllm:request_success_total"):
            out[line.split('finished_reason="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:generation_tokens_total"):
            out["tokens"] = float(line.rsplit(" ", 1)[1])
    return out


def _process_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def soak_server_one(model_name: str, decoder: str, loaded, cfg: SoakConfig) -> tuple[dict, pd.DataFrame]:
    """The soak through the HTTP server, run in its own process (as users run it) while this process
    is the clients: streamed requests at `overload` x the saturation rate, hang-ups as aborts."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    port_queue, stop_event = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_serve_child, args=(cfg, model_name, decoder, port_queue, stop_event), daemon=True)
    child.start()
    try:
        url, saturation = port_queue.get(timeout=600)
        rate = min(cfg.overload * saturation, cfg.client_max_rate)
        rng = np.random.default_rng(cfg.seed)
        rss_start = _process_rss_mb(child.pid)
        state, windows, health_ms, rss_end, client_errors = asyncio.run(
            _drive_server(url, child.pid, prompts_for(loaded, cfg), cfg, rate, rng, model_name, decoder))
        time.sleep(1.0)  # the engine thread records an abort at the step after the hang-up
        finished = _server_metrics(url)
    finally:
        stop_event.set()
        child.join(60)
        if child.is_alive():
            child.kill()
    tokens = finished.pop("tokens", 0)
    accepted = sum(state.count(s) for s in (COMPLETED, ABORTED, QUEUED)) + finished.get("error", 0)
    server_finished = int(sum(finished.values()))
    summary = dict(
        model=model_name, decoder=decoder, through="server", saturation_req_s=round(saturation, 2),
        arrival_rate_req_s=round(rate, 2), created=len(state), completed=state.count(COMPLETED),
        aborted=state.count(ABORTED), rejected=state.count(REJECTED), failed=state.count(FAILED),
        unsent=state.count(UNSENT), client_errors=" ".join(f"{k}={n}" for k, n in client_errors.items()) or "none",
        unaccounted=state.count(QUEUED) + state.count(NEW) + max(0, accepted - server_finished),
        duplicates=max(0, server_finished - accepted), tokens_out=int(tokens),
        server_finished=" ".join(f"{r}={int(n)}" for r, n in finished.items()),
        health_ms_max=round(max(health_ms), 1) if health_ms else float("nan"),
        health_ms_p50=round(float(np.median(health_ms)), 1) if health_ms else float("nan"),
        server_rss_start_mb=round(rss_start, 1), server_rss_end_mb=round(rss_end, 1),
    )
    return summary, pd.DataFrame(windows)


def main() -> int:
    cfg = parse_args()
    logging.getLogger("nightjar_rl.decoding").setLevel(logging.ERROR)  # injected faults: counted, not logged
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    run = f"soak__{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(cfg.out) / run
    summaries, frames = [], []
    for model_name in cfg.models.split(","):
        loaded = load_model(model_name)
        for decoder in cfg.decoders.split(","):
            for through in cfg.through.split(","):
                run_one = soak_server_one if through == "server" else soak_one
                summary, windows = run_one(model_name, decoder, loaded, cfg)
                summaries.append(summary)
                frames.append(windows)
                print(windows.to_string(index=False) if len(windows) else "(no full window)")
                print(pd.Series(summary).to_string(), "\n", flush=True)
    write_table(pd.concat(frames), out / "windows.csv")
    atomic_write_json(out / "summary.json", {"config": asdict(cfg), "runs": summaries})
    print(f"wrote {out}")
    lost = [s for s in summaries if s["unaccounted"] or s["duplicates"]]
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
