"""The server's engine loop: one thread owns the engine and the policy driver; HTTP handlers talk
to it only through a thread-safe inbox (submit / abort / stop) and per-request callbacks.

`LiveSession` is the live twin of `serving.ServingSession` for `PolicyDriver`: arrivals are HTTP
requests, the clock is wall time since start, and `advance()` blocks while there is nothing to do
(the live equivalent of jumping the clock to the next arrival). Continuous batching is the
engine's: every step admits what fits, so concurrent requests share the batch.

Per-request speculation: a request may carry a cap on its speculation length (`Submission.cap`);
each step runs the policy's decision (a k or a `SpecPlan`) with every capped running row given the
minimum of the two (`SpecPlan.capped`). A request that asks for its speculation metrics gets them
(`SpecCounts.as_dict`) on its last event.

Aborts: a client that goes away has its request aborted with `engine.abort(request_id)`: the slot
and KV are freed at the next step boundary and the sequence leaves with finish_reason "abort".
Overload: `max_waiting` bounds the requests accepted but not yet admitted (the inbox plus the
engine's queue) beyond the batch slots free now; beyond it a request is refused at once (HTTP 503),
and the engine's own `max_waiting` (`QueueFullError`, the same count) backs that up.
Failure and shutdown: requests in flight end with an error event; `on_exit` (if set) is called
when the loop ends, so the server can stop instead of answering 503 forever.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.decoding.sequence import Request
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.runtime.metrics import ServerMetrics, SpecCounts
from nightjar_rl.runtime.policy_spec import RuntimePolicy

FINISH = {"eos": "stop", "length": "length", "abort": "abort"}


@dataclass
class TokenEvent:
    """New tokens of one request; `finish_reason` set on its last event ("error": engine failure),
    with the request's speculation metrics when it asked for them."""

    token_ids: list[int]
    finish_reason: str | None = None
    error: str | None = None
    speculation: dict | None = None


Listener = Callable[[TokenEvent], None]
Ack = Callable[[Exception | None], None]


@dataclass
class Submission:
    """A request handed to the engine loop, with its per-request speculation options."""

    request: Request
    listener: Listener
    ack: Ack
    cap: int | None = None  # at most this many draft tokens per step (0: no speculation); None: no cap
    speculation_metrics: bool = False  # count its drafts for the last event


class LiveSession:
    """The session `PolicyDriver` drives in the server (see module docstring)."""

    def __init__(self, engine, metrics: ServerMetrics | None = None):
        self.engine, self.metrics = engine, metrics
        self.clock = 0.0
        self.stopping = False
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.listeners: dict[str, Listener] = {}
        self.sent: dict[str, int] = {}
        self.caps: dict[str, int] = {}
        self.counts: dict[str, SpecCounts] = {}
        self._t0 = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.stopping

    def advance(self) -> int:
        """Apply queued commands; block while the engine is idle. Returns requests submitted."""
        submitted = 0
        while True:
            block = not self.engine.has_work and not self.stopping
            try:
                cmd = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            except queue.Empty:
                if not block:
                    break
                continue
            submitted += self._apply(*cmd)
            if self.stopping:
                break
        self.clock = time.perf_counter() - self._t0
        return submitted

    def _apply(self, op: str, *args) -> int:
        if op == "submit":
            sub: Submission = args[0]
            rid = sub.request.request_id
            try:
                self.engine.submit(sub.request)  # ValueError: never servable; QueueFullError: queue full
            except ValueError as exc:
                sub.ack(exc)
                return 0
            self.listeners[rid] = sub.listener
            self.sent[rid] = 0
            if sub.cap is not None:
                self.caps[rid] = sub.cap
            if sub.speculation_metrics:
                self.counts[rid] = SpecCounts(self.engine.max_speculation)
            sub.ack(None)
            return 1
        if op == "abort":
            self._abort(args[0])
        elif op == "stop":
            self.stopping = True
        return 0

    def _abort(self, request_id: str) -> None:
        if self.listeners.pop(request_id, None) is not None:
            self._forget(request_id)
            self.engine.abort(request_id)  # slot and KV freed at the next step boundary

    def _forget(self, request_id: str) -> None:
        for table in (self.sent, self.caps, self.counts):
            table.pop(request_id, None)

    def plan(self, decision: SpecPlan | int) -> SpecPlan | int:
        """The step's plan: the policy's decision with each capped running request at most its cap."""
        if not self.caps:
            return decision
        running = {rid: self.caps[rid] for rid in (s.request_id for s in self.engine.running) if rid in self.caps}
        return SpecPlan.coerce(decision).capped(running) if running else decision

    def step(self, plan: SpecPlan | int) -> StepStats:
        stats = self.engine.step(self.plan(plan))
        self.clock = time.perf_counter() - self._t0
        if self.metrics is not None:
            self.metrics.record_step(stats, len(self.engine.running), len(self.engine.waiting))
        if self.counts:
            for rid, d, a in zip(stats.request_ids, stats.drafted, stats.accepted):
                if rid in self.counts:
                    self.counts[rid].add(d, a)
        for seq in self.engine.running:
            self._emit(seq.request_id, seq.output_ids, None)
        for seq in self.engine.pop_finished():
            reason = FINISH.get(seq.finish_reason or "", seq.finish_reason or "stop")
            if self.metrics is not None:
                self.metrics.record_finish(reason)
            self._emit(seq.request_id, seq.output_ids, reason)
            self._forget(seq.request_id)
            self.listeners.pop(seq.request_id, None)
        return stats

    def _emit(self, request_id: str, output: list[int], finish: str | None) -> None:
        listener = self.listeners.get(request_id)
        if listener is None:
            return
        sent = self.sent[request_id]
        if len(output) > sent or finish is not None:
            self.sent[request_id] = len(output)
            counts = self.counts.get(request_id) if finish is not None else None
            listener(TokenEvent(list(output[sent:]), finish, speculation=counts.as_dict() if counts else None))

    def fail_all(self, message: str) -> None:
        """End every request in flight with an error event; one listener failing does not stop the
        others from being told (nor the loop's shutdown)."""
        for listener in self.listeners.values():
            try:
                listener(TokenEvent([], "error", message))
            except Exception:  # noqa: BLE001 - its client is gone; the others still must hear
                continue
        self.listeners.clear()


