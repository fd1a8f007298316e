"""The OpenAI-compatible server on the tiny model: streaming and not, concurrency, disconnects,
400/404/503 errors, Prometheus metrics, and greedy outputs identical to `generate`."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from nightjar_rl.cli import main  # noqa: E402

from .servers import SEQ, slow_engine, start_server, stop_server  # noqa: E402

PROMPTS = ["hello there, how are you", "a b a b a b a b", "def f(x): return x", "the quick brown fox"]


@pytest.fixture(scope="module")
def srv():
    server, thread, url, loop = start_server()
    yield url, loop
    stop_server(server, thread, loop)


def _complete(url, prompt, max_tokens=12, **extra) -> dict:
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny-random", "prompt": prompt, "max_tokens": max_tokens,
                                                  "return_token_ids": True, **extra}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_models_and_health(srv):
    url, _ = srv
    assert httpx.get(f"{url}/health").status_code == 200
    models = httpx.get(f"{url}/v1/models").json()
    assert models["data"][0]["id"] == "tiny-random" and models["data"][0]["max_model_len"] == SEQ


def test_greedy_outputs_identical_to_generate(srv, tmp_path):
    url, _ = srv
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "g.jsonl"
    assert main(["generate", "--model", "tiny-random", "--prompts", str(prompts), "--max-new-tokens", "12",
                 "--max-seq-len", str(SEQ), "--k", "0", "--drafter", "none", "--out", str(out), "--quiet"]) == 0
    expected = [json.loads(line)["token_ids"] for line in out.read_text().splitlines()]
    got = [_complete(url, p)["choices"][0]["token_ids"] for p in PROMPTS]
    assert got == expected
    chat = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-random", "max_tokens": 12, "return_token_ids": True,
                                                         "messages": [{"role": "user", "content": PROMPTS[0]}]}).json()
    assert chat["choices"][0]["token_ids"] == expected[0]  # no chat template: one user message is the prompt itself
    assert chat["choices"][0]["message"]["content"] == "".join(f"<{t}>" for t in expected[0])


def test_openai_client_streams_chat_and_completions(srv):
    url, _ = srv
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    full = _complete(url, PROMPTS[1])
    stream = client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": PROMPTS[1]}],
                                            max_tokens=12, stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text == full["choices"][0]["text"] and finish == "length"
    assert usage.completion_tokens == 12 and usage.prompt_tokens == len(PROMPTS[1])
    pieces = [c.choices[0].text for c in client.completions.create(model="tiny-random", prompt=PROMPTS[1],
                                                                   max_tokens=12, stream=True)]
    assert "".join(pieces) == full["choices"][0]["text"]
    plain = client.completions.create(model="tiny-random", prompt=PROMPTS[1], max_tokens=12)
    assert plain.choices[0].text == full["choices"][0]["text"] and plain.usage.total_tokens == len(PROMPTS[1]) + 12


def test_concurrent_requests_batch_and_each_finish_once(srv):
    url, _ = srv
    solo = {p: _complete(url, p, 16)["choices"][0]["token_ids"] for p in PROMPTS}

    async def run():
        async with httpx.AsyncClient(timeout=60) as client:
            async def one(p):
                r = await client.post(f"{url}/v1/completions", json={"prompt": p, "max_tokens": 16, "return_token_ids": True})
                return p, r.json()["choices"][0]["token_ids"]
            return await asyncio.gather(*(one(p) for p in PROMPTS * 3))

    results = asyncio.run(run())
    assert len(results) == 12 and all(ids == solo[p] for p, ids in results)


def _metrics(url) -> dict:
    fams = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return {(s.name, s.labels.get("position", s.labels.get("finished_reason"))): s.value for f in fams for s in f.samples}


def test_metrics_parse_and_count_speculation(srv):
    url, _ = srv
    _complete(url, PROMPTS[1], 20)
    m = _metrics(url)
    drafts = m[("vllm:spec_decode_num_drafts_total", None)]
    accepted = m[("vllm:spec_decode_num_accepted_tokens_total", None)]
    assert drafts > 0 and m[("vllm:spec_decode_num_draft_tokens_total", None)] >= accepted
    assert m[("vllm:spec_decode_num_accepted_tokens_per_pos_total", "0")] <= drafts
    assert sum(v for (name, _), v in m.items() if name == "vllm:spec_decode_num_accepted_tokens_per_pos_total") == accepted
    assert ("nightjar:speculation_k", None) in m and ("nightjar:batch_size", None) in m
    assert m[("vllm:request_success_total", "length")] >= 1


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"prompt": "x" * (SEQ - 4), "max_tokens": 10}, 400, "maximum context length"),
        ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 4}, 400, "prompt"),
        ({"prompt": "hi", "model": "gpt-4"}, 404, "does not exist"),
        ({"prompt": "hi", "temperature": 0.7}, 400, "temperature"),
        ({"prompt": "hi", "n": 2}, 400, "n > 1"),
        ({"prompt": [1, 2, 999]}, 400, "token ids"),
    ],
)
def test_bad_requests_get_openai_errors(srv, body, status, message):
    url, _ = srv
    r = httpx.post(f"{url}/v1/completions", json=body)
    assert r.status_code == status and message in r.json()["error"]["message"]


def test_malformed_json_is_400(srv):
    url, _ = srv
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_streaming_disconnect_aborts_the_request():
    server, thread, url, loop = start_server(policy="fixed-0")
    slow_engine(loop)
    try:
        with httpx.Client(timeout=30) as client:
            with client.stream("POST", f"{url}/v1/completions",
                               json={"prompt": "abort me", "max_tokens": 100, "stream": True}) as r:
                next(r.iter_lines())
                assert len(loop.session.listeners) == 1
        deadline = time.time() + 60  # the abort lands at a step boundary on a shared, loaded machine
        while loop.session.listeners and time.time() < deadline:
            time.sleep(0.05)
        assert not loop.session.listeners  # dropped from the server's bookkeeping
        deadline = time.time() + 60  # the engine frees it at the next step boundary and reports "abort"
        while _metrics(url).get(("vllm:request_success_total", "abort"), 0) < 1 and time.time() < deadline:
            time.sleep(0.1)
        assert _metrics(url)[("vllm:request_success_total", "abort")] >= 1
        assert not loop.engine.running and not loop.engine.waiting  # slot and KV freed
    finally:
        stop_server(server, thread, loop)


def test_full_queue_gets_503():
    server, thread, url, loop = start_server(policy="fixed-0", max_batch_size=1, max_waiting=1)
    slow_engine(loop)
    try:
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", f"{url}/v1/completions", json={"prompt": "one", "max_tokens": 100, "stream": True}) as r1:
                next(r1.iter_lines())  # running (batch of 1)
                with client.stream("POST", f"{url}/v1/completions", json={"prompt": "two", "max_tokens": 5, "stream": True}) as r2:
                    assert r2.status_code == 200  # waiting
                    r3 = client.post(f"{url}/v1/completions", json={"prompt": "three", "max_tokens": 5})
                    assert r3.status_code == 503 and "queue is full" in r3.json()["error"]["message"]
    finally:
        stop_server(server, thread, loop)


def test_burst_into_free_slots_is_not_rejected():
    """Finding 13: a burst as large as the free batch slots plus `max_waiting` is all served; requests
    handed to the engine thread but not yet applied count against the free slots, not as waiting."""
    server, thread, url, loop = start_server(policy="fixed-0", max_batch_size=8, max_waiting=2)
    slow_engine(loop, 0.2)  # the burst lands while the engine thread sleeps in a step
    try:
        def post(i: int) -> int:
            with httpx.Client(timeout=120) as client:
                return client.post(f"{url}/v1/completions", json={"prompt": f"burst {i}", "max_tokens": 20}).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(post, range(12)))
        assert sorted(codes) == [200] * 10 + [503] * 2
    finally:
        stop_server(server, thread, loop)


def test_abort_calls_engine_abort_when_present():
    """A client's abort is handed to the engine (which frees the slot and KV at the next step)."""
    from nightjar_rl.runtime.loop import LiveSession

    class Engine:
        has_work, aborted = False, []

        def abort(self, rid):
            self.aborted.append(rid)
            return True

    session = LiveSession(Engine())
    session.listeners["r1"] = lambda event: None
    session._apply("abort", "r1")
    assert Engine.aborted == ["r1"] and "r1" not in session.listeners
