"""`VLLMEngine`: vLLM's engine, stepped in this process, behind nightjar-rl's engine surface.

`ServingSession`, the `PolicyDriver`, the env and the CLI drive it exactly like the live engine and
the simulator (`nightjar_rl.serving.surface.EngineSurface`): `submit`, `step(plan)`, `pop_finished`,
`running`, `waiting`, `abort`. One `step(plan)` is one `LLMEngine.step()` (schedule, forward,
sample, n-gram proposal) with `NightjarScheduler` in mode "trim": vLLM proposes
`num_speculative_tokens` drafts per row and the plan trims each row's drafts for this step, so a
plan means what it means on our engine. The `StepStats` are the scheduler's (per row drafted /
accepted / emitted from vLLM's outputs), keyed by our request ids, with the wall time measured
around the whole `LLMEngine.step()`.

vLLM's engine is costly to start (tens of seconds on CPU), so `nightjar_rl.env.backend.VLLMBackend`
starts one per process and hands every episode a fresh `VLLMEngine` over it (`close` aborts what an
episode leaves running).
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from functools import cached_property

from nightjar_rl.contracts import PlanError, SpecPlan
from nightjar_rl.decoding.layouts import MIXED_LAYOUT
from nightjar_rl.decoding.scheduler import ABORT, QueueFullError, backlog_of, check_request_fits
from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.engine_config import EngineConfig
from nightjar_rl.integrations.vllm.config import engine_kwargs, ensure_inprocess, require_vllm

FINISH_REASONS = {"stop": "eos", "length": "length", "abort": ABORT, "error": "error"}


def start_llm_engine(cfg: EngineConfig, enforce_eager: bool = True):
    """An in-process `vllm.LLMEngine` for `cfg` with `NightjarScheduler` in mode trim.

    Its token budget per step (`max_num_batched_tokens`) holds every slot's full context, so a step
    admits what fits in the slots and prefills it whole, in the same pass as the decode rows, as
    nightjar-rl's engine admits (vLLM's default budget, 2048 tokens on CPU, would chunk a burst of
    long prompts over several steps). The simulator's vLLM twin (`verify_layout: mixed`) prices
    exactly that step."""
    require_vllm()
    ensure_inprocess()
    from vllm import EngineArgs, LLMEngine

    kwargs = engine_kwargs(cfg, scheduler={"mode": "trim"}, enforce_eager=enforce_eager)
    kwargs["max_num_batched_tokens"] = max(2048, cfg.max_batch_size * cfg.max_seq_len)
    return LLMEngine.from_engine_args(EngineArgs(**kwargs))


def request_seed(seed: int, request_id: str) -> int:
    """vLLM's per-request sampling seed: the episode's seed and the request id mixed (CRC-32), so an
    episode replays exactly and its requests draw independent streams (one seed for all would give two
    requests with the same prompt the same sample)."""
    return zlib.crc32(f"{seed}:{request_id}".encode())


class VLLMEngine:
    """The engine surface over an in-process `LLMEngine` (module docstring). `max_speculation` is
    vLLM's `num_speculative_tokens` (0 without a speculative config)."""

    def __init__(self, llm_engine, cfg: EngineConfig):
        from vllm import SamplingParams

        self.llm = llm_engine
        self.scheduler = llm_engine.engine_core.engine_core.scheduler
        if getattr(self.scheduler, "mode", None) != "trim":
            raise ValueError("the vLLM engine needs NightjarScheduler in mode 'trim' (start_llm_engine)")
        if self.scheduler.has_unfinished_requests():
            raise RuntimeError("the vLLM engine still has requests from a previous run")
        self.cfg = cfg
        self.max_speculation = self.scheduler.max_k
        self.max_seq_len = cfg.max_seq_len
        self._params = SamplingParams
        self._seqs: dict[str, Sequence] = {}  # ours, by our request id, until popped
        self._internal: dict[str, str] = {}  # our id -> vLLM's (it appends a random suffix)
        self._external: dict[str, str] = {}
        self._waiting: deque[Request] = deque()
        self._finished: list[Sequence] = []
        self._aborted: list[str] = []
        self.step_count = 0

    # ---- the surface ------------------------------------------------------------------------------
    @property
    def running(self) -> list[Sequence]:
        return [self._seqs[self._external[r.request_id]] for r in self.scheduler.running
                if r.request_id in self._external]

    @property
    def waiting(self) -> deque[Request]:
        running = {r.request_id for r in self.scheduler.running}
        return deque(req for req in self._waiting if self._internal[req.request_id] not in running)

    @property
    def has_work(self) -> bool:
        return bool(self._seqs.keys() - {s.request_id for s in self._finished})

    def backlog(self, pending: int = 0) -> int:
        """Requests vLLM holds waiting (plus `pending` about to be submitted) beyond the slots free now:
        what `max_waiting` bounds, as on our engine. Both counts are vLLM's, read together, so a request
        its scheduler has just admitted (or preempted) counts once, even from another thread mid-step."""
        running, waiting = self.scheduler.get_request_counts()
        return backlog_of(waiting, pending, self.cfg.max_batch_size, running)

    def submit(self, request: Request) -> None:
        """Hand a request to vLLM. ValueError for one that could never be served (or whose id is in use),
        `QueueFullError` (a ValueError) when the backlog is at the config's `max_waiting`."""
        rid = request.request_id
        if rid in self._seqs:
            raise ValueError(f"duplicate request id {rid!r}")
        check_request_fits(request, self.max_seq_len)
        if self.cfg.max_waiting is not None and self.backlog() >= self.cfg.max_waiting:
            raise QueueFullError.rejecting(rid, self.backlog(), self.cfg.max_waiting)
        params = self._params(temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=request.max_new_tokens,
                              seed=request_seed(self.cfg.seed, rid) if self.cfg.temperature > 0 else None)
        internal = self.llm.add_request(rid, {"prompt_token_ids": list(request.prompt_ids)}, params)
        self._internal[rid], self._external[internal] = internal, rid
        self._seqs[rid] = Sequence(request=request, tokens=list(request.prompt_ids))
        self._waiting.append(request)

    def abort(self, request_id: str) -> bool:
        seq = self._seqs.get(request_id)
        if seq is None or seq.finished:
            return False
        self.llm.abort_request([self._internal[request_id]], internal=True)
        self._aborted.append(request_id)
        return True

    def step(self, plan: SpecPlan | int) -> StepStats:
        plan = SpecPlan.coerce(plan)
        plan.check(self.max_speculation, (s.request_id for s in self.running))
        if plan.verify_costs is not None:
            raise PlanError("vLLM's drafter states no confidences to this backend: a plan cannot choose its drafts "
                            "by them (verify_costs)")
        self.scheduler.plan = SpecPlan(plan.default, {self._internal[r]: k for r, k in plan.lengths.items()})
        before = self.scheduler.last_stats
        start = time.perf_counter()
        outputs = self.llm.step()
        wall = time.perf_counter() - start
        stats = self.scheduler.last_stats
        if stats is before:  # nothing was scheduled (e.g. only aborts were processed)
            stats = StepStats(step=self.step_count, k=0, batch_size=0, num_waiting=len(self.waiting), num_prefilled=0,
                              verify_layout=MIXED_LAYOUT)
        stats = self._ours(stats)
        stats.step, stats.wall_time = self.step_count, wall
        for rid, drafted, accepted in zip(stats.request_ids, stats.drafted, stats.accepted):
            seq = self._seqs[rid]
            seq.drafted, seq.accepted, seq.steps = seq.drafted + drafted, seq.accepted + accepted, seq.steps + 1
        for out in outputs:
            self._update(out)
        for rid in self._aborted:
            seq = self._seqs[rid]
            if not seq.finished:
                seq.finish_reason = ABORT
                self._leave(seq)
                stats.finished_ids.append(rid)
                stats.aborted_ids.append(rid)
        self._aborted.clear()
        for rid in self._lost():
            seq = self._seqs[rid]
            seq.finish_reason, seq.error = "error", "vLLM dropped the request without finishing it"
            self._leave(seq)
            stats.finished_ids.append(rid)
            stats.failed_ids.append(rid)
        started = {s.request_id for s in self.running} | {s.request_id for s in self._finished}
        self._waiting = deque(r for r in self._waiting if r.request_id not in started)
        stats.num_waiting = len(self._waiting)
        self.step_count += 1
        return stats

    def _ours(self, stats: StepStats) -> StepStats:
        """The scheduler's stats with vLLM's request ids turned back into ours."""
        ext = self._external
        for name in ("request_ids", "first_token_ids", "finished_ids", "aborted_ids", "failed_ids"):
            setattr(stats, name, [ext.get(r, r) for r in getattr(stats, name)])
        return stats

    def _update(self, out) -> None:
        rid = out.request_id  # vLLM reports the id it was given (ours), not its internal one
        if rid not in self._seqs:
            return
        seq = self._seqs[rid]
        completion = out.outputs[0]
        seq.tokens = list(seq.request.prompt_ids) + list(completion.token_ids)
        if out.finished and not seq.finished:
            seq.finish_reason = FINISH_REASONS.get(completion.finish_reason, completion.finish_reason or "eos")
            self._leave(seq)

    def _lost(self) -> list[str]:
        """Our unfinished requests that vLLM no longer holds (never expected; guards against a hang)."""
        held = self.scheduler.requests
        return [rid for rid, seq in self._seqs.items() if not seq.finished and self._internal[rid] not in held]

    def _leave(self, seq: Sequence) -> None:
        self._finished.append(seq)

    def pop_finished(self) -> list[Sequence]:
        done, self._finished = self._finished, []
        for seq in done:
            internal = self._internal.pop(seq.request_id)
            self._external.pop(internal, None)
            self._seqs.pop(seq.request_id)
        return done

    def close(self) -> None:
        """Abort whatever is left (the engine is shared by the backend's episodes)."""
        left = [self._internal[r] for r, s in self._seqs.items() if not s.finished]
        if left:
            self.llm.abort_request(left, internal=True)
        self._seqs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VLLMStack:
    """vLLM's engine surface and what serving it needs beside it, as `nightjar_rl.stack.Stack` has them
    (`engine`, `config`, `tokenizer`, `vocab_size`), for `nightjar-rl generate/bench/serve --backend vllm`.
    vLLM's engine starts on first use of `engine` (tens of seconds on CPU, eager), so a bad workload or
    tokenizer fails before it. Torch's threads are set from the config, as `build_stack` does.
    `vocab_size` is the tokenizer's (the token ids a prompt may hold)."""

    def __init__(self, cfg: EngineConfig, llm_engine=None):
        require_vllm()
        cfg.validate()
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        self.config, self._llm = cfg, llm_engine

    @cached_property
    def tokenizer(self):
        return vllm_tokenizer(self.config.model)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @cached_property
    def engine(self) -> VLLMEngine:
        return VLLMEngine(start_llm_engine(self.config) if self._llm is None else self._llm, self.config)


def vllm_tokenizer(model: str):
    """The tokenizer of the folder vLLM loads for `model` (`model_path`); a missing one is a one-line
    `ConfigError`."""
    from transformers import AutoTokenizer

    from nightjar_rl.integrations.vllm.config import model_path
    from nightjar_rl.schema import ConfigError

    path = model_path(model)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"vLLM backend: no tokenizer for model {model!r} at {path!r}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
