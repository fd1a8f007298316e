"""Server metrics in Prometheus text format, named as vLLM exports them (plus nightjar:* gauges).

Speculation counters follow vLLM: a *draft* is one row's proposal in one step (rows that drafted
nothing are not counted), draft tokens are the tokens proposed, accepted tokens those kept, and
`accepted_tokens_per_pos{position=i}` counts drafts whose token at position i was accepted.
`nightjar:speculation_k` and `nightjar:batch_size` are the last step's k and decoded rows.
`SpecCounts` holds those counters, for the whole server and for one request (a response's
`speculation_metrics`, when the request asks for them).
"""

from __future__ import annotations

import threading

from nightjar_rl.decoding.stats import StepStats

FINISH_REASONS = ("stop", "length", "abort")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class SpecCounts:
    """vLLM's speculative decoding counters: drafts, draft tokens, accepted tokens, accepted by position."""

    def __init__(self, max_k: int):
        self.num_drafts = self.num_draft_tokens = self.num_accepted_tokens = 0
        self.num_accepted_tokens_per_pos = [0] * max(max_k, 1)

    def add(self, drafted: int, accepted: int) -> None:
        """One row's draft in one step (a row that drafted nothing is not a draft)."""
        if drafted <= 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += drafted
        self.num_accepted_tokens += accepted
        for pos in range(min(accepted, len(self.num_accepted_tokens_per_pos))):
            self.num_accepted_tokens_per_pos[pos] += 1

    def as_dict(self) -> dict:
        """The counters, the acceptance rate (None when nothing was drafted) and the histogram of
        accepted lengths (`accepted_length_histogram[n]`: drafts that kept exactly n tokens)."""
        per_pos = self.num_accepted_tokens_per_pos
        at_least = [self.num_drafts, *per_pos]  # drafts that kept >= n tokens, n = 0..max_k
        histogram = [at_least[n] - (at_least[n + 1] if n + 1 < len(at_least) else 0) for n in range(len(at_least))]
        rate = self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None
        return {"num_drafts": self.num_drafts, "num_draft_tokens": self.num_draft_tokens,
                "num_accepted_tokens": self.num_accepted_tokens, "num_accepted_tokens_per_pos": list(per_pos),
                "acceptance_rate": rate, "accepted_length_histogram": histogram}


class ServerMetrics:
    """Counters updated by the engine thread; `render` is safe from any thread."""

    def __init__(self, max_k: int, model_name: str, policy_name: str):
        self.max_k, self.model, self.policy = max_k, model_name, policy_name
        self._lock = threading.Lock()
        self.steps = 0
        self.spec = SpecCounts(max_k)
        self.prompt_tokens = self.generation_tokens = 0
        self.finished = dict.fromkeys(FINISH_REASONS, 0)
        self.k = self.batch_size = self.running = self.waiting = 0

    def record_step(self, stats: StepStats, running: int, waiting: int) -> None:
        with self._lock:
            self.steps += 1
            self.k, self.batch_size, self.running, self.waiting = stats.k, stats.batch_size, running, waiting
            self.generation_tokens += stats.tokens_out
            self.prompt_tokens += stats.prefill_tokens
            for d, a in zip(stats.drafted, stats.accepted):
                self.spec.add(d, a)
    def record_finish(self, reason: str) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def render(self) -> str:
        m = f'model_name="{_escape(self.model)}"'
        out: list[str] = []

        def family(name: str, kind: str, doc: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {kind}")
            suffix = "_total" if kind == "counter" else ""
            out.extend(f"{name}{suffix}{{{labels}}} {value}" for labels, value in samples)

        with self._lock:
            family("vllm:num_requests_running", "gauge", "Requests in the running batch.", [(m, self.running)])
            family("vllm:num_requests_waiting", "gauge", "Requests waiting for admission.", [(m, self.waiting)])
            family("vllm:prompt_tokens", "counter", "Prefilled prompt tokens.", [(m, self.prompt_tokens)])
            family("vllm:generation_tokens", "counter", "Generated tokens.", [(m, self.generation_tokens)])
            family("vllm:request_success", "counter", "Finished requests by reason.",
                   [(f'{m},finished_reason="{r}"', n) for r, n in self.finished.items()])
            family("vllm:spec_decode_num_drafts", "counter", "Draft proposals (row-steps that drafted).",
                   [(m, self.spec.num_drafts)])
            family("vllm:spec_decode_num_draft_tokens", "counter", "Draft tokens proposed.",
                   [(m, self.spec.num_draft_tokens)])
            family("vllm:spec_decode_num_accepted_tokens", "counter", "Draft tokens accepted.",
                   [(m, self.spec.num_accepted_tokens)])
            family("vllm:spec_decode_num_accepted_tokens_per_pos", "counter", "Accepted draft tokens by position.",
                   [(f'{m},position="{i}"', n) for i, n in enumerate(self.spec.num_accepted_tokens_per_pos)])
            family("nightjar:speculation_k", "gauge", "Speculation length k of the last step (0 = off).",
                   [(f'{m},policy="{_escape(self.policy)}"', self.k)])
            family("nightjar:batch_size", "gauge", "Rows decoded by the last step.", [(m, self.batch_size)])
            family("nightjar:engine_steps", "counter", "Engine steps run.", [(m, self.steps)])
        return "\n".join(out) + "\n"
