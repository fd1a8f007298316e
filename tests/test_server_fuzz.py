"""A bounded fuzz test of the HTTP API (issue 22): bodies built from the OpenAI request fields with
wrong types, odd values, lone surrogates and raw garbage never get a 500 or hang, and the server is
healthy afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .servers import start_server, stop_server

ODD_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["\ud800", "a\udfffb", "<|im_end|>", "", "\x00", "é" * 50]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True), ODD_TEXT)
ANY = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                  st.dictionaries(ODD_TEXT, inner, max_size=4)), max_leaves=8)
MESSAGE = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), ANY),
                                 "content": st.one_of(ODD_TEXT, ANY)})
COMMON = {
    "model": st.one_of(st.just("tiny-random"), ANY),
    "max_tokens": st.one_of(st.integers(1, 4), ANY),
    "temperature": st.one_of(st.just(0), ANY),
    "stream": st.one_of(st.booleans(), ANY),
    "stream_options": ANY,
    "speculation": st.one_of(st.fixed_dictionaries({"max_tokens": st.one_of(st.integers(-1, 8), ANY)}), ANY),
    "return_speculation_metrics": ANY,
    "seed": ANY,
    "logit_bias": ANY,
}
COMPLETION = st.fixed_dictionaries({"prompt": st.one_of(ODD_TEXT, st.lists(st.integers(-5, 300), max_size=6), ANY)},
                                   optional=COMMON)
CHAT = st.fixed_dictionaries({"messages": st.one_of(st.lists(MESSAGE, min_size=1, max_size=3), ANY)}, optional=COMMON)
BODIES = st.one_of(st.tuples(st.just("completions"), COMPLETION), st.tuples(st.just("chat/completions"), CHAT),
                   st.tuples(st.sampled_from(["completions", "chat/completions"]), st.binary(max_size=64)))


@pytest.fixture(scope="module")
def url():
    http, thread, base, loop = start_server("fixed-3", default_max_tokens=4)  # short answers: a bounded test
    yield base
    stop_server(http, thread, loop)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=BODIES)
@example(case=("completions", b"\x80"))  # not UTF-8: once FastAPI's {"detail"} body, not OpenAI's
@example(case=("chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}))
def test_no_request_gets_a_500_or_hangs(url, case):
    path, body = case
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # ASCII: lone surrogates escaped
    r = httpx.post(f"{url}/v1/{path}", content=content, headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert "error" in r.json()


def test_the_server_is_healthy_after_the_fuzz(url):
    assert httpx.get(f"{url}/health").status_code == 200
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "still fine", "max_tokens": 2})
    assert r.status_code == 200
