"""`nightjar-rl serve`: an OpenAI-compatible HTTP server over the engine and a speculation policy.

Endpoints: POST /v1/completions, POST /v1/chat/completions (streaming via server-sent events when
`"stream": true`), GET /v1/models, GET /health, GET /metrics (Prometheus text, see `metrics.py`).
Errors use OpenAI's body {"error": {"message", "type", "param", "code"}}: 400 for a request that
cannot be served (too long for the context, unsupported option, malformed body or JSON, text that
is not valid Unicode), 404 for an unknown model name, 413 for a body over `--max-request-bytes`,
503 when the waiting queue is full or the engine has failed.

Extensions (see `protocol.py`): `"speculation": {"max_tokens": N}` caps this request's speculation
length (the step's plan gives it the minimum of the policy's length and N; 0 = off), and
`"return_speculation_metrics": true` adds `speculation_metrics` (vLLM's spec-decode counters for
this request, its acceptance rate and accepted-length histogram) to the response, or to the last
chunk of a stream.

The engine runs in its own thread (`loop.EngineLoop`); a handler submits its request, then
receives token events through an asyncio queue. Tokenization runs in a tokenizer thread, so a huge
prompt never blocks the event loop (/health keeps answering). A client that disconnects (streaming
or not) has its request aborted. On shutdown, or if the engine fails, requests in flight end with
an error event and the server stops (`make_server(..., engine_loop)`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from nightjar_rl.decoding.sequence import Request as EngineRequest
from nightjar_rl.runtime.loop import EngineLoop, OverloadedError, TokenEvent
from nightjar_rl.runtime.protocol import ChatRequest, CompletionRequest, unsupported
from nightjar_rl.runtime.server_config import ServerConfig
from nightjar_rl.text import TextCodec


def _json(body: Any, status: int = 200) -> Response:
    """A JSON response; `ensure_ascii` keeps any lone surrogate echoed from a request encodable."""
    return Response(json.dumps(body), status_code=status, media_type="application/json")



def _deliver(aio: asyncio.AbstractEventLoop, callback, *args) -> None:
    """Hand `callback(*args)` from the engine thread to the HTTP event loop; once that loop is closed
    (the server stopped first) there is no client left to tell, and the engine thread must go on."""
    try:
        aio.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        if not aio.is_closed():
            raise

class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}

    def response(self) -> Response:
        return _json(self.body(), self.status)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets HTTP 413 before anything parses it (the
    body is read here, at most `max_bytes` of it, and handed on whole)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send) -> None:
        error = APIError(413, f"the request body is larger than {self.max_bytes} bytes (--max-request-bytes)",
                         "RequestTooLargeError")
        await error.response()(scope, receive, send)


def _encode_checked(encode: Callable[[Any], list[int]], value: Any, param: str) -> list[int]:
    """`encode(value)` once its text is known to be valid Unicode (a lone surrogate is a 400)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, f"{param} is not valid Unicode text (a lone surrogate)", param=param) from None
    return encode(value)


class RequestStream:
    """One request in flight: token events from the engine thread into an asyncio queue."""

    def __init__(self, loop: EngineLoop, request_id: str, prompt_ids: list[int], max_tokens: int,
                 cap: int | None = None, speculation_metrics: bool = False):
        self.engine_loop, self.request_id = loop, request_id
        self.prompt_ids, self.max_tokens = prompt_ids, max_tokens
        self.cap, self.speculation_metrics = cap, speculation_metrics
        self.events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.finished = False
        self.speculation: dict | None = None  # the request's speculation metrics, from its last event

    async def submit(self) -> None:
        aio = asyncio.get_running_loop()
        accepted: asyncio.Future = aio.create_future()

        def ack(exc: Exception | None) -> None:
            _deliver(aio, lambda: accepted.done() or accepted.set_result(exc))

        def listener(event: TokenEvent) -> None:
            _deliver(aio, self.events.put_nowait, event)

        request = EngineRequest(self.request_id, self.prompt_ids, self.max_tokens, time.time())
        self.engine_loop.submit(request, listener, ack, self.cap, self.speculation_metrics)
        try:
            exc = await accepted
        except asyncio.CancelledError:
            self.abort()
            raise
        if exc is not None:
            overloaded = isinstance(exc, OverloadedError) or type(exc).__name__ == "QueueFullError"
            raise APIError(503 if overloaded else 400, str(exc), "ServiceUnavailableError" if overloaded else "BadRequestError")

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        try:
            while not self.finished:
                event = await self.events.get()
                if event.finish_reason is not None:
                    self.finished = True
                    self.speculation = event.speculation
                if event.error is not None:
                    raise APIError(503, event.error, "ServiceUnavailableError")
                yield event
        finally:
            if not self.finished:  # the consumer went away (client disconnected): free the request
                self.abort()

    def abort(self) -> None:
        self.finished = True
        self.engine_loop.abort(self.request_id)


