"""`EngineConfig`: everything needed to build an engine, declared once. Torch-free, like the names
its fields choose from (`nightjar_rl.model_names`, the drafter registry, `decoding.layouts`), so that
what only reads configs (scenarios, the simulator, the CLI's parsing) imports without torch;
`nightjar_rl.stack` builds the engine a config describes."""

from __future__ import annotations

from dataclasses import dataclass, field

from nightjar_rl.decoding.drafters.registry import DRAFTER_KINDS, drafter_kind
from nightjar_rl.decoding.layouts import (
    DEFAULT_DRAFT_CATCHUP,
    DEFAULT_VERIFY_LAYOUT,
    DRAFT_CATCHUPS,
    MIXED_LAYOUT,
    STEP_LAYOUTS,
)
from nightjar_rl.model_names import (
    DEFAULT_LINEARS,
    DEFAULT_MODEL,
    DEFAULT_MODEL_FORWARD,
    DTYPE_NAMES,
    KERNEL_TILE,
    KV_BLOCK,
    LINEARS,
    MODEL_FORWARDS,
)
from nightjar_rl.schema import ConfigError, check, option

DRAFTERS = tuple(DRAFTER_KINDS)  # the registered names (plus "package.module:Name" entry points)
DECODERS = ("standard", "parallel")


@dataclass
class EngineConfig:
    """Everything needed to build an engine, declared once: scenarios, CLI flags (`--max-batch-size`)
    and the server read these fields, defaults and bounds (`nightjar_rl.schema`)."""

    model: str = option(DEFAULT_MODEL, "target: smollm2-135m (bundled), tiny-random[-N], an HF name or path")
    drafter: str = option("ngram", f"drafter: {', '.join(DRAFTER_KINDS)}, or a 'package.module:Name' entry point")
    draft: str | None = option(None, "draft model for drafter 'draft' (name/path, or early-exit:LAYERS)", str)
    decoder: str = option("standard", "decoding loop: standard, or parallel (batch-parallel PSD)", choices=DECODERS)
    dtype: str = option("float32", "float32 keeps speculation bit-exact; bfloat16 is faster on CPU but may flip "
                                   "near-ties", choices=DTYPE_NAMES)
    device: str | None = option(None, "cuda or cpu (default: cuda when available)", str)
    max_batch_size: int = option(16, "engine slots (rows decoded together)", low=1)
    max_seq_len: int = option(1024, "context per request (prompt + new tokens)", low=2)
    max_kv_tokens: int | None = option(None, "KV token budget; requests queue beyond it (default: slots x context)",
                                       int, low=1)
    max_waiting: int | None = option(None, "bound on the waiting queue; requests beyond it are rejected "
                                           "(default: no bound)", int, low=1)
    max_speculation: int = option(8, "largest speculation length a plan may give a row", low=0)
    ngram_max: int = option(3, "ngram drafter: longest n-gram looked up", low=1)
    ngram_min: int = option(1, "ngram drafter: shortest n-gram looked up", low=1)
    datastore: str | None = option(None, "sssd drafter: datastore .npz (`nightjar-rl datastore build`)", str)
    temperature: float = option(0.0, "sampling temperature (0 = greedy)", low=0.0)
    top_p: float = option(1.0, "nucleus sampling mass", above=0.0, high=1.0)
    seed: int = option(0, "engine sampling seed (and the workload's arrivals)", low=0)
    threads: int | None = option(None, "torch CPU intra-op threads (default: torch's choice)", int, low=1)
    linears: str = option(DEFAULT_LINEARS, "float32 CPU linear layers: packed (oneDNN-prepacked, q/k/v and gate/up "
                                    "fused, as vLLM's CPU build), vllm (the same on vLLM's own oneDNN GEMM; the [vllm] extra; "
                                    "what native-vllm runs fastest on) or eager (torch's F.linear)", choices=LINEARS)
    model_forward: str = option(DEFAULT_MODEL_FORWARD, "how the target's (and a draft model's) decoder runs: " + "; ".join(
        f"{name}: {doc}" for name, doc in MODEL_FORWARDS.items()), choices=tuple(MODEL_FORWARDS))
    kv_block: int | None = option(None, f"model_forward native-vllm: entries per paged KV-cache block, a multiple of "
                                  f"{KERNEL_TILE} (the attention kernel's tile); a slot's capacity is rounded up to "
                                  f"whole blocks (default: {KV_BLOCK}, vLLM's CPU default, or a shorter slot's capacity "
                                  f"in whole tiles)", int, low=KERNEL_TILE)
    verify_layout: str = option(DEFAULT_VERIFY_LAYOUT, "target forward layout: " + "; ".join(
        f"{name}: {doc}" for name, doc in STEP_LAYOUTS.items()), choices=tuple(STEP_LAYOUTS))
    draft_catchup: str = option(DEFAULT_DRAFT_CATCHUP, "draft model: how it catches up with tokens it has not "
                                "seen (after k = 0, a new row's prompt): " + "; ".join(
        f"{name}: {doc}" for name, doc in DRAFT_CATCHUPS.items()), choices=tuple(DRAFT_CATCHUPS))
    extra: dict = field(default_factory=dict)  # decoder/drafter options not declared above (parallel, sssd)

    def validate(self, where: str = "engine") -> EngineConfig:
        """Check every field (one ConfigError line naming it) and the drafter's own requirements."""
        check(self, where)
        try:
            kind = drafter_kind(self.drafter)
        except ValueError as exc:
            raise ConfigError(f"{where}: field 'drafter': {exc}") from None
        problem = kind.check(self) if kind.check is not None else None
        if problem:
            raise ConfigError(f"{where}: {problem}")
        if self.kv_block is not None and self.kv_block % KERNEL_TILE:
            raise ConfigError(f"{where}: field 'kv_block' must be a multiple of {KERNEL_TILE} (the attention kernel's "
                              f"tile), got {self.kv_block}")
        if self.kv_block is not None and self.model_forward != "native-vllm":
            raise ConfigError(f"{where}: field 'kv_block' pages the cache of model_forward 'native-vllm' only, not "
                              f"{self.model_forward!r}: leave it unset")
        if self.decoder == "parallel" and self.verify_layout == MIXED_LAYOUT:
            raise ConfigError(f"{where}: field 'verify_layout': {MIXED_LAYOUT!r} needs the standard decoder (the "
                              "batch-parallel one keeps two slot regions)")
        return self