class EngineLoop:
    """Runs `PolicyDriver` over a `LiveSession` in a dedicated thread (see module docstring)."""

    def __init__(self, engine, rp: RuntimePolicy, metrics: ServerMetrics, max_waiting: int | None = None):
        self.engine, self.rp, self.metrics = engine, rp, metrics
        self.max_waiting = max_waiting
        self.session = LiveSession(engine, metrics)
        self.driver = rp.driver(self.session)
        self.error: str | None = None
        self.finish_lines: list[str] = []
        self.on_exit: Callable[[], None] | None = None  # called from the engine thread when the loop ends
        self._pending = 0  # submissions not yet applied by the engine thread
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="nightjar-engine", daemon=True)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None and not self.session.stopping

    def start(self) -> EngineLoop:
        self.thread.start()
        return self

    def queue_depth(self) -> int:
        """Requests accepted but not yet admitted, beyond the free batch slots (approximate, any thread)."""
        return self.engine.backlog(self._pending)

    def submit(self, request: Request, listener: Listener, ack: Ack, cap: int | None = None,
               speculation_metrics: bool = False) -> None:
        """Queue `request` (at most `cap` draft tokens per step, if given); `ack(None)` once the
        engine took it, `ack(exc)` if it refused it (queue full, or a request that can never fit)."""
        def acked(exc: Exception | None) -> None:
            with self._lock:
                self._pending -= 1
            ack(exc)

        refusal = None
        with self._lock:  # the shutdown takes this lock too: a submission is either queued before the
            if not self.alive:  # final drain (and answered by it) or refused here, never lost between
                refusal = OverloadedError(self.error or "the server is shutting down")
            elif self.max_waiting is not None and self.queue_depth() >= self.max_waiting:
                refusal = OverloadedError(f"the waiting queue is full ({self.max_waiting} requests); retry later")
            else:
                self._pending += 1
                self.session.inbox.put(("submit", Submission(request, listener, acked, cap, speculation_metrics)))
        if refusal is not None:
            ack(refusal)

    def abort(self, request_id: str) -> None:
        self.session.inbox.put(("abort", request_id))

    def shutdown(self) -> None:
        """Ask the loop to stop without waiting (requests in flight end with an error event)."""
        self.session.inbox.put(("stop",))

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Stop the loop (requests in flight end with an error), save the learned policy and the
        step log. Returns the lines describing what was saved."""
        self.shutdown()
        if self.thread.is_alive():
            self.thread.join(timeout)
        return self.finish_lines

    def _run(self) -> None:
        try:
            self.driver.drive(self.rp.on_step)
        except Exception as exc:  # an engine failure must not hang the clients
            self.error = f"engine failed: {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self.session.stopping = True
            self.session.fail_all(self.error or "server shutting down")
            self._drain_refusing()
            try:
                self.finish_lines = self.rp.finish()
            finally:
                self.engine.close()
                if self.on_exit is not None:
                    self.on_exit()

    def _drain_refusing(self) -> None:
        while True:
            try:
                cmd = self.session.inbox.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "submit":
                cmd[1].ack(OverloadedError("the server is shutting down"))


class OverloadedError(Exception):
    """The server cannot take the request now (HTTP 503)."""
