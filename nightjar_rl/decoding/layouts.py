"""The target forward's layouts for the verify pass, by name (torch-free: configs read them)."""

VERIFY_LAYOUTS = {
    "padded": "every row is padded to the longest row: a [B, n] token batch (B x n positions computed)",
    "packed": "rows are flattened into one [1, T] token batch (vLLM's layout): T = the scored positions",
}
DEFAULT_VERIFY_LAYOUT = "packed"  # the engine's, the profiler's, the simulator's and the CLI's default (one place to change)
# vLLM's unified step: packed, with the step's prompts in the same pass (what vLLM runs; the simulator's what-if)
MIXED_LAYOUT = "mixed"
