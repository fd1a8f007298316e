"""The names configs choose models, dtypes and linear layers by: torch-free, so that reading a config
does not load torch (`nightjar_rl.models` maps them to models and torch dtypes)."""

DEFAULT_MODEL = "smollm2-135m"
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # torch dtypes by name (`nightjar_rl.models.DTYPES`)
LINEARS = ("packed", "eager", "vllm")  # float32 CPU linear layers (`nightjar_rl.cpu_linears`; vllm: its GEMM)
MODEL_FORWARDS = {  # how the runner runs a model's decoder (`nightjar_rl.decoding.native_forward`)
    "native": "transformers' Llama layers run by nightjar-rl's own loop over the same weights, compiled by "
              "TorchScript (bitwise the same outputs, less per-op overhead); other models use their own forward",
    "native-eager": "the native loop run as plain Python (what `native` falls back to if TorchScript fails)",
    "transformers": "the model's own forward, attention routed to the slot cache",
    "native-vllm": "Llama layers run by our own Python loop on vLLM's CPU kernels: its paged attention and cache "
                   "writer (the slot cache in blocks, `kv_block`, rows read to their own length, one call per layer), "
                   "RMSNorm, rotary, SiLU-and-mul and greedy argmax, and its oneDNN GEMM with linears vllm (needs "
                   "the [vllm] extra; float32 sums in other orders, so not bitwise `native`)",
}
DEFAULT_MODEL_FORWARD = "native"
KV_BLOCK = 128  # native-vllm: entries per paged KV-cache block by default (vLLM's CPU default)
KERNEL_TILE = 32  # native-vllm: vLLM's CPU attention kernel reads keys 32 entries at a time: a block is whole tiles
DEFAULT_LINEARS = "packed"
FORWARD_LINEARS = {"native-vllm": "vllm"}  # the linears a forward runs fastest with, when not DEFAULT_LINEARS


def linears_for(model_forward: str) -> str:
    """The linear layers `model_forward` runs fastest with (`FORWARD_LINEARS`, else `DEFAULT_LINEARS`)."""
    return FORWARD_LINEARS.get(model_forward, DEFAULT_LINEARS)
