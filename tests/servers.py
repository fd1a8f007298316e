"""The OpenAI-compatible server on the tiny model for the server tests: start one in a thread,
slow its engine down, stop it."""

from __future__ import annotations

import time

from nightjar_rl.runtime.policy_spec import runtime_policy
from nightjar_rl.runtime.server import build_server, create_app, start_in_thread
from nightjar_rl.runtime.server_config import ServerConfig
from nightjar_rl.stack import EngineConfig, build_stack

SEQ = 128


def start_server(policy: str = "table-mlc_llm", *, model: str = "tiny-random", max_speculation: int = 6,
                 max_batch_size: int = 4, max_waiting: int | None = None, codec=None, link: bool = False, **server):
    """(uvicorn server, its thread, base URL, engine loop). `codec`: a TextCodec class to use instead
    of the stack's; `link`: server and engine loop stop together (as `serve` runs them)."""
    cfg = EngineConfig(model=model, drafter="ngram", max_batch_size=max_batch_size, max_seq_len=SEQ,
                       max_speculation=max_speculation, max_waiting=max_waiting)
    stack = build_stack(cfg)
    app, loop = build_server(stack, runtime_policy(max_speculation, policy=policy), ServerConfig(**server))
    if codec is not None:
        app = create_app(loop, codec(stack.tokenizer, stack.vocab_size), ServerConfig(**server, engine=stack.config))
    http, thread, url = start_in_thread(app, engine_loop=loop if link else None)
    return http, thread, url, loop


def slow_engine(loop, seconds: float = 0.02) -> None:
    """Slow the engine's steps so a request stays in flight long enough to act on it."""
    step = loop.engine.step

    def slow_step(plan):
        time.sleep(seconds)
        return step(plan)

    loop.engine.step = slow_step


def stop_server(http, thread, loop) -> None:
    http.should_exit = True
    thread.join(10)
    loop.stop()
