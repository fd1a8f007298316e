"""Build a ready engine (models + drafter + decoder) from one typed config: the seam shared by the
CLI, the env and the experiments."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nightjar_rl.decoding import DraftModelDrafter, NgramDrafter, SamplingParams, SpeculativeEngine
from nightjar_rl.decoding.parallel import PARALLEL_OPTIONS, ParallelBatchDecoder
from nightjar_rl.models import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelLoadError,
    check_same_tokenizer,
    early_exit_draft,
    load_model,
)

DRAFTERS = ("none", "draft", "ngram", "sssd")
DECODERS = ("standard", "parallel")
EARLY_EXIT = "early-exit:"


@dataclass
class EngineConfig:
    """Everything needed to build an engine. Field docs are the CLI's help."""

    model: str = DEFAULT_MODEL  # target: smollm2-135m, tiny-random[-SEED], or an HF name/path
    drafter: str = "ngram"  # none | draft | ngram | sssd
    draft: str | None = None  # draft model (HF name/path, tiny-random-N) or early-exit:L
    dtype: str = "float32"  # float32 (exact) | bfloat16 (faster on CPU, may flip near-ties)
    device: str | None = None  # default: cuda when available, else cpu
    decoder: str = "standard"
    max_batch_size: int = 16
    max_seq_len: int = 1024
    max_kv_tokens: int | None = None
    max_waiting: int | None = None  # bound on the waiting queue; submit raises QueueFullError beyond it
    max_speculation: int = 8
    ngram_max: int = 3
    ngram_min: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    threads: int | None = None  # torch intra-op threads on CPU (default: torch's choice)
    datastore: str | None = None  # sssd: datastore .npz (`nightjar-rl datastore build`); else extra["datastore"]
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.drafter not in DRAFTERS:
            raise ValueError(f"unknown drafter {self.drafter!r}; choose one of {', '.join(DRAFTERS)}")
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        if self.drafter == "draft" and not self.draft:
            raise ValueError("--drafter draft needs --draft MODEL (or --draft early-exit:LAYERS)")
        for name in ("max_batch_size", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_speculation < 0:
            raise ValueError("max_speculation must be >= 0")
        if self.max_waiting is not None and self.max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1 (or unset for no bound), got {self.max_waiting}")


@dataclass
class Stack:
    engine: SpeculativeEngine
    target: LoadedModel
    config: EngineConfig

    @property
    def tokenizer(self):
        return self.target.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.target.model.config.vocab_size


def _build_drafter(cfg: EngineConfig, target: LoadedModel):
    if cfg.drafter == "none":
        return None
    if cfg.drafter == "ngram":
        return NgramDrafter(cfg.ngram_max, cfg.ngram_min)
    if cfg.drafter == "sssd":
        return build_sssd(cfg, target)
    return DraftModelDrafter(load_draft_model(cfg.draft, target, cfg.dtype, cfg.device))


def load_draft_model(spec: str, target: LoadedModel, dtype: str, device: str | None) -> torch.nn.Module:
    """A draft model for `target`: `early-exit:L` (the target's first L layers) or a model name/path
    that must share the target's tokenizer."""
    if spec.startswith(EARLY_EXIT):
        layers = spec[len(EARLY_EXIT):]
        if not layers.isdigit():
            raise ModelLoadError(f"early-exit drafts look like 'early-exit:4', got {spec!r}")
        return early_exit_draft(target.model, int(layers))
    draft = load_model(spec, dtype, device)
    check_same_tokenizer(target, draft)
    return draft.model


def build_sssd(cfg: EngineConfig, target: LoadedModel):
    from nightjar_rl.decoding.datastore import Datastore, tokenizer_fingerprint
    from nightjar_rl.decoding.drafters.sssd import SSSDDrafter

    path = cfg.datastore or cfg.extra.get("datastore")
    store = None
    if path:
        vocab = target.model.config.vocab_size
        store = Datastore.load(path, vocab, tokenizer_fingerprint(target.tokenizer, vocab))
    return SSSDDrafter(store, live=bool(cfg.extra.get("datastore_live", False)))


def build_stack(cfg: EngineConfig, target: LoadedModel | None = None) -> Stack:
    """Load (or reuse `target`) and assemble the engine described by `cfg`."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    target = target or load_model(cfg.model, cfg.dtype, cfg.device)
    engine_cls, decoder_kwargs = SpeculativeEngine, {}
    if cfg.decoder == "parallel":  # options from cfg.extra: draft_threads, verify_threads, draft_device, overlap
        engine_cls = ParallelBatchDecoder
        decoder_kwargs = {key: cfg.extra[key] for key in PARALLEL_OPTIONS if key in cfg.extra}
    engine = engine_cls(
        target.model,
        _build_drafter(cfg, target),
        max_batch_size=cfg.max_batch_size,
        max_seq_len=cfg.max_seq_len,
        max_kv_tokens=cfg.max_kv_tokens,
        max_waiting=cfg.max_waiting,
        max_speculation=cfg.max_speculation,
        eos_token_ids=target.eos_token_ids,
        sampling=SamplingParams(cfg.temperature, cfg.top_p),
        seed=cfg.seed,
        **decoder_kwargs,
    )
    return Stack(engine, target, cfg)