def create_app(engine_loop: EngineLoop, codec: TextCodec, cfg: ServerConfig) -> FastAPI:
    app = FastAPI(title="nightjar-rl", description="OpenAI-compatible speculative decoding server")
    app.add_middleware(BodyLimit, max_bytes=cfg.max_request_bytes)
    created = int(time.time())
    tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightjar-tokenize")

    async def tokenize(encode: Callable[[Any], list[int]], value: Any, param: str) -> list[int]:
        """Tokens of `value`, computed off the event loop (one tokenizer thread: HF tokenizers are
        not safe to share across threads)."""
        aio = asyncio.get_running_loop()
        return await aio.run_in_executor(tokenizer_thread, _encode_checked, encode, value, param)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> Response:  # e.g. a body that is not UTF-8
        kind = {404: "NotFoundError", 405: "MethodNotAllowedError"}.get(exc.status_code, "BadRequestError")
        return APIError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return APIError(400, message, param=where or None).response()

    @app.get("/health")
    async def health() -> Response:
        if not engine_loop.alive:
            return PlainTextResponse(engine_loop.error or "engine stopped", status_code=503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(engine_loop.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": cfg.model_name, "object": "model", "created": created, "owned_by": "nightjar-rl",
                "root": cfg.model_name, "max_model_len": cfg.max_seq_len}
        return {"object": "list", "data": [card]}

    def check(req) -> None:
        """Refuse what no prompt can fix: unknown model, engine down, unsupported options."""
        if req.model is not None and req.model != cfg.model_name:
            raise APIError(404, f"The model `{req.model}` does not exist.", "NotFoundError", "model")
        if not engine_loop.alive:
            raise APIError(503, engine_loop.error or "the engine is not running", "ServiceUnavailableError")
        refused = unsupported(req, cfg.temperature, cfg.top_p)
        if refused:
            raise APIError(400, refused[1], param=refused[0])

    def prepare(req, prompt_ids: list[int], max_tokens: int | None) -> RequestStream:
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        room = cfg.max_seq_len - len(prompt_ids)
        if max_tokens is None:
            max_tokens = min(cfg.default_max_tokens, room)
        if room < 1 or len(prompt_ids) + max_tokens > cfg.max_seq_len:
            raise APIError(400, f"This model's maximum context length is {cfg.max_seq_len} tokens. However, you "
                                f"requested {len(prompt_ids) + max(max_tokens, 1)} tokens ({len(prompt_ids)} in the "
                                f"prompt, {max(max_tokens, 1)} for the completion). Please reduce the prompt or max_tokens.")
        return RequestStream(engine_loop, f"{uuid.uuid4().hex}", prompt_ids, max_tokens, req.speculation_cap,
                             req.return_speculation_metrics)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request):
        check(req)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise APIError(400, "batched prompts (a list of prompts) are not supported; send one per request", param="prompt")
            prompt = prompt[0]
        ids = await tokenize(codec.encode, prompt, "prompt") if isinstance(prompt, str) else [int(t) for t in prompt]
        vocab = codec.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        stream = prepare(req, ids, req.max_tokens)
        await stream.submit()
        return await respond(stream, req, raw, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, raw: Request):
        check(req)
        ids = await tokenize(codec.encode_chat, [m.model_dump() for m in req.messages], "messages")
        stream = prepare(req, ids, req.max_completion_tokens or req.max_tokens)
        await stream.submit()
        return await respond(stream, req, raw, chat=True)

    async def respond(stream: RequestStream, req, raw: Request, chat: bool):
        rid = ("chatcmpl-" if chat else "cmpl-") + stream.request_id
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": cfg.model_name}
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(sse(stream, head, chat, usage, req.return_token_ids), media_type="text/event-stream")
        ids, reason = await collect(stream, raw)
        text = codec.decode(ids)
        choice = {"index": 0, "logprobs": None, "finish_reason": reason}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        if req.return_token_ids:
            choice["token_ids"] = ids
        body = {**head, "choices": [choice], "usage": usage_of(stream, len(ids))}
        if req.return_token_ids:
            body["prompt_token_ids"] = stream.prompt_ids
        if stream.speculation is not None:
            body["speculation_metrics"] = stream.speculation
        return body

    async def collect(stream: RequestStream, raw: Request) -> tuple[list[int], str]:
        ids: list[int] = []
        reason = "stop"

        async def gather() -> None:
            nonlocal reason
            async for event in stream:
                ids.extend(event.token_ids)
                reason = event.finish_reason or reason

        task = asyncio.ensure_future(gather())
        while not task.done():
            await asyncio.wait({task}, timeout=0.2)
            if not task.done() and await raw.is_disconnected():
                task.cancel()
                stream.abort()
                raise APIError(499, "client disconnected")
        task.result()
        return ids, reason

    async def sse(stream: RequestStream, head: dict, chat: bool, include_usage: bool, token_ids: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"
        decoder = codec.stream()
        n_out = 0

        def chunk(delta_text: str | None, ids: list[int], finish: str | None, role: bool = False) -> str:
            choice: dict = {"index": 0, "logprobs": None, "finish_reason": finish}
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if delta_text is None else {"content": delta_text})
                choice["delta"] = delta
            else:
                choice["text"] = delta_text or ""
            if token_ids and not role:
                choice["token_ids"] = ids
            extra = {"speculation_metrics": stream.speculation} if finish and stream.speculation is not None else {}
            return "data: " + json.dumps({**head, "object": obj, "choices": [choice], **extra}) + "\n\n"

        try:
            if chat:
                yield chunk(None, [], None, role=True)
            async for event in stream:
                n_out += len(event.token_ids)
                text = decoder.push(event.token_ids, final=event.finish_reason is not None)
                if text or event.token_ids or event.finish_reason:
                    yield chunk(text if (text or not chat) else None, event.token_ids, event.finish_reason)
            if include_usage:
                yield "data: " + json.dumps({**head, "object": obj, "choices": [], "usage": usage_of(stream, n_out)}) + "\n\n"
            yield "data: [DONE]\n\n"
        except APIError as exc:
            yield "data: " + json.dumps(exc.body()) + "\n\n"

    def usage_of(stream: RequestStream, n_out: int) -> dict:
        n_in = len(stream.prompt_ids)
        return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}

    return app


