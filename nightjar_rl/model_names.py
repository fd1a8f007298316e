"""The names configs choose models, dtypes and linear layers by: torch-free, so that reading a config
does not load torch (`nightjar_rl.models` maps them to models and torch dtypes)."""

DEFAULT_MODEL = "smollm2-135m"
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # torch dtypes by name (`nightjar_rl.models.DTYPES`)
LINEARS = ("packed", "eager")  # float32 CPU linear layers (`nightjar_rl.cpu_linears`)
