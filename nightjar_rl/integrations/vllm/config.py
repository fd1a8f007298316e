"""vLLM engine arguments from nightjar-rl's `EngineConfig`, and whether vLLM is there at all.

The same fields mean the same things on both engines: the model (the bundled SmolLM2 resolves to
its cached safetensors folder), dtype, slots (`max_batch_size` -> `max_num_seqs`), context
(`max_seq_len` -> `max_model_len`), and the n-gram drafter (`max_speculation` -> vLLM's
`num_speculative_tokens`, `ngram_max/min` -> `prompt_lookup_max/min`). Prefix caching is off, as in
our engine. On a machine without CUDA the KV cache is sized from the config (vLLM's CPU build would
otherwise reserve 92% of memory); on a GPU vLLM's own sizing is kept, so the same code runs with the
regular `vllm` package there.
"""

from __future__ import annotations

import functools
import json
import os

from nightjar_rl.engine_config import EngineConfig
from nightjar_rl.schema import ConfigError

INSTALL_HINT = "bash install.sh --vllm (vLLM's CPU build, see README 'vLLM'), or pip install vllm on a GPU"
SCHEDULER_CLS = "nightjar_rl.integrations.vllm.scheduler.NightjarScheduler"  # for vLLM's scheduler_cls
SETTINGS_KEY = "nightjar"  # vLLM's additional_config[SETTINGS_KEY] configures NightjarScheduler
SETTINGS_ENV = "NIGHTJAR_VLLM"  # ... or this environment variable (JSON), for servers launched elsewhere


class VLLMUnavailable(ConfigError):
    """vLLM is not installed (or does not import) in this environment."""


@functools.lru_cache(maxsize=1)
def _import_error() -> str | None:
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # a broken install (e.g. a torchvision built for another torch) counts as absent
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def vllm_available() -> bool:
    """True when `import vllm` works here."""
    return _import_error() is None


def require_vllm() -> None:
    """Raise `VLLMUnavailable` (one line, with the install command) unless vLLM imports."""
    error = _import_error()
    if error is not None:
        raise VLLMUnavailable(f"vLLM is not available ({error}); install it: {INSTALL_HINT}")


def model_path(name: str) -> str:
    """What vLLM loads for a nightjar-rl model name: the bundled SmolLM2 as its converted safetensors
    folder, anything else (a folder, an HF name) as given."""
    from nightjar_rl.models import DEFAULT_MODEL, ensure_default_converted

    if name in (DEFAULT_MODEL, "smollm2"):
        return str(ensure_default_converted())
    if name.startswith("tiny-random"):
        raise ConfigError(f"model {name!r} is built in memory; vLLM needs a folder or an HF name")
    return name


def kv_cache_bytes(model: str, dtype: str, tokens: int) -> int:
    """Bytes of KV cache for `tokens` tokens of `model` (keys and values, every layer), plus 10%."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    width = 2 if dtype in ("bfloat16", "float16") else 4
    return int(1.1 * tokens * cfg.num_hidden_layers * 2 * heads * head_dim * width) + (16 << 20)


def speculative_config(cfg: EngineConfig) -> dict | None:
    """vLLM's `speculative_config` for the engine's drafter (None when max_speculation is 0)."""
    if cfg.max_speculation == 0:
        return None
    if cfg.drafter != "ngram":
        raise ConfigError(f"field 'drafter': the vLLM backend runs vLLM's n-gram drafter, got {cfg.drafter!r}")
    return {"method": "ngram", "num_speculative_tokens": cfg.max_speculation,
            "prompt_lookup_max": cfg.ngram_max, "prompt_lookup_min": cfg.ngram_min}


def engine_kwargs(cfg: EngineConfig, *, scheduler: dict | None = None, enforce_eager: bool = True,
                  kv_tokens: int | None = None, speculation: dict | None = None) -> dict:
    """Keyword arguments for `vllm.LLM(...)` / `vllm.EngineArgs(...)` matching `cfg`.

    `scheduler`: settings for `NightjarScheduler` (`scheduler.py`), which is then the scheduler
    class; None keeps vLLM's own. `speculation` replaces the n-gram config (e.g. to add vLLM's
    `num_speculative_tokens_per_batch_size`). `enforce_eager` skips vLLM's kernel compile (start-up
    in seconds instead of minutes on CPU). `kv_tokens`: KV cache size in tokens on CPU (default:
    every slot at full context, `max_kv_tokens` if set)."""
    import torch

    model = model_path(cfg.model)
    kwargs: dict = dict(model=model, dtype=cfg.dtype, max_num_seqs=cfg.max_batch_size, max_model_len=cfg.max_seq_len,
                        seed=cfg.seed, enforce_eager=enforce_eager, enable_prefix_caching=False)
    spec = speculation if speculation is not None else speculative_config(cfg)
    if spec is not None:
        kwargs["speculative_config"] = spec
    if scheduler is not None:
        kwargs["scheduler_cls"] = SCHEDULER_CLS
        kwargs["additional_config"] = {SETTINGS_KEY: dict(scheduler)}
    if not torch.cuda.is_available():
        tokens = kv_tokens or cfg.max_kv_tokens or cfg.max_batch_size * cfg.max_seq_len
        kwargs["kv_cache_memory_bytes"] = kv_cache_bytes(model, cfg.dtype, tokens)
    return kwargs


def plugin_settings(additional_config) -> dict:
    """NightjarScheduler's settings: vLLM's `additional_config["nightjar"]`, else the JSON in
    $NIGHTJAR_VLLM, else none (vLLM's own k)."""
    settings = None
    if isinstance(additional_config, dict):
        settings = additional_config.get(SETTINGS_KEY)
    if settings is None and os.environ.get(SETTINGS_ENV):
        try:
            settings = json.loads(os.environ[SETTINGS_ENV])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"${SETTINGS_ENV} is not valid JSON: {exc}") from None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ConfigError(f"nightjar scheduler settings must be a JSON object, got {settings!r}")
    return settings


def ensure_inprocess() -> None:
    """Make vLLM run its engine core in this process (so a backend can step it and read its scheduler).
    Must run before the engine is built."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    _guard_llvmlite_wrapper()


def _guard_llvmlite_wrapper() -> None:
    """vLLM's CPU worker start (`register_triton_kernel_overrides`) scans every loaded module and reads
    `vars(value)` of any attribute with a `__dict__`. llvmlite's library wrapper answers *every*
    attribute name with a C-function wrapper, `__dict__` included, so the scan fails ("'_lib_fn_wrapper'
    object has no attribute 'get'") once numba is loaded in this process: by vLLM's own n-gram proposer
    after a first in-process engine, or by user code. Dunder names are never C symbols; they now raise
    AttributeError on that wrapper, as on any object without them."""
    import sys

    ffi = sys.modules.get("llvmlite.binding.ffi")
    wrapper = getattr(ffi, "_lib_wrapper", None)
    if wrapper is None or getattr(wrapper, "_nightjar_guarded", False):
        return
    symbol = wrapper.__getattr__

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return symbol(self, name)

    wrapper.__getattr__ = __getattr__
    wrapper._nightjar_guarded = True
