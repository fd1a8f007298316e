"""Build a ready engine (models + drafter + decoder) from one typed config: the seam shared by the
CLI, the env and the experiments."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from nightjar_rl.decoding import SamplingParams, SpeculativeEngine
from nightjar_rl.decoding.drafters.registry import build_sssd, drafter_kind, load_draft_model
from nightjar_rl.decoding.parallel import PARALLEL_OPTIONS, ParallelBatchDecoder
from nightjar_rl.decoding.profiler import measure_speed_anchor
from nightjar_rl.engine_config import DECODERS, DRAFTERS, EngineConfig
from nightjar_rl.hardware import ANCHOR_ENGINE_FIELDS
from nightjar_rl.model_names import DEFAULT_LINEARS
from nightjar_rl.models import LoadedModel, load_model

__all__ = ["DECODERS", "DRAFTERS", "EngineConfig", "Stack", "build_sssd", "build_stack", "load_draft_model"]


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


def _prepared_target(cfg: EngineConfig, target: LoadedModel | None = None) -> LoadedModel:
    """`cfg` validated, torch's threads set from it, and its target model (`target`, or loaded)."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return target or load_model(cfg.model, cfg.dtype, cfg.device, cfg.linears)


def build_stack(cfg: EngineConfig, target: LoadedModel | None = None) -> Stack:
    """Load (or reuse `target`) and assemble the engine described by `cfg`."""
    target = _prepared_target(cfg, target)
    engine_cls, decoder_kwargs = SpeculativeEngine, {}
    if cfg.decoder == "parallel":  # options from cfg.extra: draft_threads, verify_threads, draft_device, overlap
        engine_cls = ParallelBatchDecoder
        decoder_kwargs = {key: cfg.extra[key] for key in PARALLEL_OPTIONS if key in cfg.extra}
    engine = engine_cls(
        target.model,
        drafter_kind(cfg.drafter).build(cfg, target),
        max_batch_size=cfg.max_batch_size,
        max_seq_len=cfg.max_seq_len,
        max_kv_tokens=cfg.max_kv_tokens,
        max_waiting=cfg.max_waiting,
        max_speculation=cfg.max_speculation,
        eos_token_ids=target.eos_token_ids,
        sampling=SamplingParams(cfg.temperature, cfg.top_p),
        seed=cfg.seed,
        verify_layout=cfg.verify_layout,
        model_forward=cfg.model_forward,
        kv_block=cfg.kv_block,
        **decoder_kwargs,
    )
    return Stack(engine, target, cfg)


def engine_speed_anchor(cfg: EngineConfig, rounds: int = 21, progress: bool = False,
                        target: LoadedModel | None = None) -> dict:
    """The speed anchor (`measure_speed_anchor`) of the target forward the engine of `cfg` runs (its
    model, dtype, linears, layout, forward and threads), on `target` (loaded with `cfg.linears`) or a
    copy of the model loaded for it; it records `hardware.ANCHOR_ENGINE_FIELDS`, so that
    `anchor_engine_config` times the same forward again."""
    target = _prepared_target(cfg, target)
    return measure_speed_anchor(target.model, rounds=rounds, verify_layout=cfg.verify_layout,
                                model_forward=cfg.model_forward, progress=progress) | {"linears": cfg.linears}


def anchor_engine_config(cfg: EngineConfig, anchor: Mapping) -> EngineConfig:
    """`cfg` running the forward `anchor` was timed on (its `hardware.ANCHOR_ENGINE_FIELDS`), to time that
    anchor again. Anchors from before `linears` was recorded were all timed on the default linears; an
    anchor is timed with the default `kv_block` (a setting of one forward only)."""
    fields = {name: anchor[name] for name in ANCHOR_ENGINE_FIELDS if name in anchor}
    return replace(cfg, **{"linears": DEFAULT_LINEARS, "kv_block": None, **fields})
