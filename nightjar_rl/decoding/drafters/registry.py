"""Drafter kinds by name: each declares the config fields it reads, how to build it, how to trace it
and how the simulator prices its drafting. Adding a drafter is its own module plus one entry here
(or, outside the package, a `"package.module:Name"` entry point: a `DrafterKind`, or a `Drafter`
subclass built with no arguments, priced as a lookup and traced by its own proposals, which
assumes it is model-free and deterministic: declare a `DrafterKind` otherwise).

    none    plain decoding
    ngram   prompt lookup (ngram_max, ngram_min)           priced per row: ngram_lookup_ms_per_row
    draft   a draft model or early-exit:L (draft)          priced as k draft-model steps (+ catch-up)
    sssd    token trees from n-grams (datastore)           priced per row, like n-gram lookup

Torch-free at import (what a kind builds is imported when it is built), so that configs and the
simulator, which read kinds by name, do not load torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nightjar_rl.entry_points import import_entry_point, is_entry_point
from nightjar_rl.hardware import DRAFT_MODEL, DRAFTING, LOOKUP

if TYPE_CHECKING:
    import numpy as np
    import torch

    from nightjar_rl.decoding.drafters.base import Drafter
    from nightjar_rl.models import LoadedModel

EARLY_EXIT = "early-exit:"
FREE = "free"  # no drafting to price (plain decoding); LOOKUP and DRAFT_MODEL: see `hardware.drafting_kind`

# (drafter, prompt, output, max_k, max_new_tokens) -> (drafted, accepted) tables of a trace
TableFn = Callable[["Drafter", list, list, int, int], "tuple[np.ndarray, np.ndarray]"]


@dataclass(frozen=True)
class DrafterKind:
    """A drafter as configs name it. `build(config, target)` gets the engine config (duck-typed: the
    fields listed in `fields`, plus dtype/device/extra) and the loaded target model."""

    name: str
    doc: str
    build: Callable[[Any, LoadedModel], Drafter | None]
    fields: tuple[str, ...] = ()  # engine-config fields that configure this drafter
    cost: str = LOOKUP  # lookup: rows x ngram_lookup_ms_per_row; draft_model: k x draft_ms(B) + catch-up
    tables: TableFn | None = None  # trace tables; None: cannot be traced
    check: Callable[[Any], str | None] | None = None  # a config problem, in words (or None)

    @property
    def traceable(self) -> bool:
        return self.tables is not None

    def settings(self, config) -> dict:
        """The config fields this drafter reads, as a trace records them."""
        return {name: getattr(config, name) for name in self.fields}


def load_draft_model(spec: str, target: LoadedModel, dtype: str, device: str | None,
                     linears: str = "packed") -> torch.nn.Module:
    """A draft model for `target`: `early-exit:L` (the target's first L layers) or a model name/path
    that must share the target's tokenizer."""
    from nightjar_rl.models import ModelLoadError, check_same_tokenizer, early_exit_draft, load_model

    if spec.startswith(EARLY_EXIT):
        layers = spec[len(EARLY_EXIT):]
        if not layers.isdigit():
            raise ModelLoadError(f"early-exit drafts look like 'early-exit:4', got {spec!r}")
        return early_exit_draft(target.model, int(layers))
    draft = load_model(spec, dtype, device, linears)
    check_same_tokenizer(target, draft)
    return draft.model


def build_sssd(config, target: LoadedModel) -> Drafter:
    from nightjar_rl.decoding.datastore import Datastore, tokenizer_fingerprint
    from nightjar_rl.decoding.drafters.sssd import SSSDDrafter

    path = config.datastore or config.extra.get("datastore")
    store = None
    if path:
        vocab = target.model.config.vocab_size
        store = Datastore.load(path, vocab, tokenizer_fingerprint(target.tokenizer, vocab))
    return SSSDDrafter(store, live=bool(config.extra.get("datastore_live", False)))


def _build_ngram(config, target: LoadedModel) -> Drafter:
    from nightjar_rl.decoding.drafters.ngram import NgramDrafter

    return NgramDrafter(config.ngram_max, config.ngram_min)


def _build_draft(config, target: LoadedModel) -> Drafter:
    from nightjar_rl.decoding.drafters.draft_model import DraftModelDrafter

    return DraftModelDrafter(load_draft_model(config.draft, target, config.dtype, config.device, config.linears),
                             config.model_forward, config.draft_catchup, config.kv_block)


def _acceptance_tables(name: str) -> TableFn:
    """`nightjar_rl.decoding.drafters.acceptance.<name>`, imported at its first call (it needs torch)."""

    def tables(drafter: Drafter, prompt, output, max_k: int, max_new_tokens: int):
        from nightjar_rl.decoding.drafters import acceptance

        return getattr(acceptance, name)(drafter, prompt, output, max_k, max_new_tokens)

    return tables


_stateless_tables, _tree_tables = _acceptance_tables("stateless_tables"), _acceptance_tables("tree_tables")


def _draft_tables(drafter, prompt, output, max_k: int, max_new_tokens: int):
    from nightjar_rl.decoding.drafters.acceptance import draft_model_tables

    return draft_model_tables(drafter.model, prompt, output, max_k)


def _check_ngram(config) -> str | None:
    return "field 'ngram_min' must be <= ngram_max" if config.ngram_min > config.ngram_max else None


def _check_draft(config) -> str | None:
    return None if config.draft else "drafter 'draft' needs field 'draft' (a model name/path, or early-exit:LAYERS)"


DRAFTER_KINDS: dict[str, DrafterKind] = {kind.name: kind for kind in (
    DrafterKind("none", "plain decoding (no speculation)", lambda config, target: None, cost=FREE),
    DrafterKind("ngram", "prompt lookup: what followed the last n-gram earlier in the request",
                _build_ngram, fields=("ngram_max", "ngram_min"), tables=_stateless_tables, check=_check_ngram),
    DrafterKind("draft", "a draft model (name/path) or the target's first layers (early-exit:L)",
                _build_draft, fields=("draft",), cost=DRAFT_MODEL, tables=_draft_tables, check=_check_draft),
    DrafterKind("sssd", "SSSD token trees from the request's n-grams and an optional datastore",
                build_sssd, fields=("datastore",), tables=_tree_tables),
)}


def drafting_of(name: str) -> str | None:
    """How drafter `name`'s work is priced (`DRAFT_MODEL` or `LOOKUP`), None for one that never drafts."""
    cost = drafter_kind(name).cost
    return cost if cost in DRAFTING else None


def drafter_kind(name: str) -> DrafterKind:
    """The kind registered as `name`, or the one a "package.module:Name" entry point names."""
    kind = DRAFTER_KINDS.get(name)
    if kind is not None:
        return kind
    if not is_entry_point(name):
        raise ValueError(f"unknown drafter {name!r}; choose one of {', '.join(DRAFTER_KINDS)} "
                         f"or a 'package.module:Name' entry point")
    attr = name.partition(":")[2]
    target = import_entry_point(name, "drafter")
    if isinstance(target, DrafterKind):
        return target
    from nightjar_rl.decoding.drafters.base import Drafter

    if isinstance(target, type) and issubclass(target, Drafter):
        return DrafterKind(name, target.__doc__ or name, lambda config, model: target(), tables=_stateless_tables)
    raise ValueError(f"drafter {name!r}: {attr!r} is neither a DrafterKind nor a Drafter subclass")
