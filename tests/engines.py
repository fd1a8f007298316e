"""Helpers shared by the abort, fault and StepStats-contract suites: one factory for every decoder,
a run-to-the-end loop that checks served-once, and fault injectors."""

from __future__ import annotations

import itertools
import zlib

from nightjar_rl.decoding import ParallelBatchDecoder, SpeculativeEngine

from .conftest import make_drafter

DECODER_KINDS = ["standard", "unified", "parallel", "parallel-sequential"]  # unified: verify_layout mixed



def stable_seed(*parts) -> int:
    """A seed from a test's parameters that is the same in every process (hash() of a str is salted
    per process, so a test seeded by it draws other requests on every run)."""
    return zlib.crc32(repr(parts).encode()) & 0xFFFF


def make_engine(kind: str, target, drafter: str, **kwargs):
    """A decoder of `kind` over `target` with the drafter named `drafter` (see conftest.make_drafter)."""
    d = make_drafter(drafter, target)
    if kind == "standard":
        return SpeculativeEngine(target, d, **kwargs)
    if kind == "unified":  # vLLM's unified step: the step's prompts in the verify forward
        return SpeculativeEngine(target, d, verify_layout="mixed", **kwargs)
    if kind in ("parallel", "parallel-sequential"):
        return ParallelBatchDecoder(target, d, overlap=kind == "parallel", **kwargs)
    raise ValueError(kind)


def drain(engine, ks, outputs: dict | None = None, reasons: dict | None = None, limit: int = 2000) -> dict:
    """Step until idle; collect output ids (and finish reasons) of every request that leaves, once."""
    outputs = {} if outputs is None else outputs
    for step in itertools.count():
        if not engine.has_work:
            return outputs
        engine.step(ks[step % len(ks)])
        for seq in engine.pop_finished():
            assert seq.request_id not in outputs, "left twice"
            outputs[seq.request_id] = seq.output_ids
            if reasons is not None:
                reasons[seq.request_id] = seq.finish_reason
        assert step < limit


def fail_calls(obj, name: str, when, message: str) -> list[int]:
    """Make `obj.name(...)` raise RuntimeError(message) on the calls for which `when(i, *args)` is true
    (i = call number). Returns the list of call numbers that raised."""
    inner = getattr(obj, name)
    raised: list[int] = []
    counter = itertools.count()

    def wrapped(*args, **kwargs):
        i = next(counter)
        if when(i, *args):
            raised.append(i)
            raise RuntimeError(message)
        return inner(*args, **kwargs)

    setattr(obj, name, wrapped)
    return raised


def poison_target(engine, request_id: str, min_tokens: int = 0) -> None:
    """The target's forward raises whenever it covers `request_id`'s slot once that row holds at least
    `min_tokens` tokens (0: already at prefill)."""

    def covers(_i, slot_start, token_rows, *_):
        return any(
            s.request_id == request_id and slot_start <= s.slot < slot_start + len(token_rows)
            and len(s.tokens) >= min_tokens
            for s in engine.running
        )

    fail_calls(engine.runner, "forward", covers, f"injected target fault ({request_id})")