def make_server(app: FastAPI, host: str, port: int, log_level: str = "info", engine_loop: EngineLoop | None = None):
    """A uvicorn server for `app`. With its `engine_loop`, the two stop together: a shutdown signal
    stops the engine first (streams in flight get an error event instead of being cut), and an
    engine that stops or fails stops the server (no process left answering 503)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if engine_loop is not None:
        handle_exit = server.handle_exit

        def stop_engine_then_server(sig: int, frame) -> None:
            engine_loop.shutdown()
            handle_exit(sig, frame)

        server.handle_exit = stop_engine_then_server
        engine_loop.on_exit = lambda: setattr(server, "should_exit", True)
    return server


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                    engine_loop: EngineLoop | None = None) -> tuple[object, threading.Thread, str]:
    """Run `app` with uvicorn in a background thread (tests, benchmarks). Port 0 picks a free one.
    Returns (server, thread, base URL); stop with `server.should_exit = True; thread.join()`."""
    server = make_server(app, host, port, log_level="warning", engine_loop=engine_loop)
    thread = threading.Thread(target=server.run, name="nightjar-http", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError(f"the HTTP server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://{host}:{bound}"


def build_server(stack, rp, config: ServerConfig | None = None) -> tuple[FastAPI, EngineLoop]:
    """The app and its (started) engine loop for a built `Stack` and a resolved `RuntimePolicy`
    (`config`: the server's settings; its engine config is the stack's)."""
    from nightjar_rl.runtime.metrics import ServerMetrics

    config = dataclasses.replace(config or ServerConfig(), engine=stack.config).validate()
    metrics = ServerMetrics(rp.policy.max_k, config.model_name, rp.policy.name)
    codec = TextCodec(stack.tokenizer, stack.vocab_size)  # before the engine: vLLM's starts when first used
    engine_loop = EngineLoop(stack.engine, rp, metrics, max_waiting=stack.config.max_waiting).start()
    return create_app(engine_loop, codec, config), engine_loop


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (for a server started as a subprocess)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, proc, timeout: float, poll: float = 0.2) -> None:
    """Poll `url`/health until it answers 200; RuntimeError if the server process `proc` (a Popen)
    exits first or `timeout` seconds pass."""
    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the server at {url} did not start")
        time.sleep(poll)
