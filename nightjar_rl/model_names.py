"""The names configs choose models, dtypes and linear layers by: torch-free, so that reading a config
does not load torch (`nightjar_rl.models` maps them to models and torch dtypes)."""

DEFAULT_MODEL = "smollm2-135m"
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # torch dtypes by name (`nightjar_rl.models.DTYPES`)
LINEARS = ("packed", "eager")  # float32 CPU linear layers (`nightjar_rl.cpu_linears`)
MODEL_FORWARDS = {  # how the runner runs a model's decoder (`nightjar_rl.decoding.native_forward`)
    "native": "transformers' Llama layers run by nightjar-rl's own loop over the same weights, compiled by "
              "TorchScript (bitwise the same outputs, less per-op overhead); other models use their own forward",
    "native-eager": "the native loop run as plain Python (what `native` falls back to if TorchScript fails)",
    "transformers": "the model's own forward, attention routed to the slot cache",
    "native-vllm": "the native loop with vLLM's CPU attention kernel (needs the [vllm] extra; rows read to their own "
                   "length, one call per layer; float32 sums in another order than SDPA, so not bitwise `native`)",
}
DEFAULT_MODEL_FORWARD = "native"
