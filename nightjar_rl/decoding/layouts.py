"""The target forward's layouts for the verify pass, by name (torch-free: configs read them)."""

VERIFY_LAYOUTS = {
    "padded": "every row is padded to the longest row: a [B, n] token batch (B x n positions computed)",
    "packed": "rows are flattened into one [1, T] token batch (vLLM's layout): T = the scored positions",
}
DEFAULT_VERIFY_LAYOUT = "packed"  # the engine's, the profiler's, the simulator's and the CLI's default (one place to change)
MIXED_LAYOUT = "mixed"
# what an engine's step runs (live engine and simulator): a forward layout, or vLLM's unified step
STEP_LAYOUTS = {**VERIFY_LAYOUTS, MIXED_LAYOUT: "packed, with the step's admitted prompts in the verify pass (vLLM's "
                                                "unified step; attention apart for the decoding rows and the prompts)"}


def forward_layout(layout: str) -> str:
    """The token layout of the forwards a step layout runs (`mixed` runs packed forwards)."""
    return "packed" if layout == MIXED_LAYOUT else layout


DRAFT_CATCHUPS = {
    "separate": "its own pass over the tokens the draft model has not seen, before the drafting passes (timed as "
                "catchup_time: Nightjar's switching cost)",
    "folded": "those tokens fed in the first drafting pass, whose last position drafts the first token (no pass of "
              "its own: re-enabling speculation costs the extra positions only)",
}
DEFAULT_DRAFT_CATCHUP = "separate"


def check_draft_catchup(value: str) -> str:
    """`value` if it names a draft catch-up (`DRAFT_CATCHUPS`), else a one-line ValueError."""
    if value not in DRAFT_CATCHUPS:
        raise ValueError(f"draft_catchup must be one of {', '.join(DRAFT_CATCHUPS)}, got {value!r}")
    return value


def catchup_tokens(lags, layout: str, runs: bool = False) -> int:
    """Positions a draft model's catch-up pass computes, given each row's lag (tokens of the row its
    cache lacks, >= 1): none unless some lag exceeds 2 (a normal drafting round leaves 1 or 2) or `runs`
    says the pass runs anyway; else each row feeds its lag but the last token, padded to the largest when
    `padded`, and a row with nothing to feed still computes one position (`mixed` as packed)."""
    largest = max(lags, default=0)
    if largest <= 2 and not (runs and lags):
        return 0
    largest = max(largest, 2)
    if layout == "padded":
        return len(lags) * (largest - 1)
    return sum(lag - 1 if lag > 2 else 1 for lag in lags)


def prices_alike(fitted: str, priced: str) -> bool:
    """Whether a profile fitted to `fitted` steps prices `priced` steps as it was fitted: the same layout,
    or packed steps priced as the unified step (packed and mixed count scored and prefill tokens alike; the
    unified step only folds each step's prefill into its pass)."""
    return fitted == priced or (fitted == "packed" and priced == MIXED_LAYOUT)
